"""The benchmark suite, run in smoke mode (tiny model, one round) so it cannot rot; the GPU check's
smoke run is in test_gpu_check.py."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import BackendResult, BenchReport
from bench.shapes import shape_config, word_tokenizer

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def _need(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: pip install -e '.[bench]'")


@pytest.mark.timeout(600)
def test_bench_suite_smoke(tmp_path: Path) -> None:
    _need("pytest_benchmark", "matplotlib")
    out = tmp_path / "bench"
    args = ["-m", "pytest", "bench", "--benchmark-only", "--bench-smoke", "--bench-out", str(out)]
    done = _run([*args, "-p", "no:cacheprovider", "-q"], timeout=540)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    data = json.loads((out / "bench.json").read_text())
    names = {b["name"] for b in data["benchmarks"]}
    assert {"test_copy_bandwidth", "test_ttft[hf_eager-prompt128]", "test_decode[hf_eager-seqs16]"} <= names
    eager = data["ladle"]["results"]["hf_eager"]
    assert set(eager["ttft_ms"]) == {"128", "512"} and set(eager["tokens_per_s"]) == {"1", "16"}
    assert all(v > 0 for v in [*eager["ttft_ms"].values(), *eager["tokens_per_s"].values()])
    assert eager["weight_bytes"] > 0 and data["ladle"]["copy_gbps"] > 0
    assert eager["bandwidth_gbps"]["1"] > 0
    ran = set(data["ladle"]["results"]) | set(data["ladle"]["skipped"])
    # each backend was measured or skipped with a reason
    assert ran == {"hf_eager", "hf_bettertransformer", "hf_int8"}
    assert (out / "bench.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "| hf_eager |" in (out / "bench.md").read_text()
    assert "ladle backends" in done.stdout


def test_bandwidth_is_weight_bytes_times_decode_steps() -> None:
    result = BackendResult("b", weight_bytes=2_000_000_000, tokens_per_s={1: 10.0, 16: 160.0})
    assert result.bandwidth_gbps(1) == pytest.approx(20.0)
    assert result.bandwidth_gbps(16) == pytest.approx(20.0)  # 16 tokens per step: 10 steps/s
    report = BenchReport(model="m", device="cpu", dtype="float32", decode_tokens=8, copy_gbps=40.0)
    report.results["b"] = result
    report.skipped["c"] = "c: not in this checkout"
    table = report.markdown()
    assert "20.0 (50%)" in table and "c: skipped: c: not in this checkout" in table


def test_shapes_and_word_tokenizer() -> None:
    assert shape_config("llama-8b")["hidden_size"] == 4096
    with pytest.raises(ValueError, match="unknown shape"):
        shape_config("llama-70b")
    tokenizer = word_tokenizer(50)
    assert len(tokenizer) == 50
    assert tokenizer.decode([5, 6, 49]) == "w5 w6 w49"
    assert tokenizer("w7 w8", add_special_tokens=False).input_ids == [7, 8]


def test_root_test_command_does_not_collect_bench() -> None:
    tomllib = pytest.importorskip("tomllib")
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert options["testpaths"] == ["tests"]  # bench/ runs only when named: `pytest bench`
