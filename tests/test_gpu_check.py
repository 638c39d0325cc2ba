"""The GPU check on CPU: its targets, its feature probes, the wheels it carries, and
bench/gpu_run.sh itself in smoke mode (the steps the GPU machine runs, on the tiny shape)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from packaging.requirements import Requirement

from bench.gpu_check import guarded
from bench.gpu_features import Probe, constrained_request, prefix_cache_hit
from bench.gpu_report import CheckReport
from bench.gpu_targets import TARGETS, Target, evaluate, quantised_bytes, speedups
from bench.gpu_wheels import Wheel, carry_problems, read_pins, requirements
from bench.report import BenchReport

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_run.sh"


def _status(verdicts: list[Any], metric: str) -> str:
    return next(v.status for v in verdicts if v.target.metric == metric)


def test_targets_judge_bounds_missing_metrics_and_cpu_runs() -> None:
    targets = (
        Target("speed", "s", ">=", 1.5, gpu_only=True),
        Target("bytes", "b", "<=", 0.55),
        Target("shown", "r"),
        Target("feature", "f", ">=", 1, optional=True),
    )
    good = {"s": 1.6, "b": 0.5, "r": 3.0}
    verdicts = evaluate(good, on_gpu=True, skipped={"f": "not available in this build"}, targets=targets)
    assert [v.status for v in verdicts] == ["pass", "pass", "report", "skipped"]
    assert verdicts[3].why == "not available in this build"

    bad = evaluate({"s": 1.4, "b": 0.56, "r": 1.0, "f": 0.0}, on_gpu=True, targets=targets)
    assert [v.failed for v in bad] == [True, True, False, True]
    # a backend that did not load leaves its metric missing: that fails, it does not pass by omission
    assert _status(evaluate({"b": 0.5}, on_gpu=True, targets=targets), "s") == "FAIL"
    # on a CPU smoke run speed bounds are shown, not enforced; the others still are
    cpu = evaluate({"s": 0.4, "b": 0.9}, on_gpu=False, targets=targets)
    assert [v.status for v in cpu[:2]] == ["info", "FAIL"]
    assert _status(evaluate({}, on_gpu=False, targets=targets), "s") == "info"
    assert _status(evaluate({}, on_gpu=True, targets=targets), "r") == "report"  # shown, never judged


def test_a_missing_backend_fails_its_targets_with_the_reason() -> None:
    bench = BenchReport(model="m", device="cuda", dtype="bfloat16", decode_tokens=64)
    bench.result("hf_eager").tokens_per_s = {1: 40.0, 16: 400.0}
    bench.skipped["hf_int8"] = "hf_int8: ImportError: no bitsandbytes"
    report = CheckReport(bench, "llama-1b", {}, on_gpu=True)
    why = {v.target.metric: (v.status, v.why) for v in report.verdicts()}
    assert why["int8.linear_ratio"] == ("FAIL", "hf_int8: ImportError: no bitsandbytes")
    assert why["speedup.hf_bettertransformer.x1"] == ("FAIL", "hf_bettertransformer not in --backends")
    assert not report.passed()


def test_a_failing_phase_is_reported_and_the_run_goes_on() -> None:
    bench = BenchReport(model="m", device="cpu", dtype="float32", decode_tokens=4)
    report = CheckReport(bench, "tiny", {}, on_gpu=False)
    guarded("http", report, lambda: [][0])
    assert report.errors == {"http": "IndexError: list index out of range"}
    assert not report.passed()


def test_a_target_with_an_unknown_comparison_is_refused() -> None:
    with pytest.raises(ValueError, match="op must be"):
        Target("typo", "m", "=>", 1.0)


def test_issue_targets_are_in_the_table() -> None:
    rules = {t.metric: (t.op, t.bound) for t in TARGETS}
    assert rules["speedup.hf_bettertransformer.x1"] == (">=", 1.5)
    assert rules["speedup.hf_bettertransformer.x16"] == (">=", 1.2)
    assert rules["int8.linear_ratio"] == ("<=", 0.55)
    assert rules["int8.model_ratio"][1] is None  # reported
    assert {"agreement.hf_bettertransformer", "agreement.hf_int8", "http.failures"} <= set(rules)


def test_speedups_divide_by_the_reference() -> None:
    rates = {"hf_eager": {1: 40.0, 16: 400.0}, "hf_bettertransformer": {1: 100.0, 16: 600.0}, "x": {1: 1.0}}
    found = speedups(rates, "hf_eager")
    assert found == {
        "speedup.hf_bettertransformer.x1": 2.5,
        "speedup.hf_bettertransformer.x16": 1.5,
        "speedup.x.x1": 0.025,
    }


def test_quantised_bytes_count_int8_weights_with_their_scales() -> None:
    model = torch.nn.Module()
    model.embed = torch.nn.Embedding(100, 8, dtype=torch.float16)  # 16-bit, like the tied embedding
    linear = torch.nn.Linear(8, 4, bias=False)
    weight = torch.nn.Parameter(torch.zeros(4, 8, dtype=torch.int8), requires_grad=False)
    weight.SCB = torch.ones(4, dtype=torch.float32)  # type: ignore[attr-defined]  # bitsandbytes' row scales
    linear.weight = weight
    model.linear = linear
    ratios = quantised_bytes(model)
    assert ratios["int8.linear_ratio"] == pytest.approx((32 + 16) / 64)
    assert ratios["int8.model_ratio"] == pytest.approx((1600 + 32 + 16) / (1600 + 64))


class ScriptedClient:
    model = "m"

    def __init__(self, *answers: dict[str, Any]) -> None:
        self.answers = list(answers)
        self.bodies: list[dict[str, Any]] = []

    def json(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        self.bodies.append(body or {})
        return self.answers.pop(0)


def test_constrained_probe_accepts_only_an_allowed_choice() -> None:
    client = ScriptedClient({"choices": [{"text": "w10"}]}, {"choices": [{"text": "w10 w99"}]})
    assert constrained_request(client)[0] == 1.0  # type: ignore[arg-type]
    assert client.bodies[0]["structured_outputs"] == {"choice": ["w10", "w11 w12"]}
    assert constrained_request(client)[0] == 0.0  # type: ignore[arg-type]


def test_prefix_cache_probe_needs_cached_tokens_on_the_repeat() -> None:
    usage = {"prompt_tokens": 160}
    hit = {"usage": {**usage, "prompt_tokens_details": {"cached_tokens": 144}}}
    assert prefix_cache_hit(ScriptedClient({}, hit))[0] == 1.0  # type: ignore[arg-type]
    assert prefix_cache_hit(ScriptedClient({}, {"usage": usage}))[0] == 0.0  # type: ignore[arg-type]


def test_a_missing_feature_is_skipped_with_a_printed_line(capsys: pytest.CaptureFixture[str]) -> None:
    def never(client: Any) -> tuple[float, str]:
        raise AssertionError("a missing feature's request must not be sent")

    probe = Probe("feature.x", "x request", lambda: "SamplingParams has no x field", never)
    outcome = probe.attempt(ScriptedClient())  # type: ignore[arg-type]
    assert outcome.value is None and "not available in this build" in outcome.note
    assert "x request: not available in this build" in capsys.readouterr().out


def test_carried_wheels_must_be_exactly_the_pins(tmp_path: Path) -> None:
    pins = {"transformers": "5.24.0", "typing-extensions": "4.16.0"}
    wheels = [Wheel.from_path(tmp_path / n) for n in ("transformers-5.24.0-py3-none-any.whl",)]
    wheels.append(Wheel.from_path(tmp_path / "typing_extensions-4.16.0-py3-none-any.whl"))
    assert carry_problems(pins, wheels) == []
    stale = [*wheels, Wheel.from_path(tmp_path / "transformers-5.17.0-py3-none-any.whl")]
    assert carry_problems(pins, stale) == [
        "transformers-5.17.0-py3-none-any.whl: not pinned in gpu_wheels.txt; remove it (one version each)"
    ]
    assert carry_problems(pins, wheels[:1]) == ["typing-extensions==4.16.0: no wheel (run `make gpu-wheels`)"]


def test_pinned_wheels_satisfy_ladles_requirements() -> None:
    pins = read_pins()
    assert {"transformers", "bitsandbytes", "starlette", "uvicorn", "pydantic"} <= set(pins)
    for line in requirements():
        requirement = Requirement(line)
        name = requirement.name.lower().replace("_", "-")
        if name in pins:
            assert requirement.specifier.contains(pins[name]), (line, pins[name])


def _wheel(folder: Path, name: str, version: str) -> Path:
    """A wheel holding only its metadata: enough for pip to install and for Python to find."""
    info = f"{name}-{version}.dist-info"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        archive.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        archive.writestr(f"{info}/RECORD", "")
    return path


def _run_script(tmp_path: Path, mode: str, wheels: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "WHEELS": str(wheels),
        "SITE": str(tmp_path / "site"),
        "OUT": str(tmp_path / "out"),
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        ["bash", str(SCRIPT), mode], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.timeout(300)
def test_gpu_run_installs_carried_wheels_ahead_of_the_image(tmp_path: Path) -> None:
    wheels = tmp_path / "whl"
    wheels.mkdir()
    _wheel(wheels, "ladle_carried_probe", "1.0")
    done = _run_script(tmp_path, "preflight", wheels, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (tmp_path / "site" / "ladle_carried_probe-1.0.dist-info").is_dir()
    assert (tmp_path / "out" / "preflight.log").is_file()

    # A carried wheel shadows the installed package: one too old for ladle stops the run.
    _wheel(wheels, "jinja2", "3.0.0")
    done = _run_script(tmp_path, "preflight", wheels, timeout=240)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"BAD jinja2 3.0.0 (>=3.1) from {tmp_path / 'site'}" in done.stdout


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_gpu_run_smoke_on_cpu(tmp_path: Path) -> None:
    """The whole device command on the tiny shape: wheels (none here), preflight, check, HTTP line."""
    done = _run_script(tmp_path, "smoke", tmp_path / "no-wheels", timeout=540)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} >= {
        "gpu_check.json",
        "gpu_check.md",
        "gpu_run.log",
        "http_server.log",
    }
    assert "verdict: PASS" in done.stdout
    assert "| card | torch | CUDA | transformers | bitsandbytes | Python |" in done.stdout
    data = json.loads((out / "gpu_check.json").read_text())
    assert data["passed"] is True
    assert set(data["versions"]) >= {"torch", "cuda", "transformers", "bitsandbytes"}
    results = data["bench"]["results"]
    assert results["hf_eager"]["tokens_per_s"]["16"] > 0 and results["hf_eager"]["ttft_ms"]["128"] > 0
    for name, agreement in data["agreement"].items():
        assert agreement["passed"], (name, agreement)
    assert data["agreement"]["hf_bettertransformer"]["same_sequences"] == 1.0  # float32: exact
    # every target the table names was measured (a misspelt metric would leave it empty)
    statuses = {t["metric"]: t for t in data["targets"]}
    for target in TARGETS:
        row = statuses[target.metric]
        assert row["status"] != "FAIL", row
        assert target.optional or row["value"] is not None, row
    levels = data["http"]["levels"]
    assert [lv["users"] for lv in levels] == [1, 16]
    assert all(lv["failures"] == 0 and lv["output_tokens"] > 0 and lv["ttft_p50_ms"] for lv in levels)
    assert "| 16 |" in (out / "gpu_check.md").read_text()
