"""Response bodies of the OpenAI API as pydantic models (JSON bodies and stream chunks)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_serializer


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = PromptTokensDetails()


class CompletionLogprobs(BaseModel):
    """Completions' logprobs: parallel lists, one entry per token."""

    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = []


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class Completion(BaseModel):
    """A text completion, or one chunk of a streamed one (same shape)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ChatTopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[ChatTopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None
    refusal: list[ChatTokenLogprob] | None = None


def _is_none(value: Any) -> bool:
    return value is None


class FunctionCallBody(BaseModel):
    name: str
    arguments: str


class ToolCallBody(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallBody


class AssistantMessage(BaseModel):
    """The answer; `content` is null when it is only tool calls, and `tool_calls` is left out when none."""

    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCallBody] | None = Field(default=None, exclude_if=_is_none)
    function_call: FunctionCallBody | None = Field(default=None, exclude_if=_is_none)  # legacy `functions`


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChoice]
    usage: Usage


class FunctionCallDelta(BaseModel):
    """A piece of a streamed call: the name once, then the arguments in pieces."""

    name: str | None = None
    arguments: str | None = None

    @model_serializer
    def _drop_unset(self) -> dict[str, Any]:
        return {
            key: value
            for key, value in (("name", self.name), ("arguments", self.arguments))
            if value is not None
        }


class ToolCallDelta(BaseModel):
    """OpenAI's streamed call: `index` always, `id` and `type` in the call's first delta only."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta

    @model_serializer
    def _drop_unset(self) -> dict[str, Any]:
        body: dict[str, Any] = {"index": self.index}
        if self.id is not None:
            body["id"] = self.id
            body["type"] = "function"
        body["function"] = self.function.model_dump()
        return body


class ChatDelta(BaseModel):
    """What a chunk adds to a choice's message; fields left out are not sent."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    function_call: FunctionCallDelta | None = None  # legacy `functions` requests

    @model_serializer
    def _drop_unset(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            key: value for key, value in (("role", self.role), ("content", self.content)) if value is not None
        }
        if self.tool_calls is not None:
            body["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        if self.function_call is not None:
            body["function_call"] = self.function_call.model_dump()
        return body


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
