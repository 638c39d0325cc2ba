"""Automatic prefix caching: the KV of processed tokens, kept by content in fixed blocks.

A block is BLOCK_TOKENS consecutive tokens at a block-aligned position. Its key chains the key
of the block before it with its own tokens, so one key names a whole prefix (vLLM's scheme):
two prompts share a block only if they agree on every token up to its end. A sequence's last,
partial block is kept too (its key hashes its fewer tokens), and where a prompt's full blocks
stop matching, the leading tokens it shares with any child of its last matched block are used:
the KV of a position depends only on the tokens up to it, so the conversation's next turn
computes only its new tokens, not the tail of the previous turn again. The pool holds the
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


@dataclass(slots=True)
class PrefixHit:
    """The cached prefix of a prompt: whole blocks, then the leading tokens of one more block."""

    blocks: list[Block] = field(default_factory=list)
    partial: Block | None = None
    partial_tokens: int = 0  # of partial's tokens, those the prompt shares

    @property
    def tokens(self) -> int:
        return len(self.blocks) * BLOCK_TOKENS + self.partial_tokens

    def kv(self) -> list[LayerKV]:
        """The hit's KV as one tensor pair per layer: [heads, tokens, head_dim]."""
        if self.partial is None:
            return concat_blocks(self.blocks)
        n = self.partial_tokens
        return concat_blocks(self.blocks, [(k[:, :n], v[:, :n]) for k, v in self.partial.kv])


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
    children: dict[int | None, dict[int, None]] = field(default_factory=dict)  # parent key -> child keys
    stats: PrefixCacheStats = field(default_factory=PrefixCacheStats)

    def __post_init__(self) -> None:
        if self.capacity_tokens < BLOCK_TOKENS:
            raise ValueError(f"the prefix cache needs room for one block of {BLOCK_TOKENS} tokens")
        self.stats.capacity_tokens = self.capacity_tokens

    @property
    def max_blocks(self) -> int:
        return self.capacity_tokens // BLOCK_TOKENS

    def match(self, prompt: Sequence[int]) -> PrefixHit:
        """The longest cached prefix of the prompt, leaving at least one token to compute; none
        when it is shorter than one block."""
        usable = len(prompt) - 1
        hit = PrefixHit()
        parent: int | None = None
        for key, parent_key, tokens in block_keys(prompt, usable // BLOCK_TOKENS):
            block = self.blocks.get(key)
            if block is None or block.parent != parent_key or block.tokens != tokens:
                break  # a hash collision is a miss, never someone else's KV
            hit.blocks.append(block)
            parent = key
        start = hit.tokens
        hit.partial, hit.partial_tokens = self._longest_child(parent, prompt[start:usable])
        self.stats.queried_tokens += len(prompt)
        if hit.tokens < BLOCK_TOKENS:
            # Not worth using: a prompt that starts from cached KV is prefilled alone, so short
            # prompts that merely begin alike would each cost a forward instead of sharing one
            # (16 of them: 16 forwards instead of 1). Nor counted, nor made more recent.
            return PrefixHit()
        self._touch(hit.blocks + ([hit.partial] if hit.partial is not None else []))
        self.stats.hit_tokens += hit.tokens
        return hit

    def _longest_child(self, parent: int | None, rest: Sequence[int]) -> tuple[Block | None, int]:
        """The child block of `parent` sharing the most leading tokens with `rest`, and how many."""
        best: Block | None = None
        shared = 0
        for key in self.children.get(parent, ()):
            block = self.blocks[key]
            n = common_prefix(block.tokens, rest)
            if n > shared:
                best, shared = block, n
        return best, shared

    def insert(
        self, token_ids: Sequence[int], computed: int, export: Callable[[int, int], list[LayerKV]]
    ) -> int:
        """Keep the blocks of the first `computed` tokens (the last one partial); `export(start, end)`
        copies their KV.

        Only blocks not yet held are exported. Returns how many blocks were added.
        """
        computed = min(computed, len(token_ids))
        chain = block_keys(token_ids, computed // BLOCK_TOKENS)
        tail = tuple(token_ids[len(chain) * BLOCK_TOKENS : computed])
        if tail:
            parent = chain[-1][0] if chain else None
            chain.append((hash((parent, tail)), parent, tail))
        added = 0
        held: list[Block] = []
        for b, (key, parent, tokens) in enumerate(chain):
            block = self.blocks.get(key)
            if block is None or block.parent != parent or block.tokens != tokens:
                if len(held) + 1 > self.max_blocks:
                    break  # a chain longer than the whole pool keeps its head only
                self._make_room(protect={h.key for h in held})
                start = b * BLOCK_TOKENS
                block = Block(key, parent, tokens, export(start, start + len(tokens)))
                self._drop(key)  # a colliding key: its old block goes
                self._add(block)
                added += 1
            held.append(block)
        self._touch(held)
        return added

    def clear(self) -> None:
        """Drop every block."""
        self.blocks.clear()
        self.children.clear()
        self.stats.pool_tokens = self.stats.pool_bytes = 0

    def _touch(self, chain: list[Block]) -> None:
        for block in reversed(chain):  # deepest first: the root ends up the most recent
            self.blocks.move_to_end(block.key)

    def _add(self, block: Block) -> None:
        self.blocks[block.key] = block
        self.children.setdefault(block.parent, {})[block.key] = None
        self.stats.pool_bytes += block.nbytes()
        self.stats.pool_tokens += len(block.tokens)

    def _drop(self, key: int) -> Block | None:
        block = self.blocks.pop(key, None)
        if block is not None:
            siblings = self.children[block.parent]
            del siblings[key]
            if not siblings:
                del self.children[block.parent]
            self.stats.pool_bytes -= block.nbytes()
            self.stats.pool_tokens -= len(block.tokens)
        return block

    def _make_room(self, protect: set[int]) -> None:
        while len(self.blocks) >= self.max_blocks:
            victim = next((k for k in self.blocks if k not in protect), None)
            if victim is None:
                return
            self._drop(victim)
            self.stats.evicted_blocks += 1


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two sequences share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def concat_blocks(blocks: Sequence[Block], extra: Sequence[LayerKV] = ()) -> list[LayerKV]:
    """The KV of a chain of blocks (then `extra`, per layer) as one tensor pair per layer: [heads, tokens, head_dim]."""
    if not blocks and not extra:
        return []
    layers = len(blocks[0].kv) if blocks else len(extra)
    return [
        (
            torch.cat([b.kv[i][0] for b in blocks] + [e[0] for e in extra[i : i + 1]], dim=1),
            torch.cat([b.kv[i][1] for b in blocks] + [e[1] for e in extra[i : i + 1]], dim=1),
        )
        for i in range(layers)
    ]
