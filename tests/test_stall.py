"""A wedged engine is visible: readiness and liveness fail, the step age is exported, the slow step logged."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator, Sequence

import httpx
import pytest
import torch

from backends.engine.async_engine import AsyncEngine
from backends.engine.contract import Seq
from backends.engine.core import EngineCore
from backends.engine.params import SamplingParams
from backends.engine.step_clock import StepClock, StepLoad
from backends.library import Model
from handler.config import Settings
from handler.model import ServedModel
from tests.conftest_http import LiveServer, live_server, wait_until
from tests.fake_backend import FakeBackend

TIMEOUT = 0.2  # ENGINE_STALL_TIMEOUT in these tests: tiny, so a stall shows at once


class BlockingBackend(FakeBackend):
    """A FakeBackend whose forwards wait, while `gate` is closed, until it opens."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = threading.Event()

    def _logits(self, seqs: Sequence[Seq]) -> torch.Tensor:
        if not self.gate.is_set():
            self.waiting.set()
            self.gate.wait(60)
        return super()._logits(seqs)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def blocked() -> Iterator[tuple[LiveServer, BlockingBackend]]:
    backend = BlockingBackend()

    def loader(settings: Settings) -> ServedModel:
        return Model(EngineCore(backend, max_batch_size=4))

    settings = Settings(engine_stall_timeout=TIMEOUT)
    with live_server(settings, loader=loader) as live:
        try:
            yield live, backend
        finally:
            backend.gate.set()  # a stopping server waits for the step thread


def stream_in_background(url: str, body: dict[str, object]) -> threading.Thread:
    def post() -> None:
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as response:
            response.read()

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread


def step_age(url: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("ladle_engine_step_age_seconds "):
            return float(line.split()[1])
    raise AssertionError("no ladle_engine_step_age_seconds sample")


def test_a_wedged_step_fails_readiness_and_liveness_until_it_completes(
    blocked: tuple[LiveServer, BlockingBackend], caplog: pytest.LogCaptureFixture
) -> None:
    live, backend = blocked
    assert httpx.get(live.url + "/livez").json() == {"status": "ok"}
    assert step_age(live.url) == 0.0
    backend.gate.clear()
    with caplog.at_level(logging.WARNING, logger="ladle.engine"):
        request = stream_in_background(live.url, {"prompt": [10, 11], "max_tokens": 3, "stream": True})
        assert backend.waiting.wait(30)
        wait_until(lambda: httpx.get(live.url + "/health").status_code == 503, 30, "/health did not flip")
        health = httpx.get(live.url + "/health").json()
        assert health["status"] == "stalled" and health["backend"] == "hf_eager"
        # The step in flight is the prompt's prefill: the report says so, with its size.
        assert "prefilling 1 prompt(s) of 2 tokens" in health["reason"]
        assert "ENGINE_STALL_TIMEOUT" in health["reason"]
        liveness = httpx.get(live.url + "/livez")
        assert liveness.status_code == 503 and liveness.json()["status"] == "stalled"
        assert httpx.get(live.url + "/ping").json() == {"status": "stalled"}
        assert step_age(live.url) > TIMEOUT
        wait_until(lambda: any("has run for over" in r.getMessage() for r in caplog.records), 30, "no log")
        backend.gate.set()
        request.join(timeout=60)
        assert not request.is_alive()
    wait_until(lambda: httpx.get(live.url + "/health").status_code == 200, 30, "/health did not recover")
    assert httpx.get(live.url + "/livez").status_code == 200
    slow = [r.getMessage() for r in caplog.records if "has run for over" in r.getMessage()]
    assert slow == [
        "an engine step has run for over 0.2 s (ENGINE_STALL_TIMEOUT), prefilling 1 prompt(s) of 2 tokens"
    ]
    assert any("the slow engine step completed after" in r.getMessage() for r in caplog.records)


def test_liveness_stays_up_while_draining() -> None:
    with live_server(Settings(engine_stall_timeout=TIMEOUT)) as live:
        live.state.begin_drain()
        assert httpx.get(live.url + "/health").status_code == 503
        livez = httpx.get(live.url + "/livez")
        assert livez.status_code == 200 and livez.json() == {"status": "ok"}


def test_liveness_is_open_without_the_api_key() -> None:
    with live_server(Settings(api_key="k-1")) as live:
        assert httpx.get(live.url + "/livez").status_code == 200


def test_an_idle_engine_is_never_stalled_and_new_work_restarts_the_clock() -> None:
    clock = FakeClock()
    engine = AsyncEngine(EngineCore(FakeBackend()))
    engine.clock = StepClock(clock)
    engine.stall_timeout = 5.0
    clock.now += 3600  # an hour idle
    assert engine.step_age == 0.0 and engine.stall() is None
    engine.submit([10, 11], SamplingParams(max_tokens=2))
    assert engine.stall() is None  # the wait starts when the work arrives, not at the last step
    clock.now += 6
    stall = engine.stall()
    assert stall is not None and stall.seconds == 6 and stall.step_seconds is None
    assert "the engine loop is not stepping" in stall.describe()
    engine.stall_timeout = 0  # off
    assert engine.stall() is None


def test_the_step_load_names_decodes_and_prefills() -> None:
    core = EngineCore(FakeBackend())
    core.add_request([10, 11, 12], SamplingParams(max_tokens=4))
    core.step()
    assert core.step_load == StepLoad(decoding=0, prefill_prompts=1, prefill_tokens=3)
    core.add_request([10, 11], SamplingParams(max_tokens=4))
    core.step()
    assert core.step_load == StepLoad(decoding=1, prefill_prompts=1, prefill_tokens=2)
    assert core.step_load.describe() == "decoding 1 sequence(s) and prefilling 1 prompt(s) of 2 tokens"


async def test_a_stopped_engine_reports_no_stall() -> None:
    engine = AsyncEngine(EngineCore(FakeBackend()))
    engine.stall_timeout = 1e-9
    await engine.start()
    engine.submit([10, 11], SamplingParams(max_tokens=50, ignore_eos=True))
    await engine.shutdown()
    await asyncio.sleep(0.01)
    assert engine.stall() is None


def test_a_failed_load_fails_liveness_without_saying_why() -> None:
    def broken(settings: Settings) -> ServedModel:
        raise RuntimeError("secret path /srv/models/x")

    with live_server(Settings(), loader=broken, healthy=False) as live:
        wait_until(lambda: live.state.status == "failed", 30, "the load did not fail")
        livez = httpx.get(live.url + "/livez")
        assert livez.status_code == 503 and livez.json()["status"] == "failed"
        assert "secret" not in livez.text and "secret" not in httpx.get(live.url + "/health").text
