"""What one client may hold of the server: requests in flight, time to send a body, time not reading.

A server that runs for weeks meets clients that open many requests at once, upload a body a byte a
minute, or stop reading a stream halfway. None of them may cost another client its request.
"""

from __future__ import annotations

import logging

import anyio
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from handler.api.errors import APIError, RateLimitError

log = logging.getLogger("ladle")

# Probes must answer however busy the server is, or an orchestrator restarts a healthy container.
EXEMPT_PATHS = frozenset({"/health", "/ping", "/livez", "/metrics"})


class RequestTimeoutError(APIError):
    """The client took longer than CLIENT_TIMEOUT to send its request body."""

    status_code = 408


class ClientStalled(Exception):
    """The client stopped reading its response for longer than CLIENT_TIMEOUT."""


class ClientLimitsMiddleware:
    """Caps requests in flight (429 past the cap), and bounds how long a client may stall a request.

    A body that has not fully arrived `timeout` seconds after the request began is answered 408.
    A response the client does not read for `timeout` seconds (one send blocked that long) is
    dropped, which aborts its generation and frees its place.
    """

    def __init__(self, app: ASGIApp, max_concurrent: int, timeout: float) -> None:
        if max_concurrent < 1 or not timeout > 0:
            raise ValueError("max_concurrent must be >= 1 and timeout > 0")
        self.app = app
        self.max_concurrent = max_concurrent
        self.timeout = timeout
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_concurrent:
            await self._busy(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self._bounded(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _bounded(self, scope: Scope, receive: Receive, send: Send) -> None:
        stalled = False
        body_deadline = anyio.current_time() + self.timeout
        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            with anyio.move_on_after(body_deadline - anyio.current_time()) as waiting:
                message = await receive()
            if waiting.cancelled_caught:
                raise RequestTimeoutError(
                    f"the request body did not arrive within {self.timeout:g} s (CLIENT_TIMEOUT)",
                    code="request_timeout",
                )
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def timed_send(message: Message) -> None:
            nonlocal stalled
            with anyio.move_on_after(self.timeout) as waiting:
                await send(message)
            if waiting.cancelled_caught:
                stalled = True
                raise ClientStalled()

        try:
            await self.app(scope, timed_receive, timed_send)
        except ClientDisconnect:
            # The client left while sending its body: no one to answer, and not a server error.
            log.debug("a client left before its request body was in: %s", scope["path"])
        except Exception:
            # The stall comes back wrapped (task groups, exception middleware); the flag says it was ours.
            if not stalled:
                raise
            log.warning(
                "dropped a client that read nothing for %g s: %s %s",
                self.timeout,
                scope["method"],
                scope["path"],
            )

    async def _busy(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = RateLimitError(
            f"the server is answering {self.max_concurrent} requests (MAX_CONCURRENT_REQUESTS); retry shortly",
            code="too_many_requests",
        )
        response = JSONResponse(error.body(), status_code=429, headers={"Retry-After": "1"})
        await response(scope, receive, send)
