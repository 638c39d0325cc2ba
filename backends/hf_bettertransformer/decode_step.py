"""The decode forward over the slot cache: one token per row, eager or compiled with torch.compile.

Compiled, the step always runs every slot (static shapes: one graph per attended width, CUDA
graphs on GPU) and attends one of a few fixed widths (256, 1024, 4096, ...), each compiled at
start-up so no request pays for it. Eager, it runs only the slots up to the highest busy one
and attends exactly as many columns as the longest row needs.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from backends.errors import one_line
from backends.hf_bettertransformer.slot_cache import SlotCache

log = logging.getLogger("ladle.hf_bettertransformer")

# Compiled widths start here and grow 4x: each is one compile at start-up (about 45 s each for
# SmolLM2-135M on a 2-core CPU), while attending up to 4x the needed columns costs little.
MIN_COMPILED_WIDTH = 256
WIDTH_GROWTH = 4


def compile_default(device: torch.device) -> bool:
    """Compile on GPU (CUDA graphs pay off there); on CPU the measured gain did not pay for start-up."""
    return device.type == "cuda"


def resolve_compile(option: bool | None, device: torch.device) -> bool:
    """The `compile` option (COMPILE), else the per-device default."""
    return compile_default(device) if option is None else option


def compiled_widths(max_len: int) -> list[int]:
    """The attended widths a compiled step is built for: 256, 1024, 4096, ... up to max_len."""
    widths: list[int] = []
    width = MIN_COMPILED_WIDTH
    while width < max_len:
        widths.append(width)
        width *= WIDTH_GROWTH
    return [*widths, max_len]


class DecodeStep:
    """Feeds one token to each slot at the slot's own position; returns next-token logits."""

    def __init__(self, model: Any, cache: SlotCache, pad_id: int) -> None:
        self.model = model
        self.cache = cache
        self.pad_id = pad_id
        device = cache.slot_layers[0].device
        slots = cache.slots
        # Static input buffers: refilled in place each step, so a compiled graph reads fixed addresses.
        self.input_ids = torch.full((slots, 1), pad_id, dtype=torch.long, device=device)  # [S, 1]
        self.positions = torch.zeros(slots, dtype=torch.long, device=device)  # [S]
        self.columns = torch.arange(cache.max_len, device=device)  # [L]
        torch._dynamo.mark_static_address(self.input_ids)
        torch._dynamo.mark_static_address(self.positions)
        self.compiled = False
        self.widths = [cache.max_len]
        self._forward: Any = self.forward

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The model over rows of the cache: [B, 1] tokens at [B] positions -> [B, V] logits."""
        width = self.cache.view.width
        mask = (self.columns[:width][None, :] <= positions[:, None]).long()  # [B, W]
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions[:, None],
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits: torch.Tensor = out.logits[:, -1, :]  # [B, V]
        return logits

    def compile(self) -> bool:
        """Compile the step and build every width now; on failure log one line and stay eager."""
        mode = "reduce-overhead" if self.input_ids.device.type == "cuda" else None
        self.widths = compiled_widths(self.cache.max_len)
        # One graph per width, and a process (a test run, say) may hold several backends.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        self._forward = torch.compile(self.forward, mode=mode, dynamic=False)
        self.compiled = True
        started = time.perf_counter()
        try:
            self.warm_up()  # at load, no slot is busy
        except Exception as exc:
            log.warning(
                "hf_bettertransformer: torch.compile failed, decoding eagerly: %s",
                one_line(exc, with_type=True),
            )
            self._forward, self.compiled, self.widths = self.forward, False, [self.cache.max_len]
            return False
        log.info(
            "hf_bettertransformer: compiled the decode step for widths %s in %.1f s",
            self.widths,
            time.perf_counter() - started,
        )
        return True

    def warm_up(self, positions: list[int] | None = None) -> None:
        """Run every compiled width on dummy tokens, so no request pays for a compile or a capture.

        Row i writes at positions[i] (default 0): give busy slots their length, the column their
        next step overwrites anyway. CUDA graphs are captured on a graph's second run and kept
        per thread, hence a second warm-up on the thread that decodes, if another one loaded.
        """
        if not self.compiled:
            return
        slots = self.cache.slots
        positions = positions or [0] * slots
        runs = 2 if self.input_ids.device.type == "cuda" else 1
        for width in self.widths:
            for _ in range(runs):
                self.run(positions, [self.pad_id] * slots, width)

    def width_for(self, needed: int) -> int:
        """The attended width for rows whose furthest write column is needed - 1."""
        if not self.compiled:
            return needed
        return next(w for w in self.widths if w >= needed)

    @torch.inference_mode()
    def run(self, positions: list[int], tokens: list[int], width: int) -> torch.Tensor:
        """Row i takes tokens[i] at column positions[i], attending `width` columns; returns [rows, V]."""
        rows = len(positions)
        if self.compiled and rows != self.cache.slots:
            raise ValueError(f"a compiled step runs all {self.cache.slots} slots, got {rows} rows")
        self.input_ids[:rows, 0].copy_(torch.tensor(tokens))
        self.positions[:rows].copy_(torch.tensor(positions))
        # Compiled, pass the buffers themselves: their addresses are marked static.
        input_ids = self.input_ids if self.compiled else self.input_ids[:rows]  # [rows, 1]
        where = self.positions if self.compiled else self.positions[:rows]  # [rows]
        self.cache.set_view(where, width)
        logits: torch.Tensor = self._forward(input_ids, where)  # [rows, V]
        # CUDA graphs reuse their output memory on the next replay: hand out a copy.
        return logits.clone() if self.compiled else logits
