"""Drives the engine core from asyncio: steps run on a worker thread, outputs go to per-request queues."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from backends.engine import EngineCore, StepResult
from backends.errors import EngineStoppedError
from backends.grammar import GrammarCompiler
from backends.outputs import RequestOutput
from backends.params import SamplingParams

log = logging.getLogger("ladle.engine")


class RequestStream:
    """The outputs of one request, as an async iterator; closing it early cancels the request."""

    def __init__(self, engine: AsyncEngine, request_id: str) -> None:
        self.request_id = request_id
        self._engine = engine
        self._queue: asyncio.Queue[RequestOutput | Exception] = asyncio.Queue()
        self._done = False

    def _put(self, item: RequestOutput | Exception) -> None:
        self._queue.put_nowait(item)

    async def __aiter__(self) -> AsyncIterator[RequestOutput]:
        try:
            while not self._done:
                item = await self._queue.get()
                if isinstance(item, Exception):
                    self._done = True
                    raise item
                self._done = item.finished
                yield item
        finally:
            self.abort()

    def abort(self) -> None:
        """Cancel the request unless it has finished; idempotent."""
        self._engine._forget(self.request_id, abort=not self._done)
        self._done = True


class AsyncEngine:
    """One engine loop per process; the forward never blocks the event loop."""

    def __init__(self, core: EngineCore) -> None:
        self.core = core
        self.info = core.info
        self.tokenizer = core.tokenizer
        self._streams: dict[str, RequestStream] = {}
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ladle-step")
        self.steps = 0

    @property
    def num_running(self) -> int:
        return self.core.num_running

    @property
    def num_queued(self) -> int:
        return self.core.num_queued

    @property
    def grammars(self) -> GrammarCompiler:
        """Compiles response_format / structured_outputs constraints (await `compile_async`)."""
        return self.core.grammars

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start the engine loop in the current event loop."""
        if self._task is None or self._task.done():
            warm_up = getattr(self.core.backend, "warm_up", None)
            if callable(warm_up):  # CUDA graphs belong to the thread that captured them: the step thread
                await asyncio.get_running_loop().run_in_executor(self._executor, warm_up)
            # The grammar engine's index of the vocabulary (about a second for a 50k vocabulary)
            # is built now, beside the engine, so the first structured request does not wait.
            asyncio.get_running_loop().run_in_executor(None, self.core.grammars.prepare)
            self._wakeup = asyncio.Event()
            self._task = asyncio.create_task(self._loop(), name="ladle-engine")

    async def shutdown(self) -> None:
        """Cancel everything and stop the loop."""
        self.core.shutdown()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for stream in list(self._streams.values()):
            stream._put(EngineStoppedError("the engine shut down"))
        self._streams.clear()
        self._executor.shutdown(wait=True)

    def submit(
        self, prompt_ids: Sequence[int], params: SamplingParams, request_id: str | None = None
    ) -> RequestStream:
        """Queue a request; raises InvalidRequestError, ContextLengthError, QueueFullError or
        EngineStoppedError at once."""
        request_id = self.core.add_request(prompt_ids, params, request_id)
        stream = RequestStream(self, request_id)
        self._streams[request_id] = stream
        self._wakeup.set()
        return stream

    def _forget(self, request_id: str, abort: bool) -> None:
        if self._streams.pop(request_id, None) is not None and abort:
            self.core.abort(request_id)
            self._wakeup.set()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.core.has_work():
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            try:
                result = await loop.run_in_executor(self._executor, self.core.step)
            except Exception:  # the core fails requests itself; this is a bug guard so the loop lives on
                log.exception("engine step crashed")
                await asyncio.sleep(0.01)
                continue
            self.steps += 1
            self._dispatch(result)

    def _dispatch(self, result: StepResult) -> None:
        for output in result.outputs:
            stream = self._streams.get(output.request_id)
            if stream is not None:
                stream._put(output)
                if output.finished:
                    self._streams.pop(output.request_id, None)
        for request_id, exc in result.failures.items():
            stream = self._streams.pop(request_id, None)
            if stream is not None:
                stream._put(exc)
