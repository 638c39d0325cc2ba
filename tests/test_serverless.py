"""The queue worker's handle(job) on the tiny Llama: bodies, streams and errors as the HTTP API gives them."""

from __future__ import annotations

import asyncio
import json
import sys
import types
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from handler import serverless
from handler.config import Settings
from handler.model import load_served_model
from handler.serverless import Worker
from tests.conftest_http import LiveServer, live_server, sse_events, wait_until
from tests.tiny_models import tiny_model_dir

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "temperature": 0}
COMPLETION = {"model": "tiny", "prompt": "Once upon", "max_tokens": 8, "temperature": 0}
module_loop = pytest.mark.asyncio(loop_scope="module")


def settings() -> Settings:
    return Settings(model=str(tiny_model_dir("llama")), served_model_name="tiny")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def worker() -> AsyncIterator[Worker]:
    worker = Worker(settings())
    yield worker
    await worker.close()


@pytest.fixture(scope="module")
def http() -> Iterator[LiveServer]:
    with live_server(settings(), loader=load_served_model) as live:
        yield live


def job(route: str, body: Any = None) -> dict[str, Any]:
    return {"id": "job-1", "input": {"openai_route": route, "openai_input": body}}


async def run(worker: Worker, job: Any) -> list[Any]:
    return [item async for item in worker.handle(job)]


def without_ids(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("id", "created")}


@module_loop
async def test_completion_and_chat_bodies_match_http(worker: Worker, http: LiveServer) -> None:
    for route, body in (("/v1/completions", COMPLETION), ("/v1/chat/completions", CHAT)):
        [answer] = await run(worker, job(route, body))
        expected = httpx.post(http.url + route, json=body, timeout=60).json()
        assert without_ids(answer) == without_ids(expected)


@module_loop
async def test_streamed_chat_yields_the_http_events(worker: Worker, http: LiveServer) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    frames = await run(worker, job("/v1/chat/completions", body))
    assert all(isinstance(frame, str) for frame in frames)
    events = sse_events("".join(frames))
    assert events[-1] == "[DONE]" and len(frames) == len(events)
    raw = httpx.post(http.url + "/v1/chat/completions", json=body, timeout=60).text
    expected = [without_ids(json.loads(e)) for e in sse_events(raw)[:-1]]
    assert [without_ids(json.loads(e)) for e in events[:-1]] == expected
    [whole] = await run(worker, job("/v1/chat/completions", CHAT))
    text = "".join(c["delta"].get("content") or "" for e in events[:-1] for c in json.loads(e)["choices"])
    assert text == whole["choices"][0]["message"]["content"]


@module_loop
async def test_models(worker: Worker) -> None:
    [models] = await run(worker, job("/v1/models"))
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny"]


@pytest.mark.parametrize(
    ("bad_job", "param", "text"),
    [
        ({"id": "x"}, "input", "'input' object"),
        ({"input": {"openai_input": {}}}, "openai_route", "openai_route"),
        (job("/v1/embeddings", {}), "openai_route", "no such route"),
        (job("/v1/completions", ["not", "an", "object"]), None, "must be a JSON object"),
        (job("/v1/completions", {**COMPLETION, "temperature": 9}), "temperature", "temperature"),
        (job("/v1/chat/completions", {**CHAT, "messages": []}), "messages", "messages"),
        (job("/v1/completions", {**COMPLETION, "max_tokens": 2000}), None, "context length"),
    ],
)
@module_loop
async def test_invalid_jobs_get_the_api_errors(
    worker: Worker, bad_job: Any, param: str | None, text: str
) -> None:
    [answer] = await run(worker, bad_job)
    assert set(answer) == {"error"} and isinstance(answer["error"], str)  # RunPod's failed-job shape
    error = json.loads(answer["error"])["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert text in error["message"] and error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param


@module_loop
async def test_closing_a_stream_midway_frees_the_engine(worker: Worker) -> None:
    body = {**COMPLETION, "max_tokens": 500, "ignore_eos": True, "stream": True}
    frames = worker.handle(job("/v1/completions", body))
    first = await anext(frames)
    assert first.startswith("data: {")
    await frames.aclose()
    engine = worker.state.model.engine  # type: ignore[union-attr]
    for _ in range(600):
        if engine.num_running + engine.num_queued == 0:
            break
        await asyncio.sleep(0.05)
    assert engine.num_running + engine.num_queued == 0


def test_module_handle_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL", str(tiny_model_dir("llama")))
    monkeypatch.setenv("SERVED_MODEL_NAME", "from-env")
    serverless.default_worker.cache_clear()

    async def scenario() -> list[Any]:
        try:
            return [item async for item in serverless.handle(job("/v1/models"))]
        finally:
            await serverless.default_worker().close()
            serverless.default_worker.cache_clear()

    [models] = asyncio.run(scenario())
    assert [m["id"] for m in models["data"]] == ["from-env"]


def test_runpod_worker_starts_with_the_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[dict[str, Any]] = []
    fake = types.ModuleType("runpod")
    fake.serverless = types.SimpleNamespace(start=started.append)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "runpod", fake)
    monkeypatch.setenv("MODEL", str(tiny_model_dir("llama")))
    monkeypatch.setenv("MAX_BATCH_SIZE", "6")
    monkeypatch.setenv("RUNPOD_WEBHOOK_GET_JOB", "https://api.runpod.ai/v2/x/job-take/y")
    assert serverless.main() == 0
    [config] = started
    assert config["return_aggregate_stream"] is True and config["concurrency_modifier"](1) == 6
    worker: Worker = config["handler"].__self__

    async def scenario() -> list[Any]:
        try:
            return [item async for item in config["handler"](job("/v1/completions", COMPLETION))]
        finally:
            await worker.close()

    [answer] = asyncio.run(scenario())
    assert answer["object"] == "text_completion" and answer["usage"]["completion_tokens"] <= 8


def test_without_runpod_the_entry_point_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "runpod", None)
    with pytest.raises(SystemExit, match=r"pip install 'ladle\[serverless\]'"):
        serverless.main()


def test_a_model_that_cannot_load_fails_every_job(tmp_path: Any) -> None:
    broken = Worker(Settings(model=str(tmp_path / "missing")))
    [answer] = asyncio.run(run(broken, job("/v1/models")))
    assert json.loads(answer["error"])["error"]["code"] == "model_load_failed"
    wait_until(lambda: broken.state.status == "failed", 1, "the failure was not recorded")
