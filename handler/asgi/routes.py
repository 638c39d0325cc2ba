"""Starlette endpoints: read the request, call the service, write JSON or server-sent events."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from handler.api.errors import APIError, PayloadTooLargeError
from handler.api.openapi import openapi_schema
from handler.api.service import OpenAIService, Reply
from handler.asgi.disconnect import ClientDisconnected, until_disconnect
from handler.asgi.streaming import EventSourceResponse
from handler.lifecycle import ServerState


def server_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.ladle
    return state


def json_response(body: BaseModel, status_code: int = 200) -> Response:
    """A pydantic body serialized by pydantic-core (faster than json.dumps of a dict)."""
    return Response(body.model_dump_json(), status_code=status_code, media_type="application/json")


def _health_status(state: ServerState) -> int:
    """200 when ready; while loading HEALTH_LOADING_STATUS (503, or RunPod's 204); else 503."""
    if state.status == "ok":
        return 200
    return state.settings.health_loading_status if state.status == "loading" else 503


async def health(request: Request) -> Response:
    """Readiness: what is served, by which backend, on which devices; 200 only when ready."""
    state = server_state(request)
    code = _health_status(state)
    if code == 204:
        return Response(status_code=204)
    return Response(
        state.health().model_dump_json(exclude_none=True), status_code=code, media_type="application/json"
    )


async def ping(request: Request) -> Response:
    """The same readiness as /health, with just the status (the probe alias SageMaker and RunPod call)."""
    state = server_state(request)
    code = _health_status(state)
    if code == 204:
        return Response(status_code=204)
    return JSONResponse({"status": state.status}, status_code=code)


async def livez(request: Request) -> Response:
    """Liveness: 200 while the process can make progress, draining and loading included; 503 when the
    engine is wedged (ENGINE_STALL_TIMEOUT) or the model failed to load, so a restart is the cure."""
    report = server_state(request).liveness()
    return Response(
        report.model_dump_json(exclude_none=True),
        status_code=200 if report.status == "ok" else 503,
        media_type="application/json",
    )


async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    registry = server_state(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


async def list_models(request: Request) -> Response:
    return json_response(server_state(request).service.models())


async def get_model(request: Request) -> Response:
    return json_response(server_state(request).service.model_card(request.path_params["model_id"]))


async def completions(request: Request) -> Response:
    return await _generate(request, OpenAIService.completion)


async def chat_completions(request: Request) -> Response:
    return await _generate(request, OpenAIService.chat_completion)


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_schema())


async def _generate(request: Request, create: Callable[[OpenAIService, Any], Awaitable[Reply]]) -> Response:
    state = server_state(request)
    service = state.service
    body = await read_json(request, state.settings.max_body_size)
    reply = await until_disconnect(request.receive, create(service, body))
    if isinstance(reply, BaseModel):
        return json_response(reply)
    return EventSourceResponse(reply, keepalive=state.settings.sse_keepalive)


async def read_json(request: Request, limit: int) -> Any:
    """The body parsed as JSON: 413 past `limit` bytes, 400 when it is not JSON."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise _too_large(limit)
    body = bytearray()
    try:
        async for part in request.stream():
            body += part
            if len(body) > limit:
                raise _too_large(limit)
    except ClientDisconnect:
        raise ClientDisconnected() from None
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise APIError(f"the request body is not valid JSON: {exc}", code="invalid_json") from None


def _too_large(limit: int) -> APIError:
    return PayloadTooLargeError(f"the request body is larger than {limit} bytes (MAX_BODY_SIZE)")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


ROUTES = [
    Route("/health", health, methods=["GET"]),
    Route("/ping", ping, methods=["GET"]),
    Route("/livez", livez, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model_id:path}", get_model, methods=["GET"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/openapi.json", openapi, methods=["GET"]),
]
