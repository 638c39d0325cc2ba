"""Sampling parameters of one request, with the one table of their bounds and the one check of them.

`BOUNDS` states every numeric bound once: `SamplingParams.validate` checks it (the library path and
the engine's admission), and the HTTP API's pydantic models build their constraints from it. Each
error is an InvalidRequestError that carries the parameter's name as data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from backends.errors import InvalidRequestError

if TYPE_CHECKING:
    from backends.grammar.spec import GrammarSpec

# Past any vocabulary, and within the int64 the sampler puts it in (a larger one failed the batch).
MAX_TOP_K = 2**31 - 1
# A repetition_penalty near 0 (or huge) scales logits to inf and the logprobs turn NaN (found by
# fuzzing); [1/100, 100] holds every useful value. A temperature that small would do the same to
# sampling: below MIN_TEMPERATURE it samples greedily, as vLLM does.
MIN_DIVISOR = 1e-2
MIN_TEMPERATURE = 1e-5
# The most alternatives per token OpenAI returns (top_logprobs), and so the most the sampler keeps.
MAX_LOGPROBS = 20


@dataclass(frozen=True, slots=True)
class Bound:
    """The range of one numeric parameter: [low, high], or (low, high] when low_open; None: unbounded."""

    integer: bool
    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def check(self, name: str, value: object) -> None:
        """Raise InvalidRequestError naming `name` if `value` is of the wrong type or out of range."""
        if self.integer:
            _int(name, value, self.low, self.high)
        else:
            _float(name, value, self)


BOUNDS: dict[str, Bound] = {
    "n": Bound(integer=True, low=1),
    "best_of": Bound(integer=True, low=1),
    "max_tokens": Bound(integer=True, low=1),
    "min_tokens": Bound(integer=True, low=0),
    "temperature": Bound(integer=False, low=0.0, high=2.0),
    "top_p": Bound(integer=False, low=0.0, high=1.0, low_open=True),
    "top_k": Bound(integer=True, low=-1, high=MAX_TOP_K),
    "min_p": Bound(integer=False, low=0.0, high=1.0),
    "presence_penalty": Bound(integer=False, low=-2.0, high=2.0),
    "frequency_penalty": Bound(integer=False, low=-2.0, high=2.0),
    "repetition_penalty": Bound(integer=False, low=MIN_DIVISOR, high=1 / MIN_DIVISOR),
    "logit_bias": Bound(integer=False, low=-100.0, high=100.0),  # each bias
    "seed": Bound(integer=True, low=-(2**63), high=2**64 - 1),
    "logprobs": Bound(integer=True, low=0, high=MAX_LOGPROBS),
    "stop_token_ids": Bound(integer=True, low=0),  # each id
}


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
        """Raise InvalidRequestError naming the first parameter that is out of range (in field order)."""
        _check("n", self.n)
        if self.best_of is not None:
            _check("best_of", self.best_of)
            check_best_of(self.n, self.best_of)
        if self.max_tokens is not None:
            _check("max_tokens", self.max_tokens)
        _check("min_tokens", self.min_tokens)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise InvalidRequestError(
                f"min_tokens must be <= max_tokens, got {self.min_tokens} > {self.max_tokens}", "min_tokens"
            )
        _check("temperature", self.temperature)
        _check("top_p", self.top_p)
        _check("top_k", self.top_k)
        _check("min_p", self.min_p)
        _check("presence_penalty", self.presence_penalty)
        _check("frequency_penalty", self.frequency_penalty)
        _check("repetition_penalty", self.repetition_penalty)
        _check_logit_bias(self.logit_bias, vocab_size)
        if self.seed is not None:
            _check("seed", self.seed)
        if self.logprobs is not None:
            _check("logprobs", self.logprobs)
        _check_stops(self.stop, self.stop_token_ids)
        if self.grammar is not None:
            # Both would make a row go on past the end of its grammar, where no token is allowed.
            for name, used in (("min_tokens", self.min_tokens), ("ignore_eos", self.ignore_eos)):
                if used:
                    raise InvalidRequestError(
                        f"{name} cannot be used with a grammar constraint (structured output)", name
                    )


def check_best_of(n: int, best_of: int) -> None:
    """best_of ranks best_of candidates to return n of them, so it cannot be fewer."""
    if best_of < n:
        raise InvalidRequestError(f"best_of must be >= n, got best_of={best_of} and n={n}", "best_of")


def _check(name: str, value: object) -> None:
    BOUNDS[name].check(name, value)


def _check_logit_bias(logit_bias: object, vocab_size: int | None) -> None:
    if not isinstance(logit_bias, dict):
        raise InvalidRequestError("logit_bias must be a mapping of token id to bias", "logit_bias")
    for token, bias in logit_bias.items():
        if isinstance(token, bool) or not isinstance(token, int):
            raise InvalidRequestError(f"logit_bias keys must be token ids, got {token!r}", "logit_bias")
        if token < 0 or (vocab_size is not None and token >= vocab_size):
            raise InvalidRequestError(f"logit_bias token id {token} is outside the vocabulary", "logit_bias")
        _check("logit_bias", bias)


def _check_stops(stop: object, stop_token_ids: list[int]) -> None:
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise InvalidRequestError("stop must be a list of strings", "stop")
    if any(s == "" for s in stop):
        raise InvalidRequestError("stop strings must not be empty", "stop")
    for token in stop_token_ids:
        _check("stop_token_ids", token)


def _int(name: str, value: object, low: float | None, high: float | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(f"{name} must be an integer, got {value!r}", name)
    if low is not None and value < low:
        raise InvalidRequestError(f"{name} must be >= {low}, got {value}", name)
    if high is not None and value > high:
        raise InvalidRequestError(f"{name} must be <= {high}, got {value}", name)


def _float(name: str, value: object, bound: Bound) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise InvalidRequestError(f"{name} must be a number, got {value!r}", name)
    low = -math.inf if bound.low is None else bound.low
    high = math.inf if bound.high is None else bound.high
    if value < low or (bound.low_open and value == low) or value > high:
        bracket = "(" if bound.low_open else "["
        raise InvalidRequestError(f"{name} must be in {bracket}{low}, {high}], got {value}", name)
