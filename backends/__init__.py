"""Everything below HTTP: model loading, the engine, the sampler and the backends.

`from backends import load_model` is the library entry point; the names are imported
lazily so that `import backends.base` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from backends.async_engine import AsyncEngine, RequestStream
    from backends.library import Model, load_backend, load_model
    from backends.params import SamplingParams

_EXPORTS = {
    "AsyncEngine": "backends.async_engine",
    "RequestStream": "backends.async_engine",
    "Model": "backends.library",
    "load_backend": "backends.library",
    "load_model": "backends.library",
    "SamplingParams": "backends.params",
}

__all__ = [
    "AsyncEngine",
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
