"""What the HTTP layer needs of a loaded model, and how it loads one from the settings."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from backends.cpus import CGROUP_ROOT, CpuCount, usable_cpus
from backends.options import BackendOptions

if TYPE_CHECKING:
    from backends.engine.async_engine import AsyncEngine
    from backends.engine.contract import ModelInfo
    from handler.config import Settings

log = logging.getLogger("ladle")


class ServedModel(Protocol):
    """A loaded model: its tokenizer, what it is, and the engine that runs it."""

    @property
    def tokenizer(self) -> Any: ...

    @property
    def info(self) -> ModelInfo: ...

    @property
    def engine(self) -> AsyncEngine: ...

    def close(self) -> None: ...


def load_served_model(settings: Settings) -> ServedModel:
    """Load MODEL (or the default model) with the engine settings; blocking, run it off the event loop."""
    import torch

    from backends import load_model

    threads = forward_threads(settings.threads, cgroup_root=Path(settings.cgroup_root))
    torch.set_num_threads(threads.count)
    log.info("torch uses %d CPU thread(s) for the forward (from the %s)", threads.count, threads.source)
    model: ServedModel = load_model(
        settings.model,
        backend=settings.backend,
        options=BackendOptions.copy_of(settings),
        max_queued_requests=settings.max_queued_requests,
        prefill_chunk_tokens=settings.prefill_chunk_tokens,
        prefix_cache_tokens=settings.prefix_cache_tokens if settings.prefix_cache else None,
        cache_dir=settings.ladle_cache,
    )
    return model


def forward_threads(
    setting: int, environ: Mapping[str, str] | None = None, cgroup_root: Path = CGROUP_ROOT
) -> CpuCount:
    """THREADS when set; else OMP_NUM_THREADS when set (torch reads it); else the CPUs we may use.

    OMP_NUM_THREADS is OpenMP's variable, not a ladle setting: it is read as OpenMP reads it.
    """
    environ = os.environ if environ is None else environ
    if setting:
        return CpuCount(setting, "THREADS setting")
    omp = environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return CpuCount(int(omp), "OMP_NUM_THREADS variable")
    return usable_cpus(cgroup_root)
