"""Backends side by side: time to first token, decode tokens/s, and memory bandwidth achieved.

Run with `pytest bench --benchmark-only`; one warm-up round (compilation included) precedes the
timed rounds of every benchmark, and every decode run is forced to its full length.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench.conftest import BenchSettings, Subject
from bench.harness import (
    DecodeRun,
    copier,
    decode_prompts,
    prompt_ids,
    start_decode,
    time_to_first_token,
    usable_vocab,
)
from bench.report import BenchReport

# A slow backend on a CPU can take many minutes; the suite's 300 s per-test limit is for tests.
pytestmark = pytest.mark.timeout(3600)


def _median_s(benchmark: Any) -> float:
    if benchmark.stats is None:  # --benchmark-disable: the code ran once, untimed
        pytest.skip("benchmarks are disabled")
    return float(benchmark.stats.stats.median)


def test_copy_bandwidth(benchmark: Any, bench_settings: BenchSettings, bench_report: BenchReport) -> None:
    """The machine's own memory bandwidth, the yardstick for the bandwidth decoding achieves."""
    copy = copier(bench_settings.device, bench_settings.copy_bytes)
    benchmark.group = "memory copy"
    benchmark.pedantic(copy, rounds=5, warmup_rounds=1)
    _median_s(benchmark)
    best = float(benchmark.stats.stats.min)
    bench_report.copy_gbps = 2 * bench_settings.copy_bytes / best / 1e9
    benchmark.extra_info.update(bytes=bench_settings.copy_bytes, gbps_read_plus_write=bench_report.copy_gbps)


@pytest.mark.parametrize("length", [128, 512], ids=lambda n: f"prompt{n}")
def test_ttft(
    benchmark: Any, subject: Subject, length: int, bench_settings: BenchSettings, bench_report: BenchReport
) -> None:
    """Admission to first token for one request with a `length`-token prompt."""
    core = subject.core
    prompt = prompt_ids(usable_vocab(core), length, seed=length)
    benchmark.group = f"TTFT, {length}-token prompt"
    benchmark.pedantic(
        time_to_first_token,
        args=(core, prompt),
        rounds=bench_settings.rounds,
        warmup_rounds=bench_settings.warmup_rounds,
    )
    ms = _median_s(benchmark) * 1000
    bench_report.result(subject.name).ttft_ms[length] = ms
    benchmark.extra_info.update(backend=subject.name, prompt_tokens=length, ttft_ms=ms)


@pytest.mark.parametrize("batch", [1, 16], ids=lambda b: f"seqs{b}")
def test_decode(
    benchmark: Any, subject: Subject, batch: int, bench_settings: BenchSettings, bench_report: BenchReport
) -> None:
    """Decode steps after the prefill of `batch` concurrent requests, each forced to full length."""
    core = subject.core
    prompts = decode_prompts(core, batch, bench_settings.decode_prompt_length)
    tokens = bench_settings.decode_tokens

    def setup() -> tuple[tuple[DecodeRun], dict[str, Any]]:
        return (start_decode(core, prompts, tokens),), {}

    benchmark.group = f"decode, {batch} sequence{'s' if batch > 1 else ''}"
    benchmark.pedantic(
        DecodeRun.finish,
        setup=setup,
        rounds=bench_settings.rounds,
        warmup_rounds=bench_settings.warmup_rounds,
    )
    timed_tokens = batch * (tokens - 1)  # the first token of each came from the untimed prefill
    rate = timed_tokens / _median_s(benchmark)
    result = bench_report.result(subject.name)
    result.tokens_per_s[batch] = rate
    benchmark.extra_info.update(
        backend=subject.name,
        sequences=batch,
        timed_tokens=timed_tokens,
        tokens_per_s=rate,
        weight_bytes=result.weight_bytes,
        bandwidth_gbps=result.bandwidth_gbps(batch),
    )
