"""Bearer-key authentication for every route but the health checks."""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from handler.api.errors import AuthenticationError

OPEN_PATHS = frozenset({"/health", "/ping", "/livez", "/"})
# The playground's page and assets: static files, and the page asks for the key itself.
OPEN_PREFIXES = ("/playground/",)


class APIKeyMiddleware:
    """Answers 401 unless the request carries `Authorization: Bearer <API_KEY>`."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.api_key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _is_open(scope["path"]) or self._authorized(Headers(scope=scope)):
            await self.app(scope, receive, send)
            return
        error = AuthenticationError(
            "missing or incorrect API key: send it as 'Authorization: Bearer <key>'", code="invalid_api_key"
        )
        response = JSONResponse(error.body(), status_code=401, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)

    def _authorized(self, headers: Headers) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        # compare_digest takes as long for a wrong key as for a right one.
        # Header values arrive decoded as latin-1; encoding back gives the bytes the client sent.
        sent = token.strip().encode("latin-1", errors="replace")
        return hmac.compare_digest(sent, self.api_key) and scheme.lower() == "bearer"


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)
