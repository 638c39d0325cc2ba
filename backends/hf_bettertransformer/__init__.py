"""hf_bettertransformer: SDPA attention, a preallocated slot KV cache and a compiled decode step.

Optimum's BetterTransformer was upstreamed into Transformers as SDPA attention and removed
from optimum 2.x; this backend is the fast path it stood for. Where the installed optimum
still has `optimum.bettertransformer` and it converts the model, it is used too.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from backends.errors import ModelLoadError, one_line
from backends.hf_bettertransformer.backend import BetterTransformerBackend
from backends.hf_bettertransformer.decode_step import resolve_compile
from backends.options import BackendOptions
from backends.runner import loading
from backends.runner.transformers_runner import TransformersRunner

log = logging.getLogger("ladle.hf_bettertransformer")

# Default cap on cached columns per slot: slots x columns x per-token K/V stays bounded
# (SmolLM2-135M in float32: 16 slots x 4096 columns = 3 GiB on CPU). 4096 admits a 3,000-token
# prompt, which chunked prefill makes practical to serve next to running streams.
DEFAULT_MAX_CONTEXT = {"cpu": 4096, "cuda": 4096}


class SharedRunnerBackend(TransformersRunner):
    """Models the slot cache cannot serve (encoder-decoders): the shared dynamic-cache runner."""

    name = "hf_bettertransformer"


def load(source: loading.ModelSource, options: BackendOptions) -> TransformersRunner:
    """Load a model for the hf_bettertransformer backend, compiled and warmed up when asked.

    It reads dtype, device, trust_remote_code, max_batch_size (its slots), max_context and compile.
    """
    device = loading.choose_device(options.device)
    torch_dtype = loading.pick_dtype(options.dtype, device)
    trust_remote_code, max_batch_size = options.trust_remote_code, options.max_batch_size
    config = loading.load_config(source, trust_remote_code)
    if max_batch_size < 1:
        raise ModelLoadError(f"max_batch_size must be >= 1, got {max_batch_size}")
    limit = _max_len(config, options.max_context, torch.device(device))
    compiled = resolve_compile(options.compile, torch.device(device))
    extra = {"attn_implementation": "sdpa"} if _supports_sdpa(config) else {}
    model, tokenizer = loading.load_pretrained(source, trust_remote_code, dtype=torch_dtype, **extra)
    model.to(device)
    model = _maybe_optimum(model)
    if getattr(config, "is_encoder_decoder", False):
        log.info("hf_bettertransformer: %s is an encoder-decoder; using the shared runner", source.name)
        return SharedRunnerBackend(model, tokenizer, source.name)
    try:
        backend = BetterTransformerBackend(model, tokenizer, source.name, max_batch_size, limit, compiled)
    except (AttributeError, TypeError, ValueError, IndexError) as exc:
        # Models whose cache is not one K/V pair per layer (state-space layers, say).
        log.warning(
            "hf_bettertransformer: %s does not fit the slot cache (%s); using the shared runner",
            source.name,
            one_line(exc),
        )
        return SharedRunnerBackend(model, tokenizer, source.name)
    log.info(
        "hf_bettertransformer: %s on %s in %s, %s attention, %d slots x %d columns (%.0f MiB), %s decode",
        source.name,
        device,
        torch_dtype,
        model.config._attn_implementation,
        backend.cache.slots,
        backend.cache.max_len,
        backend.cache.nbytes() / 2**20,
        "compiled" if backend.step.compiled else "eager",
    )
    return backend


def _supports_sdpa(config: Any) -> bool:
    """Whether Transformers has an SDPA attention for this architecture (Bloom, say, has not)."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    mapping: Any = auto._model_mapping
    model_class = mapping.get(type(config), None)
    return bool(getattr(model_class, "_supports_sdpa", False))


def _max_len(config: Any, max_context: int | None, device: torch.device) -> int:
    """Columns per slot: max_context (MAX_CONTEXT), else the device cap; never past a sliding window."""
    if max_context is not None and max_context < 2:
        raise ModelLoadError(f"max_context must be >= 2, got {max_context}")
    limit = max_context or DEFAULT_MAX_CONTEXT.get(device.type, DEFAULT_MAX_CONTEXT["cuda"])
    window = getattr(config, "sliding_window", None)
    if isinstance(window, int) and 0 < window < limit:
        # The mask treats every row's query as the last column, so a window narrower than the
        # cache would be measured from the wrong place: keep the context inside the window.
        log.info("hf_bettertransformer: context capped at the sliding window of %d tokens", window)
        limit = window
    return limit


def _maybe_optimum(model: Any) -> Any:
    """Convert with optimum.bettertransformer where the installed optimum still has it."""
    try:
        from optimum.bettertransformer import BetterTransformer
    except ImportError:
        log.info(
            "hf_bettertransformer: optimum.bettertransformer is not installed (optimum 2.x removed it); "
            "using Transformers' %s attention",
            model.config._attn_implementation,
        )
        return model
    try:
        converted = BetterTransformer.transform(model, keep_original_model=False)
    except Exception as exc:  # optimum refuses models that Transformers already runs with SDPA
        log.info("hf_bettertransformer: optimum.bettertransformer declined this model: %s", one_line(exc))
        return model
    log.info("hf_bettertransformer: converted the model with optimum.bettertransformer")
    return converted


__all__ = ["BetterTransformerBackend", "SharedRunnerBackend", "load"]
