"""Request bodies of the OpenAI API as strict pydantic models, and their conversion to SamplingParams.

The range of each sampling parameter comes from `backends.engine.params.BOUNDS` (`_bounded`), the
one table of them that the engine checks too; what this server allows on top is in `bounds.Limits`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from backends.engine.params import BOUNDS, SamplingParams, check_best_of
from backends.errors import InvalidRequestError
from backends.grammar import GrammarSpec, from_response_format, from_structured_outputs
from handler.api.bounds import Limits
from handler.api.errors import APIError, from_invalid_request
from handler.api.tools.plan import (
    FunctionCall,
    FunctionDefinition,
    ToolChoice,
    ToolDefinition,
    ToolPlan,
    plan_tools,
)

StopString = Annotated[str, Field(min_length=1)]
TokenId = Annotated[int, Field(ge=0)]
# Deeper than any real tool call; the chat template recurses into them.
MAX_JSON_DEPTH = 32


def _bounded(name: str, upper: bool = True) -> Any:
    """The pydantic constraint of the sampling parameter `name`, made from its entry in BOUNDS."""
    bound = BOUNDS[name]
    return Field(
        gt=bound.low if bound.low_open else None,
        ge=None if bound.low_open else bound.low,
        le=bound.high if upper else None,
    )


class _Strict(BaseModel):
    """Wrong types are errors: "1" is not an int, 1.5 is not an int, true is not a number."""

    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool | None = False


class SamplingRequest(_Strict):
    """Fields shared by completions and chat completions; null means the default."""

    model_config = ConfigDict(strict=True, extra="allow")

    model: str | None = None
    n: Annotated[int, _bounded("n")] | None = 1
    max_tokens: Annotated[int, _bounded("max_tokens")] | None = None
    min_tokens: Annotated[int, _bounded("min_tokens")] | None = 0
    temperature: Annotated[float, _bounded("temperature")] | None = 1.0
    top_p: Annotated[float, _bounded("top_p")] | None = 1.0
    top_k: Annotated[int, _bounded("top_k")] | None = 0
    min_p: Annotated[float, _bounded("min_p")] | None = 0.0
    stop: StopString | Annotated[list[StopString], Field(max_length=4)] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    presence_penalty: Annotated[float, _bounded("presence_penalty")] | None = 0.0
    frequency_penalty: Annotated[float, _bounded("frequency_penalty")] | None = 0.0
    repetition_penalty: Annotated[float, _bounded("repetition_penalty")] | None = 1.0
    logit_bias: dict[str, Annotated[float, _bounded("logit_bias")]] | None = None
    seed: Annotated[int, _bounded("seed")] | None = None
    user: str | None = None
    ignore_eos: bool | None = False
    # vLLM's extension: exactly one of json (a schema), regex, choice, grammar (Lark/GBNF), json_object.
    structured_outputs: dict[str, Any] | None = None
    # Which request field set params.grammar (the `param` of its compile errors).
    _grammar_param: str | None = PrivateAttr(default=None)

    @property
    def grammar_param(self) -> str | None:
        return self._grammar_param

    def constrain(self, params: SamplingParams, spec: GrammarSpec | None, param: str) -> None:
        """Set params.grammar from the field `param`; a second constraint is a 400."""
        if spec is None:
            return
        if params.grammar is not None:
            raise APIError(
                f"{param} cannot be combined with {self._grammar_param}: one output constraint per request",
                param=param,
            )
        params.grammar, self._grammar_param = spec, param

    @property
    def streaming(self) -> bool:
        return bool(self.stream)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def check_stream_options(self) -> None:
        """stream_options only make sense with stream: true (as OpenAI and vLLM answer)."""
        if self.stream_options is not None and not self.streaming:
            raise APIError("stream_options can only be set when stream is true", param="stream_options")

    def common_params(self, limits: Limits, max_tokens: int | None) -> SamplingParams:
        """SamplingParams from the shared fields: user value, then server default, then OpenAI's."""
        n = _or(self.n, 1)
        _limit("n", n, limits.max_n)
        if max_tokens is not None:
            _limit("max_tokens", max_tokens, limits.max_tokens)
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        params = SamplingParams(
            n=n,
            max_tokens=max_tokens,
            min_tokens=_or(self.min_tokens, 0),
            temperature=_or(self.temperature, 1.0),
            top_p=_or(self.top_p, 1.0),
            top_k=_or(self.top_k, 0),
            min_p=_or(self.min_p, 0.0),
            presence_penalty=_or(self.presence_penalty, 0.0),
            frequency_penalty=_or(self.frequency_penalty, 0.0),
            repetition_penalty=_or(self.repetition_penalty, 1.0),
            logit_bias=_logit_bias(self.logit_bias),
            seed=self.seed,
            stop=stop,
            ignore_eos=bool(self.ignore_eos),
        )
        self.constrain(
            params,
            _spec(from_structured_outputs, self.structured_outputs, "structured_outputs"),
            "structured_outputs",
        )
        return params


