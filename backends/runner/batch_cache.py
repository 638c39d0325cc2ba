"""A left-padded batch of KV caches that sequences join and leave between steps.

Rows are aligned on the right: row i's real tokens fill columns pad[i]..length-1 of
every layer's keys and values ([B, heads, length, head_dim]). Joining pads the shorter
side on the left; leaving drops rows and then the columns no row needs any more.
Encoder-decoder models also carry the encoder states and mask, padded on the right.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F


def cache_layers(cache: Any) -> list[Any]:
    """The layers of a Transformers cache (self-attention only for encoder-decoder caches)."""
    inner = getattr(cache, "self_attention_cache", cache)
    return list(inner.layers)


def cross_layers(cache: Any) -> list[Any]:
    """The cross-attention layers of an encoder-decoder cache, else none."""
    inner = getattr(cache, "cross_attention_cache", None)
    return list(inner.layers) if inner is not None else []


def _select(layers: list[Any], index: torch.Tensor) -> None:
    for layer in layers:
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            # Layers of a model split over several GPUs live on different devices.
            at = index.to(layer.keys.device)
            layer.keys = layer.keys.index_select(0, at)
            layer.values = layer.values.index_select(0, at)


def _left_pad(layers: list[Any], columns: int) -> None:
    if columns <= 0:
        return
    for layer in layers:
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            layer.keys = F.pad(layer.keys, (0, 0, columns, 0))
            layer.values = F.pad(layer.values, (0, 0, columns, 0))


def _right_pad(layers: list[Any], columns: int) -> None:
    if columns <= 0:
        return
    for layer in layers:
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            layer.keys = F.pad(layer.keys, (0, 0, 0, columns))
            layer.values = F.pad(layer.values, (0, 0, 0, columns))


def _concat(into: list[Any], other: list[Any]) -> None:
    for a, b in zip(into, other, strict=True):
        if getattr(a, "keys", None) is not None and a.keys.numel():
            a.keys = torch.cat([a.keys, b.keys], dim=0)
            a.values = torch.cat([a.values, b.values], dim=0)


class BatchCache:
    """The KV cache of the running batch, one row per sequence id."""

    pad_total: int  # the sum of `pad`, kept by its setter

    def __init__(
        self,
        cache: Any,
        seq_ids: list[int],
        pad: list[int],
        encoder_states: torch.Tensor | None = None,  # [B, E, hidden]
        encoder_mask: torch.Tensor | None = None,  # [B, E]
    ) -> None:
        self.cache = cache
        self.seq_ids = seq_ids
        self.pad = torch.tensor(pad, dtype=torch.long)  # [B]
        self.encoder_states = encoder_states
        self.encoder_mask = encoder_mask
        self.zero_padding()

    @property
    def pad(self) -> torch.Tensor:
        """[B]: left-padding columns per row."""
        return self._pad

    @pad.setter
    def pad(self, value: torch.Tensor) -> None:
        # Every change assigns (in-place `+=` too), so the total is kept here, on joins and
        # leaves, rather than summed at every step for the KV-tokens gauge.
        self._pad = value
        self.pad_total = int(value.sum()) if value.numel() else 0

    @property
    def positions_held(self) -> int:
        """Cache positions of real tokens, padding excluded."""
        return len(self.seq_ids) * self.length - self.pad_total

    @property
    def length(self) -> int:
        layers = cache_layers(self.cache)
        return int(layers[0].keys.shape[-2]) if layers and layers[0].keys is not None else 0

    @property
    def padded(self) -> bool:
        return bool(self.pad.numel()) and int(self.pad.max()) > 0

    def __len__(self) -> int:
        return len(self.seq_ids)

    def zero_padding(self) -> None:
        """Zero the padded columns so no NaN from a fully masked position can leak through."""
        if self.pad.numel() == 0 or int(self.pad.max()) == 0:
            return
        keep = torch.arange(self.length)[None, :] >= self.pad[:, None]  # [B, L]
        for layer in cache_layers(self.cache):
            mask = keep.to(layer.keys.device)[:, None, :, None]
            layer.keys = layer.keys * mask
            layer.values = layer.values * mask

    def attention_mask(self, new_tokens: int = 1) -> torch.Tensor:
        """[B, length + new_tokens]: 1 for real positions, 0 for left padding."""
        columns = torch.arange(self.length + new_tokens)[None, :]
        return (columns >= self.pad[:, None]).long()

    def positions(self) -> torch.Tensor:
        """[B, 1]: the position of each row's next token."""
        return (self.length - self.pad)[:, None]

    def merge(self, other: BatchCache) -> None:
        """Append other's rows, padding the shorter side on the left."""
        diff = self.length - other.length
        _left_pad(cache_layers(other.cache), diff)
        _left_pad(cache_layers(self.cache), -diff)
        if diff > 0:
            other.pad += diff
        else:
            self.pad -= diff
        _concat(cache_layers(self.cache), cache_layers(other.cache))
        self._merge_encoder(other)
        self.pad = torch.cat([self.pad, other.pad])
        self.seq_ids = self.seq_ids + other.seq_ids

    def _merge_encoder(self, other: BatchCache) -> None:
        if self.encoder_states is None or other.encoder_states is None:
            return
        assert self.encoder_mask is not None and other.encoder_mask is not None
        diff = self.encoder_states.shape[1] - other.encoder_states.shape[1]
        if diff > 0:
            other.encoder_states = F.pad(other.encoder_states, (0, 0, 0, diff))
            other.encoder_mask = F.pad(other.encoder_mask, (0, diff))
            _right_pad(cross_layers(other.cache), diff)
        elif diff < 0:
            self.encoder_states = F.pad(self.encoder_states, (0, 0, 0, -diff))
            self.encoder_mask = F.pad(self.encoder_mask, (0, -diff))
            _right_pad(cross_layers(self.cache), -diff)
        _concat(cross_layers(self.cache), cross_layers(other.cache))
        self.encoder_states = torch.cat([self.encoder_states, other.encoder_states])
        self.encoder_mask = torch.cat([self.encoder_mask, other.encoder_mask])

    def select(self, seq_ids: Sequence[int]) -> None:
        """Keep (and reorder to) these rows, then drop columns that only padding uses."""
        row_of = {sid: i for i, sid in enumerate(self.seq_ids)}
        index = torch.tensor([row_of[sid] for sid in seq_ids], dtype=torch.long)
        if list(seq_ids) != self.seq_ids:
            _select(cache_layers(self.cache), index)
            _select(cross_layers(self.cache), index)
            self.pad = self.pad.index_select(0, index)
            if self.encoder_states is not None and self.encoder_mask is not None:
                self.encoder_states = self.encoder_states.index_select(
                    0, index.to(self.encoder_states.device)
                )
                self.encoder_mask = self.encoder_mask.index_select(0, index.to(self.encoder_mask.device))
            self.seq_ids = list(seq_ids)
        self._trim()

    def _trim(self) -> None:
        drop = int(self.pad.min()) if self.pad.numel() else 0
        if drop <= 0:
            return
        for layer in cache_layers(self.cache):
            layer.keys = layer.keys[:, :, drop:]
            layer.values = layer.values[:, :, drop:]
        self.pad -= drop


