"""The sampler shared by every backend: next-token logits of a batch in, one token per row out.

One call per engine step covers the whole batch; every row carries its own parameters.
Each transform runs only on the rows that ask for it, and is skipped outright when no
row does, so a batch of plain greedy rows costs one argmax. The order is:

1. float32 (conversions are exact, so greedy rows that need nothing else argmax the raw
   dtype); columns past `vocab_size` (padding of the embedding matrix) are dropped, so
   those ids are never chosen and take no part in any logprob;
2. logit_bias (added to the listed ids);
3. repetition_penalty, with Transformers' semantics over prompt + generated tokens, each
   token once: a score < 0 is multiplied by the penalty, any other divided by it;
4. presence_penalty and frequency_penalty, with OpenAI's semantics over the generated
   tokens only: logit[j] -= frequency_penalty * count[j] + presence_penalty * (count[j] > 0);
5. min_tokens: until a row has generated min_tokens tokens, every eos id and every
   stop_token_ids id of the row gets -inf (ignore_eos does not change this);
6. grammar: rows under a constraint (structured output) keep only the tokens their grammar
   allows next, every other token -inf (the `mask` callable, backends/grammar/mask.py);
   rows without one pay nothing;
7. logprobs, as log_softmax of the logits after steps 2-6. They are therefore the
   model's distribution adjusted by the request's biases and penalties, NOT the
   truncated sampling distribution (no temperature, top_k, top_p or min_p): a sampled
   token's logprob says how likely the adjusted model found it;
8. greedy rows (temperature 0, or below 1e-5, which would overflow): argmax (ties go to
   the lowest id);
9. sampled rows: logits / temperature, then top_k, top_p and min_p (Transformers'
   semantics and order; the token that crosses top_p is kept, and so is always the most
   likely token) from one descending sort of the rows that use any of them; then one
   uniform number per row from the row's own generator picks the token by inverse CDF,
   so a row's draw depends only on its own logits and generator, never on its neighbours.

Steps 2-6 are the logits processors (logits_processors.py), step 9 the draw (draw.py); this
module runs the pipeline and fills the logprobs.

The chosen token's logprob is computed only for rows that want it (`wants_logprobs`: logprobs
asked for, or best_of > n to rank candidates); the other rows get 0.0, so that summing them
into a cumulative logprob stays harmless, and a greedy batch stays one argmax.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from backends.engine.draw import sample
from backends.engine.logits_processors import adjust
from backends.engine.params import SamplingParams
from backends.engine.rows import SamplingRow, index_tensor
from backends.grammar.mask import Mask

__all__ = ["Mask", "SampleResult", "Sampler", "SamplingRow", "make_generator", "wants_logprobs"]

_NEG_INF = float("-inf")


@dataclass(slots=True)
class SampleResult:
    """One step's choice for every row of the batch."""

    token_ids: list[int]  # chosen token per row
    logprobs: list[float]  # chosen token's logprob per row (0.0 where not wanted)
    top_logprobs: list[list[tuple[int, float]]]  # per row: top-k (id, logprob), k = params.logprobs


def make_generator(seed: int | None, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator seeded with `seed` (any int, mapped into [0, 2**64)), else from the OS."""
    generator = torch.Generator(device=device)
    generator.manual_seed(secrets.randbits(64) if seed is None else seed % 2**64)
    return generator


def wants_logprobs(params: SamplingParams) -> bool:
    """Whether the chosen token's logprob is needed: asked for, or to rank best_of candidates."""
    return params.logprobs is not None or params.num_sequences > params.n


class Sampler:
    """Picks the next token of every row of a batch; see the module docstring."""

    def __init__(self, eos_token_ids: Iterable[int], vocab_size: int) -> None:
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        self.eos_token_ids: set[int] = {int(t) for t in eos_token_ids}
        self.vocab_size = vocab_size

    def __call__(
        self, logits: torch.Tensor, rows: Sequence[SamplingRow], mask: Mask | None = None
    ) -> SampleResult:
        if logits.dim() != 2 or logits.shape[0] != len(rows):
            raise ValueError(f"logits must be [{len(rows)}, vocab], got {list(logits.shape)}")
        if not rows:
            return SampleResult([], [], [])
        scores = self._adjust(logits[:, : self.vocab_size], rows, mask)  # [B, V]
        lp_rows = [i for i, r in enumerate(rows) if wants_logprobs(r.params)]
        logp = None
        if lp_rows:  # [L, V]
            logp = torch.log_softmax(_take(scores, lp_rows), dim=-1, dtype=torch.float32)
        chosen = self._choose(scores, rows)  # [B]
        token_ids: list[int] = chosen.tolist()
        logprobs = [0.0] * len(rows)
        top: list[list[tuple[int, float]]] = [[] for _ in rows]
        if logp is not None:
            _fill_logprobs(logp, lp_rows, chosen, rows, logprobs, top)
        return SampleResult(token_ids, logprobs, top)

    def _adjust(
        self, logits: torch.Tensor, rows: Sequence[SamplingRow], mask: Mask | None = None
    ) -> torch.Tensor:
        """Steps 2-6 (logits_processors.py) on a float32 copy; `logits` itself when no row needs any."""
        return adjust(logits, rows, self.eos_token_ids, mask)

    def _choose(self, scores: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
        """Greedy rows argmax, sampled rows draw; token id per row [B]."""
        greedy = [i for i, r in enumerate(rows) if r.params.greedy]
        if len(greedy) == len(rows):
            return scores.argmax(dim=-1)
        sampled = [i for i, r in enumerate(rows) if not r.params.greedy]
        if not greedy:
            return sample(scores, rows)
        device = scores.device
        chosen = torch.empty(len(rows), dtype=torch.long, device=device)  # [B]
        gi, si = index_tensor(greedy, device), index_tensor(sampled, device)
        chosen[gi] = scores[gi].argmax(dim=-1)
        chosen[si] = sample(scores[si], [rows[i] for i in sampled])
        return chosen


def _take(x: torch.Tensor, idx: list[int]) -> torch.Tensor:
    return x if len(idx) == x.shape[0] else x[index_tensor(idx, x.device)]


def _fill_logprobs(
    logp: torch.Tensor,
    lp_rows: list[int],
    chosen: torch.Tensor,
    rows: Sequence[SamplingRow],
    logprobs: list[float],
    top: list[list[tuple[int, float]]],
) -> None:
    """Write the chosen token's logprob and the top-k alternatives of the rows in `lp_rows`."""
    picked = logp.gather(1, _take(chosen, lp_rows).unsqueeze(1)).squeeze(1)  # [L]
    for i, value in zip(lp_rows, picked.tolist(), strict=True):
        logprobs[i] = value
    ks = [min(rows[i].params.logprobs or 0, logp.shape[1]) for i in lp_rows]
    k_max = max(ks)
    if k_max == 0:
        return
    values, ids = torch.topk(logp, k_max, dim=-1)  # [L, k_max] each, sorted descending
    for i, k, vals, toks in zip(lp_rows, ks, values.tolist(), ids.tolist(), strict=True):
        # A token masked to -inf (grammar, min_tokens) could not have been sampled: not listed.
        top[i] = [(t, v) for t, v in zip(toks[:k], vals[:k], strict=True) if v != _NEG_INF]
