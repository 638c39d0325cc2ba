"""Queue-worker entry point: OpenAI requests arriving as queue jobs, answered by the HTTP API's service.

A job is `{"input": {"openai_route": "/v1/chat/completions" | "/v1/completions" | "/v1/models",
"openai_input": {...}}}` (the shape RunPod's OpenAI-compatible endpoints send). `handle(job)` yields
what the HTTP API would send: one JSON body or, for `"stream": true`, the server-sent events as text,
`data: [DONE]` last. A job that fails, before its output or midway through a stream, ends with one
`{"error": "<the OpenAI error body as JSON text>"}` item: RunPod records a job whose output item
holds a truthy "error" as FAILED, with that string as its error. No platform SDK is needed; with
`runpod` installed, `python -m handler.serverless` runs a RunPod worker.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import sys
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from pydantic import BaseModel

from handler.api.errors import APIError, InternalError, NotFoundError, ServiceUnavailableError
from handler.api.events import DONE, encode_event
from handler.api.responses import ErrorResponse
from handler.api.service import OpenAIService, Reply
from handler.config import ConfigError, Settings, settings_from_env
from handler.lifecycle import Loader, ServerState
from handler.logs import configure_logging
from handler.model import ServedModel, load_served_model

log = logging.getLogger("ladle")

Call = Callable[[OpenAIService, Any], Awaitable[Reply]]


async def _models(service: OpenAIService, body: Any) -> Reply:
    return service.models()


JOB_ROUTES: dict[str, Call] = {
    "/v1/chat/completions": OpenAIService.chat_completion,
    "/v1/completions": OpenAIService.completion,
    "/v1/models": _models,
}


def parse_job(job: Any) -> tuple[Call, Any]:
    """The service call and request body a job names; a malformed job is a 400, an unknown route a 404."""
    job_input = job.get("input") if isinstance(job, Mapping) else None
    if not isinstance(job_input, Mapping):
        raise APIError("the job must be an object with an 'input' object", param="input")
    route = job_input.get("openai_route")
    if not isinstance(route, str):
        raise APIError("input.openai_route must be a string naming the API route", param="openai_route")
    call = JOB_ROUTES.get(route)
    if call is None:
        raise NotFoundError(
            f"no such route: {route[:100]!r}; use one of {', '.join(JOB_ROUTES)}", param="openai_route"
        )
    # The service validates the body itself, as it does an HTTP request's.
    return call, job_input.get("openai_input", {})


class Worker:
    """Answers jobs with one model, loaded on first use (or handed over already loaded)."""

    def __init__(self, settings: Settings | None = None, loader: Loader = load_served_model) -> None:
        self.state = ServerState(settings or settings_from_env(), loader)
        self._lock: asyncio.Lock | None = None

    async def service(self) -> OpenAIService:
        """The service, loading the model first if no job has yet; a failed load is a 503."""
        if self.state.model is None and self.state.error is None:
            self._lock = self._lock or asyncio.Lock()
            async with self._lock:
                if self.state.model is None and self.state.error is None:
                    await self.state.load()
        if self.state.model is not None:
            # Idempotent; restarts the engine loop if the platform runs jobs in a new event loop.
            await self.state.model.engine.start()
        return self.state.service

    async def handle(self, job: Any) -> AsyncGenerator[Any, None]:
        """Yield a JSON body, or for a streamed request its events as text; a failure as a job error."""
        try:
            call, body = parse_job(job)
            service = await self.service()
            self._refuse_if_stalled()
            reply = await call(service, body)
        except APIError as exc:
            yield job_error(exc.body())
            return
        except Exception:  # a bug, not the client's: a 500 body and a traceback; the worker serves on
            log.exception("job failed")
            yield job_error(InternalError("internal server error").body())
            return
        if isinstance(reply, BaseModel):
            yield reply.model_dump(mode="json")
            return
        try:
            async for chunk in reply:
                if isinstance(chunk, ErrorResponse):  # the generation failed midway
                    yield job_error(chunk.model_dump(mode="json"))
                    return
                yield encode_event(chunk).decode()
            yield DONE.decode()
        finally:
            # Closing the chunks aborts the generation when the job is cancelled midway.
            await reply.aclose()

    async def run(self, job: Any) -> Any:
        """handle(job) for runners that take one return value (RunPod's local test modes): the
        items as a list, as RunPod aggregates a stream, or the job error."""
        items = [item async for item in self.handle(job)]
        if items and isinstance(items[-1], dict) and "error" in items[-1]:
            return items[-1]
        return items

    def _refuse_if_stalled(self) -> None:
        stall = self.state.stall()
        if stall is not None:
            raise ServiceUnavailableError(
                f"the worker's engine is stalled: {stall.describe()}", code="stalled"
            )

    async def close(self) -> None:
        await self.state.close()


def job_error(body: dict[str, Any]) -> dict[str, str]:
    """The item that makes RunPod record a job as FAILED: "error" holds the OpenAI error body as JSON."""
    return {"error": json.dumps(body, ensure_ascii=False)}


def exit_on_stall(state: ServerState, period: float, stop: threading.Event | None = None) -> threading.Thread:
    """Watch the engine from a thread; on a stall log it and exit 1, so that RunPod replaces the worker.

    A queue worker has no liveness probe: the process ending is how the platform learns. The
    exit is immediate (os._exit), as a wedged step thread would hold up an orderly one.
    """

    stopped = stop or threading.Event()

    def watch() -> None:
        while not stopped.wait(period):
            stall = state.stall()
            if stall is not None:
                log.critical("%s; exiting so that the platform replaces this worker", stall.describe())
                logging.shutdown()
                os._exit(1)

    thread = threading.Thread(target=watch, name="ladle-stall-watch", daemon=True)
    thread.start()
    return thread


@functools.cache
def default_worker() -> Worker:
    """The process's worker, configured from the environment like the HTTP server."""
    return Worker()


async def handle(job: Any) -> AsyncIterator[Any]:
    """Answer one job with the process's worker (see the module docstring for the shapes)."""
    async for item in default_worker().handle(job):
        yield item


def main() -> int:
    """`python -m handler.serverless`: load the model, then take jobs from RunPod's queue."""
    try:
        settings = settings_from_env()
    except ConfigError as exc:
        sys.exit(f"ladle: {exc}")
    configure_logging(settings.log_level)
    try:
        import runpod
    except ImportError:
        sys.exit("ladle: the queue worker needs the runpod package: pip install 'ladle[serverless]'")
    try:
        # Loaded before the first job, so the platform counts the load as the worker's start-up.
        model = load_served_model(settings)
    except Exception as exc:
        log.error("cannot serve the model: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return 1
    worker = Worker(settings, loader=_loaded(model))
    if settings.engine_stall_timeout > 0:
        exit_on_stall(worker.state, period=min(5.0, settings.engine_stall_timeout / 2))
    runpod.serverless.start(
        {
            "handler": worker.handle if _on_runpod() else worker.run,
            # Concurrent jobs share the batch: that is what makes one worker serve many.
            "concurrency_modifier": lambda current: settings.max_batch_size,
            "return_aggregate_stream": True,
        }
    )
    return 0


def _on_runpod() -> bool:
    """Whether RunPod's job queue feeds this process; otherwise the SDK runs a local test mode
    (--test_input, --rp_serve_api), whose runners record a generator's error items as output."""
    return bool(os.environ.get("RUNPOD_WEBHOOK_GET_JOB")) and "--test_input" not in sys.argv


def _loaded(model: ServedModel) -> Loader:
    def loader(settings: Settings) -> ServedModel:
        return model

    return loader


if __name__ == "__main__":
    sys.exit(main())
