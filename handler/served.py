"""What the HTTP layer needs of a loaded model, and how it loads one from the settings."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from backends.async_engine import AsyncEngine
    from backends.base import ModelInfo
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

    if settings.threads:
        torch.set_num_threads(settings.threads)
    log.info("torch uses %d CPU thread(s) for the forward", torch.get_num_threads())
    model: ServedModel = load_model(
        settings.model,
        backend=settings.backend,
        dtype=settings.dtype,
        max_batch_size=settings.max_batch_size,
        max_queued_requests=settings.max_queued_requests,
        prefill_chunk_tokens=settings.prefill_chunk_tokens,
        prefix_cache_tokens=settings.prefix_cache_tokens if settings.prefix_cache else None,
        trust_remote_code=settings.trust_remote_code,
        cache_dir=settings.ladle_cache,
    )
    return model
