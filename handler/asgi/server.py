"""Run the app under uvicorn: drain on SIGTERM and exit 0; a model that cannot load exits 1."""

from __future__ import annotations

import logging
import os
import signal
import time
from types import FrameType

import uvicorn

from handler.asgi.app import create_app
from handler.config import Settings
from handler.lifecycle import Loader, ServerState
from handler.logs import configure_logging
from handler.model import load_served_model

log = logging.getLogger("ladle")

# After the drain, connections still open get this long before uvicorn cancels them.
GRACEFUL_SHUTDOWN_S = 5


class DrainingServer(uvicorn.Server):
    """uvicorn, except that the first SIGTERM or SIGINT drains before the server stops.

    Draining fails readiness and answers new requests 503 while those in flight finish, for at
    most DRAIN_TIMEOUT seconds. A second signal ends them at once; a third also skips uvicorn's
    graceful close. The signal is not re-raised afterwards (as uvicorn does), so the exit is 0.
    """

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state
        self.drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        name = signal.Signals(sig).name
        if self.drain_deadline is None:
            log.info("received %s", name)
            self.drain_deadline = time.monotonic() + self.state.settings.drain_timeout
            self.state.begin_drain()
        elif not self.should_exit:
            log.info("received %s again: ending the requests in flight now", name)
            self.drain_deadline = time.monotonic()
        else:
            self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self.drain_deadline is not None and not self.should_exit:
            if self.state.idle:
                log.info("drained: no request in flight; shutting down")
                self.should_exit = True
            elif time.monotonic() >= self.drain_deadline:
                log.warning(
                    "ending %d request(s) still in flight (DRAIN_TIMEOUT or a second signal); shutting down",
                    self.state.metrics.active,
                )
                # Their streams end with an error event now, rather than being cut off later.
                await self.state.stop_engine()
                self.should_exit = True
        return await super().on_tick(counter)


def serve(settings: Settings, loader: Loader = load_served_model) -> int:
    """Serve until signalled; returns the process exit status."""
    configure_logging(settings.log_level)
    failed: list[BaseException] = []
    server: uvicorn.Server | None = None

    def stop_on_load_error(exc: BaseException) -> None:
        failed.append(exc)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, loader=loader, on_load_error=stop_on_load_error)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    state: ServerState = app.state.ladle
    server = DrainingServer(config, state)
    server.run()
    if state.load_cancelled:
        # The loading thread cannot be interrupted, and the interpreter would wait for it (a
        # download, say) at exit: leave now, as a platform scaling down expects.
        log.info("stopped while the model was still loading")
        logging.shutdown()
        os._exit(0)
    return 1 if failed else 0
