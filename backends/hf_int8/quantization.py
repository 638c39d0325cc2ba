"""bitsandbytes weights: whether they run here, their config, their size, and a quieter log."""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch

from backends.errors import one_line

log = logging.getLogger("ladle.hf_int8")


def bitsandbytes_problem(device: str = "cpu") -> str | None:
    """Why bitsandbytes cannot run 8-bit weights on this device, or None when it can."""
    try:
        import bitsandbytes as bnb
    except Exception as exc:  # ImportError, or a native library that fails as it loads
        return f"bitsandbytes cannot be imported ({one_line(exc)}): pip install 'ladle[int8]'"
    try:
        with torch.inference_mode():
            # Moving the layer quantizes its weights; the forward runs the int8 matmul kernels.
            layer = bnb.nn.Linear8bitLt(16, 8, bias=False, has_fp16_weights=False).to(device)
            layer(torch.ones(2, 16, device=device, dtype=torch.float16))
    except Exception as exc:
        return f"bitsandbytes {bnb.__version__} cannot run 8-bit weights on {device}: {one_line(exc)}"
    return None


def quantization_config(load_in_4bit: bool, compute_dtype: torch.dtype, cpu_offload: bool) -> Any:
    """LLM.int8 (or nf4) weights; modules placed on cpu or disk stay unquantized when cpu_offload."""
    from transformers import BitsAndBytesConfig

    if load_in_4bit:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute_dtype,
            llm_int8_enable_fp32_cpu_offload=cpu_offload,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_enable_fp32_cpu_offload=cpu_offload)


def weight_bytes(model: Any) -> int:
    """Bytes the model's parameters and buffers take (int8/nf4 weights plus their scales)."""
    return int(model.get_memory_footprint())


class _RepeatFilter(logging.Filter):
    """Lets a message through once, then drops its repeats."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith(self.prefix):
            return True
        if self.seen:
            return False
        self.seen = True
        return True


@functools.cache
def quiet_bitsandbytes() -> None:
    """Log bitsandbytes' per-matmul cast warning once instead of at every layer of every step."""
    # With float32 (or bfloat16) activations, every Linear8bitLt forward warns that it casts its
    # input to float16 for quantization: that is how LLM.int8 works, not news at each token.
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    logger.addFilter(_RepeatFilter("MatMul8bitLt: inputs will be cast"))
