"""hf_eager: the plain Transformers forward with a dynamic, left-padded batch cache."""

from __future__ import annotations

import logging

from backends.runner import loading
from backends.runner.transformers_runner import TransformersRunner

log = logging.getLogger("ladle.hf_eager")


class HFEagerBackend(TransformersRunner):
    """The default backend: the model's own attention, a dynamic cache, no compilation."""

    name = "hf_eager"


def load(
    source: loading.ModelSource,
    dtype: str | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
) -> HFEagerBackend:
    """Load a model for the hf_eager backend."""
    device = loading.choose_device(device)
    torch_dtype = loading.pick_dtype(dtype, device)
    model, tokenizer = loading.load_pretrained(source, trust_remote_code, dtype=torch_dtype)
    model.to(device)
    log.info("hf_eager: %s on %s in %s", source.name, device, torch_dtype)
    return HFEagerBackend(model, tokenizer, source.name)


__all__ = ["HFEagerBackend", "load"]
