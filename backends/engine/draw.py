"""The sampler's step 9 (see sampler.py): a sampled row's token, drawn from its logits over
temperature, cut by top_k, top_p and min_p, by inverse CDF with one uniform number from the row's
own generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from backends.engine.params import SamplingParams
from backends.engine.rows import SamplingRow, column, index_tensor

_NEG_INF = float("-inf")
_CANDIDATES = 1024  # tokens kept before the sort that top_p / min_p need


def _truncates(params: SamplingParams) -> bool:
    return params.top_k > 0 or params.top_p < 1.0 or params.min_p > 0.0


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
    fi = index_tensor(full, x.device)
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
    top_p = column([p.top_p for p in params], x.device).squeeze(1)  # [R]
    ok |= (top_p < 1.0) & (probs.sum(dim=-1) >= top_p)
    min_p = column([p.min_p for p in params], x.device).squeeze(1)  # [R]
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
        top_p = column([p.top_p if p.top_p < 1.0 else math.inf for p in params], device)  # [R, 1]
        drop |= probs.cumsum(dim=-1) - probs >= top_p  # the mass before the token already reaches top_p
    if any(p.min_p > 0.0 for p in params):
        min_p = column([p.min_p for p in params], device)  # [R, 1]
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


def sample(scores: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    """Token id per row of `scores` [R, V] (all rows sampled, temperature > 0)."""
    device = scores.device
    x = scores.float() / column([r.params.temperature for r in rows], device)  # [R, V]
    u = _uniforms(rows, device)  # [R]
    trunc = [j for j, r in enumerate(rows) if _truncates(r.params)]
    if len(trunc) == len(rows):
        return _truncated_draw(x, [r.params for r in rows], u)
    plain = [j for j, r in enumerate(rows) if not _truncates(r.params)]
    if not trunc:
        return _inverse_cdf(torch.softmax(x, dim=-1), u)
    out = torch.empty(len(rows), dtype=torch.long, device=device)  # [R]
    ti, pi = index_tensor(trunc, device), index_tensor(plain, device)
    out[ti] = _truncated_draw(x[ti], [rows[j].params for j in trunc], u[ti])
    out[pi] = _inverse_cdf(torch.softmax(x[pi], dim=-1), u[pi])
    return out
