"""SDPA for the decode step: a single query token attends with its heads folded onto the K/V heads.

Transformers' SDPA path folds grouped-query heads this way only outside torch.compile; under
compile it copies every key and value head `heads / kv_heads` times (`repeat_kv`), which for a
decode over a wide cache moves more memory than the whole forward. This function keeps the fold
in compiled graphs too, and hands everything else (prefill, biases, soft-capping) to Transformers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

NAME = "ladle_sdpa"


def decode_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,  # [B, H, Q, D]
    key: torch.Tensor,  # [B, Hkv, W, D]
    value: torch.Tensor,  # [B, Hkv, W, Dv]
    attention_mask: torch.Tensor | None,  # [B, 1, Q, W]
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention output [B, Q, H, Dv], as Transformers' attention functions return it."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, length, _ = query.shape
    kv_heads = key.shape[1]
    plain = kwargs.get("softcap") is None and kwargs.get("position_bias") is None and dropout == 0.0
    if length != 1 or not plain or heads % kv_heads:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs
        )
    folded = query.reshape(batch, kv_heads, heads // kv_heads, query.shape[-1])  # [B, Hkv, G, D]
    # The mask's query axis has length 1, so it broadcasts over the G folded heads.
    out = F.scaled_dot_product_attention(folded, key, value, attn_mask=attention_mask, scale=scaling)
    out = out.reshape(batch, heads, 1, value.shape[-1])  # [B, H, 1, Dv]
    return out.transpose(1, 2).contiguous(), None


def use_decode_sdpa(model: Any) -> bool:
    """Switch a model on Transformers' SDPA to `decode_sdpa` (same masks); False if it is not on SDPA."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if model.config._attn_implementation != "sdpa":
        return False
    AttentionInterface.register(NAME, decode_sdpa)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
    return bool(model.config._attn_implementation == NAME)
