"""Sampling parameters of one request, validated where they are made."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backends.grammar.spec import GrammarSpec

# Past any vocabulary, and within the int64 the sampler puts it in (a larger one failed the batch).
MAX_TOP_K = 2**31 - 1
# A repetition_penalty near 0 (or huge) scales logits to inf and the logprobs turn NaN (found by
# fuzzing); [1/100, 100] holds every useful value. A temperature that small would do the same to
# sampling: below MIN_TEMPERATURE it samples greedily, as vLLM does.
MIN_DIVISOR = 1e-2
MIN_TEMPERATURE = 1e-5


@dataclass(slots=True)
class SamplingParams:
    """What one request asks of generation; defaults are OpenAI's."""

    n: int = 1
    best_of: int | None = None
    max_tokens: int | None = 16  # None: up to the context length
    min_tokens: int = 0
    temperature: float = 1.0  # 0 (or below MIN_TEMPERATURE) means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 (or -1) disables
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None
    logprobs: int | None = None  # None: no logprobs; k: chosen token plus top k
    echo: bool = False
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    grammar: GrammarSpec | None = None  # constrained decoding (backends/grammar)

    @property
    def greedy(self) -> bool:
        """Argmax decoding: temperature 0, or one too small to divide the logits by."""
        return self.temperature < MIN_TEMPERATURE

    @property
    def num_sequences(self) -> int:
        """Sequences to generate: best_of when set, else n."""
        return self.best_of if self.best_of is not None else self.n

    def validate(self, vocab_size: int | None = None) -> None:
        """Raise ValueError naming the first parameter that is out of range."""
        _int("n", self.n, low=1)
        if self.best_of is not None:
            _int("best_of", self.best_of, low=1)
            if self.best_of < self.n:
                raise ValueError(f"best_of must be >= n, got best_of={self.best_of} and n={self.n}")
        if self.max_tokens is not None:
            _int("max_tokens", self.max_tokens, low=1)
        _int("min_tokens", self.min_tokens, low=0)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens must be <= max_tokens, got {self.min_tokens} > {self.max_tokens}")
        _float("temperature", self.temperature, 0.0, 2.0)
        _float("top_p", self.top_p, 0.0, 1.0, low_open=True)
        _int("top_k", self.top_k, low=-1, high=MAX_TOP_K)
        _float("min_p", self.min_p, 0.0, 1.0)
        _float("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _float("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        _float("repetition_penalty", self.repetition_penalty, MIN_DIVISOR, 1 / MIN_DIVISOR)
        if not isinstance(self.logit_bias, dict):
            raise ValueError("logit_bias must be a mapping of token id to bias")
        for token, bias in self.logit_bias.items():
            if isinstance(token, bool) or not isinstance(token, int):
                raise ValueError(f"logit_bias keys must be token ids, got {token!r}")
            if token < 0 or (vocab_size is not None and token >= vocab_size):
                raise ValueError(f"logit_bias token id {token} is outside the vocabulary")
            _float("logit_bias", bias, -100.0, 100.0)
        if self.seed is not None:
            _int("seed", self.seed, low=-(2**63), high=2**64 - 1)
        if self.logprobs is not None:
            _int("logprobs", self.logprobs, low=0, high=20)
        if not isinstance(self.stop, list) or not all(isinstance(s, str) for s in self.stop):
            raise ValueError("stop must be a list of strings")
        if any(s == "" for s in self.stop):
            raise ValueError("stop strings must not be empty")
        for token in self.stop_token_ids:
            _int("stop_token_ids", token, low=0)
        if self.grammar is not None:
            # Both would make a row go on past the end of its grammar, where no token is allowed.
            if self.min_tokens:
                raise ValueError("min_tokens cannot be used with a grammar constraint (structured output)")
            if self.ignore_eos:
                raise ValueError("ignore_eos cannot be used with a grammar constraint (structured output)")


def _int(name: str, value: object, low: int | None = None, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")


def _float(name: str, value: object, low: float, high: float, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if value < low or (low_open and value == low) or value > high:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be in {bracket}{low}, {high}], got {value}")
