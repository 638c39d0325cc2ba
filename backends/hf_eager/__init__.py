"""hf_eager: the plain Transformers forward with a dynamic, left-padded batch cache."""

from __future__ import annotations

import logging

from backends.options import BackendOptions
from backends.runner import loading
from backends.runner.transformers_runner import TransformersRunner

log = logging.getLogger("ladle.hf_eager")


class HFEagerBackend(TransformersRunner):
    """The default backend: the model's own attention, a dynamic cache, no compilation."""

    name = "hf_eager"


def load(source: loading.ModelSource, options: BackendOptions) -> HFEagerBackend:
    """Load a model for the hf_eager backend (it reads dtype, device and trust_remote_code)."""
    device = loading.choose_device(options.device)
    torch_dtype = loading.pick_dtype(options.dtype, device)
    model, tokenizer = loading.load_pretrained(source, options.trust_remote_code, dtype=torch_dtype)
    model.to(device)
    log.info("hf_eager: %s on %s in %s", source.name, device, torch_dtype)
    return HFEagerBackend(model, tokenizer, source.name)


__all__ = ["HFEagerBackend", "load"]
