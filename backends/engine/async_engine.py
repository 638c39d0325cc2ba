"""Drives the engine core from asyncio: steps run on a worker thread, outputs go to per-request queues."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from backends.engine.core import EngineCore
from backends.engine.outputs import RequestOutput
from backends.engine.params import SamplingParams
from backends.engine.prefix_cache import PrefixCacheStats
from backends.engine.step_clock import Stall, StepClock
from backends.engine.steps import StepObserver, StepResult
from backends.errors import EngineStoppedError
from backends.grammar import GrammarCompiler

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
        self.clock = StepClock()
        # Seconds a step may run before it is logged, and before stall() reports the engine
        # wedged while work waits; 0 turns both off. The server sets it (ENGINE_STALL_TIMEOUT).
        self.stall_timeout = 0.0
        self._stopped = False

    @property
    def num_running(self) -> int:
        return self.core.num_running

    @property
    def num_queued(self) -> int:
        return self.core.num_queued

    @property
    def kv_tokens(self) -> int:
        """KV cache positions held after the last step (an estimate where the backend has no count)."""
        return self.core.kv_tokens

    @property
    def prefix_cache(self) -> PrefixCacheStats | None:
        """The prefix cache's counters and size, or None when it is off."""
        return self.core.prefix_cache

    def subscribe(self, observer: StepObserver) -> None:
        """Call `observer` with the result of every step, on the step thread (backends/engine/steps.py)."""
        self.core.subscribe(observer)

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
            # CUDA graphs belong to the thread that captured them: the step thread.
            await asyncio.get_running_loop().run_in_executor(self._executor, self.core.backend.warm_up)
            # The grammar engine's index of the vocabulary (about a second for a 50k vocabulary)
            # is built now, beside the engine, so the first structured request does not wait.
            asyncio.get_running_loop().run_in_executor(None, self.core.grammars.prepare)
            self._wakeup = asyncio.Event()
            self._stopped = False
            self._task = asyncio.create_task(self._loop(), name="ladle-engine")

    def stall(self) -> Stall | None:
        """How the engine is wedged, if work is pending and no step has completed for stall_timeout."""
        if self._stopped or self.stall_timeout <= 0:
            return None
        age = self.step_age
        if age <= self.stall_timeout:
            return None
        return Stall(age, self.stall_timeout, self.clock.step_seconds(), self.core.step_load)

    @property
    def step_age(self) -> float:
        """Seconds since the last step completed, while work is pending (0 when idle)."""
        # A prompt being prefilled is in neither of the core's queues: a step in flight is work too.
        return self.clock.age(self.core.has_work() or self.clock.step_began is not None)

    async def shutdown(self) -> None:
        """Cancel everything and stop the loop."""
        self._stopped = True
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
        idle = not self.core.has_work()
        request_id = self.core.add_request(prompt_ids, params, request_id)
        if idle:
            self.clock.restart()
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
            self.clock.begin()
            try:
                result = await self._timed_step(loop.run_in_executor(self._executor, self.core.step))
            except Exception:  # the core fails requests itself; this is a bug guard so the loop lives on
                log.exception("engine step crashed")
                await asyncio.sleep(0.01)
                continue
            self.steps += 1
            self._dispatch(result)

    async def _timed_step(self, step: asyncio.Future[StepResult]) -> StepResult:
        """The step's result; a step that runs past stall_timeout is logged with its work, and again
        when it completes."""
        slow = None
        if self.stall_timeout > 0:
            slow = asyncio.get_running_loop().call_later(self.stall_timeout, self._log_slow_step)
        try:
            return await step
        finally:
            ran = self.clock.end()
            if slow is not None:
                slow.cancel()
                if ran > self.stall_timeout:
                    log.warning("the slow engine step completed after %.1f s", ran)

    def _log_slow_step(self) -> None:
        log.warning(
            "an engine step has run for over %g s (ENGINE_STALL_TIMEOUT), %s",
            self.stall_timeout,
            self.core.step_load.describe(),
        )

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
