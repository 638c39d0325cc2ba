"""OpenAI's usage object: of a collected response, or counted along a stream."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from handler.api.responses import PromptTokensDetails, Usage

if TYPE_CHECKING:
    from handler.api.choices import PromptState
    from handler.api.generation import Step


@dataclass(slots=True)
class UsageCounter:
    """Tokens of a streamed response: each prompt once, every generated token of every choice."""

    prompt_tokens: dict[int, int] = field(default_factory=dict)
    cached_tokens: dict[int, int] = field(default_factory=dict)
    completion_tokens: dict[tuple[int, int], int] = field(default_factory=dict)

    def add(self, step: Step) -> None:
        self.prompt_tokens[step.prompt_index] = step.output.prompt_tokens
        self.cached_tokens[step.prompt_index] = step.output.cached_tokens
        for delta in step.output.choices:
            self.completion_tokens[(step.prompt_index, delta.index)] = delta.completion_tokens

    def usage(self) -> Usage:
        prompt = sum(self.prompt_tokens.values())
        completion = sum(self.completion_tokens.values())
        return make_usage(prompt, completion, sum(self.cached_tokens.values()))


def usage_of(states: Sequence[PromptState]) -> Usage:
    """Usage of a collected response."""
    prompt = sum(state.prompt_tokens for state in states)
    completion = sum(state.completion_tokens for state in states)
    return make_usage(prompt, completion, sum(state.cached_tokens for state in states))


def make_usage(prompt: int, completion: int, cached: int) -> Usage:
    """OpenAI's usage object, with the prompt tokens the prefix cache served."""
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
    )
