"""Backends by name: each is a package whose `load(source, options)` returns a Backend.

A package is imported only when its backend is asked for, so that loading ladle (or another
backend) never imports what one backend alone needs (bitsandbytes, say).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from backends.engine.contract import Backend
    from backends.options import BackendOptions
    from backends.runner.loading import ModelSource

PACKAGES: dict[str, str] = {
    "hf_eager": "backends.hf_eager",
    "hf_bettertransformer": "backends.hf_bettertransformer",
    "hf_int8": "backends.hf_int8",
}
BACKENDS = tuple(PACKAGES)


class Loader(Protocol):
    """A backend package's entry point."""

    def __call__(self, source: ModelSource, options: BackendOptions) -> Backend: ...


def loader(name: str) -> Loader:
    """The `load` of the named backend's package, imported now; an unknown name is a ValueError."""
    package = PACKAGES.get(name)
    if package is None:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    load: Loader = importlib.import_module(package).load
    return load
