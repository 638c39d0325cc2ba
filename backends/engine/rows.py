"""What the sampler reads of each row of a batch, and the small tensors built from the rows."""

from __future__ import annotations

from typing import Protocol

import torch

from backends.engine.params import SamplingParams


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


def index_tensor(idx: list[int], device: torch.device) -> torch.Tensor:
    """Row or column positions, as an index."""
    return torch.tensor(idx, dtype=torch.long, device=device)  # [R]


def column(values: list[float], device: torch.device) -> torch.Tensor:
    """One float32 value per row, shaped to broadcast over the vocabulary."""
    return torch.tensor(values, dtype=torch.float32, device=device).unsqueeze(1)  # [R, 1]


def padded(seqs: list[list[int]], width: int, device: torch.device) -> torch.Tensor:
    """Token ids as [R, maxlen]; padding and ids outside [0, width) become `width`."""
    ids = torch.nn.utils.rnn.pad_sequence(
        [torch.tensor(s, dtype=torch.long) for s in seqs], batch_first=True, padding_value=width
    ).to(device)  # [R, L]
    return ids.masked_fill_((ids < 0) | (ids > width), width)
