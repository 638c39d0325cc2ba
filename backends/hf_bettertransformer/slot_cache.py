"""A preallocated KV cache of fixed slots: one row per live sequence, no padding, no re-padding.

Every layer owns two buffers [slots, kv_heads, max_len, head_dim]. A sequence keeps one
slot for its whole life and its tokens sit at columns 0..len-1 of that slot, so sequences
of different lengths share the cache without left padding: joining writes a slot, leaving
frees one, and nothing else moves. A decode step writes each row's new key and value at
that row's own length and attends over the first `width` columns, masked per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from backends.runner.batch_cache import cache_layers


@dataclass(slots=True)
class DecodeView:
    """What one decode forward sees: the write column of each row and how many columns to attend."""

    positions: torch.Tensor = field(default_factory=lambda: torch.zeros(1, dtype=torch.long))  # [B]
    width: int = 1


class SlotLayer(CacheLayerMixin):
    """One layer's keys and values for every slot, written in place at per-row positions."""

    is_compileable = True
    is_sliding = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, view: DecodeView) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.keys = keys  # [S, H, L, Dk]
        self.values = values  # [S, H, L, Dv]
        self.view = view
        self.max_len = int(keys.shape[2])
        self.device = keys.device
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Nothing to do: the buffers exist from the start."""

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one new token per row at the row's position; return the first `width` columns."""
        assert self.keys is not None and self.values is not None
        rows, heads = key_states.shape[:2]
        index = (
            torch.arange(rows, device=self.device)[:, None],  # [B, 1]
            torch.arange(heads, device=self.device)[None, :],  # [1, H]
            self.view.positions[:, None],  # [B, 1]
        )
        # In place on the whole buffer, not a slice of it: a compiled graph then writes just the
        # new column instead of copying the buffer, and the address stays fixed for CUDA graphs.
        self.keys.index_put_(index, key_states[:, :, 0])  # [B, H, D] into [S, H, L, D]
        self.values.index_put_(index, value_states[:, :, 0])
        width = self.view.width
        return self.keys[:rows, :, :width], self.values[:rows, :, :width]  # [B, H, W, D]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """Masks span the attended columns; the per-row limits come from the 2D attention mask."""
        return self.view.width, 0

    def get_seq_length(self) -> int:
        """The query is treated as the last attended column, so the causal part allows every column."""
        return self.view.width - 1

    def get_max_length(self) -> int:
        return self.max_len


class SlotCache(Cache):
    """The static KV cache of all slots, as a Transformers cache the model writes into."""

    def __init__(self, layers: list[SlotLayer], view: DecodeView) -> None:
        super().__init__(layers=list(layers))
        self.slot_layers = layers
        self.view = view

    @classmethod
    def like(cls, probe: Any, slots: int, max_len: int) -> SlotCache:
        """Buffers shaped after a probe forward's cache (its heads, head dims and dtype per layer)."""
        view = DecodeView()
        layers = []
        for layer in cache_layers(probe):
            keys, values = layer.keys, layer.values  # [1, H, 1, D]
            layers.append(
                SlotLayer(
                    keys.new_zeros((slots, keys.shape[1], max_len, keys.shape[3])),
                    values.new_zeros((slots, values.shape[1], max_len, values.shape[3])),
                    view,
                )
            )
        for layer in layers:
            assert layer.keys is not None and layer.values is not None
            # Fixed addresses: compiled graphs and CUDA graphs read the buffers where they are.
            torch._dynamo.mark_static_address(layer.keys)
            torch._dynamo.mark_static_address(layer.values)
        return cls(layers, view)

    @property
    def slots(self) -> int:
        return int(self.slot_layers[0].keys.shape[0]) if self.slot_layers[0].keys is not None else 0

    @property
    def max_len(self) -> int:
        return self.slot_layers[0].max_len

    def nbytes(self) -> int:
        """Memory the buffers hold."""
        return sum(
            t.numel() * t.element_size()
            for layer in self.slot_layers
            for t in (layer.keys, layer.values)
            if t is not None
        )

    def set_view(self, positions: torch.Tensor, width: int) -> None:
        """Aim the next forward: row i writes at positions[i] and attends columns < width."""
        self.view.positions = positions
        self.view.width = width

    def store(self, source: Any, row: int, start: int, slot: int) -> int:
        """Copy row `row` of a prefill cache, from column `start` on, into `slot`; return its length."""
        length = 0
        for mine, theirs in zip(self.slot_layers, cache_layers(source), strict=True):
            assert mine.keys is not None and mine.values is not None
            keys, values = theirs.keys[row, :, start:], theirs.values[row, :, start:]  # [H, n, D]
            length = int(keys.shape[1])
            mine.keys[slot, :, :length].copy_(keys)
            mine.values[slot, :, :length].copy_(values)
        return length

    def copy_slot(self, source: int, targets: Sequence[int], length: int) -> None:
        """Give each target slot the first `length` columns of the source slot."""
        index = torch.tensor(list(targets), device=self.slot_layers[0].device)
        for layer in self.slot_layers:
            assert layer.keys is not None and layer.values is not None
            layer.keys[index, :, :length] = layer.keys[source, :, :length]
            layer.values[index, :, :length] = layer.values[source, :, :length]
