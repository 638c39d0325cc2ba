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

The chosen token's logprob is computed only for rows that want it (`wants_logprobs`: logprobs
asked for, or best_of > n to rank candidates); the other rows get 0.0, so that summing them
into a cumulative logprob stays harmless, and a greedy batch stays one argmax.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from backends.engine.params import SamplingParams

__all__ = ["Mask", "SampleResult", "Sampler", "SamplingRow", "make_generator", "wants_logprobs"]

_NEG_INF = float("-inf")
_CANDIDATES = 1024  # tokens kept before the sort that top_p / min_p need

Mask = Callable[[torch.Tensor], None]  # masks a float32 [B, V] in place (step 6)


class SamplingRow(Protocol):
    """What the sampler reads of one sequence in the batch."""

    @property
    def params(self) -> SamplingParams: ...

    @property
    def prompt_ids(self) -> list[int]: ...  # for repetition_penalty

    @property
    def output_ids(self) -> list[int]: ...  # generated so far

    @property
    def generator(self) -> torch.Generator: ...  # the request's own RNG


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


def _truncates(params: SamplingParams) -> bool:
    return params.top_k > 0 or params.top_p < 1.0 or params.min_p > 0.0


def _index(idx: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(idx, dtype=torch.long, device=device)  # [R]


def _column(values: list[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device).unsqueeze(1)  # [R, 1]


def _padded(seqs: list[list[int]], width: int, device: torch.device) -> torch.Tensor:
    """Token ids as [R, maxlen]; padding and ids outside [0, width) become `width`."""
    ids = torch.nn.utils.rnn.pad_sequence(
        [torch.tensor(s, dtype=torch.long) for s in seqs], batch_first=True, padding_value=width
    ).to(device)  # [R, L]
    return ids.masked_fill_((ids < 0) | (ids > width), width)


def _logit_bias(scores: torch.Tensor, rows: Sequence[SamplingRow]) -> None:
    vocab = scores.shape[1]
    row_ix: list[int] = []
    col_ix: list[int] = []
    bias: list[float] = []
    for i, row in enumerate(rows):
        for token, value in row.params.logit_bias.items():
            if 0 <= token < vocab:
                row_ix.append(i)
                col_ix.append(token)
                bias.append(float(value))
    if bias:
        device = scores.device
        values = torch.tensor(bias, dtype=torch.float32, device=device)  # [N]
        scores.index_put_((_index(row_ix, device), _index(col_ix, device)), values, accumulate=True)


def _repetition_penalty(scores: torch.Tensor, rows: Sequence[SamplingRow], idx: list[int]) -> None:
    device, vocab = scores.device, scores.shape[1]
    ids = _padded([rows[i].prompt_ids + rows[i].output_ids for i in idx], vocab, device)  # [R, L]
    if ids.shape[1] == 0:
        return
    seen = torch.zeros(len(idx), vocab + 1, dtype=torch.bool, device=device)  # [R, V + 1]
    seen = seen.scatter_(1, ids, True)[:, :vocab]  # [R, V]
    penalty = _column([rows[i].params.repetition_penalty for i in idx], device)  # [R, 1]
    index = _index(idx, device)
    sub = scores[index]  # [R, V]
    penalized = torch.where(sub < 0, sub * penalty, sub / penalty)  # [R, V]
    scores[index] = torch.where(seen, penalized, sub)


def _presence_frequency(scores: torch.Tensor, rows: Sequence[SamplingRow], idx: list[int]) -> None:
    device, vocab = scores.device, scores.shape[1]
    ids = _padded([rows[i].output_ids for i in idx], vocab, device)  # [R, L]
    counts = torch.zeros(len(idx), vocab + 1, dtype=torch.float32, device=device)  # [R, V + 1]
    counts = counts.scatter_add_(1, ids, torch.ones(ids.shape, dtype=torch.float32, device=device))
    counts = counts[:, :vocab]  # [R, V]
    frequency = _column([rows[i].params.frequency_penalty for i in idx], device)  # [R, 1]
    presence = _column([rows[i].params.presence_penalty for i in idx], device)  # [R, 1]
    index = _index(idx, device)
    scores[index] = scores[index] - (frequency * counts + presence * (counts > 0))


def _min_tokens(scores: torch.Tensor, rows: Sequence[SamplingRow], idx: list[int], eos: set[int]) -> None:
    vocab = scores.shape[1]
    row_ix: list[int] = []
    col_ix: list[int] = []
    for i in idx:
        banned = sorted(t for t in eos.union(rows[i].params.stop_token_ids) if 0 <= t < vocab)
        row_ix.extend([i] * len(banned))
        col_ix.extend(banned)
    if row_ix:
        device = scores.device
        minus_inf = torch.tensor(_NEG_INF, dtype=torch.float32, device=device)
        scores.index_put_((_index(row_ix, device), _index(col_ix, device)), minus_inf)


def _inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Position per row whose CDF interval holds u * total; never a zero-probability one."""
    vocab = probs.shape[1]
    cdf = probs.cumsum(dim=-1)  # [R, V]
    target = (u * cdf[:, -1]).unsqueeze(1)  # [R, 1]
    pos = torch.searchsorted(cdf, target, right=True).squeeze(1).clamp_(max=vocab - 1)  # [R]
    # right=True skips zero-probability tokens; only the clamp (u * total rounding up to
    # total) can land on one: move such rows to their last nonzero-probability token.
    zero = probs.gather(1, pos.unsqueeze(1)).squeeze(1) <= 0  # [R]
    if bool(zero.any()):
        positions = torch.arange(vocab, device=probs.device).expand_as(probs)  # [R, V]
        last = torch.where(probs > 0, positions, -1).amax(dim=-1)  # [R]
        pos = torch.where(zero, last, pos)
    return pos


def _truncate(x: torch.Tensor, params: list[SamplingParams]) -> tuple[torch.Tensor, torch.Tensor]:
    """top_k, then top_p, then min_p over one descending sort: (sorted logits, -inf where cut; ids).

    A full sort of a 50k vocabulary costs more than a small model's forward on a CPU, so the
    rows are first cut to their top candidates; rows whose kept set might reach past them
    are sorted in full.
    """
    vocab = x.shape[1]
    width = max(_CANDIDATES, max(p.top_k for p in params))
    if width >= vocab:
        return _truncate_sorted(x, params, *torch.sort(x, dim=-1, descending=True, stable=True))
    vals, order = torch.topk(x, width, dim=-1)  # [R, W] each, descending
    cut, order = _truncate_sorted(x, params, vals, order)
    exact = _within(x, params, vals)  # [R]
    if bool(exact.all()):
        return cut, order
    # Fall back to the full sort for rows whose cut may lie beyond the candidates.
    full = [i for i, ok in enumerate(exact.tolist()) if not ok]
    fi = _index(full, x.device)
    fvals, forder = torch.sort(x[fi], dim=-1, descending=True, stable=True)  # [F, V] each
    fcut, forder = _truncate_sorted(x[fi], [params[i] for i in full], fvals, forder)
    pad = vocab - width
    cut = torch.nn.functional.pad(cut, (0, pad), value=_NEG_INF)  # [R, V]
    order = torch.nn.functional.pad(order, (0, pad), value=0)  # [R, V]; padded ids carry no mass
    cut[fi], order[fi] = fcut, forder
    return cut, order


def _within(x: torch.Tensor, params: list[SamplingParams], vals: torch.Tensor) -> torch.Tensor:
    """Per row: does every token the row keeps lie among the candidates `vals` [R, W]?"""
    width = vals.shape[1]
    probs = torch.exp(vals - torch.logsumexp(x, dim=-1, keepdim=True))  # [R, W], over the full vocab
    ok = torch.tensor([0 < p.top_k <= width for p in params], device=x.device)  # [R]
    top_p = _column([p.top_p for p in params], x.device).squeeze(1)  # [R]
    ok |= (top_p < 1.0) & (probs.sum(dim=-1) >= top_p)
    min_p = _column([p.min_p for p in params], x.device).squeeze(1)  # [R]
    ok |= (min_p > 0.0) & (probs[:, -1] < min_p * probs[:, 0])
    return ok


def _truncate_sorted(
    x: torch.Tensor, params: list[SamplingParams], vals: torch.Tensor, order: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The cut over rows already sorted descending (`vals`, `order` [R, W]), W <= vocab."""
    device, vocab = x.device, vals.shape[1]
    pos = torch.arange(vocab, device=device).unsqueeze(0)  # [1, V]
    tail = pos > 0  # [1, V]: the most likely token is always kept
    if any(p.top_k > 0 for p in params):
        k = torch.tensor([p.top_k if p.top_k > 0 else vocab for p in params], device=device)  # [R]
        vals = vals.masked_fill((pos >= k.unsqueeze(1)) & tail, _NEG_INF)
    if vocab == x.shape[1]:
        probs = torch.softmax(vals, dim=-1)  # [R, V], renormalized over what top_k kept
    else:  # candidates only: rows without top_k normalise over their whole vocabulary
        has_k = torch.tensor([p.top_k > 0 for p in params], device=device).unsqueeze(1)  # [R, 1]
        norm = torch.where(
            has_k, torch.logsumexp(vals, dim=-1, keepdim=True), torch.logsumexp(x, dim=-1, keepdim=True)
        )  # [R, 1]
        probs = torch.exp(vals - norm)  # [R, W]
    drop = torch.zeros_like(vals, dtype=torch.bool)  # [R, V]
    if any(p.top_p < 1.0 for p in params):
        top_p = _column([p.top_p if p.top_p < 1.0 else math.inf for p in params], device)  # [R, 1]
        drop |= probs.cumsum(dim=-1) - probs >= top_p  # the mass before the token already reaches top_p
    if any(p.min_p > 0.0 for p in params):
        min_p = _column([p.min_p for p in params], device)  # [R, 1]
        drop |= probs < min_p * probs[:, :1]
    return vals.masked_fill(drop & tail, _NEG_INF), order


def _truncated_draw(x: torch.Tensor, params: list[SamplingParams], u: torch.Tensor) -> torch.Tensor:
    """Token id per row of `x` [R, V], drawn from its truncated distribution."""
    vals, order = _truncate(x, params)  # [R, V] each
    chosen = _inverse_cdf(torch.softmax(vals, dim=-1), u)  # [R] positions in sorted order
    return order.gather(1, chosen.unsqueeze(1)).squeeze(1)  # [R]


def _uniforms(rows: Sequence[SamplingRow], device: torch.device) -> torch.Tensor:
    """One U[0, 1) number per row, each from the row's own generator."""
    draws = [torch.rand(1, generator=r.generator, device=r.generator.device).to(device) for r in rows]
    return torch.cat(draws)  # [R]


def _sample(scores: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    """Token id per row of `scores` [R, V] (all rows sampled, temperature > 0)."""
    device = scores.device
    x = scores.float() / _column([r.params.temperature for r in rows], device)  # [R, V]
    u = _uniforms(rows, device)  # [R]
    trunc = [j for j, r in enumerate(rows) if _truncates(r.params)]
    if len(trunc) == len(rows):
        return _truncated_draw(x, [r.params for r in rows], u)
    plain = [j for j, r in enumerate(rows) if not _truncates(r.params)]
    if not trunc:
        return _inverse_cdf(torch.softmax(x, dim=-1), u)
    out = torch.empty(len(rows), dtype=torch.long, device=device)  # [R]
    ti, pi = _index(trunc, device), _index(plain, device)
    out[ti] = _truncated_draw(x[ti], [rows[j].params for j in trunc], u[ti])
    out[pi] = _inverse_cdf(torch.softmax(x[pi], dim=-1), u[pi])
    return out


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
        """Steps 2-6 on a float32 copy; `logits` itself when no row needs any of them."""
        bias = any(r.params.logit_bias for r in rows)
        rep = [i for i, r in enumerate(rows) if r.params.repetition_penalty != 1.0]
        pen = [
            i
            for i, r in enumerate(rows)
            if r.output_ids and (r.params.presence_penalty != 0.0 or r.params.frequency_penalty != 0.0)
        ]
        short = [i for i, r in enumerate(rows) if len(r.output_ids) < r.params.min_tokens]
        if not (bias or rep or pen or short or mask):
            return logits
        scores = logits.to(torch.float32, copy=True)  # [B, V]
        if bias:
            _logit_bias(scores, rows)
        if rep:
            _repetition_penalty(scores, rows, rep)
        if pen:
            _presence_frequency(scores, rows, pen)
        if short:
            _min_tokens(scores, rows, short, self.eos_token_ids)
        if mask is not None:
            mask(scores)
        return scores

    def _choose(self, scores: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
        """Greedy rows argmax, sampled rows draw; token id per row [B]."""
        greedy = [i for i, r in enumerate(rows) if r.params.greedy]
        if len(greedy) == len(rows):
            return scores.argmax(dim=-1)
        sampled = [i for i, r in enumerate(rows) if not r.params.greedy]
        if not greedy:
            return _sample(scores, rows)
        device = scores.device
        chosen = torch.empty(len(rows), dtype=torch.long, device=device)  # [B]
        gi, si = _index(greedy, device), _index(sampled, device)
        chosen[gi] = scores[gi].argmax(dim=-1)
        chosen[si] = _sample(scores[si], [rows[i] for i in sampled])
        return chosen


def _take(x: torch.Tensor, idx: list[int]) -> torch.Tensor:
    return x if len(idx) == x.shape[0] else x[_index(idx, x.device)]


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
