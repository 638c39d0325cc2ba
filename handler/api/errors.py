"""One API error type, OpenAI's error shape, and the mapping from engine and validation errors."""

from __future__ import annotations

import math
import re
from typing import Any

from pydantic import ValidationError

from backends.errors import (
    EngineStoppedError,
    GenerationError,
    InvalidRequestError,
    QueueFullError,
)


class APIError(Exception):
    """An error answered in OpenAI's shape; subclasses vary the status and type."""

    status_code = 400
    error_type = "invalid_request_error"

    def __init__(
        self,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body: {"error": {"message", "type", "param", "code"}}."""
        return error_body(self.message, self.error_type, self.param, self.code)


class AuthenticationError(APIError):
    status_code = 401


class NotFoundError(APIError):
    status_code = 404


class PayloadTooLargeError(APIError):
    status_code = 413


class RateLimitError(APIError):
    status_code = 429
    error_type = "rate_limit_error"


class InternalError(APIError):
    status_code = 500
    error_type = "server_error"


class ServiceUnavailableError(APIError):
    status_code = 503
    error_type = "service_unavailable"


def error_body(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error object; lone surrogates copied from a request are escaped so it always encodes."""
    return {
        "error": {
            "message": _encodable(message),
            "type": error_type,
            "param": None if param is None else _encodable(param),
            "code": code,
        }
    }


def _encodable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


# Pydantic puts the member type of a union into an error's location; a parameter path has none of them.
_TYPE_TAG = re.compile(
    r"^(str|int|float|bool|list|dict|none|literal|tuple|function-.*|constrained-.*|[A-Z].*|.*\[.*)$"
)


def _param_path(loc: tuple[int | str, ...]) -> str:
    parts = [str(part) for part in loc if isinstance(part, int) or not _TYPE_TAG.match(part)]
    return ".".join(parts)


def from_validation_error(exc: ValidationError) -> APIError:
    """A 400 that names the first invalid parameter and says what is wrong with it."""
    errors = exc.errors(include_url=False, include_input=False)
    first = _param_path(errors[0]["loc"]) if errors else ""
    reasons: list[str] = []
    for error in errors:
        if _param_path(error["loc"]) == first and error["msg"] not in reasons:
            reasons.append(error["msg"])
    message = "; ".join(reasons) or "invalid request"
    return APIError(f"{first}: {message}" if first else message, param=first or None)


def from_invalid_request(exc: InvalidRequestError) -> APIError:
    """The 400 a deliberate client error stands for: its message, and its param and code as it carries them."""
    return APIError(str(exc), param=exc.param, code=exc.code)


def from_engine_error(exc: Exception) -> APIError:
    """The API error that an engine error stands for; anything else is a 500 (a bug, not the client's)."""
    if isinstance(exc, QueueFullError):
        retry_after = str(max(1, math.ceil(exc.retry_after)))
        return RateLimitError(str(exc), code="queue_full", headers={"Retry-After": retry_after})
    if isinstance(exc, EngineStoppedError):
        return ServiceUnavailableError(str(exc) or "the engine is shutting down", code="engine_stopped")
    if isinstance(exc, GenerationError):
        return InternalError("generation failed; the request was not completed", code="generation_failed")
    if isinstance(exc, InvalidRequestError):
        return from_invalid_request(exc)
    return InternalError("internal server error")


# What the engine raises on purpose; any other exception (a ValueError included) is a bug: a 500.
ENGINE_ERRORS = (QueueFullError, EngineStoppedError, GenerationError, InvalidRequestError)
