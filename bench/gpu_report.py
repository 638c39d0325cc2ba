"""What a GPU check found, as one Markdown report and one JSON file (rewritten after each phase,
so a run cut short still leaves what it measured)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.agreement import Agreement
from bench.gpu_http import HttpResult
from bench.gpu_targets import TARGETS, Verdict, evaluate
from bench.gpu_targets import markdown as targets_markdown
from bench.harness import BACKENDS
from bench.report import BenchReport

VERSIONED = ("transformers", "bitsandbytes", "accelerate", "starlette", "uvicorn", "pydantic")


def versions() -> dict[str, str]:
    """Python, torch, CUDA and the packages the check depends on; a missing one says why."""
    found = {"python": sys.version.split()[0], "torch": torch.__version__}
    found["cuda"] = str(torch.version.cuda) if torch.cuda.is_available() else "none"
    for name in VERSIONED:
        try:
            found[name] = __import__(name).__version__
        except Exception as exc:  # a missing or broken optional package is a fact to report
            found[name] = f"unavailable ({type(exc).__name__})"
    return found


@dataclass(slots=True)
class CheckReport:
    """Speed per backend (BenchReport), agreement per backend, the metrics the targets read."""

    bench: BenchReport
    config: str
    versions: dict[str, str]
    on_gpu: bool = False
    build_s: float = 0.0
    weight_memory_bytes: dict[str, int] = field(default_factory=dict)
    agreement: dict[str, Agreement] = field(default_factory=dict)
    exact_float32: dict[str, Agreement] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    skipped_metrics: dict[str, str] = field(default_factory=dict)  # metric -> why it was not measured
    http: HttpResult | None = None
    errors: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def verdicts(self) -> list[Verdict]:
        return evaluate(self.metrics, self.on_gpu, {**self._backend_reasons(), **self.skipped_metrics})

    def _backend_reasons(self) -> dict[str, str]:
        """Why each backend's metrics are missing: skipped at load, failed, or not asked for."""
        reasons: dict[str, str] = {}
        for target in TARGETS:
            backend = next((b for b in BACKENDS if b in target.metric), None)
            backend = "hf_int8" if target.metric.startswith("int8.") else backend
            if backend is None or target.metric in self.metrics:
                continue
            why = self.bench.skipped.get(backend) or self.errors.get(backend)
            if why is None and backend not in self.bench.results:
                why = f"{backend} not in --backends"
            reasons[target.metric] = why or "not measured"
        return reasons

    def passed(self) -> bool:
        return not self.errors and not any(v.failed for v in self.verdicts())

    def environment(self) -> str:
        v = self.versions
        return (
            f"card: {self.bench.machine}; torch {v['torch']}, CUDA {v['cuda']}, transformers "
            f"{v['transformers']}, bitsandbytes {v['bitsandbytes']}, Python {v['python']}"
        )


def environment_table(report: CheckReport) -> list[str]:
    """The card and the versions that decide its numbers, as a one-row table."""
    v = report.versions
    cells = [report.bench.machine, v["torch"], v["cuda"], v["transformers"], v["bitsandbytes"], v["python"]]
    return [
        "| card | torch | CUDA | transformers | bitsandbytes | Python |",
        "|---|---|---|---|---|---|",
        "| " + " | ".join(cells) + " |",
    ]


def backend_table(report: CheckReport) -> list[str]:
    """One row per backend: speed, memory and agreement."""
    bench = report.bench
    lengths = sorted({n for r in bench.results.values() for n in r.ttft_ms})
    head = "backend | dtype | load s | weights MB | weight mem MB | peak MB | "
    head += "".join(f"TTFT{n} ms | " for n in lengths) + "tok/s x1 | tok/s x16 | GB/s x1 | agreement"
    lines = [f"| {head} |", "|---" * (head.count("|") + 1) + "|"]
    for name, r in bench.results.items():
        agree = [a for a in (report.agreement.get(name), report.exact_float32.get(name)) if a is not None]
        cells = [name, r.dtype, _f(r.load_s), _mb(r.weight_bytes), _mb(report.weight_memory_bytes.get(name))]
        cells += [_mb(r.peak_memory_bytes), *(_f(r.ttft_ms.get(n)) for n in lengths)]
        cells += [_f(r.tokens_per_s.get(1)), _f(r.tokens_per_s.get(16)), _f(r.bandwidth_gbps(1))]
        cells.append("; ".join(a.summary() for a in agree) if agree else "reference")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def table(report: CheckReport) -> str:
    """The whole report: environment, backends, targets, the HTTP line, and the verdict."""
    lines = [*environment_table(report), "", f"_{report.bench.headline()}_", "", *backend_table(report)]
    lines += [f"- {name}: skipped: {why}" for name, why in report.bench.skipped.items()]
    lines += [f"- {name}: error: {why}" for name, why in report.errors.items()]
    lines += [f"- {name}: {note}" for name, r in report.bench.results.items() for note in r.notes]
    lines += [f"- {note}" for note in report.notes]
    lines += ["", targets_markdown(report.verdicts())]
    if report.http is not None and report.http.levels:
        title = f"HTTP: ladle {report.http.backend} serving {report.config} ({report.bench.dtype})"
        lines += ["", report.http.table(title)]
    lines.append(
        f"\nbuild {report.build_s:.1f} s, wall {report.wall_s:.0f} s; "
        f"verdict: {'PASS' if report.passed() else 'FAIL'}"
    )
    return "\n".join(lines)


def write(report: CheckReport, out: Path) -> None:
    """The JSON at `out` and the Markdown table beside it (same name, .md)."""
    data: dict[str, Any] = {**asdict(report), "bench": report.bench.as_dict(), "passed": report.passed()}
    data["targets"] = [
        {"name": v.target.name, "metric": v.target.metric, "rule": v.target.rule(), "value": v.value}
        | {"status": v.status, "why": v.why}
        for v in report.verdicts()
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1, default=str))
    out.with_suffix(".md").write_text(table(report) + "\n")


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e6:.0f}"
