"""Engine logprobs in the two shapes of the API: completions' parallel lists and chat's objects."""

from __future__ import annotations

from collections.abc import Sequence

from backends.engine.outputs import TokenLogprob
from handler.api.responses import ChatLogprobs, ChatTokenLogprob, ChatTopLogprob, CompletionLogprobs


def completion_logprobs(entries: Sequence[TokenLogprob], offset: int = 0) -> CompletionLogprobs:
    """Completions' logprobs; `offset` is where the first token's text starts in the choice's text."""
    result = CompletionLogprobs()
    for entry in entries:
        result.tokens.append(entry.token)
        result.token_logprobs.append(entry.logprob)
        # Nothing predicts the first echoed prompt token, so it has no alternatives (as OpenAI answers).
        top = None if entry.logprob is None else {alt.token: alt.logprob for alt in entry.top}
        result.top_logprobs.append(top)
        result.text_offset.append(offset)
        offset += len(entry.token)
    return result


def text_length(entries: Sequence[TokenLogprob]) -> int:
    """Characters the tokens' texts span (how far text_offset advances over them)."""
    return sum(len(entry.token) for entry in entries)


def chat_logprobs(entries: Sequence[TokenLogprob]) -> ChatLogprobs:
    """Chat's logprobs: one object per token with its top alternatives."""
    content = [
        ChatTokenLogprob(
            token=entry.token,
            logprob=entry.logprob if entry.logprob is not None else 0.0,
            bytes=list(entry.bytes),
            top_logprobs=[
                ChatTopLogprob(token=alt.token, logprob=alt.logprob, bytes=list(alt.bytes))
                for alt in entry.top
            ],
        )
        for entry in entries
    ]
    return ChatLogprobs(content=content)
