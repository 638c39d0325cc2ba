"""The logits processors of the sampler's steps 2-6 (see sampler.py): logit_bias, repetition,
presence and frequency penalties, min_tokens and the grammar mask, each applied only to the rows
that ask for it. They work in place on a float32 copy; a batch that needs none of them is returned
as it came.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from backends.engine.rows import SamplingRow, column, index_tensor, padded
from backends.grammar.mask import Mask

_NEG_INF = float("-inf")


def adjust(
    logits: torch.Tensor, rows: Sequence[SamplingRow], eos_token_ids: set[int], mask: Mask | None = None
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
        _min_tokens(scores, rows, short, eos_token_ids)
    if mask is not None:
        mask(scores)
    return scores


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
        scores.index_put_(
            (index_tensor(row_ix, device), index_tensor(col_ix, device)), values, accumulate=True
        )


def _repetition_penalty(scores: torch.Tensor, rows: Sequence[SamplingRow], idx: list[int]) -> None:
    device, vocab = scores.device, scores.shape[1]
    ids = padded([rows[i].prompt_ids + rows[i].output_ids for i in idx], vocab, device)  # [R, L]
    if ids.shape[1] == 0:
        return
    seen = torch.zeros(len(idx), vocab + 1, dtype=torch.bool, device=device)  # [R, V + 1]
    seen = seen.scatter_(1, ids, True)[:, :vocab]  # [R, V]
    penalty = column([rows[i].params.repetition_penalty for i in idx], device)  # [R, 1]
    index = index_tensor(idx, device)
    sub = scores[index]  # [R, V]
    penalized = torch.where(sub < 0, sub * penalty, sub / penalty)  # [R, V]
    scores[index] = torch.where(seen, penalized, sub)


def _presence_frequency(scores: torch.Tensor, rows: Sequence[SamplingRow], idx: list[int]) -> None:
    device, vocab = scores.device, scores.shape[1]
    ids = padded([rows[i].output_ids for i in idx], vocab, device)  # [R, L]
    counts = torch.zeros(len(idx), vocab + 1, dtype=torch.float32, device=device)  # [R, V + 1]
    counts = counts.scatter_add_(1, ids, torch.ones(ids.shape, dtype=torch.float32, device=device))
    counts = counts[:, :vocab]  # [R, V]
    frequency = column([rows[i].params.frequency_penalty for i in idx], device)  # [R, 1]
    presence = column([rows[i].params.presence_penalty for i in idx], device)  # [R, 1]
    index = index_tensor(idx, device)
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
        scores.index_put_((index_tensor(row_ix, device), index_tensor(col_ix, device)), minus_inf)
