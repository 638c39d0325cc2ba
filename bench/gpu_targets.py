"""The GPU check's pass/fail targets: one table of named bounds on named metrics.

A run fills a flat dict of metrics (`speedup.hf_bettertransformer.x1`, `int8.linear_ratio`,
...); each Target reads one of them. Adding a target is one line in TARGETS (and, for a new
measurement, one key written into the metrics). A target whose metric is missing fails, so a
backend that did not load cannot pass by omission; `optional` ones (features that may not be
in this build yet) are skipped instead, with the reason. `gpu_only` bounds (speed) are
reported but not enforced on a CPU smoke run, where they mean nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True, slots=True)
class Target:
    """`metric op bound` must hold; without a bound the metric is only reported."""

    name: str
    metric: str
    op: str = ">="  # ">=" or "<="
    bound: float | None = None
    gpu_only: bool = False
    optional: bool = False

    def __post_init__(self) -> None:
        if self.op not in (">=", "<="):
            raise ValueError(f"target {self.name!r}: op must be '>=' or '<=', got {self.op!r}")

    def holds(self, value: float) -> bool:
        if self.bound is None:
            return True
        return value >= self.bound if self.op == ">=" else value <= self.bound

    def rule(self) -> str:
        return "report" if self.bound is None else f"{self.op} {self.bound:g}"


TARGETS: tuple[Target, ...] = (
    Target("hf_bettertransformer / hf_eager decode tok/s, batch 1", "speedup.hf_bettertransformer.x1", ">=", 1.5, gpu_only=True),
    Target("hf_bettertransformer / hf_eager decode tok/s, batch 16", "speedup.hf_bettertransformer.x16", ">=", 1.2, gpu_only=True),
    Target("hf_int8 / hf_eager decode tok/s, batch 16", "speedup.hf_int8.x16"),
    Target("hf_int8 quantised linear layers / their float16 bytes", "int8.linear_ratio", "<=", 0.55),
    Target("hf_int8 whole model / its float16 bytes", "int8.model_ratio"),
    Target("greedy agreement: hf_bettertransformer vs hf_eager", "agreement.hf_bettertransformer", ">=", 1),
    Target("greedy agreement: hf_int8 vs hf_eager", "agreement.hf_int8", ">=", 1),
    Target("float32: hf_bettertransformer = hf_eager exactly", "exact_float32.hf_bettertransformer", ">=", 1),
    Target("HTTP: failed streams at 1 and 16 streams", "http.failures", "<=", 0),
    Target("HTTP: output tok/s, 1 stream", "http.tokens_per_s.x1"),
    Target("HTTP: output tok/s, 16 streams", "http.tokens_per_s.x16"),
    Target("constrained request (grammar mask on the logits)", "feature.constrained", ">=", 1, optional=True),
    Target("prefix-cache hit (cached_tokens > 0 on a repeat)", "feature.prefix_cache", ">=", 1, optional=True),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Verdict:
    """One target's outcome: status is pass, FAIL, report, info (not enforced here) or skipped."""

    target: Target
    value: float | None
    status: str
    why: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"


def evaluate(
    metrics: Mapping[str, float],
    on_gpu: bool,
    skipped: Mapping[str, str] | None = None,
    targets: tuple[Target, ...] = TARGETS,
) -> list[Verdict]:
    """Each target against the metrics; `skipped` maps a metric to why it was not measured."""
    skipped = skipped or {}
    verdicts: list[Verdict] = []
    for target in targets:
        value = metrics.get(target.metric)
        reason = skipped.get(target.metric, "not measured")
        if value is None:
            if target.optional or target.bound is None:
                status = "skipped" if target.optional else "report"
            else:
                status = "FAIL" if on_gpu or not target.gpu_only else "info"
            verdicts.append(Verdict(target, None, status, reason))
        elif target.bound is None:
            verdicts.append(Verdict(target, value, "report"))
        elif target.gpu_only and not on_gpu:
            verdicts.append(Verdict(target, value, "info", "enforced on a GPU only"))
        else:
            verdicts.append(Verdict(target, value, "pass" if target.holds(value) else "FAIL"))
    return verdicts


def markdown(verdicts: list[Verdict]) -> str:
    lines = ["| target | metric | rule | value | status |", "|---|---|---|---:|---|"]
    for v in verdicts:
        value = "-" if v.value is None else f"{v.value:.3g}"
        status = f"{v.status} ({v.why})" if v.why else v.status
        lines.append(f"| {v.target.name} | `{v.target.metric}` | {v.target.rule()} | {value} | {status} |")
    return "\n".join(lines)


def speedups(tokens_per_s: Mapping[str, Mapping[int, float]], reference: str) -> dict[str, float]:
    """`speedup.<backend>.x<batch>`: each backend's decode tok/s over the reference's."""
    base = tokens_per_s.get(reference, {})
    found: dict[str, float] = {}
    for backend, rates in tokens_per_s.items():
        if backend == reference:
            continue
        for batch, rate in rates.items():
            if base.get(batch):
                found[f"speedup.{backend}.x{batch}"] = rate / base[batch]
    return found


def quantised_bytes(model: Any) -> dict[str, float]:
    """`int8.linear_ratio` and `int8.model_ratio`: bytes held over the same weights in float16.

    Linear layers with int8 weights count their per-row scales too (bitsandbytes' SCB); the
    tied embedding and output layer stay 16-bit, which is why the whole model's ratio is
    higher (about 0.6 for a 1B Llama). Each shared tensor counts once.
    """
    seen: set[int] = set()
    held = {"linear": 0, "model": 0}
    half = {"linear": 0, "model": 0}
    for module in model.modules():
        params = [p for p in module.parameters(recurse=False) if p.data_ptr() not in seen]
        quantised = any(p.dtype == torch.int8 for p in params)
        for param in params:
            seen.add(param.data_ptr())
            nbytes = param.numel() * param.element_size()
            scales = getattr(param, "SCB", None)
            if isinstance(scales, torch.Tensor):
                nbytes += scales.numel() * scales.element_size()
            for part in ("linear", "model") if quantised else ("model",):
                held[part] += nbytes
                half[part] += param.numel() * 2
    return {f"int8.{part}_ratio": held[part] / half[part] for part in held if half[part]}
