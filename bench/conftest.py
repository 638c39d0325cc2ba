"""Options, fixtures and reporting of the backend benchmarks (`pytest bench --benchmark-only`).

Every run writes, into --bench-out: pytest-benchmark's JSON (`bench.json`, with a `ladle`
section holding the per-backend summary), a chart (`bench.png`) and a table (`bench.md`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from backends.engine.core import EngineCore
from bench.harness import BACKENDS, BackendUnavailable, free_memory, load_subject, weight_bytes
from bench.report import BenchReport, machine_description
from bench.shapes import build_checkpoint

SMOKE_ENV = "LADLE_BENCH_SMOKE"


@dataclass(frozen=True, slots=True)
class BenchSettings:
    """What this run measures, from the --bench-* options."""

    config: str  # "default" (the default model) or a shape name / config .json (random weights)
    backends: tuple[str, ...]
    device: str
    dtype: str
    decode_tokens: int
    rounds: int
    warmup_rounds: int
    out: Path
    smoke: bool
    copy_bytes: int
    threads: int | None
    prompt_lengths: tuple[int, ...] = (128, 512)
    batches: tuple[int, ...] = (1, 16)
    decode_prompt_length: int = 128


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ladle bench")
    group.addoption(
        "--bench-config",
        default=None,
        help="'default' (the default model), a random-weight shape (tiny, smollm2-135m, llama-1b, "
        "llama-3b, llama-8b) or a config .json; default: 'default' on CPU, llama-1b on CUDA",
    )
    group.addoption(
        "--bench-backends", default=",".join(BACKENDS), help="comma-separated backends to compare"
    )
    group.addoption(
        "--bench-smoke",
        action="store_true",
        default=False,
        help=f"tiny model, 8 tokens, one round: checks the suite runs (also env {SMOKE_ENV}=1)",
    )
    group.addoption("--bench-out", default=None, help="output folder; default artifacts/bench/<time>")
    group.addoption("--bench-tokens", type=int, default=None, help="tokens per decode run (64 CPU, 128 GPU)")
    group.addoption("--bench-rounds", type=int, default=None, help="timed rounds per benchmark (3)")
    group.addoption("--bench-dtype", default=None, help="float32, float16 or bfloat16 (default per device)")
    group.addoption("--bench-device", default=None, help="cpu or cuda (default: cuda when available)")
    group.addoption(
        "--bench-threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's; smoke: 1, which a busy machine slows least)",
    )


def _settings(config: pytest.Config) -> BenchSettings:
    smoke = bool(config.getoption("bench_smoke")) or os.environ.get(SMOKE_ENV, "") not in ("", "0")
    device = config.getoption("bench_device") or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.startswith("cuda")
    name = config.getoption("bench_config") or ("tiny" if smoke else "llama-1b" if gpu else "default")
    backends = tuple(b.strip() for b in str(config.getoption("bench_backends")).split(",") if b.strip())
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        raise pytest.UsageError(f"--bench-backends: unknown backend {unknown[0]}; use {', '.join(BACKENDS)}")
    tokens = config.getoption("bench_tokens") or (8 if smoke else 128 if gpu else 64)
    if tokens < 2:
        raise pytest.UsageError("--bench-tokens must be >= 2 (the first token comes from the prefill)")
    out = config.getoption("bench_out") or f"artifacts/bench/{time.strftime('%Y%m%d-%H%M%S')}"
    return BenchSettings(
        config=name,
        backends=backends,
        device=device,
        dtype=config.getoption("bench_dtype") or ("bfloat16" if gpu else "float32"),
        decode_tokens=tokens,
        rounds=config.getoption("bench_rounds") or (1 if smoke else 3),
        warmup_rounds=1,
        out=Path(out),
        smoke=smoke,
        copy_bytes=(16 if smoke else 1024 if gpu else 256) * 2**20,
        threads=config.getoption("bench_threads") or (1 if smoke else None),
    )


@dataclass(slots=True)
class Subject:
    """A backend under test: its name and its loaded model (a `backends.library.Model`)."""

    name: str
    model: Any

    @property
    def core(self) -> EngineCore:
        core: EngineCore = self.model.core
        return core


SETTINGS = pytest.StashKey[BenchSettings]()
REPORT = pytest.StashKey[BenchReport]()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    settings = _settings(config)
    settings.out.mkdir(parents=True, exist_ok=True)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    config.stash[SETTINGS] = settings
    config.stash[REPORT] = BenchReport(
        model=_model_label(settings.config),
        device=settings.device,
        dtype=settings.dtype,
        decode_tokens=settings.decode_tokens,
        machine=machine_description(settings.device),
    )
    # pytest-benchmark reads this option in its own pytest_configure, which runs after this one.
    if config.getoption("benchmark_json", None) is None and hasattr(config.option, "benchmark_json"):
        config.option.benchmark_json = settings.out / "bench.json"


def _model_label(config: str) -> str:
    if config == "default":
        return "default model (SmolLM2-135M-Instruct)"
    return f"{Path(config).stem if config.endswith('.json') else config} shape, random weights"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "subject" in metafunc.fixturenames:
        names = list(metafunc.config.stash[SETTINGS].backends)
        metafunc.parametrize("subject", names, indirect=True, scope="session", ids=names)


@pytest.fixture(scope="session")
def bench_settings(pytestconfig: pytest.Config) -> BenchSettings:
    return pytestconfig.stash[SETTINGS]


@pytest.fixture(scope="session")
def bench_report(pytestconfig: pytest.Config) -> BenchReport:
    return pytestconfig.stash[REPORT]


@pytest.fixture(scope="session")
def model_source(bench_settings: BenchSettings) -> Iterator[str | None]:
    """What load_model() gets: None for the default model, else a freshly built checkpoint."""
    if bench_settings.config == "default":
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="ladle-bench-"))
    try:
        yield str(
            build_checkpoint(bench_settings.config, folder, bench_settings.dtype, bench_settings.device)
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def subject(
    request: pytest.FixtureRequest,
    bench_settings: BenchSettings,
    bench_report: BenchReport,
    model_source: str | None,
) -> Iterator[Subject]:
    """One backend, loaded once for all its benchmarks and dropped before the next one loads."""
    name: str = request.param
    free_memory()
    start = time.perf_counter()
    try:
        model = load_subject(name, model_source, bench_settings.dtype, bench_settings.device)
    except BackendUnavailable as exc:
        bench_report.skipped[name] = str(exc)
        pytest.skip(str(exc))
    result = bench_report.result(name)
    result.load_s = time.perf_counter() - start
    result.weight_bytes = weight_bytes(model.backend)
    result.dtype = model.info.dtype
    subject = Subject(name, model)
    del model
    yield subject
    subject.core.shutdown()
    subject.model = None
    free_memory()


def pytest_benchmark_update_json(config: pytest.Config, benchmarks: Any, output_json: dict[str, Any]) -> None:
    """Put ladle's per-backend summary (tokens/s, bandwidth, skip reasons) into the JSON."""
    report = config.stash.get(REPORT, None)
    if report is not None:
        report.finish()
        output_json["ladle"] = report.as_dict()


def pytest_sessionfinish(session: pytest.Session) -> None:
    report = session.config.stash.get(REPORT, None)
    settings = session.config.stash.get(SETTINGS, None)
    if report is None or settings is None or not (report.results or report.skipped):
        return
    report.finish()
    (settings.out / "bench.md").write_text(report.markdown())
    if report.results:
        report.chart(settings.out / "bench.png")


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    report = config.stash.get(REPORT, None)
    settings = config.stash.get(SETTINGS, None)
    if report is None or settings is None or not (report.results or report.skipped):
        return
    terminalreporter.section("ladle backends")
    terminalreporter.write(report.markdown())
    terminalreporter.write_line(f"results in {settings.out}/ (bench.json, bench.png, bench.md)")
