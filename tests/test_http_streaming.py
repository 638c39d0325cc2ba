"""Server-sent events on live servers: framing, errors midway, concurrency, disconnects, 429, coalescing."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from handler.config import Settings
from tests.conftest_http import LiveServer, live_server, sse_events, wait_until
from tests.fake_engine import fake_loader


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with live_server() as live:
        yield live


def stream_events(server: LiveServer, path: str, body: dict[str, Any]) -> list[str]:
    with httpx.stream("POST", server.url + path, json={**body, "stream": True}, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return sse_events(response.read().decode())


def test_completion_stream_framing(server: LiveServer) -> None:
    events = stream_events(server, "/v1/completions", {"prompt": "x", "max_tokens": 4, "n": 2})
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert len({chunk["id"] for chunk in chunks}) == 1
    for chunk in chunks:
        assert set(chunk) >= {"id", "object", "created", "model", "choices"}
        assert chunk["object"] == "text_completion"
        for choice in chunk["choices"]:
            assert set(choice) == {"index", "text", "logprobs", "finish_reason"}
    finished = [c["index"] for chunk in chunks for c in chunk["choices"] if c["finish_reason"]]
    assert sorted(finished) == [0, 1]


def test_include_usage_chunk(server: LiveServer) -> None:
    body = {"prompt": "x", "max_tokens": 3, "stream_options": {"include_usage": True}}
    chunks = [json.loads(e) for e in stream_events(server, "/v1/completions", body)[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    assert chunks[-1]["usage"]["total_tokens"] == chunks[-1]["usage"]["prompt_tokens"] + 3
    assert all(chunk["usage"] is None for chunk in chunks[:-1])


def test_error_midway_is_one_error_event(server: LiveServer) -> None:
    events = stream_events(server, "/v1/completions", {"prompt": "FAIL", "max_tokens": 10})
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])
    assert error["error"]["type"] == "server_error" and "injected" not in error["error"]["message"]
    assert all("error" not in json.loads(event) for event in events[:-2])
    chat = stream_events(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "FAIL"}]})
    assert "error" in json.loads(chat[-2])
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIError):
        list(client.completions.create(model="m", prompt="FAIL", max_tokens=10, stream=True))


def test_errors_before_the_stream_are_plain_statuses(server: LiveServer) -> None:
    response = httpx.post(server.url + "/v1/completions", json={"prompt": "x", "stream": True, "top_p": 5})
    assert response.status_code == 400 and response.json()["error"]["param"] == "top_p"


async def test_sixteen_concurrent_streams(server: LiveServer) -> None:
    async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as client:

        async def streamed(seed: int) -> tuple[str, str | None]:
            stream = await client.completions.create(
                model="m", prompt="x", max_tokens=12, seed=seed, stream=True
            )
            text, finish = "", None
            async for chunk in stream:
                for choice in chunk.choices:
                    text += choice.text
                    finish = choice.finish_reason or finish
            return text, finish

        async def whole(seed: int) -> tuple[str, str | None]:
            result = await client.completions.create(model="m", prompt="x", max_tokens=12, seed=seed)
            return result.choices[0].text, result.choices[0].finish_reason

        streams = await asyncio.gather(*(streamed(seed) for seed in range(16)))
        expected = await asyncio.gather(*(whole(seed) for seed in range(16)))
    assert streams == expected
    assert len({text for text, _ in streams}) > 1


@pytest.fixture(scope="module")
def small() -> Iterator[LiveServer]:
    """One running and one queued request at most; slow steps so that streams stay open."""
    settings = Settings(max_batch_size=1, max_queued_requests=1)
    with live_server(settings, loader=fake_loader(step_delay=0.02, context_length=4096)) as live:
        yield live


LONG = {"prompt": "x", "max_tokens": 1000, "ignore_eos": True}


def _drained(server: LiveServer) -> bool:
    return not server.model.engine.active


def test_disconnect_cancels_the_stream_and_frees_capacity(small: LiveServer) -> None:
    engine = small.model.engine
    aborted_before = len(engine.aborted)
    with httpx.stream(
        "POST", small.url + "/v1/completions", json={**LONG, "stream": True}, timeout=30
    ) as response:
        lines = response.iter_lines()  # kept: a dropped line iterator closes the connection
        assert next(lines).startswith("data: ")
        assert len(engine.active) == 1
    wait_until(lambda: _drained(small), 10, "the disconnected stream was not aborted")
    assert len(engine.aborted) == aborted_before + 1
    ok = httpx.post(small.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=30)
    assert ok.status_code == 200


def test_full_queue_is_429_until_a_client_leaves(small: LiveServer) -> None:
    wait_until(lambda: _drained(small), 10, "the server did not drain")
    with (
        httpx.stream("POST", small.url + "/v1/completions", json={**LONG, "stream": True}, timeout=30) as one,
        httpx.stream("POST", small.url + "/v1/completions", json={**LONG, "stream": True}, timeout=30) as two,
    ):
        assert one.status_code == two.status_code == 200
        refused = httpx.post(small.url + "/v1/completions", json={"prompt": "x"}, timeout=30)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "2"
        assert refused.json()["error"]["type"] == "rate_limit_error"
        client = openai.OpenAI(base_url=small.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model="m", prompt="x")
    wait_until(lambda: _drained(small), 10, "the disconnected streams were not aborted")
    assert httpx.post(small.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}).status_code == 200


def test_disconnect_cancels_a_non_streaming_request(small: LiveServer) -> None:
    wait_until(lambda: _drained(small), 10, "the server did not drain")
    body = json.dumps(LONG).encode()
    request = (
        f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", small.port), timeout=10) as connection:
        connection.sendall(request)
        wait_until(lambda: len(small.model.engine.active) == 1, 10, "the request did not start")
    wait_until(lambda: _drained(small), 10, "the abandoned request was not aborted")


def test_coalescing_joins_tokens_into_fewer_chunks() -> None:
    # An interval far longer than the whole generation: the first token goes alone, the rest together.
    with live_server(Settings(completion_max_interval=60_000)) as live:
        events = stream_events(live, "/v1/completions", {"prompt": "x", "max_tokens": 8, "temperature": 0})
        whole = httpx.post(
            live.url + "/v1/completions", json={"prompt": "x", "max_tokens": 8, "temperature": 0}
        )
    chunks = [json.loads(event) for event in events[:-1]]
    assert len(chunks) == 2
    text = "".join(choice["text"] for chunk in chunks for choice in chunk["choices"])
    assert text == whole.json()["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
