"""Responses of /v1/chat/completions: the JSON body and the stream of chunks."""

from __future__ import annotations

from collections.abc import Sequence

from handler.api.choices import PendingDelta, PromptState
from handler.api.chunks import ChunkStream
from handler.api.generation import Step
from handler.api.job import Job
from handler.api.logprobs import chat_logprobs
from handler.api.responses import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    FunctionCallBody,
    FunctionCallDelta,
    ToolCallBody,
    ToolCallDelta,
)
from handler.api.tools.parser import ParsedText, ToolCallParser, parse_tool_calls
from handler.api.tools.plan import ToolPlan
from handler.api.usage import usage_of


def chat_body(job: Job, states: Sequence[PromptState], tools: ToolPlan | None = None) -> ChatCompletion:
    """The whole chat completion: n choices of the one conversation."""
    state = states[0]
    choices: list[ChatChoice] = []
    for index, choice in enumerate(state.best(job.n)):
        message, finish_reason = _message("".join(choice.text), choice.finish_reason, tools)
        choices.append(
            ChatChoice(
                index=index,
                message=message,
                logprobs=chat_logprobs(choice.logprobs) if job.logprobs else None,
                finish_reason=finish_reason,
            )
        )
    return ChatCompletion(
        id=job.id, created=job.created, model=job.model, choices=choices, usage=usage_of(states)
    )


def _message(
    text: str, finish_reason: str | None, tools: ToolPlan | None
) -> tuple[AssistantMessage, str | None]:
    if tools is None or not tools.calls_allowed:
        return AssistantMessage(content=text), finish_reason
    content, calls = parse_tool_calls(text)
    if not calls:
        return AssistantMessage(content=content), finish_reason
    if tools.legacy:
        first = FunctionCallBody(name=calls[0].name, arguments=calls[0].arguments)
        return AssistantMessage(content=content, function_call=first), _called(finish_reason, tools)
    bodies = [
        ToolCallBody(id=c.id, function=FunctionCallBody(name=c.name, arguments=c.arguments)) for c in calls
    ]
    return AssistantMessage(content=content, tool_calls=bodies), _called(finish_reason, tools)


def _called(finish_reason: str | None, tools: ToolPlan) -> str | None:
    """A choice that ended by itself after calling tools finished with "tool_calls" ("function_call")."""
    if finish_reason != "stop":
        return finish_reason
    return "function_call" if tools.legacy else "tool_calls"


class ChatStream(ChunkStream[ChatCompletionChunk]):
    """Turns engine steps into chat.completion.chunk objects; each choice opens with its role.

    With tools, each choice's text goes through its own ToolCallParser: content and call deltas.
    """

    def __init__(self, job: Job, tools: ToolPlan | None = None) -> None:
        super().__init__(job)
        self.tools = tools if tools is not None and tools.calls_allowed else None
        self.parsers: dict[int, ToolCallParser] = {}

    def _opening(self) -> list[ChatCompletionChunk]:
        # A forced call has no content: null from the start, as in its JSON body.
        content = None if self.tools is not None and self.tools.forced else ""
        return [
            self._new_chunk(
                [ChatChunkChoice(index=index, delta=ChatDelta(role="assistant", content=content))]
            )
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
            logprobs = chat_logprobs(entry.logprobs) if self.job.logprobs and entry.logprobs else None
            change, finish_reason = self._delta(index, "".join(entry.text), entry.finish_reason)
            if change is None and logprobs is None and finish_reason is None:
                continue
            choices.append(
                ChatChunkChoice(
                    index=index, delta=change or ChatDelta(), logprobs=logprobs, finish_reason=finish_reason
                )
            )
        return self._new_chunk(choices)

    def _delta(self, index: int, text: str, finish_reason: str | None) -> tuple[ChatDelta | None, str | None]:
        if self.tools is None:
            return ChatDelta(content=text or None), finish_reason
        parser = self.parsers.setdefault(index, ToolCallParser())
        parsed = parser.feed(text, final=finish_reason is not None)
        if parser.num_calls:
            finish_reason = _called(finish_reason, self.tools)
        if parsed.empty:
            return None, finish_reason
        return _parsed_delta(parsed, self.tools), finish_reason

    def _new_chunk(self, choices: list[ChatChunkChoice], usage: bool = False) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self.job.id,
            created=self.job.created,
            model=self.job.model,
            choices=choices,
            usage=self.usage.usage() if usage else None,
        )


def _parsed_delta(parsed: ParsedText, tools: ToolPlan) -> ChatDelta:
    content = parsed.content or None
    if tools.legacy:
        first = [c for c in parsed.calls if c.index == 0]
        if not first:
            return ChatDelta(content=content)
        call = FunctionCallDelta(name=first[0].name, arguments="".join(c.arguments for c in first))
        return ChatDelta(content=content, function_call=call)
    calls = [
        ToolCallDelta(index=c.index, id=c.id, function=FunctionCallDelta(name=c.name, arguments=c.arguments))
        for c in parsed.calls
    ]
    return ChatDelta(content=content, tool_calls=calls or None)
