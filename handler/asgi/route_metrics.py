"""Middleware that counts every HTTP request by route template and status code."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from handler.metrics import UNTRACKED_PATHS, Metrics


class MetricsMiddleware:
    """Counts every request by route template and status, and tracks those in flight for the drain."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # unless a response starts: an exception escaped the app

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        route = self._route(scope)
        tracked = scope["path"] not in UNTRACKED_PATHS
        if tracked:
            self.metrics.begin()
        try:
            await self.app(scope, receive, send_status)
        finally:
            if tracked:
                self.metrics.end()
            self.metrics.requests.labels(route, str(status)).inc()

    def _route(self, scope: Scope) -> str:
        """The matching route's template, so ids in paths never become label values."""
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                return str(getattr(route, "path", "other"))
        return "other"
