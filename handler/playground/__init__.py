"""The web playground: one page, its scripts and its style sheet, served from this package's directory."""

from __future__ import annotations

from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

HERE = Path(__file__).resolve().parent

# An allow-list rather than a StaticFiles mount: nothing else in this folder (the Python source,
# __pycache__) is served, and the content types do not depend on the host's mimetypes table.
# The scripts are plain files, one concern each; index.html loads them in dependency order.
_SCRIPT = "text/javascript; charset=utf-8"
ASSETS = {
    "format.js": _SCRIPT,
    "page.js": _SCRIPT,
    "api.js": _SCRIPT,
    "parameters.js": _SCRIPT,
    "transcript.js": _SCRIPT,
    "tokentip.js": _SCRIPT,
    "app.js": _SCRIPT,
    "style.css": "text/css; charset=utf-8",
}

# The page loads nothing from another origin: servers often have no internet, and a CDN would
# see every prompt's page view. The policy makes the browser enforce it.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'"
)

# Revalidate on every load so an upgraded server never runs a stale script.
_CACHE = {"Cache-Control": "no-cache"}


async def index(request: Request) -> Response:
    return FileResponse(
        HERE / "index.html",
        media_type="text/html; charset=utf-8",
        headers={**_CACHE, "Content-Security-Policy": CONTENT_SECURITY_POLICY},
    )


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in ASSETS:
        raise HTTPException(404)
    return FileResponse(HERE / name, media_type=ASSETS[name], headers=_CACHE)


def routes() -> list[BaseRoute]:
    """`/` (the page) and `/playground/<asset>`; GET routes answer HEAD too."""
    return [
        Route("/", index, methods=["GET"]),
        Route("/playground/{name}", asset, methods=["GET"]),
    ]
