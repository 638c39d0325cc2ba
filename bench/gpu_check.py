"""GPU check: every backend on a realistic random-weight model, with pass/fail targets, in one
bounded run and one report.

    bench/gpu_run.sh                                  # on the GPU machine: install the wheels, run this
    python -m bench.gpu_check --config llama-1b       # on a CUDA machine with ladle's dependencies
    python -m bench.gpu_check --config tiny           # CPU smoke run

Needs no network and no checkpoint: the model is built from a config with seeded random
weights (speed does not depend on the values; generation is forced to full length). For each
of hf_eager, hf_bettertransformer and hf_int8 (skipped with the reason when it cannot load) it
measures load time, weight bytes and memory, TTFT, decode tokens/s with 1 and 16 sequences and
peak GPU memory, and checks greedy agreement with the first backend (hf_eager): free-running
sequences, and teacher-forced top-1 agreement and logit error on the reference's tokens. A
float32 model checks that hf_bettertransformer matches hf_eager exactly. Then ladle's HTTP
server serves the model and is loaded at 1 and 16 streams (`bench.gpu_http`), with one request
per feature probe (`bench.gpu_features`). The targets (`bench.gpu_targets`) judge the metrics.
Phases that would overrun --budget-s are skipped and say so. The JSON and its Markdown twin
are rewritten after every phase.
Exit status: 0 when no target failed and nothing raised, 1 otherwise.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench import gpu_report
from bench.agreement import Reference, compare, reference_from
from bench.gpu_args import parse_args
from bench.gpu_http import HttpPlan, run_http
from bench.gpu_report import CheckReport
from bench.gpu_targets import quantised_bytes, speedups
from bench.harness import (
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
from bench.shapes import build_checkpoint

log = logging.getLogger("ladle.bench")

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
    """TTFT at each --ttft-lengths prompt length, then decode tokens/s at 1 and 16 sequences."""
    core = model.core
    for length in args.ttft_lengths:
        if not budget.allows(15):
            result.notes.append(f"TTFT {length} skipped: time budget")
            continue
        prompt = prompt_ids(usable_vocab(core), length, seed=length)

        def first_token(_: None, p: list[int] = prompt) -> None:
            time_to_first_token(core, p)

        result.ttft_ms[length] = 1000 * median_seconds(args.rounds, first_token)
    for batch in (1, 16):
        if not budget.allows(30):
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
        model = load_subject(name, source, args.dtype, args.device, **backend_options(name, args))
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
    step = getattr(model.backend, "step", None)  # hf_bettertransformer's decode step
    if step is not None:
        result.notes.append(f"decode step {'compiled' if step.compiled else 'eager'}")
    print(f"[gpu_check] {name}: loaded in {result.load_s:.1f} s", flush=True)
    try:
        if name == "hf_int8":
            report.metrics.update(quantised_bytes(model.backend.model))
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


def backend_options(name: str, args: argparse.Namespace) -> dict[str, Any]:
    return {"max_context": args.max_context} if name == "hf_bettertransformer" else {}


def tolerance_for(name: str, dtype: str) -> str:
    """Which agreement rule applies: exact for the fused path in float32, else bounded."""
    if name == "hf_int8":
        return "int8"
    return "exact" if dtype == "float32" else "half"


def exactness(args: argparse.Namespace, report: CheckReport, folder: Path, budget: Budget) -> None:
    """hf_bettertransformer must match hf_eager token for token on a float32 model."""
    if not {"hf_eager", "hf_bettertransformer"} <= set(args.backends):
        return
    if args.exact_config == "none":  # a float32 run's own agreement is held to the exact rule
        report.skipped_metrics["exact_float32.hf_bettertransformer"] = "--exact-config none"
        return
    if not budget.allows(40):
        report.skipped_metrics["exact_float32.hf_bettertransformer"] = "time budget"
        return
    source = str(build_checkpoint(args.exact_config, folder / "exact", "float32", args.device))
    reference: Reference | None = None
    for name in ("hf_eager", "hf_bettertransformer"):
        options = {"max_context": 256} if name == "hf_bettertransformer" else {}
        try:
            model = load_subject(name, source, "float32", args.device, **options)
        except BackendUnavailable as exc:
            report.skipped_metrics["exact_float32.hf_bettertransformer"] = str(exc)
            return
        prompts = decode_prompts(model.core, AGREE_PROMPTS, AGREE_PROMPT_LENGTH)
        if reference is None:
            reference = reference_from(name, model, prompts, args.agree_tokens)
        else:
            report.exact_float32[name] = compare(model, reference, "exact")
        model.core.shutdown()
        del model
        free_memory()
    print(f"[gpu_check] float32 exactness on {args.exact_config}: done", flush=True)


def serve_and_load(args: argparse.Namespace, report: CheckReport, source: str, budget: Budget) -> None:
    """The HTTP line: ladle's server on the same model, at each stream count."""
    if not args.http:
        report.skipped_metrics["http.failures"] = "--no-http"
        return
    plan = HttpPlan(
        backend=args.http_backend,
        streams=tuple(args.http_streams),
        seconds=args.http_seconds,
        max_tokens=args.tokens,
        start_timeout_s=max(30.0, budget.left() - len(args.http_streams) * args.http_seconds - 10),
        env={"MAX_CONTEXT": str(args.max_context), "DTYPE": args.dtype},
    )
    if not budget.allows(len(plan.streams) * plan.seconds + 45):
        report.skipped_metrics["http.failures"] = "time budget"
        return
    log_path = Path(args.out).with_name("http_server.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    report.http = run_http(source, plan, log_path)
    report.metrics.update(report.http.metrics)
    report.skipped_metrics.update(report.http.notes)


def derive_metrics(report: CheckReport) -> None:
    """Speed-ups over the reference, and agreement verdicts as 1.0 (held) or 0.0."""
    rates = {name: r.tokens_per_s for name, r in report.bench.results.items()}
    reference = next(iter(report.bench.results), "hf_eager")
    report.metrics.update(speedups(rates, reference))
    for name, agreement in report.agreement.items():
        report.metrics[f"agreement.{name}"] = float(agreement.passed)
        if agreement.rule == "exact":  # a float32 run's main check is the exactness check
            report.metrics[f"exact_float32.{name}"] = float(agreement.passed)
    for name, agreement in report.exact_float32.items():
        report.metrics[f"exact_float32.{name}"] = float(agreement.passed)


def guarded(phase: str, report: CheckReport, body: Callable[[], None]) -> None:
    """Run one phase; its failure is reported under its name and the next phase still runs."""
    try:
        body()
    except Exception as exc:  # any failure of a phase is a finding, not the end of the run
        traceback.print_exc()
        report.errors[phase] = f"{type(exc).__name__}: {exc}"
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
    report = CheckReport(bench, args.config, gpu_report.versions(), on_gpu=args.enforce)
    print(f"[gpu_check] {report.environment()}", flush=True)
    out = Path(args.out)
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
            if not budget.allows(60):
                bench.skipped[name] = "time budget"
                continue
            reference = check_backend(name, source, args, report, reference, budget)
            derive_metrics(report)
            gpu_report.write(report, out)
        guarded("exactness", report, lambda: exactness(args, report, folder, budget))
        derive_metrics(report)
        gpu_report.write(report, out)
        guarded("http", report, lambda: serve_and_load(args, report, source, budget))
    except Exception as exc:  # report what was measured before the failure
        traceback.print_exc()
        report.errors["run"] = f"{type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        bench.finish()
        report.wall_s = time.monotonic() - budget.started
    return report


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("ladle").setLevel(logging.INFO)  # load and compile times go into the log
    args = parse_args(argv, __doc__)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args)
    gpu_report.write(report, Path(args.out))
    print(gpu_report.table(report), flush=True)
    print(f"[gpu_check] wrote {args.out} and {Path(args.out).with_suffix('.md')}", flush=True)
    return 0 if report.passed() else 1


if __name__ == "__main__":
    sys.exit(main())
