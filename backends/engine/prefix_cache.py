"""Automatic prefix caching: the KV of processed tokens, kept by content in fixed blocks.

A block is BLOCK_TOKENS consecutive tokens at a block-aligned position. Its key chains the key
of the block before it with its own tokens, so one key names a whole prefix (vLLM's scheme):
two prompts share a block only if they agree on every token up to its end. The pool holds the
keys and values of each block as copies (the runners keep contiguous per-sequence caches, so a
hit is copied into the new sequence's cache rather than shared by reference), bounded in tokens,
with least-recently-used eviction. A hit touches its chain from the deepest block up, so the
root of a chain is the most recent and leaves are evicted before the prefixes they extend.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

BLOCK_TOKENS = 32

LayerKV = tuple[torch.Tensor, torch.Tensor]  # keys, values of one layer: [heads, tokens, head_dim]


@dataclass(slots=True, eq=False)
class Block:
    """One cached block: its tokens, the key of its parent block, and its KV per layer."""

    key: int
    parent: int | None
    tokens: tuple[int, ...]
    kv: list[LayerKV]

    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.kv)


@dataclass(slots=True)
class PrefixCacheStats:
    """Counters since start and what the pool holds now."""

    queried_tokens: int = 0  # prompt tokens looked up
    hit_tokens: int = 0  # of those, tokens served from the pool
    pool_tokens: int = 0
    capacity_tokens: int = 0
    pool_bytes: int = 0
    evicted_blocks: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0


def block_keys(token_ids: Sequence[int], blocks: int) -> list[tuple[int, int | None, tuple[int, ...]]]:
    """(key, parent key, tokens) of the first `blocks` full blocks of a token sequence."""
    out: list[tuple[int, int | None, tuple[int, ...]]] = []
    parent: int | None = None
    for b in range(blocks):
        tokens = tuple(token_ids[b * BLOCK_TOKENS : (b + 1) * BLOCK_TOKENS])
        key = hash((parent, tokens))
        out.append((key, parent, tokens))
        parent = key
    return out


@dataclass(slots=True)
class PrefixCache:
    """A bounded LRU pool of KV blocks, keyed by hash chains of their tokens."""

    capacity_tokens: int
    blocks: OrderedDict[int, Block] = field(default_factory=OrderedDict)
    stats: PrefixCacheStats = field(default_factory=PrefixCacheStats)

    def __post_init__(self) -> None:
        if self.capacity_tokens < BLOCK_TOKENS:
            raise ValueError(f"the prefix cache needs room for one block of {BLOCK_TOKENS} tokens")
        self.stats.capacity_tokens = self.capacity_tokens

    @property
    def max_blocks(self) -> int:
        return self.capacity_tokens // BLOCK_TOKENS

    def match(self, prompt: Sequence[int]) -> list[Block]:
        """The longest chain of cached blocks the prompt starts with, leaving one token to compute."""
        usable = (len(prompt) - 1) // BLOCK_TOKENS
        found: list[Block] = []
        for key, parent, tokens in block_keys(prompt, usable):
            block = self.blocks.get(key)
            if block is None or block.parent != parent or block.tokens != tokens:
                break  # a hash collision is a miss, never someone else's KV
            found.append(block)
        self._touch(found)
        self.stats.queried_tokens += len(prompt)
        self.stats.hit_tokens += len(found) * BLOCK_TOKENS
        return found

    def insert(
        self, token_ids: Sequence[int], computed: int, export: Callable[[int, int], list[LayerKV]]
    ) -> int:
        """Keep the full blocks of the first `computed` tokens; `export(start, end)` copies their KV.

        Only blocks not yet held are exported. Returns how many blocks were added.
        """
        chain = block_keys(token_ids, min(computed, len(token_ids)) // BLOCK_TOKENS)
        added = 0
        held: list[Block] = []
        for b, (key, parent, tokens) in enumerate(chain):
            block = self.blocks.get(key)
            if block is None or block.parent != parent or block.tokens != tokens:
                if len(held) + 1 > self.max_blocks:
                    break  # a chain longer than the whole pool keeps its head only
                self._make_room(protect={h.key for h in held})
                block = Block(key, parent, tokens, export(b * BLOCK_TOKENS, (b + 1) * BLOCK_TOKENS))
                stale = self.blocks.pop(key, None)  # a colliding key: its old block goes
                if stale is not None:
                    self.stats.pool_bytes -= stale.nbytes()
                self.blocks[key] = block
                self.stats.pool_bytes += block.nbytes()
                added += 1
            held.append(block)
        self._touch(held)
        self.stats.pool_tokens = len(self.blocks) * BLOCK_TOKENS
        return added

    def clear(self) -> None:
        """Drop every block."""
        self.blocks.clear()
        self.stats.pool_tokens = self.stats.pool_bytes = 0

    def _touch(self, chain: list[Block]) -> None:
        for block in reversed(chain):  # deepest first: the root ends up the most recent
            self.blocks.move_to_end(block.key)

    def _make_room(self, protect: set[int]) -> None:
        while len(self.blocks) >= self.max_blocks:
            victim = next((k for k in self.blocks if k not in protect), None)
            if victim is None:
                return
            gone = self.blocks.pop(victim)
            self.stats.pool_bytes -= gone.nbytes()
            self.stats.evicted_blocks += 1
        self.stats.pool_tokens = len(self.blocks) * BLOCK_TOKENS


def concat_blocks(blocks: Sequence[Block]) -> list[LayerKV]:
    """The KV of a chain of blocks as one tensor pair per layer: [heads, tokens, head_dim]."""
    if not blocks:
        return []
    layers = len(blocks[0].kv)
    return [
        (
            torch.cat([b.kv[i][0] for b in blocks], dim=1),
            torch.cat([b.kv[i][1] for b in blocks], dim=1),
        )
        for i in range(layers)
    ]