class StagedCache:
    """The cache of one sequence being prefilled on its own (batch of 1), before it joins a batch."""

    def __init__(self, prefix: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        from transformers import DynamicCache

        self.cache = DynamicCache()
        for i, (keys, values) in enumerate(prefix):  # [H, P, D] each
            # Created empty, then handed the prefix: update() would copy it once more.
            self.cache.update(keys[None, :, :0], values[None, :, :0], i)
            layer = cache_layers(self.cache)[i]
            layer.keys, layer.values = keys[None], values[None]
        self.length = int(prefix[0][0].shape[1]) if prefix else 0

    def kv(self, start: int, end: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Copies of positions start..end-1, per layer: [H, n, D]."""
        return [
            (layer.keys[0, :, start:end].clone(), layer.values[0, :, start:end].clone())
            for layer in cache_layers(self.cache)
        ]


def row_kv(batch: BatchCache, seq_id: int, start: int, end: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Copies of positions start..end-1 of one row of a batch, per layer: [H, n, D]."""
    row = batch.seq_ids.index(seq_id)
    pad = int(batch.pad[row])
    return [
        (
            layer.keys[row, :, pad + start : pad + end].clone(),
            layer.values[row, :, pad + start : pad + end].clone(),
        )
        for layer in cache_layers(batch.cache)
    ]
