"""A scripted backend for engine tests: next token = a function of the sequence so far."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

from backends.engine.contract import ModelInfo, Seq
from tests import tiny_tokenizers


def count_up(token_ids: Sequence[int]) -> int:
    """The default script: each token is the previous one plus one, within word tokens."""
    return 10 + (token_ids[-1] + 1 - 10) % 200


class FakeBackend:
    """Returns logits that make `script(token_ids)` the clear argmax; records every call."""

    def __init__(self, script: Callable[[Sequence[int]], int] = count_up, context_length: int = 64) -> None:
        self.tokenizer: Any = tiny_tokenizers.byte_level_bpe()
        vocab = len(self.tokenizer)
        self.info = ModelInfo(
            name="fake",
            context_length=context_length,
            vocab_size=vocab,
            eos_token_ids=frozenset({self.tokenizer.eos_token_id}),
            bos_token_id=self.tokenizer.bos_token_id,
        )
        self.script = script
        self.rows: dict[int, list[int]] = {}
        self.calls: list[tuple[str, list[int]]] = []
        self.warmed_on: list[str] = []  # the thread of each warm_up call
        self.fail_on: int | None = None  # a seq id whose presence makes a forward raise

    def _logits(self, seqs: Sequence[Seq]) -> torch.Tensor:
        if self.fail_on is not None and any(s.seq_id == self.fail_on for s in seqs):
            raise RuntimeError("injected failure")
        logits = torch.zeros(len(seqs), self.info.vocab_size)
        for i, s in enumerate(seqs):
            logits[i, self.script(s.token_ids)] = 10.0
        return logits

    def prefill(self, seqs: Sequence[Seq]) -> torch.Tensor:
        self.calls.append(("prefill", [s.seq_id for s in seqs]))
        out = self._logits(seqs)
        for s in seqs:
            self.rows[s.seq_id] = list(s.token_ids)
        return out

    def decode(self, seqs: Sequence[Seq]) -> torch.Tensor:
        self.calls.append(("decode", [s.seq_id for s in seqs]))
        missing = [s.seq_id for s in seqs if s.seq_id not in self.rows]
        if missing:
            raise AssertionError(f"decode of sequences without a cache row: {missing}")
        return self._logits(seqs)

    def fork(self, parent: Seq, children: Sequence[Seq]) -> None:
        self.calls.append(("fork", [parent.seq_id] + [c.seq_id for c in children]))
        for c in children:
            self.rows[c.seq_id] = list(self.rows[parent.seq_id])

    def release(self, seqs: Sequence[Seq]) -> None:
        self.calls.append(("release", [s.seq_id for s in seqs]))
        for s in seqs:
            self.rows.pop(s.seq_id, None)

    def warm_up(self) -> None:
        self.calls.append(("warm_up", []))
        self.warmed_on.append(threading.current_thread().name)

    def score(self, token_ids: Sequence[int]) -> torch.Tensor:
        return torch.stack(
            [self._logits([Seq(-1, list(token_ids[: i + 1]))])[0] for i in range(len(token_ids))]
        )
