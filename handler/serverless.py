"""Queue-worker entry point: OpenAI requests arriving as queue jobs, answered by the HTTP API's service.

A job is `{"input": {"openai_route": "/v1/chat/completions" | "/v1/completions" | "/v1/models",
"openai_input": {...}}}` (the shape RunPod's OpenAI-compatible endpoints send). `handle(job)` yields
what the HTTP API would send: one JSON body, an error body, or, for `"stream": true`, the server-sent
events as text, `data: [DONE]` last. No platform SDK is needed; with `runpod` installed,
`python -m handler.serverless` runs a RunPod worker.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from pydantic import BaseModel

from handler.config import ConfigError, Settings, settings_from_env
from handler.errors import APIError, NotFoundError
from handler.served import ServedModel, load_served_model
from handler.service import OpenAIService, Reply
from handler.sse import sse_frames
from handler.state import Loader, ServerState

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
        """Yield a JSON body (or error body), or for a streamed request its events as text."""
        try:
            call, body = parse_job(job)
            reply = await call(await self.service(), body)
        except APIError as exc:
            yield exc.body()
            return
        if isinstance(reply, BaseModel):
            yield reply.model_dump(mode="json")
            return
        try:
            async for frame in sse_frames(reply):
                yield frame.decode()
        finally:
            # Closing the chunks aborts the generation when the job is cancelled midway.
            await reply.aclose()

    async def close(self) -> None:
        await self.state.close()


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
    from handler.server import configure_logging

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
    runpod.serverless.start(
        {
            "handler": worker.handle,
            # Concurrent jobs share the batch: that is what makes one worker serve many.
            "concurrency_modifier": lambda current: settings.max_batch_size,
            "return_aggregate_stream": True,
        }
    )
    return 0


def _loaded(model: ServedModel) -> Loader:
    def loader(settings: Settings) -> ServedModel:
        return model

    return loader


if __name__ == "__main__":
    sys.exit(main())
