"""load_model()'s backend options, the backend registry, and Model.close."""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref

import pytest

from backends import registry
from backends.hf_bettertransformer import BetterTransformerBackend
from backends.library import load_backend, load_model
from backends.options import BackendOptions
from backends.runner.transformers_runner import TransformersRunner
from tests.tiny_models import tiny_model_dir


def test_importing_ladle_imports_no_backend() -> None:
    code = (
        "import sys, handler.cli, handler.asgi.app, handler.model, backends.library, backends.registry\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('bitsandbytes', 'optimum')"
        " or m.startswith(('backends.hf_', 'accelerate'))]\n"
        "print(','.join(sorted(loaded)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


def test_the_registry_imports_only_the_backend_asked_for() -> None:
    code = (
        "import sys\nfrom backends import registry\nregistry.loader('hf_eager')\n"
        "print(sorted(m for m in sys.modules if m.startswith('backends.hf_') or m == 'bitsandbytes'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "['backends.hf_eager']"


def test_every_backend_has_the_same_entry_point_and_names_itself() -> None:
    assert registry.BACKENDS == ("hf_eager", "hf_bettertransformer", "hf_int8")
    for name in registry.BACKENDS:
        assert callable(registry.loader(name))
    assert "name" not in vars(TransformersRunner)  # no default: each backend says which it is
    with pytest.raises(
        ValueError, match=r"^backend must be one of hf_eager, hf_bettertransformer, hf_int8, got 'x'$"
    ):
        load_model(str(tiny_model_dir("llama")), backend="x")


def test_load_model_reads_options_not_given_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_CONTEXT", "48")
    monkeypatch.setenv("COMPILE", "0")
    monkeypatch.setenv("MAX_BATCH_SIZE", "3")
    path = str(tiny_model_dir("llama"))
    backend = load_backend(path, backend="hf_bettertransformer")
    assert isinstance(backend, BetterTransformerBackend)
    assert (backend.cache.max_len, backend.cache.slots, backend.step.compiled) == (48, 3, False)
    model = load_model(path, backend="hf_bettertransformer", max_context=40, max_batch_size=2)
    assert isinstance(model.backend, BetterTransformerBackend)
    assert (model.backend.cache.max_len, model.backend.cache.slots) == (40, 2)
    assert model.core.max_batch_size == 2 and model.info.backend == "hf_bettertransformer"
    model.close()
    # Options passed whole are not mixed with the environment.
    given = load_backend(path, backend="hf_bettertransformer", options=BackendOptions(compile=False))
    assert isinstance(given, BetterTransformerBackend)
    assert given.cache.max_len > 48 and given.cache.slots == 16
    with pytest.raises(TypeError, match="unknown backend option 'max_contxt'"):
        load_model(path, max_contxt=4)


def test_close_frees_the_weights_and_caches() -> None:
    model = load_model(str(tiny_model_dir("llama")))
    assert model.info.backend == "hf_eager"
    assert [c["finish_reason"] for c in model("Hello", max_tokens=2, temperature=0.0)][-1] == "length"
    weights = weakref.ref(model.backend.model)  # type: ignore[attr-defined]
    core = weakref.ref(model.core)
    model.close()
    gc.collect()
    assert weights() is None and core() is None
    with pytest.raises(RuntimeError, match="closed"):
        list(model("Hello", max_tokens=2))
    model.close()  # twice is harmless
