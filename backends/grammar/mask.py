"""The sampler's grammar stage: tokens a row's grammar does not allow next get -inf.

Only rows with a matcher pay: their bitmasks are computed together ([G, ceil(V'/32)] int32,
V' the grammar tokenizer's vocabulary), unpacked to [G, V] booleans and applied in place.
The three vocabulary sizes need not agree: ids the tokenizer has but the logits lack are
never sampled anyway; logits columns the tokenizer lacks (embedding padding) are disallowed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from backends.grammar.llg import GrammarMatcher, GrammarTokenizer

# Bit j of an int32 word, the sign bit included: token 32w + j is bit j of word w.
_BITS = torch.tensor([1 << j for j in range(31)] + [-(2**31)], dtype=torch.int32)  # [32]

Mask = Callable[[torch.Tensor], None]  # masks a float32 [B, V] in place (the grammar step)


def unpack(bitmask: torch.Tensor, width: int) -> torch.Tensor:
    """[G, W] int32 bitmask -> [G, width] bool: True where the token may come next."""
    allowed = (bitmask.unsqueeze(-1) & _BITS).ne(0).reshape(bitmask.shape[0], -1)  # [G, 32W]
    have = allowed.shape[1]
    if have >= width:
        return allowed[:, :width]
    return torch.nn.functional.pad(allowed, (0, width - have), value=False)  # [G, width]


def apply_grammar(
    scores: torch.Tensor,
    matchers: Sequence[GrammarMatcher | None],
    tokenizer: GrammarTokenizer,
) -> None:
    """Mask `scores` [B, V] in place: rows with a matcher keep only what their grammar allows."""
    rows = [i for i, m in enumerate(matchers) if m is not None]
    if not rows:
        return
    live = [m for m in matchers if m is not None]
    allowed = unpack(tokenizer.fill_bitmasks(live), scores.shape[1])  # [G, V]
    stuck = ~allowed.any(dim=1)  # [G]: nothing the model can emit fits; end the row (no NaN)
    if bool(stuck.any()):
        eos = [t for t in tokenizer.eos_token_ids if t < allowed.shape[1]]
        allowed[stuck.nonzero().flatten().unsqueeze(1), torch.tensor(eos, dtype=torch.long)] = True
    allowed = allowed.to(scores.device)
    if len(rows) == scores.shape[0]:
        scores.masked_fill_(~allowed, float("-inf"))
        return
    index = torch.tensor(rows, dtype=torch.long, device=scores.device)  # [G]
    scores[index] = scores[index].masked_fill(~allowed, float("-inf"))


class _Constrained(Protocol):
    @property
    def matcher(self) -> GrammarMatcher | None: ...


def grammar_mask(rows: Sequence[_Constrained], tokenizer: Callable[[], GrammarTokenizer]) -> Mask | None:
    """The sampler's mask stage for a batch, or None when no row is constrained (the common case)."""
    matchers = [r.matcher for r in rows]
    if all(m is None for m in matchers):
        return None
    return functools.partial(apply_grammar, matchers=matchers, tokenizer=tokenizer())
