"""Responses of /v1/chat/completions: the JSON body and the stream of chunks."""

from __future__ import annotations

from collections.abc import Sequence

from handler.generation import ChunkStream, Job, PendingDelta, PromptState, Step, usage_of
from handler.logprobs import chat_logprobs
from handler.replies import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
)


def chat_body(job: Job, states: Sequence[PromptState]) -> ChatCompletion:
    """The whole chat completion: n choices of the one conversation."""
    state = states[0]
    choices = [
        ChatChoice(
            index=index,
            message=AssistantMessage(content="".join(choice.text)),
            logprobs=chat_logprobs(choice.logprobs) if job.logprobs else None,
            finish_reason=choice.finish_reason,
        )
        for index, choice in enumerate(state.best(job.n))
    ]
    return ChatCompletion(
        id=job.id, created=job.created, model=job.model, choices=choices, usage=usage_of(states)
    )


class ChatStream(ChunkStream[ChatCompletionChunk]):
    """Turns engine steps into chat.completion.chunk objects; each choice opens with its role."""

    def _opening(self) -> list[ChatCompletionChunk]:
        return [
            self._new_chunk([ChatChunkChoice(index=index, delta=ChatDelta(role="assistant", content=""))])
            for index in range(self.job.n)
        ]

    def _chunk(self, group: list[Step]) -> ChatCompletionChunk:
        pending: dict[int, PendingDelta] = {}
        for step in group:
            self.usage.add(step)
            for delta in step.output.choices:
                entry = pending.setdefault(delta.index, PendingDelta())
                entry.add(delta)
        choices: list[ChatChunkChoice] = []
        for index, entry in sorted(pending.items()):
            if entry.empty:
                continue
            text = "".join(entry.text)
            choices.append(
                ChatChunkChoice(
                    index=index,
                    delta=ChatDelta(content=text or None),
                    logprobs=chat_logprobs(entry.logprobs) if self.job.logprobs and entry.logprobs else None,
                    finish_reason=entry.finish_reason,
                )
            )
        return self._new_chunk(choices)

    def _new_chunk(self, choices: list[ChatChunkChoice], usage: bool = False) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self.job.id,
            created=self.job.created,
            model=self.job.model,
            choices=choices,
            usage=self.usage.usage() if usage else None,
        )
