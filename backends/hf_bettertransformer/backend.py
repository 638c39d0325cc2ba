"""The fused fast path: SDPA attention, a preallocated slot KV cache, a compiled decode step."""

from __future__ import annotations

import dataclasses
import heapq
import logging
from collections.abc import Sequence
from typing import Any

import torch

from backends.engine.contract import FastPaths, Seq
from backends.errors import ContextLengthError
from backends.hf_bettertransformer.attention import use_decode_sdpa
from backends.hf_bettertransformer.decode_step import DecodeStep
from backends.hf_bettertransformer.slot_cache import SlotCache
from backends.runner.transformers_runner import TransformersRunner, attention_implementation

log = logging.getLogger("ladle.hf_bettertransformer")


class BetterTransformerBackend(TransformersRunner):
    """Decoder-only models on a static cache of `max_batch_size` slots, one per live sequence."""

    name = "hf_bettertransformer"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        model_name: str = "model",
        max_batch_size: int = 16,
        max_len: int = 2048,
        compile: bool = False,
    ) -> None:
        super().__init__(model, tokenizer, model_name)
        if self.is_encoder_decoder:
            raise ValueError("the slot cache serves decoder-only models")
        if max_batch_size < 1 or max_len < 2:
            raise ValueError("max_batch_size must be >= 1 and max_len >= 2")
        self.info = dataclasses.replace(self.info, context_length=min(max_len, self.info.context_length))
        use_decode_sdpa(model)
        self.cache = SlotCache.like(self._probe(), max_batch_size, self.info.context_length)
        self.step = DecodeStep(model, self.cache, self.pad_id)
        self.slot_of: dict[int, int] = {}  # seq id -> slot
        self.lengths = [0] * max_batch_size  # cached tokens per slot
        self.free = list(range(max_batch_size))  # a heap: the lowest slot is taken first
        if compile:
            self.step.compile()  # falls back to eager decoding if the compile fails
        paths = FastPaths(attention_implementation(model), cache="static", compiled_decode=self.step.compiled)
        self.info = dataclasses.replace(self.info, fast_paths=paths)

    @torch.inference_mode()
    def _probe(self) -> Any:
        """One token through the model: the cache it fills gives every layer's K/V shape and dtype."""
        from transformers import DynamicCache

        cache = DynamicCache()
        ids = torch.tensor([[self.pad_id]], device=self.device)  # [1, 1]
        mask = torch.ones_like(ids)
        self.model(input_ids=ids, attention_mask=mask, cache=cache, use_cache=True, logits_to_keep=1)
        return cache

    # -- the contract ---------------------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self, seqs: Sequence[Seq]) -> torch.Tensor:
        """Run new prompts as one left-padded batch, then move each row's K/V into its own slot."""
        from transformers import DynamicCache

        if not seqs:
            return torch.empty((0, self.info.vocab_size), device=self.device)
        longest = max(len(s.token_ids) for s in seqs)
        if longest >= self.cache.max_len:
            raise ContextLengthError(
                f"a prompt of {longest} tokens does not fit the cache of {self.cache.max_len} columns",
                param="prompt",
            )
        slots = self._take([s.seq_id for s in seqs])
        try:
            ids, mask, pad = self._left_padded([list(s.token_ids) for s in seqs])  # [N, S] each
            cache = DynamicCache()
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            for row, slot in enumerate(slots):
                self.lengths[slot] = self.cache.store(cache, row, pad[row], slot)
        except BaseException:
            self._give_back([s.seq_id for s in seqs])
            raise
        logits: torch.Tensor = out.logits[:, -1, :]  # [N, V]
        return logits

    @torch.inference_mode()
    def decode(self, seqs: Sequence[Seq]) -> torch.Tensor:
        """Feed each sequence's last token at its own position, in one forward over the slots."""
        if not seqs:
            return torch.empty((0, self.info.vocab_size), device=self.device)
        slots = [self._slot(s) for s in seqs]
        rows = self.cache.slots if self.step.compiled else max(slots) + 1
        tokens = [self.pad_id] * rows
        for s, slot in zip(seqs, slots, strict=True):
            tokens[slot] = s.token_ids[-1]
        # Rows that take no token this step (free slots, sequences that just joined) still
        # write somewhere: at their next free column, which their next step overwrites anyway.
        last = self.cache.max_len - 1
        positions = [min(self.lengths[r], last) for r in range(rows)]
        width = self.step.width_for(max(positions) + 1)
        logits = self.step.run(positions, tokens, width)  # [rows, V]
        for slot in slots:
            self.lengths[slot] += 1
        return logits[torch.tensor(slots, device=logits.device)]  # [len(seqs), V]

    def fork(self, parent: Seq, children: Sequence[Seq]) -> None:
        """Copy the parent's slot into a fresh slot for each child."""
        if not children:
            return
        source = self._slot(parent, fed=False)
        targets = self._take([c.seq_id for c in children])
        self.cache.copy_slot(source, targets, self.lengths[source])
        for slot in targets:
            self.lengths[slot] = self.lengths[source]

    def release(self, seqs: Sequence[Seq]) -> None:
        """Free the slots (and staging caches) of these sequences; their columns are simply overwritten later."""
        self._give_back([s.seq_id for s in seqs])
        for s in seqs:
            self.staged.pop(s.seq_id, None)

    @torch.inference_mode()
    def commit(self, seq: Seq) -> None:
        """Copy a fully prefilled staged sequence into a free slot."""
        staged = self.staged.pop(seq.seq_id)
        if staged.length >= self.cache.max_len:
            raise ContextLengthError(
                f"a prompt of {staged.length} tokens does not fit the cache of {self.cache.max_len} columns",
                param="prompt",
            )
        (slot,) = self._take([seq.seq_id])
        self.lengths[slot] = self.cache.store(staged.cache, 0, 0, slot)

    def export(self, seq: Seq, start: int, end: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Copies of the KV of positions start..end-1 of a sequence in a slot or being staged."""
        slot = self.slot_of.get(seq.seq_id)
        if slot is None:
            return super().export(seq, start, end)
        return [
            (layer.keys[slot, :, start:end].clone(), layer.values[slot, :, start:end].clone())
            for layer in self.cache.slot_layers
            if layer.keys is not None and layer.values is not None
        ]

    def cached_tokens(self) -> int:
        """Columns written in busy slots, plus staged positions."""
        busy = sum(self.lengths[slot] for slot in self.slot_of.values())
        return busy + sum(s.length for s in self.staged.values())

    def warm_up(self) -> None:
        """Run every compiled decode shape once more (on the calling thread), leaving live rows intact."""
        last = self.cache.max_len - 1
        self.step.warm_up([min(length, last) for length in self.lengths])

    # -- slots ----------------------------------------------------------------------------------

    def _take(self, seq_ids: Sequence[int]) -> list[int]:
        taken = [sid for sid in seq_ids if sid in self.slot_of]
        if taken:
            raise RuntimeError(f"sequence {taken[0]} already holds a cache slot")
        if len(seq_ids) > len(self.free):
            raise RuntimeError(
                f"hf_bettertransformer has {self.cache.slots} cache slots and {len(self.free)} free, "
                f"but {len(seq_ids)} more sequences were asked for: keep the engine's max_batch_size "
                f"at or below the backend's"
            )
        slots = [heapq.heappop(self.free) for _ in seq_ids]
        self.slot_of.update(zip(seq_ids, slots, strict=True))
        return slots

    def _give_back(self, seq_ids: Sequence[int]) -> None:
        for sid in seq_ids:
            slot = self.slot_of.pop(sid, None)
            if slot is not None:
                self.lengths[slot] = 0
                heapq.heappush(self.free, slot)

    def _slot(self, seq: Seq, fed: bool = True) -> int:
        """The sequence's slot, checking its cache holds every token but the one being fed."""
        slot = self.slot_of.get(seq.seq_id)
        if slot is None:
            raise RuntimeError(f"sequence {seq.seq_id} has no cache slot: prefill it first")
        expected = len(seq.token_ids) - (1 if fed else 0)
        if self.lengths[slot] != expected:
            raise RuntimeError(
                f"sequence {seq.seq_id} has {len(seq.token_ids)} tokens but its slot caches "
                f"{self.lengths[slot]}: feed one new token per decode"
            )
        if fed and self.lengths[slot] >= self.cache.max_len:
            raise ContextLengthError(f"sequence {seq.seq_id} filled its {self.cache.max_len} cache columns")
        return slot
