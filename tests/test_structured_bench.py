"""bench/structured.py in smoke mode (tiny model, tiny sizes), so the benchmark cannot rot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench import structured
from tests.tiny_models import tiny_model_dir


def test_structured_bench_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "structured.json"
    args = ["--model", str(tiny_model_dir("llama")), "--streams", "2", "--tokens", "6", "--rounds", "1"]
    args += ["--ttft-runs", "1", "--mask-steps", "2", "--output", str(out)]
    monkeypatch.setattr(sys, "argv", ["bench.structured", *args])
    structured.main()
    result = json.loads(out.read_text())
    assert result["plain_tok_s"] > 0 and result["constrained_tok_s"] > 0
    assert set(result["mask_ms_per_step"]) == {"1", "4", "16", "64"}
    assert result["compile_repeated_schema_ms"] < result["compile_new_schema_ms"]
