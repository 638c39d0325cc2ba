"""Limits on what one request or one client may take: body, prompt, max_tokens, n x max_tokens,
requests in flight, and slow or stalled clients (who must never hold up anyone else)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from handler.asgi.app import create_app
from handler.asgi.limits import ClientLimitsMiddleware
from handler.config import Settings
from tests.conftest_http import LiveServer, wait_until
from tests.fake_engine import FakeModel, fake_loader

SHORT = 0.5  # CLIENT_TIMEOUT, in seconds, of the servers that meet slow clients
LONG = 30.0  # and of the others: ample for a test machine under load


@contextlib.contextmanager
def limited_server(
    settings: Settings | None = None,
    max_concurrent: int = 64,
    timeout: float = LONG,
    send_buffer: int | None = None,
    **fake: Any,
) -> Iterator[LiveServer]:
    """A fake-model server behind ClientLimitsMiddleware; `send_buffer` shrinks its sockets' buffers."""
    app = create_app(settings or Settings(), loader=fake_loader(**fake))
    app.add_middleware(ClientLimitsMiddleware, max_concurrent=max_concurrent, timeout=timeout)
    server = LiveServer(app)
    if send_buffer is not None:
        # Accepted sockets inherit the listening socket's buffer size: a stalled reader blocks sends soon.
        server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    with server.running() as live:
        yield live


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param
    return error


def engine(server: LiveServer) -> Any:
    model: FakeModel = server.model
    return model.engine


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    settings = Settings(completion_max_prompt=50, completion_max_tokens=40, max_body_size=2_000)
    with limited_server(settings, max_concurrent=64) as live:
        yield live


def post(server: LiveServer, body: dict[str, Any], path: str = "/v1/completions") -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=30)


def test_body_past_max_body_size_is_refused_without_content_length(server: LiveServer) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"x" * 500  # sent chunked: the server must count, not trust a header
        yield b'"}'

    response = httpx.post(server.url + "/v1/completions", content=chunks(), timeout=30)
    assert_error(response, 413)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"prompt": list(range(50)), "max_tokens": 1}, 200, None),
        ({"prompt": list(range(51)), "max_tokens": 1}, 400, "prompt"),
        ({"prompt": "x", "max_tokens": 40}, 200, None),
        ({"prompt": "x", "max_tokens": 41}, 400, "max_tokens"),
        ({"prompt": "x", "n": 5, "max_tokens": 1}, 200, None),
        ({"prompt": "x", "n": 6, "max_tokens": 1}, 400, "n"),
    ],
)
def test_request_size_limits(
    server: LiveServer, body: dict[str, Any], status: int, param: str | None
) -> None:
    response = post(server, body)
    if status == 200:
        assert response.status_code == 200, response.text
    else:
        assert_error(response, status, param)


@pytest.fixture
def total_of_20(server: LiveServer) -> Iterator[None]:
    """COMPLETION_MAX_TOTAL_TOKENS=20 on the running service (the setting itself is tested below)."""
    service = server.state.service
    before = service.limits
    service.limits = dataclasses.replace(before, max_total_tokens=20)
    yield
    service.limits = before


@pytest.mark.usefixtures("total_of_20")
@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"prompt": "x", "n": 2, "max_tokens": 10}, 200, None),
        ({"prompt": "x", "n": 4, "max_tokens": 6}, 400, "max_tokens"),
        ({"prompt": "x", "n": 1, "best_of": 3, "max_tokens": 7}, 400, "max_tokens"),
        ({"prompt": ["a", "b", "c"], "n": 2, "max_tokens": 4}, 400, "max_tokens"),
        ({"prompt": ["a", "b"], "n": 2, "max_tokens": 5}, 200, None),
    ],
)
def test_n_times_max_tokens_limit(
    server: LiveServer, body: dict[str, Any], status: int, param: str | None
) -> None:
    response = post(server, body)
    if status == 200:
        assert response.status_code == 200, response.text
    else:
        assert "COMPLETION_MAX_TOTAL_TOKENS" in assert_error(response, status, param)["message"]


