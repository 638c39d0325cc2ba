"""The errors the engine raises; the HTTP layer maps each to a status code."""

from __future__ import annotations


class LadleError(Exception):
    """Base of ladle's own errors."""


class InvalidRequestError(LadleError, ValueError):
    """A request the engine cannot serve as asked (HTTP 400)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class ContextLengthError(InvalidRequestError):
    """The prompt plus max_tokens does not fit the model's context (HTTP 400)."""

    def __init__(self, message: str, param: str | None = "max_tokens") -> None:
        super().__init__(message, param=param, code="context_length_exceeded")


class QueueFullError(LadleError):
    """The engine's admission queue is full; retry later (HTTP 429)."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineStoppedError(LadleError):
    """The engine is shutting down or draining and admits nothing (HTTP 503)."""


class GenerationError(LadleError):
    """A forward pass failed for the requests in its batch (HTTP 500, or an error event)."""


class ModelLoadError(LadleError):
    """The model cannot be loaded or cannot generate text; the message is one line for the user."""


def one_line(exc: BaseException, with_type: bool = False) -> str:
    """The first line of an exception's message (its type's name when it has none), for a log or an error."""
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    return f"{type(exc).__name__}: {lines[0]}" if with_type else lines[0]
