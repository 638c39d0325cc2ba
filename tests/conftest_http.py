"""A real uvicorn server on 127.0.0.1 in a background thread, for the HTTP tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
import uvicorn

from handler.asgi.app import create_app
from handler.config import Settings
from handler.lifecycle import ServerState
from handler.model import load_served_model
from tests.fake_engine import fake_loader
from tests.tiny_models import tiny_model_dir

API_KEY_HEADER = "Authorization"


class LiveServer:
    """uvicorn serving an app on a socket bound to a free port of 127.0.0.1."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def state(self) -> ServerState:
        state: ServerState = self.app.state.ladle
        return state

    @property
    def model(self) -> Any:
        return self.state.model

    def start(self, timeout: float = 60.0) -> None:
        self.thread.start()
        wait_until(lambda: self.server.started, timeout, "the server did not start")

    def wait_healthy(self, timeout: float = 120.0) -> None:
        def healthy() -> bool:
            return httpx.get(self.url + "/health", timeout=5).status_code == 200

        wait_until(healthy, timeout, "the server did not become healthy")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.socket.close()

    @contextlib.contextmanager
    def running(self, healthy: bool = True) -> Iterator[LiveServer]:
        """Start, wait for /health to answer 200 unless told not to, and stop whatever happens."""
        self.start()
        try:
            if healthy:
                self.wait_healthy()
            yield self
        finally:
            self.stop()


def wait_until(condition: Callable[[], bool], timeout: float, message: str) -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds (a bound, not a measurement)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.01)


@contextlib.contextmanager
def live_server(
    settings: Settings | None = None, loader: Any = None, healthy: bool = True
) -> Iterator[LiveServer]:
    """Start a server (a fake model unless `loader` says otherwise); stop it on exit."""
    app = create_app(settings or Settings(), loader=loader or fake_loader())
    with LiveServer(app).running(healthy) as server:
        yield server


@contextlib.contextmanager
def tiny_llama_server() -> Iterator[LiveServer]:
    """The tiny random Llama through the real loader and engine, served as "tiny"."""
    settings = Settings(model=str(tiny_model_dir("llama")), served_model_name="tiny")
    with live_server(settings, loader=load_served_model) as server:
        yield server


def openai_client(server: LiveServer) -> openai.OpenAI:
    """The official client pointed at `server`, with no retries to hide a failure."""
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)


def tiny_llama_fixtures() -> tuple[Any, Any]:
    """Module-scoped `server` and `client` fixtures over one tiny-Llama server; a test module
    takes them with `server, client = tiny_llama_fixtures()`."""

    @pytest.fixture(scope="module")
    def server() -> Iterator[LiveServer]:
        with tiny_llama_server() as live:
            yield live

    @pytest.fixture(scope="module")
    def client(server: LiveServer) -> openai.OpenAI:
        return openai_client(server)

    return server, client


def sse_events(raw: str) -> list[str]:
    """The data fields of a server-sent event stream; every event must be `data: ...` and a blank line."""
    assert raw.endswith("\n\n"), raw[-50:]
    # Keep-alive comments fill silences longer than SSE_KEEPALIVE (a slow machine); they carry nothing.
    events = [event for event in raw[:-2].split("\n\n") if event != ": keep-alive"]
    for event in events:
        assert event.startswith("data: ") and "\n" not in event, event
    return [event[len("data: ") :] for event in events]
