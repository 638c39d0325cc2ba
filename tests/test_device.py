"""DEVICE fails fast where the CUDA asked for does not work; /health shows the fast paths really in effect."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from backends import hf_bettertransformer
from backends.engine.contract import FastPaths
from backends.errors import ModelLoadError
from backends.hf_bettertransformer.backend import BetterTransformerBackend
from backends.options import BackendOptions
from backends.runner import loading
from handler.config import Settings
from handler.model import load_served_model
from loadtest.matrix import free_port
from tests.conftest_http import live_server
from tests.tiny_models import build, tiny_backend, tiny_model_dir

ROOT = Path(__file__).resolve().parents[1]
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device works here")


def test_device_names() -> None:
    assert loading.choose_device("cpu") == "cpu" and loading.choose_device(" CPU ") == "cpu"
    assert loading.choose_device("auto") == loading.choose_device(None) == loading.default_device()
    for bad in ("gpu", "cuda:", "cuda:x", "mps"):
        with pytest.raises(ModelLoadError, match="DEVICE must be auto, cpu, cuda or cuda:N"):
            loading.choose_device(bad)


@no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_where_none_works_fails_in_one_line(device: str) -> None:
    with pytest.raises(ModelLoadError) as info:
        loading.choose_device(device)
    message = str(info.value)
    assert message.startswith(f"DEVICE={device}, but no CUDA device works here") and "\n" not in message


def test_a_missing_cuda_index_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ModelLoadError, match=r"DEVICE=cuda:2, but there are only 2 CUDA device\(s\)"):
        loading.choose_device("cuda:2")


@no_cuda
@pytest.mark.parametrize("backend", ["hf_eager", "hf_bettertransformer", "hf_int8"])
def test_every_backend_refuses_cuda_that_does_not_work(backend: str) -> None:
    from backends.library import load_backend

    with pytest.raises(ModelLoadError, match="DEVICE=cuda, but no CUDA device works here"):
        load_backend(str(tiny_model_dir("llama")), backend=backend, device="cuda")


@no_cuda
def test_the_server_exits_1_with_one_line_instead_of_serving_on_the_cpu() -> None:
    env = {**os.environ, "MODEL": str(tiny_model_dir("llama")), "DEVICE": "cuda", "LOG_LEVEL": "warning"}
    command = [sys.executable, "-m", "handler", "--host", "127.0.0.1", "--port", str(free_port())]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if "cannot serve the model" in line]
    assert len(lines) == 1 and "DEVICE=cuda, but no CUDA device works here" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_eager_reports_the_attention_the_model_runs() -> None:
    backend = tiny_backend("llama")
    paths = backend.info.fast_paths
    assert paths == FastPaths(attention=backend.model.config._attn_implementation)
    assert (paths.cache, paths.compiled_decode) == ("dynamic", False)


def test_bettertransformer_reports_its_slot_cache_and_attention() -> None:
    llama = hf_bettertransformer.load(
        loading.resolve(str(tiny_model_dir("llama"))), BackendOptions(compile=False)
    )
    assert llama.info.fast_paths == FastPaths(attention="ladle_sdpa", cache="static", compiled_decode=False)
    # Bloom has no SDPA attention in Transformers: the fallback to eager attention shows.
    bloom = hf_bettertransformer.load(
        loading.resolve(str(tiny_model_dir("bloom"))), BackendOptions(compile=False)
    )
    assert bloom.info.fast_paths.attention == "eager"


def test_a_failed_compile_shows_as_eager_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_compile(fn: Any, **options: Any) -> Any:
        def fail(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("no compiler here")

        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    model, tokenizer = build("llama")
    backend = BetterTransformerBackend(model, tokenizer, "tiny", 2, 64, compile=True)
    assert backend.info.fast_paths.compiled_decode is False


def test_health_reports_the_fast_paths_of_the_loaded_backend() -> None:
    settings = Settings(model=str(tiny_model_dir("llama")), backend="hf_bettertransformer", max_batch_size=2)
    with live_server(settings, loader=load_served_model) as live:
        health = httpx.get(live.url + "/health").json()
    assert health["fast_paths"] == {"attention": "ladle_sdpa", "cache": "static", "compiled_decode": False}
    assert health["device"] == "cpu"
