"""Run the app under uvicorn; a model that cannot load stops the server with exit status 1."""

from __future__ import annotations

import logging

import uvicorn

from handler.app import create_app
from handler.config import Settings

log = logging.getLogger("ladle")


def configure_logging(level: str) -> None:
    """One plain format for ladle's own logger."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve(settings: Settings) -> int:
    """Serve until interrupted; returns the process exit status."""
    configure_logging(settings.log_level)
    failed: list[BaseException] = []
    server: uvicorn.Server | None = None

    def stop_on_load_error(exc: BaseException) -> None:
        failed.append(exc)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_load_error=stop_on_load_error)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    server.run()
    return 1 if failed else 0
