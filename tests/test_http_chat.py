"""POST /v1/chat/completions against a live server over the fake engine, with the official openai client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from handler.config import Settings
from tests.conftest_http import LiveServer, live_server, sse_events
from tests.fake_engine import fake_loader

USER = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with live_server() as live:
        yield live


@pytest.fixture(scope="module")
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_chat_completion(client: openai.OpenAI, server: LiveServer) -> None:
    result = client.chat.completions.create(model="m", messages=USER, max_tokens=4, temperature=0)  # type: ignore[arg-type]
    assert result.id.startswith("chatcmpl-") and result.object == "chat.completion" and result.model == "m"
    [choice] = result.choices
    assert (choice.message.role, choice.message.content, choice.finish_reason) == (
        "assistant",
        "The quick b",
        "length",
    )
    prompt = "<s>user\nWhat is the capital of France?</s>\n<s>assistant\n"
    prompt_tokens = len(server.model.tokenizer(prompt, add_special_tokens=False).input_ids)
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (prompt_tokens, 4)
    assert server.model.engine.submitted[-1][0] == server.model.tokenizer(prompt).input_ids


def test_roles_and_content_parts(client: openai.OpenAI, server: LiveServer) -> None:
    messages: Any = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": "Hello."},
        {"role": "tool", "content": "42", "tool_call_id": "call_1"},
        {"role": "user", "content": "Again?"},
    ]
    client.chat.completions.create(model="m", messages=messages, max_tokens=2)
    prompt = server.model.tokenizer.decode(server.model.engine.submitted[-1][0])
    assert prompt == (
        "<s>system\nBe brief.</s>\n<s>user\nHi there</s>\n<s>assistant\nHello.</s>\n"
        # This template has no tool support: a tool result is a user turn (ladle's fallback).
        "<s>user\n<tool_response>\n42\n</tool_response></s>\n<s>user\nAgain?</s>\n<s>assistant\n"
    )


def test_max_tokens_fields_n_and_stop(client: openai.OpenAI, server: LiveServer) -> None:
    result = client.chat.completions.create(model="m", messages=USER, max_completion_tokens=3, n=2)  # type: ignore[arg-type]
    assert [c.index for c in result.choices] == [0, 1]
    assert result.usage is not None and result.usage.completion_tokens == 6
    client.chat.completions.create(model="m", messages=USER, max_tokens=5)  # type: ignore[arg-type]
    assert server.model.engine.submitted[-1][1].max_tokens == 5
    stopped = client.chat.completions.create(model="m", messages=USER, stop=["fox"], temperature=0)  # type: ignore[arg-type]
    assert (stopped.choices[0].message.content, stopped.choices[0].finish_reason) == (
        "The quick brown ",
        "stop",
    )


def test_sampling_fields_reach_the_engine(client: openai.OpenAI, server: LiveServer) -> None:
    client.chat.completions.create(
        model="m",
        messages=USER,  # type: ignore[arg-type]
        temperature=0.7,
        top_p=0.8,
        presence_penalty=1,
        frequency_penalty=1,
        logit_bias={"3": -1},
        seed=5,
        user="u",
        response_format={"type": "text"},
    )
    prompt, params = server.model.engine.submitted[-1]
    assert (params.temperature, params.top_p, params.seed, params.logit_bias) == (0.7, 0.8, 5, {3: -1.0})
    assert (params.presence_penalty, params.frequency_penalty) == (1.0, 1.0)
    # No max_tokens in chat: up to the context.
    assert params.max_tokens == server.model.info.context_length - len(prompt)


def test_logprobs_in_chat_shape(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model="m", messages=USER, max_tokens=3, logprobs=True, top_logprobs=2
    )  # type: ignore[arg-type]
    logprobs = result.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert [entry.token for entry in logprobs.content] == ["The", " qu", "ick"]
    first = logprobs.content[0]
    assert first.bytes == list(b"The") and len(first.top_logprobs) == 2
    assert first.top_logprobs[0].token == "The" and first.top_logprobs[0].logprob == first.logprob


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {}}}}},
            "response_format",
        ),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ],
)
def test_unsupported_features_answer_400(client: openai.OpenAI, extra: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=USER, **extra)  # type: ignore[arg-type]
    body: Any = info.value.body
    assert body["param"] == param and body["type"] == "invalid_request_error"
    if param != "top_logprobs":
        assert "uses not" in body["message"]  # the keyword the grammar engine cannot enforce


def test_stream_chunks(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="m", messages=USER, max_tokens=5, n=2, seed=4)  # type: ignore[arg-type]
    stream = client.chat.completions.create(
        model="m",
        messages=USER,  # type: ignore[arg-type]
        max_tokens=5,
        n=2,
        seed=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert {chunk.id for chunk in chunks} == {chunks[0].id} and chunks[0].object == "chat.completion.chunk"
    first_delta = {c.index: c.delta for chunk in chunks[:2] for c in chunk.choices}
    assert {i: (d.role, d.content) for i, d in first_delta.items()} == {
        0: ("assistant", ""),
        1: ("assistant", ""),
    }
    texts = {0: "", 1: ""}
    for chunk in chunks[2:-1]:
        for choice in chunk.choices:
            assert choice.delta.role is None
            texts[choice.index] += choice.delta.content or ""
    assert texts == {c.index: c.message.content for c in whole.choices}
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_stream_raw_framing(server: LiveServer) -> None:
    body = {"messages": USER, "max_tokens": 3, "stream": True, "logprobs": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all("usage" not in chunk or chunk["usage"] is None for chunk in chunks)
    assert chunks[1]["choices"][0]["logprobs"]["content"][0]["token"] == "The"


async def test_async_client(server: LiveServer) -> None:
    async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as client:
        result = await client.chat.completions.create(model="m", messages=USER, max_tokens=3, temperature=0)  # type: ignore[arg-type]
        stream = await client.chat.completions.create(
            model="m",
            messages=USER,  # type: ignore[arg-type]
            max_tokens=3,
            temperature=0,
            stream=True,
        )
        text = "".join([c.delta.content or "" async for chunk in stream for c in chunk.choices])
    assert text == result.choices[0].message.content


def test_template_from_chat_template_file_and_missing_template(tmp_path: Path) -> None:
    template = tmp_path / "chat.jinja"
    template.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}")
    with live_server(loader=fake_loader(chat_template=None)) as bare:
        response = httpx.post(bare.url + "/v1/chat/completions", json={"messages": USER})
        assert response.status_code == 400
        assert "CHAT_TEMPLATE" in response.json()["error"]["message"]
    with live_server(Settings(chat_template=str(template)), loader=fake_loader(chat_template=None)) as custom:
        response = httpx.post(custom.url + "/v1/chat/completions", json={"messages": USER, "max_tokens": 1})
        assert response.status_code == 200
        prompt = custom.model.tokenizer.decode(custom.model.engine.submitted[-1][0])
        assert prompt == "[user] What is the capital of France?\n"