@pytest.mark.usefixtures("total_of_20")
def test_null_max_tokens_shares_the_total(server: LiveServer) -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}], "n": 4, "ignore_eos": True}
    response = post(server, body, "/v1/chat/completions")
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 4 * 5
    assert all(choice["finish_reason"] == "length" for choice in response.json()["choices"])


@pytest.mark.skipif(
    "completion_max_total_tokens" not in {f.name for f in dataclasses.fields(Settings)},
    reason="waits for COMPLETION_MAX_TOTAL_TOKENS in handler/config.py",
)
def test_total_tokens_setting_reaches_the_service() -> None:
    from handler.api.service import OpenAIService
    from handler.config import settings_from_env

    settings = settings_from_env({"COMPLETION_MAX_TOTAL_TOKENS": "123"})
    model: Any = FakeModel()
    assert OpenAIService(model, settings).limits.max_total_tokens == 123


def test_requests_past_the_cap_get_429_and_probes_still_answer() -> None:
    body = {"prompt": "Hi", "max_tokens": 200, "ignore_eos": True, "stream": True}
    with (
        limited_server(max_concurrent=2, step_delay=0.02, context_length=1024) as live,
        httpx.Client(base_url=live.url, timeout=30) as client,
        contextlib.ExitStack() as held,
    ):
        # Keep the line iterators: closing one (as its garbage collection does) closes its response.
        lines = [
            held.enter_context(client.stream("POST", "/v1/completions", json=body)).iter_lines()
            for _ in range(2)
        ]
        assert all(next(line).startswith("data: ") for line in lines)
        refused = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 1})
        assert assert_error(refused, 429)["type"] == "rate_limit_error"
        assert refused.headers["retry-after"] == "1"
        assert client.get("/health").status_code == 200
        held.close()  # both clients leave: their places free up
        wait_until(
            lambda: client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 1}).status_code == 200,
            30,
            "the freed places were not given back",
        )