class CompletionRequest(SamplingRequest):
    """POST /v1/completions."""

    prompt: str | list[str] | list[TokenId] | list[list[TokenId]]
    max_tokens: Annotated[int, _bounded("max_tokens")] | None = 16
    best_of: Annotated[int, _bounded("best_of")] | None = None
    echo: bool | None = False
    # Past COMPLETION_MAX_LOGPROBS is refused by Limits, with a message naming the setting.
    logprobs: Annotated[int, _bounded("logprobs", upper=False)] | None = None
    suffix: str | None = None

    def sampling_params(self, limits: Limits) -> SamplingParams:
        """Check the completions-only rules and build SamplingParams (max_tokens None: up to the context)."""
        self.check_stream_options()
        if self.suffix is not None:
            raise APIError(
                "suffix is not supported: ladle serves no insertion (fill-in-the-middle)", "suffix"
            )
        params = self.common_params(limits, self.max_tokens)
        params.echo = bool(self.echo)
        if self.logprobs is not None:
            _limit("logprobs", self.logprobs, limits.max_logprobs)
            params.logprobs = self.logprobs
        if self.best_of is not None and self.best_of != params.n:
            try:
                check_best_of(params.n, self.best_of)
            except InvalidRequestError as exc:
                raise from_invalid_request(exc) from None
            if self.streaming:
                raise APIError("best_of cannot be used with stream", param="best_of")
            _limit("best_of", self.best_of, limits.max_n)
            params.best_of = self.best_of
        return params


class TextPart(_Strict):
    """A text part of a message's content; other part types are not supported."""

    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    """One message of a conversation."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    function_call: dict[str, Any] | None = None  # legacy: one call; "function" messages hold its result

    @field_validator("tool_calls", "function_call")
    @classmethod
    def _shallow(cls, value: Any) -> Any:
        # The chat template walks tool_calls recursively: a deep one was a RecursionError (500).
        if value is not None and _depth(value) > MAX_JSON_DEPTH:
            raise ValueError(f"tool_calls are nested deeper than {MAX_JSON_DEPTH} levels")
        return value

    @model_validator(mode="after")
    def _needs_content(self) -> ChatMessage:
        if self.content is None and not (
            self.role == "assistant" and (self.tool_calls or self.function_call)
        ):
            raise ValueError(f"a {self.role} message needs content")
        return self

    def text(self) -> str:
        """The content as one string (text parts joined)."""
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class JSONSchemaFormat(_Strict):
    """response_format.json_schema: the output is JSON that validates against `schema`."""

    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)

    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: str | None = None
    schema_: dict[str, Any] | bool | None = Field(default=None, alias="schema")
    strict: bool | None = None  # ladle enforces the schema either way


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs json_schema")
        return self

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


class ChatCompletionRequest(SamplingRequest):
    """POST /v1/chat/completions."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, _bounded("max_tokens")] | None = None
    logprobs: bool | None = False
    top_logprobs: Annotated[int, _bounded("logprobs")] | None = None
    response_format: ResponseFormat | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    functions: list[FunctionDefinition] | None = None
    function_call: FunctionCall | None = None
    parallel_tool_calls: bool | None = None

    def tool_plan(self, max_size: int) -> ToolPlan | None:
        """The tools and what the request asks of them (legacy functions mapped); None without tools."""
        return plan_tools(
            self.tools,
            self.tool_choice,
            self.parallel_tool_calls,
            self.functions,
            self.function_call,
            max_size=max_size,
        )

    def sampling_params(self, limits: Limits) -> SamplingParams:
        """Check the chat-only rules and build SamplingParams (max_tokens None: up to the context)."""
        self.check_stream_options()
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        params = self.common_params(limits, max_tokens)
        if self.response_format is not None:
            spec = _spec(from_response_format, self.response_format.as_dict(), "response_format")
            self.constrain(params, spec, "response_format")
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError("top_logprobs requires logprobs to be true", param="top_logprobs")
        if self.logprobs:
            params.logprobs = _or(self.top_logprobs, 0)
        return params


def check_json_values(body: dict[str, Any]) -> None:
    """Refuse strings holding lone surrogates ("\\ud800"): pydantic takes them, but the tokenizer
    and the JSON encoder raise on them. One encode of the whole body, in C, finds them."""
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(
            "the request holds a lone UTF-16 surrogate, which is not valid Unicode",
            param=_field_with_surrogate(body),
            code="invalid_unicode",
        ) from None
    except RecursionError:
        raise APIError(f"the request is nested deeper than {MAX_JSON_DEPTH} levels") from None


def _field_with_surrogate(body: dict[str, Any]) -> str | None:
    for key, value in body.items():
        try:
            json.dumps({key: value}, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return key
    return None


def _depth(value: Any) -> int:
    """How deep lists and dicts nest in `value`, counted up to MAX_JSON_DEPTH + 1."""
    level, depth = [value], 0
    while level and depth <= MAX_JSON_DEPTH:
        depth += 1
        inner: list[Any] = []
        for item in level:
            inner.extend(
                v for v in (item.values() if isinstance(item, dict) else item) if isinstance(v, (dict, list))
            )
        level = inner
    return depth


def _spec(convert: Any, value: dict[str, Any] | None, param: str) -> GrammarSpec | None:
    """A request field's constraint as a GrammarSpec; its shape errors are 400s naming the field."""
    try:
        spec: GrammarSpec | None = convert(value, param)
    except InvalidRequestError as exc:
        raise from_invalid_request(exc) from None
    return spec


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _limit(name: str, value: int, high: int) -> None:
    if value > high:
        raise APIError(f"{name} must be <= {high}, got {value}", param=name)


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float]:
    result: dict[int, float] = {}
    for key, value in (bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise APIError(f"logit_bias keys must be token ids, got {key!r}", param="logit_bias") from None
        result[token] = value
    return result
