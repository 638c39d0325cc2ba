"""The server's lifecycle: load the model off the event loop, serve, drain at shutdown, close at exit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from handler.api.errors import ServiceUnavailableError
from handler.api.health import FastPathsReport, HealthReport, LivenessReport, Status
from handler.api.service import OpenAIService
from handler.config import Settings
from handler.metrics import Metrics
from handler.model import ServedModel

if TYPE_CHECKING:
    from backends.engine.contract import ModelInfo
    from backends.engine.step_clock import Stall

log = logging.getLogger("ladle")

Loader = Callable[[Settings], ServedModel]
# Seconds a client should wait before retrying: a load takes a while; a draining replica is
# leaving the load balancer, so a retry at once lands on another one.
RETRY_AFTER_LOADING = "5"
RETRY_AFTER_DRAINING = "1"
LOAD_PROGRESS_INTERVAL = 15.0


class ServerState:
    """Holds the model and the service once loaded; until then, and while draining, API routes answer 503."""

    def __init__(
        self,
        settings: Settings,
        loader: Loader,
        on_load_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.settings = settings
        self.loader = loader
        self.on_load_error = on_load_error
        self.model: ServedModel | None = None
        self._service: OpenAIService | None = None
        self.error: str | None = None
        self.metrics = Metrics()
        self.draining = False
        self.load_cancelled = False  # stopped while the loader thread still runs

    @property
    def status(self) -> Status:
        if self.error is not None:
            return "failed"
        if self.stall() is not None:
            return "stalled"
        if self.draining:
            return "draining"
        return "ok" if self._service is not None else "loading"

    def stall(self) -> Stall | None:
        """How the engine is wedged, if it is (see ENGINE_STALL_TIMEOUT)."""
        if self.model is None:
            return None
        stall: Stall | None = self.model.engine.stall()
        return stall

    def liveness(self) -> LivenessReport:
        """Fails only on a stall or a failed load: a draining or loading replica is alive."""
        if self.error is not None:
            # The error itself stays in the log: these probes need no API key.
            return LivenessReport(status="failed", reason="the model failed to load (see the log)")
        stall = self.stall()
        if stall is not None:
            return LivenessReport(status="stalled", reason=stall.describe())
        return LivenessReport(status="ok")

    @property
    def service(self) -> OpenAIService:
        """The service, or a 503 while the model loads, after it failed to, or while draining."""
        if self.draining:
            raise ServiceUnavailableError(
                "the server is shutting down; retry the request",
                code="draining",
                headers={"Retry-After": RETRY_AFTER_DRAINING},
            )
        if self._service is None:
            if self.error is not None:
                raise ServiceUnavailableError(
                    f"the model failed to load: {self.error}", code="model_load_failed"
                )
            raise ServiceUnavailableError(
                "the model is still loading; retry shortly",
                code="model_loading",
                headers={"Retry-After": RETRY_AFTER_LOADING},
            )
        return self._service

    @property
    def idle(self) -> bool:
        """No request is being answered (probes and scrapes aside)."""
        return self.metrics.active == 0

    def health(self) -> HealthReport:
        """The /health body: the status, and what is served once it is loaded."""
        stall = self.stall()
        report = HealthReport(status=self.status)
        if report.status == "stalled" and stall is not None:
            report.reason = stall.describe()
        if self.model is not None and self._service is not None:
            info = self.model.info
            report.model = self._service.name
            report.backend = info.backend
            report.device = info.device
            report.devices = list(info.devices) or [info.device]
            report.dtype = info.dtype
            paths = info.fast_paths
            report.fast_paths = FastPathsReport(
                attention=paths.attention, cache=paths.cache, compiled_decode=paths.compiled_decode
            )
        return report

    def begin_drain(self) -> None:
        """Stop admitting: readiness fails and new requests get 503, while those in flight go on."""
        if self.draining:
            return
        self.draining = True
        log.info(
            "draining: new requests get 503; waiting for %d request(s) in flight, at most %d s (DRAIN_TIMEOUT)",
            self.metrics.active,
            self.settings.drain_timeout,
        )

    async def stop_engine(self) -> None:
        """End every generation now: streams end with an error event, waiting requests get a 503."""
        if self.model is not None:
            await self.model.engine.shutdown()

    async def load(self) -> None:
        """Load the model and start its engine; a failure is logged once and reported to on_load_error."""
        started = time.monotonic()
        progress = asyncio.create_task(_log_progress(started))
        try:
            log.info(
                "loading model %s with backend %s", self.settings.model or "(default)", self.settings.backend
            )
            model = await _in_daemon_thread(self.loader, self.settings)
            self.model = model
            model.engine.stall_timeout = self.settings.engine_stall_timeout
            log.info("model loaded in %.1f s; starting the engine", time.monotonic() - started)
            await model.engine.start()
            self.metrics.watch(model, self.settings.max_batch_size)
            self._service = OpenAIService(model, self.settings)
            log.info(
                "ready %.1f s after the load began: serving %s",
                time.monotonic() - started,
                self._describe(model.info),
            )
        except asyncio.CancelledError:
            self.load_cancelled = self.model is None
            raise
        except Exception as exc:
            self.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.error("cannot serve the model: %s", self.error)
            log.debug("model load failure", exc_info=True)
            if self.on_load_error is not None:
                self.on_load_error(exc)
        finally:
            progress.cancel()

    def _describe(self, info: ModelInfo) -> str:
        devices = ", ".join(info.devices) or info.device
        name = self._service.name if self._service is not None else info.name
        paths = info.fast_paths
        return (
            f"{name} with backend {info.backend} on {info.device} (devices: {devices}; {info.dtype}); "
            f"{paths.attention} attention, {paths.cache} KV cache, "
            f"{'compiled' if paths.compiled_decode else 'eager'} decode"
        )

    async def close(self) -> None:
        """Stop the engine and free the model."""
        model, self.model, self._service = self.model, None, None
        if model is None:
            return
        await model.engine.shutdown()
        await asyncio.to_thread(model.close)


async def _log_progress(started: float) -> None:
    """A line now and then while a long load (a download, a GGUF conversion) goes on."""
    while True:
        await asyncio.sleep(LOAD_PROGRESS_INTERVAL)
        log.info("still loading the model (%.0f s so far)", time.monotonic() - started)


async def _in_daemon_thread(loader: Loader, settings: Settings) -> ServedModel:
    """asyncio.to_thread, except that an abandoned load holds up neither the loop's close nor the exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[ServedModel] = loop.create_future()

    def deliver(outcome: Callable[[Any], None], value: Any) -> None:
        if not future.done():
            outcome(value)

    def load() -> None:
        try:
            done: tuple[Callable[[Any], None], Any] = (future.set_result, loader(settings))
        except Exception as exc:
            done = (future.set_exception, exc)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(deliver, *done)

    threading.Thread(target=load, name="ladle-load", daemon=True).start()
    return await future
