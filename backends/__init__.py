"""Everything below HTTP: model loading, the engine, the sampler and the backends.

`from backends import load_model` is the library entry point; the names are imported
lazily so that `import backends.engine.contract` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from backends.engine.async_engine import AsyncEngine, RequestStream
    from backends.engine.params import SamplingParams
    from backends.library import Model, load_backend, load_model
    from backends.options import BackendOptions

_EXPORTS = {
    "AsyncEngine": "backends.engine.async_engine",
    "BackendOptions": "backends.options",
    "RequestStream": "backends.engine.async_engine",
    "Model": "backends.library",
    "load_backend": "backends.library",
    "load_model": "backends.library",
    "SamplingParams": "backends.engine.params",
}

__all__ = [
    "AsyncEngine",
    "BackendOptions",
    "Model",
    "RequestStream",
    "SamplingParams",
    "load_backend",
    "load_model",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'backends' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
