"""Keep-alive comments on silent HTTP streams: sent while a request waits, ignored by the openai
client, and never part of the queue worker's output."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import openai
import pytest

from handler.asgi.streaming import KEEPALIVE, send_with_keepalive
from handler.config import Settings
from handler.serverless import Worker
from tests.conftest_http import LiveServer, live_server
from tests.fake_engine import fake_loader

TICK = 0.02  # keep-alive interval of these tests; the fake model takes 0.2 s per token


async def slow_frames(gaps: list[float]) -> AsyncIterator[bytes]:
    for index, gap in enumerate(gaps):
        await asyncio.sleep(gap)
        yield b"frame %d" % index


async def emitted(gaps: list[float], interval: float) -> list[bytes]:
    out: list[bytes] = []

    async def emit(frame: bytes) -> None:
        out.append(frame)

    await send_with_keepalive(slow_frames(gaps), emit, interval)
    return out


async def test_comments_fill_the_silences_and_every_frame_arrives_in_order() -> None:
    out = await emitted([0.3, 0.0, 0.3], TICK)
    frames = [frame for frame in out if frame != KEEPALIVE]
    assert frames == [b"frame 0", b"frame 1", b"frame 2"]
    # Comments before the first frame and between the second and third; none between back-to-back frames.
    assert out[0] == KEEPALIVE and out[-1] == b"frame 2"
    first, second = out.index(b"frame 0"), out.index(b"frame 1")
    assert second == first + 1 and KEEPALIVE in out[second:]


async def test_no_comments_when_disabled() -> None:
    assert await emitted([0.1, 0.1], 0) == [b"frame 0", b"frame 1"]


async def test_a_stream_ended_early_cancels_the_frame_it_awaits() -> None:
    closed = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        try:
            while True:
                await asyncio.sleep(10)
                yield b"never"
        finally:
            closed.set()

    async def emit(frame: bytes) -> None:
        raise ConnectionError("the client left")

    with pytest.raises(ConnectionError):
        await send_with_keepalive(endless(), emit, TICK)
    assert closed.is_set()


@pytest.fixture(scope="module")
def slow_server() -> Iterator[LiveServer]:
    with live_server(Settings(sse_keepalive=TICK), loader=fake_loader(step_delay=0.2)) as live:
        yield live


BODY = {"prompt": "Hi", "max_tokens": 3, "ignore_eos": True, "stream": True}


def test_the_server_sends_comments_while_a_stream_is_silent(slow_server: LiveServer) -> None:
    with httpx.stream("POST", slow_server.url + "/v1/completions", json=BODY, timeout=30) as response:
        raw = "".join(response.iter_text())
    events = [event for event in raw.split("\n\n") if event]
    assert ": keep-alive" in events
    assert events.index(": keep-alive") < next(i for i, e in enumerate(events) if e.startswith("data: {"))
    assert events[-1] == "data: [DONE]"
    assert all(event == ": keep-alive" or event.startswith("data: ") for event in events)


def test_the_openai_client_ignores_the_comments(slow_server: LiveServer) -> None:
    client = openai.OpenAI(base_url=slow_server.url + "/v1", api_key="x", max_retries=0)
    chunks = list(
        client.completions.create(
            model="m", prompt="Hi", max_tokens=3, stream=True, extra_body={"ignore_eos": True}
        )
    )
    assert len(chunks) == 3 and chunks[-1].choices[0].finish_reason == "length"
    text = "".join(chunk.choices[0].text for chunk in chunks)
    plain = client.completions.create(model="m", prompt="Hi", max_tokens=3, extra_body={"ignore_eos": True})
    assert text == plain.choices[0].text and text
    chat = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Hi"}], max_tokens=3, stream=True
    )
    deltas = [chunk.choices[0].delta for chunk in chat if chunk.choices]
    assert deltas[0].role == "assistant" and "".join(d.content or "" for d in deltas)


async def test_the_queue_worker_sends_no_comments() -> None:
    worker = Worker(Settings(sse_keepalive=TICK), loader=fake_loader(step_delay=0.2))
    try:
        job = {"input": {"openai_route": "/v1/completions", "openai_input": BODY}}
        frames = [frame async for frame in worker.handle(job)]
    finally:
        await worker.close()
    assert frames[-1] == "data: [DONE]\n\n" and len(frames) == 4
    assert all(frame.startswith("data: ") for frame in frames)


def test_the_keepalive_setting_takes_seconds_as_a_number() -> None:
    from handler.config import ConfigError, settings_from_env

    assert Settings().sse_keepalive == 15.0
    assert settings_from_env({"SSE_KEEPALIVE": "2.5"}).sse_keepalive == 2.5
    assert settings_from_env({"SSE_KEEPALIVE": "0"}).sse_keepalive == 0.0
    for bad in ("-1", "nan", "inf", "soon"):
        with pytest.raises(ConfigError, match="SSE_KEEPALIVE"):
            settings_from_env({"SSE_KEEPALIVE": bad})
