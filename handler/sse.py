"""Server-sent events: `data: {json}` per chunk, then `data: [DONE]`."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator

import anyio
from pydantic import BaseModel
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

log = logging.getLogger("ladle")

DONE = b"data: [DONE]\n\n"


def encode_event(chunk: BaseModel) -> bytes:
    """One chunk as one event."""
    return b"data: " + chunk.model_dump_json().encode() + b"\n\n"


async def sse_frames(chunks: AsyncIterator[BaseModel]) -> AsyncIterator[bytes]:
    """Every chunk as an event, then the [DONE] event."""
    async for chunk in chunks:
        yield encode_event(chunk)
    yield DONE


class EventSourceResponse(Response):
    """Streams events; a client that disconnects cancels the stream, and the chunks are always closed.

    Closing the chunk iterator is what aborts the generation, so it runs however the response ends.
    """

    media_type = "text/event-stream"

    def __init__(
        self, chunks: AsyncGenerator[BaseModel, None], headers: dict[str, str] | None = None
    ) -> None:
        self.chunks = chunks
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    await self._stream(send)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await _wait_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.chunks.aclose()

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for frame in sse_frames(self.chunks):
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
