"""What the choices of a request have produced: collected for a JSON body, or pending for a chunk."""

from __future__ import annotations

from dataclasses import dataclass, field

from backends.engine.outputs import ChoiceDelta, RequestOutput, TokenLogprob


@dataclass(slots=True)
class CollectedChoice:
    """Everything one choice has produced so far (for JSON bodies and best_of)."""

    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    cumulative_logprob: float = 0.0
    completion_tokens: int = 0

    def add(self, delta: ChoiceDelta) -> None:
        self.text.append(delta.text)
        self.logprobs.extend(delta.logprobs)
        self.finish_reason = delta.finish_reason or self.finish_reason
        self.cumulative_logprob = delta.cumulative_logprob
        self.completion_tokens = delta.completion_tokens


@dataclass(slots=True)
class PendingDelta:
    """What one choice gained over a group of streamed steps (sent as one chunk)."""

    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None

    def add(self, delta: ChoiceDelta) -> None:
        self.text.append(delta.text)
        self.logprobs.extend(delta.logprobs)
        self.finish_reason = delta.finish_reason or self.finish_reason

    @property
    def empty(self) -> bool:
        """Nothing to send: no text, no tokens' logprobs, not finished."""
        return not any(self.text) and not self.logprobs and self.finish_reason is None


@dataclass(slots=True)
class PromptState:
    """One prompt's choices and its prompt logprobs, as collected for a JSON body."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    prompt_logprobs: list[TokenLogprob] | None = None
    choices: dict[int, CollectedChoice] = field(default_factory=dict)

    def add(self, output: RequestOutput) -> None:
        self.prompt_tokens = output.prompt_tokens
        self.cached_tokens = output.cached_tokens
        if output.prompt_logprobs is not None:
            self.prompt_logprobs = output.prompt_logprobs
        for delta in output.choices:
            self.choices.setdefault(delta.index, CollectedChoice()).add(delta)

    def best(self, n: int) -> list[CollectedChoice]:
        """The n choices with the highest total logprob (all of them, in order, without best_of)."""
        ordered = [self.choices[index] for index in sorted(self.choices)]
        if len(ordered) <= n:
            return ordered
        return sorted(ordered, key=lambda choice: choice.cumulative_logprob, reverse=True)[:n]

    @property
    def completion_tokens(self) -> int:
        return sum(choice.completion_tokens for choice in self.choices.values())
