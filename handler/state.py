"""The server's lifecycle: load the model off the event loop, start its engine, close it at exit."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Literal

from handler.config import Settings
from handler.errors import ServiceUnavailableError
from handler.served import ServedModel
from handler.service import OpenAIService

log = logging.getLogger("ladle")

Loader = Callable[[Settings], ServedModel]


class ServerState:
    """Holds the model and the service once loaded; until then every API route answers 503."""

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

    @property
    def status(self) -> Literal["ok", "loading", "failed"]:
        if self._service is not None:
            return "ok"
        return "failed" if self.error is not None else "loading"

    @property
    def service(self) -> OpenAIService:
        """The service, or a 503 while the model loads (or after it failed to)."""
        if self._service is None:
            if self.error is not None:
                raise ServiceUnavailableError(
                    f"the model failed to load: {self.error}", code="model_load_failed"
                )
            raise ServiceUnavailableError("the model is still loading; retry shortly", code="model_loading")
        return self._service

    async def load(self) -> None:
        """Load the model and start its engine; a failure is logged once and reported to on_load_error."""
        try:
            log.info(
                "loading model %s with backend %s", self.settings.model or "(default)", self.settings.backend
            )
            self.model = await asyncio.to_thread(self.loader, self.settings)
            await self.model.engine.start()
            self._service = OpenAIService(self.model, self.settings)
            log.info("serving %s", self._service.name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.error("cannot serve the model: %s", self.error)
            log.debug("model load failure", exc_info=True)
            if self.on_load_error is not None:
                self.on_load_error(exc)

    async def close(self) -> None:
        """Stop the engine and free the model."""
        model, self.model, self._service = self.model, None, None
        if model is None:
            return
        await model.engine.shutdown()
        await asyncio.to_thread(model.close)
