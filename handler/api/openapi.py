"""The OpenAPI document, generated from the pydantic request and response models."""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from handler.api.health import HealthReport, LivenessReport
from handler.api.requests import ChatCompletionRequest, CompletionRequest
from handler.api.responses import (
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    ErrorResponse,
    ModelCard,
    ModelList,
)

_REF = "#/components/schemas/{model}"
_ERRORS = {
    "400": "invalid request",
    "401": "missing or wrong API key",
    "408": "the request body did not arrive within CLIENT_TIMEOUT",
    "413": "request body too large",
    "429": "the engine's queue is full; see Retry-After",
    "500": "generation failed",
    "503": "the model is still loading",
}


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": _REF.format(model=model.__name__)}


def _json(model: type[BaseModel], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _errors() -> dict[str, Any]:
    return {code: _json(ErrorResponse, text) for code, text in _ERRORS.items()}


def _generation(
    request: type[BaseModel], response: type[BaseModel], chunk: type[BaseModel], summary: str
) -> dict[str, Any]:
    ok = _json(response, "the response, or with stream: true server-sent events of chunks")
    ok["content"]["text/event-stream"] = {
        "schema": {
            "type": "string",
            "description": (
                f"`data: {{json}}` events, each a {chunk.__name__}; an error mid-stream is one "
                '`data: {"error": ...}` event; the stream ends with `data: [DONE]`'
            ),
        },
        "x-event-schema": _ref(chunk),
    }
    return {
        "post": {
            "summary": summary,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(request)}}},
            "responses": {"200": ok, **_errors()},
        }
    }


def _get(response: type[BaseModel], summary: str, not_found: str = "", **extra: Any) -> dict[str, Any]:
    responses = {"200": _json(response), **_errors()}
    if not_found:
        responses["404"] = _json(ErrorResponse, not_found)
    return {"get": {"summary": summary, "responses": responses, **extra}}


@functools.cache
def openapi_schema() -> dict[str, Any]:
    """The whole document (computed once)."""
    models: list[type[BaseModel]] = [
        CompletionRequest,
        ChatCompletionRequest,
        Completion,
        ChatCompletion,
        ChatCompletionChunk,
        ModelList,
        ModelCard,
        ErrorResponse,
        HealthReport,
        LivenessReport,
    ]
    _, schemas = models_json_schema(
        [
            (model, "validation" if model.__name__.endswith("Request") else "serialization")
            for model in models
        ],
        ref_template=_REF,
    )
    model_id = [{"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "ladle", "version": "1", "description": "OpenAI-compatible text generation"},
        "paths": {
            "/v1/completions": _generation(CompletionRequest, Completion, Completion, "Create a completion"),
            "/v1/chat/completions": _generation(
                ChatCompletionRequest, ChatCompletion, ChatCompletionChunk, "Create a chat completion"
            ),
            "/v1/models": _get(ModelList, "List models"),
            "/v1/models/{model_id}": _get(
                ModelCard, "Retrieve a model", not_found="no model has this id", parameters=model_id
            ),
            "/health": _get(
                HealthReport,
                "Readiness: 200 once the model is loaded, 503 before, while draining and on a stall",
            ),
            "/ping": _get(HealthReport, "Alias of /health"),
            "/livez": _get(
                LivenessReport, "Liveness: 200 (draining too), 503 on an engine stall or a failed load"
            ),
        },
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
