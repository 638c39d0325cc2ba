"""Server-sent events as bytes: `data: {json}` per chunk, then `data: [DONE]`.

Shared by the HTTP stream (`handler.asgi.streaming`, which adds keep-alive comments) and the
queue worker (`handler.serverless`, whose output is not a connection and needs none).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from pydantic import BaseModel

DONE = b"data: [DONE]\n\n"


def encode_event(chunk: BaseModel) -> bytes:
    """One chunk as one event."""
    return b"data: " + chunk.model_dump_json().encode() + b"\n\n"


async def sse_frames(chunks: AsyncIterator[BaseModel]) -> AsyncIterator[bytes]:
    """Every chunk as an event, then the [DONE] event."""
    async for chunk in chunks:
        yield encode_event(chunk)
    yield DONE
