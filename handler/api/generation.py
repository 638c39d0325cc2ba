"""The engine streams of one API request: submitted together, merged, aborted together."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from backends.engine.outputs import RequestOutput
from handler.api.choices import PromptState

if TYPE_CHECKING:
    from backends.engine.async_engine import AsyncEngine, RequestStream
    from backends.engine.params import SamplingParams
    from handler.api.prompts import Prompt


@dataclass(slots=True)
class Step:
    """One engine output of the prompt at `prompt_index`."""

    prompt_index: int
    output: RequestOutput


class Generation:
    """Several engine streams (one per prompt) read as one; closing it aborts all of them."""

    def __init__(self, streams: Sequence[RequestStream]) -> None:
        self.streams = list(streams)

    @classmethod
    def submit(
        cls,
        engine: AsyncEngine,
        prompts: Sequence[Prompt],
        params_for: Callable[[Prompt], SamplingParams],
        request_id: str,
    ) -> Generation:
        """Admit every prompt, or none: a refused prompt aborts those already admitted."""
        streams: list[RequestStream] = []
        try:
            for index, prompt in enumerate(prompts):
                suffix = f"-{index}" if len(prompts) > 1 else ""
                streams.append(engine.submit(prompt.token_ids, params_for(prompt), request_id + suffix))
        except BaseException:
            for stream in streams:
                stream.abort()
            raise
        return cls(streams)

    def abort(self) -> None:
        """Cancel every stream; idempotent, harmless on finished ones."""
        for stream in self.streams:
            stream.abort()

    async def steps(self) -> AsyncGenerator[Step, None]:
        """Outputs of all streams in arrival order; aborts everything when closed early or on error."""
        try:
            if len(self.streams) == 1:
                async for output in self.streams[0]:
                    yield Step(0, output)
            else:
                async for step in self._merged():
                    yield step
        finally:
            self.abort()

    async def _merged(self) -> AsyncIterator[Step]:
        queue: asyncio.Queue[tuple[int, RequestOutput | Exception | None]] = asyncio.Queue()

        async def pump(index: int, stream: RequestStream) -> None:
            try:
                async for output in stream:
                    await queue.put((index, output))
                await queue.put((index, None))
            except Exception as exc:  # forwarded to the reader, which raises it
                await queue.put((index, exc))

        tasks = [asyncio.create_task(pump(i, stream)) for i, stream in enumerate(self.streams)]
        try:
            remaining = len(tasks)
            while remaining:
                index, item = await queue.get()
                if item is None:
                    remaining -= 1
                elif isinstance(item, Exception):
                    raise item
                else:
                    yield Step(index, item)
        finally:
            for task in tasks:
                task.cancel()


async def collect(generation: Generation, num_prompts: int) -> list[PromptState]:
    """Read a generation to its end; one PromptState per prompt."""
    states = [PromptState() for _ in range(num_prompts)]
    async for step in generation.steps():
        states[step.prompt_index].add(step.output)
    return states
