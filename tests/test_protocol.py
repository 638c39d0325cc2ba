"""Unit tests of the protocol layer: request models, SamplingParams, errors, config, logprobs, SSE."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import ValidationError

from backends.engine.outputs import TokenLogprob, TopLogprob
from backends.errors import (
    ContextLengthError,
    EngineStoppedError,
    GenerationError,
    InvalidRequestError,
    QueueFullError,
)
from handler.api.bounds import Limits
from handler.api.chunks import coalesce
from handler.api.errors import APIError, from_engine_error, from_validation_error
from handler.api.events import encode_event
from handler.api.logprobs import chat_logprobs, completion_logprobs
from handler.api.openapi import openapi_schema
from handler.api.prompts import PromptBuilder
from handler.api.requests import ChatCompletionRequest, ChatMessage, CompletionRequest
from handler.api.responses import ChatDelta, Usage
from handler.cli import build_parser, parse_settings
from handler.config import OPTIONS, ConfigError, Settings, settings_from_env
from tests.fake_engine import fake_tokenizer

LIMITS = Limits(max_tokens=100, max_n=4, max_logprobs=5)


def completion(**fields: Any) -> CompletionRequest:
    return CompletionRequest.model_validate({"prompt": "hi", **fields})


def chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "hi"}], **fields})


def validation_error(model: type[Any], body: dict[str, Any]) -> APIError:
    with pytest.raises(ValidationError) as info:
        model.model_validate(body)
    return from_validation_error(info.value)


def test_completion_defaults_are_openai_defaults() -> None:
    params = completion().sampling_params(LIMITS)
    assert (params.n, params.max_tokens, params.temperature, params.top_p) == (1, 16, 1.0, 1.0)
    assert params.logprobs is None and not params.echo and params.stop == [] and params.best_of is None


def test_completion_fields_reach_sampling_params() -> None:
    request = completion(
        n=2,
        max_tokens=7,
        min_tokens=2,
        temperature=0.5,
        top_p=0.9,
        top_k=5,
        min_p=0.1,
        presence_penalty=1,
        frequency_penalty=-1.5,
        repetition_penalty=1.2,
        logit_bias={"5": -100, "7": 2.5},
        seed=3,
        stop="\n",
        logprobs=3,
        echo=True,
        ignore_eos=True,
        best_of=3,
        user="u",
    )
    params = request.sampling_params(LIMITS)
    assert (params.n, params.best_of, params.max_tokens, params.min_tokens) == (2, 3, 7, 2)
    assert (params.temperature, params.top_p, params.top_k, params.min_p) == (0.5, 0.9, 5, 0.1)
    assert (params.presence_penalty, params.frequency_penalty, params.repetition_penalty) == (1.0, -1.5, 1.2)
    assert params.logit_bias == {5: -100.0, 7: 2.5}
    assert (params.seed, params.stop, params.logprobs, params.echo, params.ignore_eos) == (
        3,
        ["\n"],
        3,
        True,
        True,
    )
    params.validate()


def test_a_temperature_too_small_to_divide_by_is_greedy() -> None:
    assert completion(temperature=1e-9).sampling_params(LIMITS).greedy
    assert completion(temperature=0).sampling_params(LIMITS).greedy
    assert not completion(temperature=1e-3).sampling_params(LIMITS).greedy


def test_null_means_default() -> None:
    params = completion(temperature=None, top_p=None, n=None, stop=None, max_tokens=None).sampling_params(
        LIMITS
    )
    assert (params.temperature, params.top_p, params.n, params.stop, params.max_tokens) == (
        1.0,
        1.0,
        1,
        [],
        None,
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", "16"),
        ("max_tokens", 1.5),
        ("max_tokens", True),
        ("n", 2.0),
        ("temperature", True),
        ("temperature", "0.5"),
        ("top_p", [1]),
        ("echo", 1),
        ("stream", "true"),
        ("logprobs", True),
        ("seed", 1.0),
        ("stop", 5),
        ("logit_bias", {"1": "2"}),
        ("prompt", 5),
        ("prompt", [1.5]),
        ("user", 3),
    ],
)
def test_wrong_types_are_errors(field: str, value: Any) -> None:
    error = validation_error(CompletionRequest, {"prompt": "hi", field: value})
    assert error.param is not None and error.param.split(".")[0] == field and error.status_code == 400
    assert error.message.startswith(f"{error.param}:")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 2.01),
        ("temperature", -0.1),
        ("top_p", 0.0),
        ("top_p", 1.01),
        ("presence_penalty", 2.5),
        ("frequency_penalty", -2.5),
        ("n", 0),
        ("max_tokens", 0),
        ("logprobs", -1),
        ("top_k", -2),
        ("min_p", 1.5),
        ("repetition_penalty", 0.0),
        ("logit_bias", {"1": 101}),
        ("stop", ["a", "b", "c", "d", "e"]),
        ("stop", ""),
    ],
)
def test_out_of_range_values_are_errors(field: str, value: Any) -> None:
    param = validation_error(CompletionRequest, {"prompt": "hi", field: value}).param
    assert param is not None and param.split(".")[0] == field


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 5}, "n"),
        ({"max_tokens": 101}, "max_tokens"),
        ({"logprobs": 6}, "logprobs"),
        ({"best_of": 5}, "best_of"),
        ({"best_of": 1, "n": 2}, "best_of"),
        ({"best_of": 3, "stream": True}, "best_of"),
        ({"suffix": "x"}, "suffix"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"logit_bias": {"a": 1}}, "logit_bias"),
    ],
)
def test_completion_rules(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(APIError) as info:
        completion(**fields).sampling_params(LIMITS)
    assert info.value.param == param


def test_suffix_message_is_clear() -> None:
    with pytest.raises(APIError, match="suffix is not supported"):
        completion(suffix="x").sampling_params(LIMITS)


def test_best_of_equal_to_n_streams() -> None:
    assert completion(best_of=2, n=2, stream=True).sampling_params(LIMITS).best_of is None


def test_unknown_fields_are_kept_aside() -> None:
    assert completion(vendor_extra=1).model_extra == {"vendor_extra": 1}


def test_chat_fields() -> None:
    request = chat(max_completion_tokens=9, max_tokens=3, logprobs=True, top_logprobs=4, stop=["x"])
    params = request.sampling_params(LIMITS)
    assert (params.max_tokens, params.logprobs, params.stop) == (9, 4, ["x"])
    assert chat().sampling_params(LIMITS).max_tokens is None
    assert chat(logprobs=True).sampling_params(LIMITS).logprobs == 0
    assert chat(response_format={"type": "text"}).sampling_params(LIMITS).logprobs is None


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
        ({"structured_outputs": {"choice": []}}, "structured_outputs"),
        (
            {"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}},
            "response_format",
        ),
        ({"top_logprobs": 2}, "top_logprobs"),
    ],
)
def test_chat_refuses_what_it_does_not_support(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(APIError) as info:
        chat(**fields).sampling_params(LIMITS)
    assert info.value.param == param


def test_chat_messages_validation() -> None:
    assert validation_error(ChatCompletionRequest, {"messages": []}).param == "messages"
    bad_role = {"messages": [{"role": "robot", "content": "x"}]}
    assert validation_error(ChatCompletionRequest, bad_role).param == "messages.0.role"
    image = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}
    assert validation_error(ChatCompletionRequest, image).param.startswith("messages.0.content")
    assert validation_error(ChatCompletionRequest, {"messages": [{"role": "user"}]}).param == "messages.0"
    assert validation_error(ChatCompletionRequest, {"messages": [{"role": "user"}], "top_logprobs": 21}).param


def test_message_text_joins_parts() -> None:
    message = ChatMessage.model_validate(
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    )
    assert message.text() == "ab"


def test_prompt_builder() -> None:
    tokenizer = fake_tokenizer()
    builder = PromptBuilder(tokenizer, vocab_size=len(tokenizer), max_prompt_tokens=8)
    ids = tokenizer("Hello world").input_ids
    assert [p.token_ids for p in builder.completion_prompts("Hello world")] == [ids]
    assert [p.text for p in builder.completion_prompts(ids)] == ["Hello world"]
    assert len(builder.completion_prompts(["a", "b"])) == 2
    assert len(builder.completion_prompts([ids, ids])) == 2
    with pytest.raises(APIError, match="COMPLETION_MAX_PROMPT"):
        builder.completion_prompts("Hello world " * 10)
    with pytest.raises(APIError, match="vocabulary"):
        builder.completion_prompts([len(tokenizer)])
    with pytest.raises(APIError):
        builder.completion_prompts([])


def test_chat_prompt_uses_template_or_asks_for_one(tmp_path: Any) -> None:
    message = ChatMessage(role="developer", content="be brief")
    builder = PromptBuilder(fake_tokenizer(), vocab_size=1000, max_prompt_tokens=100)
    assert builder.chat_prompt([message]).text == "<s>system\nbe brief</s>\n<s>assistant\n"
    without = PromptBuilder(fake_tokenizer(None), vocab_size=1000, max_prompt_tokens=100)
    with pytest.raises(APIError, match="CHAT_TEMPLATE"):
        without.chat_prompt([message])
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    custom = PromptBuilder(fake_tokenizer(None), 1000, 100, PromptBuilder.read_template(str(template)))
    assert custom.chat_prompt([message]).text == "[be brief]"


def test_engine_errors_map_to_statuses() -> None:
    full = from_engine_error(QueueFullError("full", retry_after=1.2))
    assert (full.status_code, full.headers["Retry-After"]) == (429, "2")
    context = from_engine_error(ContextLengthError("too long"))
    assert (context.status_code, context.code, context.param) == (
        400,
        "context_length_exceeded",
        "max_tokens",
    )
    assert from_engine_error(EngineStoppedError("stop")).status_code == 503
    failed = from_engine_error(GenerationError("boom at line 3"))
    assert failed.status_code == 500 and "boom" not in failed.message
    invalid = from_engine_error(InvalidRequestError("top_p must be in (0, 1]", "top_p", code="c"))
    assert (invalid.status_code, invalid.param, invalid.code) == (400, "top_p", "c")
    # A ValueError is a bug somewhere, not the client's fault: its message (and any param in it) stays inside.
    for bug in (ValueError("top_p must be in (0, 1]"), RuntimeError("x")):
        error = from_engine_error(bug)
        assert (error.status_code, error.param, error.message) == (500, None, "internal server error")


def entry(token: str, logprob: float | None, top: dict[str, float] | None = None) -> TokenLogprob:
    alternatives = [TopLogprob(0, t, list(t.encode()), lp) for t, lp in (top or {}).items()]
    return TokenLogprob(0, token, list(token.encode()), logprob, alternatives)


def test_completion_logprobs_shape() -> None:
    result = completion_logprobs([entry("He", None), entry("llo", -0.5, {"llo": -0.5, "y": -2.0})], offset=3)
    assert result.tokens == ["He", "llo"]
    assert result.token_logprobs == [None, -0.5]
    assert result.top_logprobs == [None, {"llo": -0.5, "y": -2.0}]
    assert result.text_offset == [3, 5]


def test_chat_logprobs_shape() -> None:
    content = chat_logprobs([entry("é", -0.25, {"é": -0.25})]).model_dump()["content"]
    assert content == [
        {
            "token": "é",
            "logprob": -0.25,
            "bytes": [195, 169],
            "top_logprobs": [{"token": "é", "logprob": -0.25, "bytes": [195, 169]}],
        }
    ]


def test_sse_event_and_delta_serialization() -> None:
    assert encode_event(Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3)) == (
        b'data: {"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,'
        b'"prompt_tokens_details":{"cached_tokens":0}}\n\n'
    )
    assert ChatDelta(content="x").model_dump() == {"content": "x"}
    assert ChatDelta(role="assistant", content="").model_dump() == {"role": "assistant", "content": ""}


async def _items(values: list[int], gap: float) -> AsyncIterator[int]:
    for value in values:
        await asyncio.sleep(gap)
        yield value


async def test_coalesce_off_sends_each_item() -> None:
    groups = [group async for group in coalesce(_items([1, 2, 3], 0), 0)]
    assert groups == [[1], [2], [3]]


async def test_coalesce_groups_items_within_an_interval() -> None:
    # A long interval against no gap: everything after the first item waits for the same flush.
    groups = [group async for group in coalesce(_items(list(range(10)), 0), 60.0)]
    assert groups == [[0], list(range(1, 10))]


def test_settings_from_env_and_flags() -> None:
    env = {"PORT": "9000", "CORS_ORIGINS": "http://a, http://b", "TRUST_REMOTE_CODE": "yes", "MODEL": "m"}
    settings = settings_from_env(env, overrides={"port": 9100, "model": None})
    assert (settings.port, settings.model, settings.trust_remote_code) == (9100, "m", True)
    assert settings.cors_origins == ("http://a", "http://b")
    with pytest.raises(ConfigError, match="COMPLETION_MAX_N"):
        settings_from_env({"COMPLETION_MAX_N": "five"})
    with pytest.raises(ConfigError, match="TRUST_REMOTE_CODE"):
        settings_from_env({"TRUST_REMOTE_CODE": "maybe"})
    with pytest.raises(ConfigError, match="LOG_LEVEL"):
        settings_from_env({"LOG_LEVEL": "loud"})
    assert settings_from_env({"LOG_LEVEL": "DEBUG"}).log_level == "debug"
    assert "secret" not in repr(Settings(api_key="secret"))


def test_cli_help_lists_every_setting_with_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    help_text = " ".join(build_parser().format_help().split())
    for option in OPTIONS:
        assert (option.flag in help_text or not option.flagged) and f"env {option.env};" in help_text
    assert "default: hf_eager" in help_text and "default: 4096" in help_text
    # The backend options are settings of the table too (tests/test_config_table.py checks more).
    assert {"COMPILE", "MAX_CONTEXT", "MAX_MEMORY", "LOAD_IN_4BIT"} <= {option.env for option in OPTIONS}
    monkeypatch.setenv("BACKEND", "hf_int8")
    settings = parse_settings(["--port", "1234", "--trust-remote-code", "--cors-origins", "http://x"])
    assert (settings.port, settings.backend, settings.trust_remote_code) == (1234, "hf_int8", True)
    with pytest.raises(SystemExit):
        parse_settings(["--port", "eighty"])


def test_openapi_has_request_schemas() -> None:
    schema = openapi_schema()
    assert {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health"} <= set(schema["paths"])
    request = schema["components"]["schemas"]["CompletionRequest"]
    assert "prompt" in request["properties"] and "prompt" in request["required"]
    assert "ChatMessage" in schema["components"]["schemas"]
    assert "404" in schema["paths"]["/v1/models/{model_id}"]["get"]["responses"]
    assert "408" in schema["paths"]["/v1/completions"]["post"]["responses"]
    events = schema["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"][
        "text/event-stream"
    ]
    assert events["x-event-schema"]["$ref"].endswith("/ChatCompletionChunk")
    assert "ChatCompletionChunk" in schema["components"]["schemas"]
