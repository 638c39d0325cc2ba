"""The Starlette app: routes, error handlers, middleware, and the model loaded in the lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from handler import playground
from handler.api.errors import APIError, InternalError, error_body
from handler.asgi.auth import APIKeyMiddleware
from handler.asgi.disconnect import ClientDisconnected
from handler.asgi.limits import ClientLimitsMiddleware
from handler.asgi.route_metrics import MetricsMiddleware
from handler.asgi.routes import ROUTES
from handler.config import Settings, settings_from_env
from handler.lifecycle import Loader, ServerState
from handler.metrics import Metrics
from handler.model import load_served_model

log = logging.getLogger("ladle")

_HTTP_MESSAGES = {
    404: "no such route",
    405: "method not allowed on this route",
}


def create_app(
    settings: Settings | None = None,
    loader: Loader = load_served_model,
    on_load_error: Callable[[BaseException], None] | None = None,
) -> Starlette:
    """An app that loads its model in the background at startup; /health says when it is ready.

    Without settings it reads the environment, so `uvicorn --factory handler.asgi.app:create_app` works.
    """
    settings = settings or settings_from_env()
    state = ServerState(settings, loader, on_load_error)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loading = asyncio.create_task(state.load())
        try:
            yield
        finally:
            loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)
            await state.close()

    routes = ROUTES if settings.no_playground else [*ROUTES, *playground.routes()]
    app = Starlette(
        routes=routes,
        middleware=_middleware(settings, state.metrics, routes),
        exception_handlers={
            APIError: _api_error,
            HTTPException: _http_error,
            ClientDisconnected: _client_gone,
            Exception: _server_error,
        },
        lifespan=lifespan,
    )
    app.state.ladle = state
    return app


def _middleware(settings: Settings, metrics: Metrics, routes: Sequence[BaseRoute]) -> list[Middleware]:
    # Outermost, so that refusals by CORS or the API key are counted too.
    middleware = [Middleware(MetricsMiddleware, metrics=metrics, routes=routes)]
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["*"],
                expose_headers=["Retry-After"],
            )
        )
    if settings.api_key:
        middleware.append(Middleware(APIKeyMiddleware, api_key=settings.api_key))
    # Innermost: a request the API key refuses never takes a place; 429s and 408s are still metered.
    middleware.append(
        Middleware(
            ClientLimitsMiddleware,
            max_concurrent=settings.max_concurrent_requests,
            timeout=settings.client_timeout,
        )
    )
    return middleware


async def _api_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, APIError):
        return await _server_error(request, exc)
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, HTTPException):
        return await _server_error(request, exc)
    message = _HTTP_MESSAGES.get(exc.status_code, exc.detail)
    if exc.status_code in _HTTP_MESSAGES:
        message = f"{message}: {request.method} {request.url.path}"
    body = error_body(message, "invalid_request_error" if exc.status_code < 500 else "server_error")
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _client_gone(request: Request, exc: Exception) -> Response:
    return Response(status_code=499)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    error = InternalError("internal server error")
    return JSONResponse(error.body(), status_code=500)
