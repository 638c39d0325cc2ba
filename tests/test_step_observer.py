"""The engine's step hook: observers hear of every step, with the step's stats, and cannot break it."""

from __future__ import annotations

import threading
import types

import pytest

from backends.engine import core as core_module
from backends.engine.async_engine import AsyncEngine
from backends.engine.core import EngineCore
from backends.engine.params import SamplingParams
from backends.engine.steps import StepResult
from tests.fake_backend import FakeBackend


class Clock:
    """time.monotonic as the engine sees it: moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


def greedy(max_tokens: int, n: int = 1) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, n=n, ignore_eos=True)


def test_observers_get_every_step_with_its_stats(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(core_module, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    core = EngineCore(FakeBackend(), max_batch_size=8)
    heard: list[StepResult] = []
    core.subscribe(heard.append)
    core.add_request([20, 21], greedy(max_tokens=3), "a")
    core.add_request([50], greedy(max_tokens=2, n=2), "b")
    returned = []
    for now in (1.0, 3.0, 4.0):
        clock.now = now
        returned.append(core.step())
    assert heard == returned and not core.has_work()
    first, second, third = (r.stats for r in heard)
    # Step 1 prefills both requests: each choice gets its first token, 1 s after admission.
    assert (first.batch_size, first.generation_tokens, first.prompt_tokens) == (3, 3, 2 + 1)
    assert first.time_to_first_token == [1.0, 1.0] and first.inter_token_latency == []
    assert first.kv_tokens == (2 + 1) + 2 * (1 + 1)  # prompt + output of each running choice
    # Step 2 decodes all three choices; b ends (max_tokens=2) and leaves the cache.
    assert (second.batch_size, second.generation_tokens, second.prompt_tokens) == (3, 3, 0)
    assert second.time_to_first_token == [] and second.inter_token_latency == [2.0, 2.0]
    assert second.kv_tokens == 2 + 2
    # Step 3: a's last token; nothing is held any more.
    assert (third.batch_size, third.generation_tokens, third.inter_token_latency) == (1, 1, [1.0])
    assert third.kv_tokens == 0
    assert all(stats.seconds == 0.0 for stats in (first, second, third))  # the clock stood still


def test_a_failing_observer_is_logged_and_the_step_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    core = EngineCore(FakeBackend())
    heard: list[StepResult] = []

    def broken(result: StepResult) -> None:
        raise RuntimeError("observer bug")

    core.subscribe(broken)
    core.subscribe(heard.append)
    core.add_request([10], greedy(max_tokens=2), "a")
    results = [core.step(), core.step()]
    assert heard == results and results[-1].outputs[-1].finished
    assert "a step observer failed" in caplog.text


async def test_async_engine_observers_run_on_the_step_thread() -> None:
    engine = AsyncEngine(EngineCore(FakeBackend()))
    threads: list[str] = []
    engine.subscribe(lambda result: threads.append(threading.current_thread().name))
    await engine.start()
    try:
        outputs = [o async for o in engine.submit([10], greedy(max_tokens=3))]
        assert outputs[-1].finished
        assert len(threads) >= 3 and all(name.startswith("ladle-step") for name in threads)
    finally:
        await engine.shutdown()
