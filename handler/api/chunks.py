"""Streamed responses: engine steps grouped in time and turned into chunks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any, Generic, Protocol, TypeVar

from handler.api.generation import Generation, Step
from handler.api.job import Job
from handler.api.usage import UsageCounter

T = TypeVar("T")


class _Chunk(Protocol):
    @property
    def choices(self) -> Sequence[Any]: ...


ChunkT = TypeVar("ChunkT", bound=_Chunk)


class ChunkStream(Generic[ChunkT]):
    """Engine steps to response chunks, shared by completions and chat: the opening chunks,
    one chunk per group of steps (grouped by COMPLETION_MAX_INTERVAL; a chunk without choices
    is not sent), then the usage chunk when asked. Subclasses say what a chunk holds."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.usage = UsageCounter()

    async def chunks(self, generation: Generation) -> AsyncGenerator[ChunkT, None]:
        for chunk in self._opening():
            yield chunk
        steps = generation.steps()
        try:
            async for group in coalesce(steps, self.job.interval):
                chunk = self._chunk(group)
                if chunk.choices:
                    yield chunk
        finally:
            await steps.aclose()  # at once, not at garbage collection: this aborts the requests
        if self.job.include_usage:
            yield self._new_chunk([], usage=True)

    def _opening(self) -> list[ChunkT]:
        return []

    def _chunk(self, group: list[Step]) -> ChunkT:
        raise NotImplementedError

    def _new_chunk(self, choices: list[Any], usage: bool = False) -> ChunkT:
        raise NotImplementedError


async def coalesce(source: AsyncIterator[T], interval: float) -> AsyncIterator[list[T]]:
    """Group items so that at most one group leaves per `interval` seconds; 0 sends each alone."""
    if interval <= 0:
        async for item in source:
            yield [item]
        return
    loop = asyncio.get_running_loop()
    pending: list[T] = []
    last_sent = -float("inf")
    upcoming: asyncio.Task[T] | None = None
    try:
        while True:
            if upcoming is None:
                upcoming = asyncio.ensure_future(anext(source))
            timeout = max(0.0, last_sent + interval - loop.time()) if pending else None
            done, _ = await asyncio.wait({upcoming}, timeout=timeout)
            if done:
                finished, upcoming = upcoming, None
                try:
                    pending.append(finished.result())
                except StopAsyncIteration:
                    break
            if pending and loop.time() - last_sent >= interval:
                yield pending
                pending, last_sent = [], loop.time()
        if pending:
            yield pending
    finally:
        if upcoming is not None:
            upcoming.cancel()
