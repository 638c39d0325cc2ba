"""SIGTERM to a real server process: streams in flight finish, new requests get 503, the exit status is 0.

The server runs `serve()` in its own process (so the signal path is the real one) with the scripted
engine slowed to 50 ms a token, so that streams are still running while the test looks.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx

from loadtest.matrix import free_port
from tests.conftest_http import wait_until

ROOT = Path(__file__).resolve().parents[1]
SERVER = (
    "import sys, time\n"
    "from handler.config import settings_from_env\n"
    "from handler.asgi.server import serve\n"
    "from tests.fake_engine import fake_loader\n"
    "load = fake_loader(step_delay=0.05)\n"
    "def loader(settings):\n"
    "    time.sleep(float(sys.argv[1]))\n"
    "    return load(settings)\n"
    "sys.exit(serve(settings_from_env(), loader=loader))\n"
)


@contextlib.contextmanager
def server_process(
    drain_timeout: int, load_delay: float = 0, healthy: bool = True
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "DRAIN_TIMEOUT": str(drain_timeout),
        "LOG_LEVEL": "info",
    }
    command = [sys.executable, "-c", SERVER, str(load_delay)]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def status() -> int:
        try:
            return httpx.get(url + "/health", timeout=5).status_code
        except httpx.TransportError:
            assert process.poll() is None, "the server exited"
            return 0

    def ready() -> bool:
        return status() == 200

    def listening() -> bool:
        return status() != 0

    try:
        wait_until(ready if healthy else listening, 120, "the server did not start")
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=60)


def stream_body(max_tokens: int) -> dict[str, object]:
    return {"prompt": "Hi", "max_tokens": max_tokens, "ignore_eos": True, "stream": True}


def test_sigterm_lets_streams_finish_and_refuses_new_requests() -> None:
    with server_process(drain_timeout=120) as (process, url), httpx.Client(timeout=60) as client:
        with contextlib.ExitStack() as streams:
            responses = [
                streams.enter_context(client.stream("POST", url + "/v1/completions", json=stream_body(60)))
                for _ in range(2)
            ]
            lines = [response.iter_lines() for response in responses]
            assert all(next(it).startswith("data: {") for it in lines)
            process.send_signal(signal.SIGTERM)

            wait_until(lambda: httpx.get(url + "/health").status_code == 503, 60, "readiness did not fail")
            assert httpx.get(url + "/health").json()["status"] == "draining"
            assert httpx.get(url + "/ping").json() == {"status": "draining"}
            refused = httpx.post(url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
            assert refused.status_code == 503 and refused.headers["Retry-After"].isdigit()
            assert refused.json()["error"]["code"] == "draining"
            assert httpx.get(url + "/metrics").status_code == 200

            for it in lines:
                events = [line.removeprefix("data: ") for line in it if line]
                assert events[-1] == "[DONE]"
                assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
        assert process.wait(timeout=60) == 0
        output = process.communicate(timeout=60)[0].decode()
    assert "draining" in output and "drained" in output


def test_drain_timeout_ends_the_streams_left_and_exits_zero() -> None:
    with server_process(drain_timeout=1) as (process, url), httpx.Client(timeout=60) as client:
        with client.stream("POST", url + "/v1/completions", json=stream_body(250)) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: {")
            process.send_signal(signal.SIGTERM)
            events = [line.removeprefix("data: ") for line in lines if line]
        # The stream was ended (with [DONE]) long before its 250 tokens.
        assert events[-1] == "[DONE]"
        reasons = [c.get("finish_reason") for e in events[:-1] for c in json.loads(e).get("choices", [])]
        assert "length" not in reasons and len(events) < 250
        assert process.wait(timeout=60) == 0


def test_sigterm_while_the_model_loads_exits_zero_at_once() -> None:
    # The loader sleeps ten minutes: the process must not wait for it.
    with server_process(drain_timeout=30, load_delay=600, healthy=False) as (process, url):
        assert httpx.get(url + "/health").json() == {"status": "loading"}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
