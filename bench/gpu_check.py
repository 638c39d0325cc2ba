"""GPU check: every backend on a realistic random-weight model, in one bounded run and one table.

    python -m bench.gpu_check --config llama-1b --out $OUT/gpu_check.json   # on a CUDA machine
    python -m bench.gpu_check --config tiny                                  # CPU smoke run

Needs no network and no checkpoint: the model is built from a config with seeded random
weights (speed does not depend on the values; generation is forced to full length). For each
of hf_eager, hf_bettertransformer and hf_int8 (skipped with the reason when it cannot load) it
measures load time, weight bytes, weight memory, TTFT for 128- and 512-token prompts, decode
tokens/s with 1 and 16 sequences and peak GPU memory; and it checks greedy agreement with the
first backend (hf_eager): free-running sequences, and teacher-forced top-1 agreement and logit
error on the reference's tokens. A float32 model checks that hf_bettertransformer matches
hf_eager exactly. Phases that would overrun --budget-s (400 s, so a llama-1b run ends inside
8 minutes) are skipped and say so.
Exit status: 0 when every agreement check that ran passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.agreement import Agreement, Reference, compare, reference_from
from bench.harness import (
    BACKENDS,
    BackendUnavailable,
    DecodeRun,
    copy_bandwidth,
    decode_prompts,
    free_memory,
    load_subject,
    prompt_ids,
    start_decode,
    time_to_first_token,
    usable_vocab,
    weight_bytes,
)
from bench.report import BackendResult, BenchReport, machine_description
from bench.shapes import SHAPES, build_checkpoint

log = logging.getLogger("ladle.bench")

# The slot cache of hf_bettertransformer compiles one decode graph per power-of-two width up to
# its context cap; 1024 columns hold every sequence here and keep start-up inside the budget.
BACKEND_OPTIONS: dict[str, dict[str, Any]] = {"hf_bettertransformer": {"max_context": 1024}}
AGREE_PROMPTS = 4
AGREE_PROMPT_LENGTH = 128
DECODE_PROMPT_LENGTH = 128


@dataclass(slots=True)
class Budget:
    """Seconds left of the run; a phase starts only when its estimate fits."""

    seconds: float
    started: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.started)

    def allows(self, estimate: float) -> bool:
        return self.left() > estimate


@dataclass(slots=True)
class CheckReport:
    """Everything the run found: speed per backend (BenchReport) and agreement per backend."""

    bench: BenchReport
    config: str
    versions: dict[str, str]
    build_s: float = 0.0
    weight_memory_bytes: dict[str, int] = field(default_factory=dict)
    agreement: dict[str, Agreement] = field(default_factory=dict)
    exact_float32: dict[str, Agreement] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def passed(self) -> bool:
        checks = [*self.agreement.values(), *self.exact_float32.values()]
        return all(a.passed for a in checks) and not self.errors


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="llama-1b", help=f"{', '.join(SHAPES)} or a config .json")
    parser.add_argument(
        "--backends", default=",".join(BACKENDS), help="comma-separated, first is the reference"
    )
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--tokens", type=int, default=None, help="decode tokens per run (128; tiny: 16)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds after one warm-up round")
    parser.add_argument("--agree-tokens", type=int, default=32, help="greedy tokens compared per prompt")
    parser.add_argument(
        "--exact-config",
        default=None,
        help="shape of the float32 exactness check when --dtype is not float32 (default smollm2-135m; 'none' skips)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--budget-s", type=float, default=400.0, help="start no phase that would end after this (400)"
    )
    parser.add_argument("--out", default="artifacts/gpu_check.json", help="JSON results path")
    args = parser.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    args.tokens = args.tokens or (16 if args.config == "tiny" else 128)
    # A float32 run already holds hf_bettertransformer to the exact rule.
    args.exact_config = args.exact_config or ("none" if args.dtype == "float32" else "smollm2-135m")
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    return args


def versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0], "torch": torch.__version__}
    for name in ("transformers", "bitsandbytes", "accelerate"):
        try:
            found[name] = __import__(name).__version__
        except Exception as exc:  # a missing optional package is a fact to report
            found[name] = f"unavailable ({type(exc).__name__})"
    if torch.cuda.is_available():
        found["cuda"] = str(torch.version.cuda)
    return found


def median_seconds(
    rounds: int, timed: Callable[[Any], Any], setup: Callable[[], Any] = lambda: None
) -> float:
    """Median seconds of `rounds` timed calls after one untimed warm-up call (compilation too);
    `setup` runs untimed before each call and hands it its argument."""
    times: list[float] = []
    for i in range(rounds + 1):
        state = setup()
        synchronize_all()
        start = time.perf_counter()
        timed(state)
        synchronize_all()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def synchronize_all() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(model: Any, result: BackendResult, args: argparse.Namespace, budget: Budget) -> None:
    """TTFT at 128 and 512 prompt tokens, then decode tokens/s at 1 and 16 sequences."""
    core = model.core
    for length in (128, 512):
        if not budget.allows(30):
            result.notes.append(f"TTFT {length} skipped: time budget")
            continue
        prompt = prompt_ids(usable_vocab(core), length, seed=length)

        def first_token(_: None, p: list[int] = prompt) -> None:
            time_to_first_token(core, p)

        result.ttft_ms[length] = 1000 * median_seconds(args.rounds, first_token)
    for batch in (1, 16):
        if not budget.allows(60):
            result.notes.append(f"decode x{batch} skipped: time budget")
            continue
        prompts = decode_prompts(core, batch, DECODE_PROMPT_LENGTH)

        def setup(p: list[list[int]] = prompts) -> DecodeRun:
            return start_decode(core, p, args.tokens)

        seconds = median_seconds(args.rounds, DecodeRun.finish, setup)
        result.tokens_per_s[batch] = batch * (args.tokens - 1) / seconds


def check_backend(
    name: str,
    source: str,
    args: argparse.Namespace,
    report: CheckReport,
    reference: Reference | None,
    budget: Budget,
) -> Reference | None:
    """Load one backend, check its agreement with the reference, measure it, drop it."""
    free_memory()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
    start = time.perf_counter()
    try:
        model = load_subject(name, source, args.dtype, args.device, **BACKEND_OPTIONS.get(name, {}))
    except BackendUnavailable as exc:
        report.bench.skipped[name] = str(exc)
        print(f"[gpu_check] skip {exc}", flush=True)
        return reference
    result = report.bench.result(name)
    result.load_s = time.perf_counter() - start
    result.dtype = model.info.dtype
    result.weight_bytes = weight_bytes(model.backend)
    if torch.cuda.is_available():
        report.weight_memory_bytes[name] = torch.cuda.memory_allocated() - before
    print(f"[gpu_check] {name}: loaded in {result.load_s:.1f} s", flush=True)
    try:
        prompts = decode_prompts(model.core, AGREE_PROMPTS, AGREE_PROMPT_LENGTH)
        if reference is None:
            reference = reference_from(name, model, prompts, args.agree_tokens)
        else:
            report.agreement[name] = compare(model, reference, tolerance_for(name, args.dtype))
        measure(model, result, args, budget)
    except Exception as exc:  # one backend's failure must not cost the others' numbers
        traceback.print_exc()
        report.errors[name] = f"{type(exc).__name__}: {exc}"
    if torch.cuda.is_available():
        result.peak_memory_bytes = torch.cuda.max_memory_allocated()
    model.core.shutdown()
    del model
    free_memory()
    print(f"[gpu_check] {name}: done, {budget.left():.0f} s of budget left", flush=True)
    return reference


def tolerance_for(name: str, dtype: str) -> str:
    """Which agreement rule applies: exact for the fused path in float32, else bounded."""
    if name == "hf_int8":
        return "int8"
    return "exact" if dtype == "float32" else "half"


def exactness(args: argparse.Namespace, report: CheckReport, folder: Path, budget: Budget) -> None:
    """hf_bettertransformer must match hf_eager token for token on a float32 model."""
    if args.exact_config == "none" or not {"hf_eager", "hf_bettertransformer"} <= set(args.backends):
        return
    if not budget.allows(150):
        report.notes.append("float32 exactness check skipped: time budget")
        return
    source = str(build_checkpoint(args.exact_config, folder / "exact", "float32", args.device))
    reference: Reference | None = None
    for name in ("hf_eager", "hf_bettertransformer"):
        options = {"max_context": 256} if name == "hf_bettertransformer" else {}
        try:
            model = load_subject(name, source, "float32", args.device, **options)
        except BackendUnavailable as exc:
            report.notes.append(f"float32 exactness check skipped: {exc}")
            return
        prompts = decode_prompts(model.core, AGREE_PROMPTS, AGREE_PROMPT_LENGTH)
        if reference is None:
            reference = reference_from(name, model, prompts, args.agree_tokens)
        else:
            report.exact_float32[name] = compare(model, reference, "exact")
        model.core.shutdown()
        del model
        free_memory()


def run(args: argparse.Namespace) -> CheckReport:
    budget = Budget(args.budget_s)
    bench = BenchReport(
        model=f"{args.config} shape, random weights",
        device=args.device,
        dtype=args.dtype,
        decode_tokens=args.tokens,
        machine=machine_description(args.device),
    )
    report = CheckReport(bench=bench, config=args.config, versions=versions())
    print(f"[gpu_check] {bench.machine}; {report.versions}", flush=True)
    folder = Path(tempfile.mkdtemp(prefix="ladle-gpu-check-"))
    try:
        start = time.perf_counter()
        source = str(build_checkpoint(args.config, folder / "model", args.dtype, args.device))
        report.build_s = time.perf_counter() - start
        bench.copy_gbps = copy_bandwidth(
            args.device, (1024 if args.device.startswith("cuda") else 64) * 2**20
        )
        print(
            f"[gpu_check] built {args.config} in {report.build_s:.1f} s; copy {bench.copy_gbps:.1f} GB/s",
            flush=True,
        )
        reference: Reference | None = None
        for name in args.backends:
            if not budget.allows(90):
                bench.skipped[name] = "time budget"
                continue
            reference = check_backend(name, source, args, report, reference, budget)
        exactness(args, report, folder, budget)
    except Exception as exc:  # report what was measured before the failure
        traceback.print_exc()
        report.errors["run"] = f"{type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        bench.finish()
        report.wall_s = time.monotonic() - budget.started
    return report


def table(report: CheckReport) -> str:
    """One Markdown table: speed, memory and agreement per backend."""
    bench = report.bench
    head = (
        "backend | dtype | load s | weights MB | weight mem MB | peak MB | TTFT128 ms | TTFT512 ms "
        "| tok/s x1 | tok/s x16 | GB/s x1 | agreement"
    )
    lines = [f"_{bench.headline()}_", "", f"| {head} |", "|---" * (head.count("|") + 1) + "|"]
    for name, r in bench.results.items():
        agree = report.agreement.get(name)
        exact = report.exact_float32.get(name)
        cells = [
            name,
            r.dtype,
            _f(r.load_s),
            _mb(r.weight_bytes),
            _mb(report.weight_memory_bytes.get(name)),
            _mb(r.peak_memory_bytes),
            _f(r.ttft_ms.get(128)),
            _f(r.ttft_ms.get(512)),
            _f(r.tokens_per_s.get(1)),
            _f(r.tokens_per_s.get(16)),
            _f(r.bandwidth_gbps(1)),
            "reference"
            if agree is None and exact is None
            else "; ".join(a.summary() for a in (agree, exact) if a is not None),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [f"- {name}: skipped: {why}" for name, why in bench.skipped.items()]
    lines += [f"- {name}: error: {why}" for name, why in report.errors.items()]
    lines += [f"- {name}: {note}" for name, r in bench.results.items() for note in r.notes]
    lines += [f"- {note}" for note in report.notes]
    lines.append(
        f"\nbuild {report.build_s:.1f} s, wall {report.wall_s:.0f} s; "
        f"verdict: {'PASS' if report.passed() else 'FAIL'}"
    )
    return "\n".join(lines)


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e6:.0f}"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args)
    print(table(report), flush=True)
    data = {**asdict(report), "bench": report.bench.as_dict(), "passed": report.passed()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1, default=str))
    print(f"[gpu_check] wrote {out}", flush=True)
    return 0 if report.passed() else 1


if __name__ == "__main__":
    sys.exit(main())
