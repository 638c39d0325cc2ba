"""The queue worker reports failures as failures: RunPod's contract, and (when installed) RunPod's own runner.

RunPod records a job as FAILED when an item its generator handler yields is a dict with a truthy
"error" (`rp_job.handle_job`); anything else is output of a COMPLETED job. The runpod package is
heavy (about 60 dependencies, boto3 and FastAPI among them), so `make test` does not install it:
the contract tests below run without it, and the runner test runs where it is installed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import sys
import threading
from typing import Any

import pytest

from backends.engine.step_clock import Stall, StepLoad
from handler import serverless
from handler.config import Settings
from handler.serverless import Worker, exit_on_stall
from tests.fake_engine import fake_loader

needs_runpod = pytest.mark.skipif(
    importlib.util.find_spec("runpod") is None,
    reason="runpod is not installed (pip install 'ladle[serverless]')",
)


def job(body: dict[str, Any], route: str = "/v1/completions") -> dict[str, Any]:
    return {"id": "job-1", "input": {"openai_route": route, "openai_input": body}}


def items(body: dict[str, Any], route: str = "/v1/completions") -> list[Any]:
    async def scenario() -> list[Any]:
        worker = Worker(Settings(), loader=fake_loader())
        try:
            return [item async for item in worker.handle(job(body, route))]
        finally:
            await worker.close()

    return asyncio.run(scenario())


def is_failure(item: Any) -> bool:
    """RunPod's test: a dict item with a truthy "error" fails the job."""
    return isinstance(item, dict) and bool(item.get("error"))


@pytest.mark.parametrize("stream", [False, True])
def test_a_value_error_inside_the_engine_fails_the_job_as_a_500_and_the_worker_serves_on(
    stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="ladle")

    async def scenario() -> tuple[list[Any], list[Any]]:
        worker = Worker(Settings(), loader=fake_loader())
        try:
            bug = [item async for item in worker.handle(job({"prompt": "VALUEBUG", "stream": stream}))]
            fine = [item async for item in worker.handle(job({"prompt": "fine", "max_tokens": 2}))]
            return bug, fine
        finally:
            await worker.close()

    bug, fine = asyncio.run(scenario())
    assert len(bug) == 1 and is_failure(bug[0]) and "secret" not in bug[0]["error"]
    error = json.loads(bug[0]["error"])["error"]
    assert (error["type"], error["param"], error["message"]) == (
        "server_error",
        None,
        "internal server error",
    )
    assert any(r.exc_info is not None and isinstance(r.exc_info[1], ValueError) for r in caplog.records)
    assert len(fine) == 1 and not is_failure(fine[0]) and fine[0]["choices"][0]["text"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_generation_that_fails_ends_the_job_as_failed(stream: bool) -> None:
    got = items({"prompt": "FAIL", "max_tokens": 8, "stream": stream})
    assert is_failure(got[-1]) and not any(is_failure(item) for item in got[:-1])
    error = json.loads(got[-1]["error"])["error"]
    assert error["code"] == "generation_failed" and error["type"] == "server_error"
    # The stream's events before the failure went out; none of them is an error event or [DONE].
    assert all(isinstance(frame, str) and '"error"' not in frame for frame in got[:-1])
    assert "data: [DONE]\n\n" not in got


@pytest.mark.parametrize("stream", [False, True])
def test_a_job_that_succeeds_has_no_error_item(stream: bool) -> None:
    got = items({"prompt": "Hi", "max_tokens": 3, "stream": stream})
    assert not any(is_failure(item) for item in got)
    assert got[-1] == "data: [DONE]\n\n" if stream else got[0]["object"] == "text_completion"


def test_run_returns_the_job_error_or_the_items() -> None:
    async def scenario() -> tuple[Any, Any]:
        worker = Worker(Settings(), loader=fake_loader())
        try:
            bad = await worker.run(job({"prompt": "Hi", "temperature": 9}))
            good = await worker.run(job({"prompt": "Hi", "max_tokens": 2}))
            return bad, good
        finally:
            await worker.close()

    bad, good = asyncio.run(scenario())
    assert json.loads(bad["error"])["error"]["param"] == "temperature"
    assert isinstance(good, list) and good[0]["object"] == "text_completion"


def test_the_generator_handler_runs_on_runpod_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNPOD_WEBHOOK_GET_JOB", raising=False)
    monkeypatch.setattr(sys, "argv", ["handler"])
    assert not serverless._on_runpod()
    monkeypatch.setenv("RUNPOD_WEBHOOK_GET_JOB", "https://api.runpod.ai/v2/x/job-take/y")
    assert serverless._on_runpod()
    monkeypatch.setattr(sys, "argv", ["handler", "--test_input", "{}"])
    assert not serverless._on_runpod()


class _StalledState:
    def stall(self) -> Stall:
        return Stall(9.0, 1.0, 9.0, StepLoad(decoding=3))


def test_a_stalled_worker_exits_so_that_the_platform_replaces_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    exits: list[int] = []
    stop = threading.Event()

    def fake_exit(code: int) -> None:
        exits.append(code)
        stop.set()

    monkeypatch.setattr(serverless.os, "_exit", fake_exit)
    thread = exit_on_stall(_StalledState(), period=0.01, stop=stop)  # type: ignore[arg-type]
    thread.join(timeout=30)
    assert exits == [1]
    assert any("decoding 3 sequence(s)" in r.getMessage() for r in caplog.records)


@needs_runpod
@pytest.mark.parametrize(
    ("body", "failed"),
    [
        ({"prompt": "Hi", "max_tokens": 3}, False),
        ({"prompt": "Hi", "max_tokens": 3, "stream": True}, False),
        ({"prompt": "Hi", "temperature": 9}, True),
        ({"prompt": "FAIL", "max_tokens": 8}, True),
        ({"prompt": "FAIL", "max_tokens": 8, "stream": True}, True),
    ],
)
def test_runpods_job_runner_records_failures_as_failed(
    monkeypatch: pytest.MonkeyPatch, body: dict[str, Any], failed: bool
) -> None:
    from runpod.serverless.modules import rp_job

    results: list[dict[str, Any]] = []

    async def send_result(session: Any, result: dict[str, Any], job: Any, is_stream: bool = False) -> None:
        results.append(result)

    async def stream_result(session: Any, output: Any, job: Any) -> None:
        return None

    monkeypatch.setattr(rp_job, "send_result", send_result)
    monkeypatch.setattr(rp_job, "stream_result", stream_result)

    async def scenario() -> None:
        worker = Worker(Settings(), loader=fake_loader())
        config = {"handler": worker.handle, "return_aggregate_stream": True}
        try:
            await rp_job.handle_job(None, config, job(body))
        finally:
            await worker.close()

    asyncio.run(scenario())
    [result] = results
    assert bool(result.get("error")) is failed, result
    if failed:
        assert "output" not in result and json.loads(result["error"])["error"]["message"]
    else:
        assert result["output"] and not any(is_failure(item) for item in result["output"])


def test_a_job_arriving_while_the_engine_is_stalled_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> list[Any]:
        worker = Worker(Settings(), loader=fake_loader())
        try:
            await worker.service()
            monkeypatch.setattr(worker.state, "stall", _StalledState().stall)
            return [item async for item in worker.handle(job({"prompt": "Hi", "max_tokens": 2}))]
        finally:
            await worker.close()

    [item] = asyncio.run(scenario())
    error = json.loads(item["error"])["error"]
    assert error["code"] == "stalled" and "decoding 3 sequence(s)" in error["message"]
