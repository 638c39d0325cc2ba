"""Faults a long-running server meets, on a real engine (the tiny Llama): clients that vanish
mid-stream, a forward pass that raises, a prompt too large for memory, SIGTERM under load."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import httpx
import pytest
import torch
import uvicorn

from handler.asgi.app import create_app
from handler.asgi.server import DrainingServer
from handler.config import Settings
from handler.model import load_served_model
from reliability.live import single_thread
from tests.conftest_http import LiveServer, live_server, wait_until
from tests.tiny_models import tiny_model_dir

BATCH = 8  # MAX_BATCH_SIZE of these servers
LONG = 900  # tokens: a stream that is still running whenever the test looks
OOM = getattr(torch, "OutOfMemoryError", MemoryError)


def tiny_settings(**overrides: Any) -> Settings:
    return Settings(
        model=str(tiny_model_dir("llama")), served_model_name="tiny", max_batch_size=BATCH, **overrides
    )


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with single_thread(), live_server(tiny_settings(), loader=load_served_model) as live:
        yield live


def core(server: LiveServer) -> Any:
    return server.model.engine.core


def drained(server: LiveServer) -> bool:
    """Nothing running, queued, or remembered by the engine; no cache rows held by the backend."""
    engine = server.model.engine
    return (
        engine.core.num_running == 0
        and engine.core.num_queued == 0
        and not engine.core._requests
        and not engine._streams
        and not getattr(engine.core.backend, "batches", [])
        and not getattr(engine.core.backend, "staged", {})
    )


async def eventually(condition: Callable[[], bool], message: str, timeout: float = 120.0) -> None:
    """Wait (a bound, not a measurement) without blocking the event loop the clients run on."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        await asyncio.sleep(0.01)


def stream_body(max_tokens: int = LONG, prompt: str | list[int] = "Hi") -> dict[str, Any]:
    return {"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "stream": True}


class Stream:
    """One streamed response, read event by event."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()  # kept: dropping the iterator closes the response

    async def next_event(self) -> Any:
        async for line in self.lines:
            if line:
                data = line.removeprefix("data: ")
                return data if data == "[DONE]" else json.loads(data)
        raise AssertionError("the stream ended without [DONE]")

    async def rest(self) -> list[Any]:
        events = [await self.next_event()]
        while events[-1] != "[DONE]":
            events.append(await self.next_event())
        return events


@contextlib.asynccontextmanager
async def open_stream(client: httpx.AsyncClient, body: dict[str, Any]) -> AsyncIterator[Stream]:
    async with client.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        yield Stream(response)


def assert_finished(events: Sequence[Any]) -> None:
    """A stream that ended well: chunks only, the last choice finished, then [DONE]."""
    assert events[-1] == "[DONE]"
    assert not any("error" in event for event in events[:-1]), events[-3:]
    assert events[-2]["choices"][-1]["finish_reason"] == "length"


def assert_failed(events: Sequence[Any]) -> None:
    """A stream that ended in one error event in OpenAI's shape, then [DONE]."""
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == "generation_failed"
    assert events[-2]["error"]["type"] == "server_error"
    assert not any("error" in event for event in events[:-2])


# -- clients that vanish ------------------------------------------------------------------------


async def leave_after(client: httpx.AsyncClient, path: str, body: dict[str, Any], events: int) -> None:
    """Stream, read `events` events (0: only the headers), then drop the connection."""
    async with client.stream("POST", path, json=body) as response:
        seen = 0
        async for line in response.aiter_lines():
            seen += bool(line)
            if seen >= events:
                break


async def leave_before_answer(port: int, body: dict[str, Any]) -> None:
    """Send a whole (non-streamed) request and hang up before the answer."""
    raw = json.dumps(body).encode()
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(raw)}\r\n\r\n"
    writer.write(head.encode() + raw)
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def test_a_hundred_clients_vanishing_mid_stream_leave_nothing_running(server: LiveServer) -> None:
    rng = random.Random(20240601)
    chat = {
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 64,
        "ignore_eos": True,
        "stream": True,
    }
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
        clients = []
        for index in range(100):
            # Some leave at once, most mid-stream, some read to the end (66 events in all).
            events = rng.randint(0, 70)
            if index % 5 == 4:
                clients.append(leave_before_answer(server.port, {"prompt": "Hi", "max_tokens": 64}))
            elif index % 5 == 3:
                clients.append(leave_after(client, "/v1/chat/completions", chat, events))
            else:
                clients.append(leave_after(client, "/v1/completions", stream_body(64), events))
        await asyncio.gather(*clients)
    await eventually(lambda: drained(server), "sequences were left running")
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=120) as client,
        open_stream(client, stream_body(4)) as stream,
    ):
        assert_finished(await stream.rest())


# -- a forward pass that raises -----------------------------------------------------------------


class Fault:
    """Wraps a backend method so that, once armed, it raises for the first call `when` matches
    (for every such call when `once` is False, as a prompt too large for memory always does)."""

    def __init__(
        self, method: Callable[..., Any], error: BaseException, when: Callable[[Any], bool], once: bool = True
    ) -> None:
        self.method = method
        self.error = error
        self.when = when
        self.once = once
        self.armed = threading.Event()
        self.failed: list[int] = []  # sizes of the batches it failed

    def __call__(self, seqs: Any) -> Any:
        if self.armed.is_set() and self.when(seqs):
            if self.once:
                self.armed.clear()
            self.failed.append(len(seqs))
            raise self.error
        return self.method(seqs)


async def test_a_failing_forward_fails_only_its_batch(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = core(server).backend
    fault = Fault(backend.decode, RuntimeError("injected: the forward pass failed"), lambda seqs: True)
    monkeypatch.setattr(backend, "decode", fault)
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=120) as client,
        contextlib.AsyncExitStack() as stack,
    ):
        batch = [
            await stack.enter_async_context(open_stream(client, stream_body())) for _ in range(BATCH - 1)
        ]
        for stream in batch:
            await stream.next_event()  # each is running
        whole = asyncio.create_task(client.post("/v1/completions", json={**stream_body(), "stream": False}))
        await eventually(lambda: core(server).num_running == BATCH, "the batch did not fill")
        waiting = await stack.enter_async_context(open_stream(client, stream_body(8)))
        await eventually(lambda: core(server).num_queued == 1, "the last request did not queue")
        fault.armed.set()
        for stream in batch:
            assert_failed(await stream.rest())
        response = await whole
        assert response.status_code == 500 and response.json()["error"]["code"] == "generation_failed"
        assert_finished(await waiting.rest())  # queued outside the batch: untouched
        assert fault.failed == [BATCH]
        async with open_stream(client, stream_body(8)) as after:
            assert_finished(await after.rest())
    await eventually(lambda: drained(server), "sequences were left running")


def too_large(limit: int) -> Callable[[Any], bool]:
    return lambda seqs: any(len(seq.token_ids) > limit for seq in seqs)


def fail_long_chunks(monkeypatch: pytest.MonkeyPatch, backend: Any, limit: int) -> list[int]:
    """Make every chunk of a prompt longer than `limit` run out of memory: with streams running,
    a long prompt is prefilled in chunks (extend), not in one prefill. Returns the failures."""
    extend, failures = backend.extend, []

    def extend_or_oom(seq: Any, count: int, all_logits: bool = False) -> Any:
        if len(seq.token_ids) > limit:
            failures.append(1)
            raise OOM("injected: out of memory")
        return extend(seq, count, all_logits)

    monkeypatch.setattr(backend, "extend", extend_or_oom)
    return failures


async def test_a_prompt_too_large_for_memory_fails_alone(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = core(server).backend
    fault = Fault(backend.prefill, OOM("injected: out of memory"), too_large(200))
    fault.armed.set()
    monkeypatch.setattr(backend, "prefill", fault)
    chunk_failures = fail_long_chunks(monkeypatch, backend, 200)
    big = list(range(10, 310))  # 300 tokens: within the context, too large for "memory"
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=120) as client,
        contextlib.AsyncExitStack() as stack,
    ):
        running = [await stack.enter_async_context(open_stream(client, stream_body(300))) for _ in range(2)]
        for stream in running:
            await stream.next_event()
        response = await client.post("/v1/completions", json={"prompt": big, "max_tokens": 4})
        assert response.status_code == 500 and response.json()["error"]["code"] == "generation_failed"
        for stream in running:
            assert_finished(await stream.rest())
        async with open_stream(client, stream_body(8)) as after:
            assert_finished(await after.rest())
    assert fault.failed + chunk_failures == [1]
    await eventually(lambda: drained(server), "sequences were left running")


class Gate:
    """Holds the engine inside decode until opened, so that the next requests are admitted together."""

    def __init__(self, method: Callable[..., Any]) -> None:
        self.method = method
        self.closed = threading.Event()
        self.opened = threading.Event()
        self.holding = threading.Event()  # the engine waits at the gate

    def __call__(self, seqs: Any) -> Any:
        if self.closed.is_set():
            self.holding.set()
            self.opened.wait(timeout=120)
        return self.method(seqs)


async def test_a_prompt_too_large_fails_alone_when_admitted_with_others(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = core(server).backend
    fault = Fault(backend.prefill, OOM("injected: out of memory"), too_large(200), once=False)
    gate = Gate(backend.decode)
    monkeypatch.setattr(backend, "prefill", fault)
    monkeypatch.setattr(backend, "decode", gate)
    chunk_failures = fail_long_chunks(monkeypatch, backend, 200)
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=120) as client,
        contextlib.AsyncExitStack() as stack,
    ):
        holder = await stack.enter_async_context(open_stream(client, stream_body()))
        await holder.next_event()
        gate.closed.set()
        fault.armed.set()
        await eventually(gate.holding.is_set, "the engine did not reach the gate")
        big = asyncio.create_task(
            client.post("/v1/completions", json={"prompt": list(range(10, 310)), "max_tokens": 4})
        )
        small = asyncio.create_task(client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 4}))
        try:
            await eventually(lambda: core(server).num_queued == 2, "the two requests did not queue")
        finally:
            gate.closed.clear()
            gate.opened.set()
        assert (await big).status_code == 500
        # Admitted together while a stream decodes: the small prompt is prefilled whole, the big
        # one in chunks, whose first fails it alone.
        assert (fault.failed, chunk_failures) == ([], [1])
        assert (await small).status_code == 200
    await eventually(lambda: drained(server), "sequences were left running")


async def test_a_request_whose_setup_fails_fails_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    import backends.engine.scheduler

    real = backends.engine.scheduler.StopMatcher

    def stop_matcher(stop: list[str]) -> Any:
        if "BOOM" in stop:
            raise RuntimeError("injected: setting up the request failed")
        return real(stop)

    monkeypatch.setattr(backends.engine.scheduler, "StopMatcher", stop_matcher)
    # A server of its own: the request this test strands must not outlive it.
    with single_thread(), live_server(tiny_settings(), loader=load_served_model) as own:
        async with httpx.AsyncClient(base_url=own.url, timeout=120) as client:
            doomed = asyncio.create_task(
                client.post("/v1/completions", json={"prompt": "Hi", "stop": ["BOOM"]})
            )
            try:
                # A bound on a hang, not a measurement: a failed request answers in well under a second.
                await eventually(
                    doomed.done, "the request whose setup failed never got an answer", timeout=10
                )
            finally:
                doomed.cancel()
            assert (await doomed).status_code == 500
            assert (
                await client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
            ).status_code == 200
        await eventually(lambda: drained(own), "the failed request was left behind")


# -- SIGTERM under load -------------------------------------------------------------------------


@contextlib.contextmanager
def draining_server(settings: Settings) -> Iterator[tuple[Any, str, threading.Thread]]:
    """The CLI's server class on 127.0.0.1, in a thread; handle_exit() is what SIGTERM calls."""
    app = create_app(settings, loader=load_served_model)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
    server = DrainingServer(config, app.state.ladle)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        wait_until(lambda: server.started, 60, "the server did not start")
        wait_until(lambda: httpx.get(url + "/health", timeout=5).status_code == 200, 120, "not healthy")
        yield server, url, thread
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()


async def test_sigterm_under_load_lets_every_stream_finish() -> None:
    settings = tiny_settings(drain_timeout=120)
    with single_thread(), draining_server(settings) as (server, url, thread):
        engine = server.config.app.state.ladle.model.engine.core
        limits = httpx.Limits(max_connections=64)
        async with (
            httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client,
            contextlib.AsyncExitStack() as stack,
        ):
            streams = [
                await stack.enter_async_context(open_stream(client, stream_body(300)))
                for _ in range(2 * BATCH)
            ]
            await eventually(lambda: engine.num_running + engine.num_queued == 2 * BATCH, "not all admitted")
            server.handle_exit(signal.SIGTERM, None)
            with contextlib.suppress(httpx.ConnectError):  # refused outright, once the drain is over
                refused = await client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
                assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"
            for stream in streams:
                assert_finished(await stream.rest())
        await eventually(lambda: not thread.is_alive(), "the server did not exit after the drain")
        assert engine.num_running == 0