def raw_request(
    port: int, body: bytes, content_length: int, receive_buffer: int | None = None
) -> socket.socket:
    """A socket that has sent a POST's headers and `body` (maybe less than Content-Length says)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(("127.0.0.1", port))
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {content_length}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """(status line and headers, body) of one response with a Content-Length."""
    sock.settimeout(30)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))[15:]
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head, body


def test_slow_body_gets_408_and_holds_up_nobody() -> None:
    with limited_server(timeout=SHORT) as live:
        slow = raw_request(live.port, b'{"prompt": "Hi"', content_length=100)
        stalled_headers = socket.create_connection(("127.0.0.1", live.port))
        stalled_headers.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-")
        try:
            assert post(live, {"prompt": "Hi", "max_tokens": 2}).status_code == 200
            head, body = read_response(slow)
        finally:
            slow.close()
            stalled_headers.close()
    assert head.startswith(b"HTTP/1.1 408"), head
    assert json.loads(body)["error"]["code"] == "request_timeout"


def test_a_client_leaving_mid_body_is_no_server_error(
    server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    leaving = raw_request(server.port, b'{"prompt": ', content_length=100)
    leaving.close()
    assert post(server, {"prompt": "Hi", "max_tokens": 2}).status_code == 200
    wait_until(lambda: server.state.metrics.active == 0, 30, "the request was never over")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_stalled_reader_is_dropped_and_its_generation_freed() -> None:
    # About 700 kB of events: far more than the socket buffers and uvicorn's write buffer hold.
    body = {"prompt": "Hi", "max_tokens": 4_000, "ignore_eos": True, "stream": True}
    raw = json.dumps(body).encode()
    with limited_server(timeout=SHORT, send_buffer=4096, step_delay=0.0, context_length=8_000) as live:
        fake = engine(live)
        stalled = raw_request(live.port, raw, len(raw), receive_buffer=4096)  # and never read
        try:
            wait_until(lambda: len(fake.aborted) == 1, 60, "the stalled stream was never dropped")
            assert fake.active == {}
            assert post(live, {"prompt": "Hi", "max_tokens": 2}).status_code == 200
        finally:
            stalled.close()


def test_the_middleware_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        ClientLimitsMiddleware(create_app(Settings(), loader=fake_loader()), max_concurrent=0, timeout=1)


@pytest.mark.skipif(
    "max_concurrent_requests" not in {f.name for f in dataclasses.fields(Settings)},
    reason="waits for MAX_CONCURRENT_REQUESTS and CLIENT_TIMEOUT in handler/config.py and handler/asgi/app.py",
)
def test_the_settings_put_the_limits_in_front_of_the_app() -> None:
    from handler.config import settings_from_env

    settings = settings_from_env({"MAX_CONCURRENT_REQUESTS": "7", "CLIENT_TIMEOUT": "9"})
    app = create_app(settings, loader=fake_loader())
    limits = [m for m in app.user_middleware if m.cls is ClientLimitsMiddleware]
    assert len(limits) == 1 and limits[0].kwargs == {"max_concurrent": 7, "timeout": 9}


# -- bounds on the sizes a request controls (handler/api/bounds.py) -------------------------------------

BOUNDS = Settings(
    completion_max_prompt=500,
    completion_max_tokens=4_000,
    completion_max_stop_length=8,
    completion_max_logit_bias=4,
    completion_max_prompts=3,
    chat_max_messages=4,
    chat_max_chars=100,
)
CHAT = "/v1/chat/completions"


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


# (path, body within the bounds, body past them, the param named)
OVER_BOUNDS: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    ("/v1/completions", {"prompt": "x", "stop": "12345678"}, {"prompt": "x", "stop": "123456789"}, "stop"),
    (
        CHAT,
        {"messages": [user("x")], "stop": ["a", "8" * 8]},
        {"messages": [user("x")], "stop": ["a", "9" * 9]},
        "stop",
    ),
    (
        "/v1/completions",
        {"prompt": "x", "logit_bias": {str(i): 1 for i in range(4)}},
        {"prompt": "x", "logit_bias": {str(i): 1 for i in range(5)}},
        "logit_bias",
    ),
    ("/v1/completions", {"prompt": ["a", "b", "c"]}, {"prompt": ["a", "b", "c", "d"]}, "prompt"),
    ("/v1/completions", {"prompt": [[1], [2], [3]]}, {"prompt": [[1], [2], [3], [4]]}, "prompt"),
    ("/v1/completions", {"prompt": [1] * 500}, {"prompt": [1] * 501}, "prompt"),
    # Past the vocabulary as well: the length is what is checked first, before any id is looked up.
    ("/v1/completions", {"prompt": [[1] * 500]}, {"prompt": [[10**9] * 501]}, "prompt"),
    (CHAT, {"messages": [user("x")] * 4}, {"messages": [user("x")] * 5}, "messages"),
    (CHAT, {"messages": [user("x" * 50)] * 2}, {"messages": [user("x" * 50), user("x" * 51)]}, "messages"),
    (
        CHAT,
        {"messages": [user("x" * 100)]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 101}]}]},
        "messages",
    ),
]


@pytest.fixture(scope="module")
def bounded() -> Iterator[LiveServer]:
    with limited_server(BOUNDS, step_delay=0.005, context_length=8_192) as live:
        yield live


@pytest.mark.parametrize(("path", "within", "over", "param"), OVER_BOUNDS)
def test_each_bound_refuses_one_past_it_naming_the_field(
    bounded: LiveServer, path: str, within: dict[str, Any], over: dict[str, Any], param: str
) -> None:
    fake = engine(bounded)
    ok = post(bounded, {**within, "max_tokens": 2}, path)
    assert ok.status_code == 200, ok.text
    submitted = len(fake.submitted)
    error = assert_error(post(bounded, {**over, "max_tokens": 2}, path), 400, param)
    assert error["type"] == "invalid_request_error"
    assert len(fake.submitted) == submitted  # refused before it reached the engine


def test_the_json_depth_stays_bounded(bounded: LiveServer) -> None:
    depth = 100_000
    raw = '{"prompt": "x", "user": ' + "[" * depth + '"x"' + "]" * depth + "}"
    response = httpx.post(bounded.url + "/v1/completions", content=raw, timeout=30)
    assert_error(response, 400)


def test_the_bounds_are_settings_with_documented_defaults() -> None:
    from handler.api.bounds import RequestBounds
    from handler.config import settings_from_env

    settings = settings_from_env(
        {
            "COMPLETION_MAX_STOP_LENGTH": "7",
            "COMPLETION_MAX_LOGIT_BIAS": "0",
            "COMPLETION_MAX_PROMPTS": "2",
            "CHAT_MAX_MESSAGES": "9",
            "CHAT_MAX_CHARS": "99",
            "COMPLETION_MAX_PROMPT": "11",
        }
    )
    assert RequestBounds.from_settings(settings) == RequestBounds(7, 0, 2, 11, 9, 99)
    assert RequestBounds.from_settings(Settings()) == RequestBounds()
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for env, default in [
        ("COMPLETION_MAX_STOP_LENGTH", 1024),
        ("COMPLETION_MAX_LOGIT_BIAS", 1024),
        ("COMPLETION_MAX_PROMPTS", 32),
        ("CHAT_MAX_MESSAGES", 1024),
        ("CHAT_MAX_CHARS", 262144),
    ]:
        assert f"| `{env}` | `{default}` |" in readme


def test_a_request_over_each_bound_is_refused_while_streams_keep_streaming(bounded: LiveServer) -> None:
    """Eight long streams run; every over-bound request is answered 400 while all of them are still
    streaming, and each of them gains chunks after the refusals (ordering and progress, no clocks)."""
    body = {"prompt": "Hi", "max_tokens": 3_000, "ignore_eos": True, "stream": True}
    counts = [0] * 8
    ended = [False] * 8

    def read(index: int) -> None:
        with httpx.stream("POST", bounded.url + "/v1/completions", json=body, timeout=60) as response:
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    counts[index] += 1
        ended[index] = True

    readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(8)]
    for reader in readers:
        reader.start()
    try:
        wait_until(lambda: all(count > 0 for count in counts), 60, "the streams did not start")
        for path, _, over, param in OVER_BOUNDS:
            assert_error(post(bounded, over, path), 400, param)
        assert not any(ended), "a stream ended before the refusals were all answered"
        after_refusals = list(counts)
        wait_until(
            lambda: all(now > then for now, then in zip(counts, after_refusals, strict=True)),
            60,
            "a stream stopped making progress",
        )
        assert not any(ended)
    finally:
        for stream in list(engine(bounded).active.values()):
            stream.abort()
        for reader in readers:
            reader.join(timeout=30)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"prompt": "x", "stop": 5}),
        ("/v1/completions", {"prompt": "x", "stop": ["a", 5]}),
        ("/v1/completions", {"prompt": "x", "logit_bias": [1, 2]}),
        ("/v1/completions", {"prompt": [[1], "a", 5]}),
        ("/v1/completions", {"prompt": [1, "a"]}),
        (CHAT, {"messages": "hi"}),
        (CHAT, {"messages": [5, {"role": "user", "content": [5, {"text": 3}]}]}),
        (CHAT, {"messages": [{"role": "assistant", "content": "x", "tool_calls": 7, "name": 1}]}),
    ],
)
def test_the_bounds_leave_wrong_types_to_validation(
    bounded: LiveServer, path: str, body: dict[str, Any]
) -> None:
    # The bounds read the raw JSON; whatever has the wrong type there is validation's to name.
    assert_error(post(bounded, body, path), 400)
