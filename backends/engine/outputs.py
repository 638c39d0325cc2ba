"""What the engine hands back: per-step deltas of each choice of a request."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class TopLogprob:
    """One candidate token at a position, with its log-probability."""

    token_id: int
    token: str  # the token's text (may hold U+FFFD when the token is part of a character)
    bytes: list[int]  # the token's exact UTF-8 bytes
    logprob: float


@dataclass(slots=True)
class TokenLogprob:
    """The chosen token at one position, its logprob and the top alternatives.

    `logprob` is None for the first prompt token when the prompt is echoed (nothing predicts it).
    """

    token_id: int
    token: str
    bytes: list[int]
    logprob: float | None
    top: list[TopLogprob] = field(default_factory=list)


@dataclass(slots=True)
class ChoiceDelta:
    """What one choice (sequence) of a request produced since the last output.

    `text` is safe to show: stop strings and text that may still become one are held back.
    `token_ids` are the tokens generated in this step (the stop-string text they hold may be cut).
    `finish_reason` is set on the last delta of the choice: "stop" or "length".
    """

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    cumulative_logprob: float = 0.0  # sum of the chosen tokens' logprobs so far (ranks best_of)
    completion_tokens: int = 0  # tokens generated so far by this choice


@dataclass(slots=True)
class RequestOutput:
    """One step's deltas for one request.

    The first output of a request carries `prompt_logprobs` when echo and logprobs were asked.
    `finished` is True on the last output, once every choice has a finish_reason.
    """

    request_id: str
    prompt_tokens: int
    choices: list[ChoiceDelta]
    finished: bool = False
    prompt_logprobs: list[TokenLogprob] | None = None
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache
