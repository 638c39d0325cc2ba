"""The engine streams of one API request: submitted together, merged, aborted together."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from backends.outputs import ChoiceDelta, RequestOutput, TokenLogprob
from handler.replies import PromptTokensDetails, Usage

if TYPE_CHECKING:
    from backends.async_engine import AsyncEngine, RequestStream
    from backends.params import SamplingParams
    from handler.prompts import Prompt

T = TypeVar("T")


class _Chunk(Protocol):
    @property
    def choices(self) -> Sequence[Any]: ...


ChunkT = TypeVar("ChunkT", bound=_Chunk)


@dataclass(frozen=True, slots=True)
class Job:
    """What a response needs to know of its request: ids, names, shape of its choices."""

    id: str
    created: int
    model: str
    prompts: list[Prompt]
    params: SamplingParams
    include_usage: bool = False
    interval: float = 0.0

    @property
    def n(self) -> int:
        return self.params.n

    @property
    def echo(self) -> bool:
        return self.params.echo

    @property
    def logprobs(self) -> bool:
        return self.params.logprobs is not None


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


@dataclass(slots=True)
class ChoiceState:
    """Everything one choice has produced so far (for JSON bodies and best_of)."""

    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    cumulative_logprob: float = 0.0
    completion_tokens: int = 0

    def add(self, delta: ChoiceDelta) -> None:
        self.text.append(delta.text)
        self.logprobs.extend(delta.logprobs)
        self.finish_reason = delta.finish_reason or self.finish_reason
        self.cumulative_logprob = delta.cumulative_logprob
        self.completion_tokens = delta.completion_tokens


@dataclass(slots=True)
class PendingDelta:
    """What one choice gained over a group of streamed steps (sent as one chunk)."""

    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None

    def add(self, delta: ChoiceDelta) -> None:
        self.text.append(delta.text)
        self.logprobs.extend(delta.logprobs)
        self.finish_reason = delta.finish_reason or self.finish_reason

    @property
    def empty(self) -> bool:
        """Nothing to send: no text, no tokens' logprobs, not finished."""
        return not any(self.text) and not self.logprobs and self.finish_reason is None


@dataclass(slots=True)
class PromptState:
    """One prompt's choices and its prompt logprobs, as collected for a JSON body."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    prompt_logprobs: list[TokenLogprob] | None = None
    choices: dict[int, ChoiceState] = field(default_factory=dict)

    def add(self, output: RequestOutput) -> None:
        self.prompt_tokens = output.prompt_tokens
        self.cached_tokens = output.cached_tokens
        if output.prompt_logprobs is not None:
            self.prompt_logprobs = output.prompt_logprobs
        for delta in output.choices:
            self.choices.setdefault(delta.index, ChoiceState()).add(delta)

    def best(self, n: int) -> list[ChoiceState]:
        """The n choices with the highest total logprob (all of them, in order, without best_of)."""
        ordered = [self.choices[index] for index in sorted(self.choices)]
        if len(ordered) <= n:
            return ordered
        return sorted(ordered, key=lambda choice: choice.cumulative_logprob, reverse=True)[:n]

    @property
    def completion_tokens(self) -> int:
        return sum(choice.completion_tokens for choice in self.choices.values())


@dataclass(slots=True)
class UsageCounter:
    """Tokens of a streamed response: each prompt once, every generated token of every choice."""

    prompt_tokens: dict[int, int] = field(default_factory=dict)
    cached_tokens: dict[int, int] = field(default_factory=dict)
    completion_tokens: dict[tuple[int, int], int] = field(default_factory=dict)

    def add(self, step: Step) -> None:
        self.prompt_tokens[step.prompt_index] = step.output.prompt_tokens
        self.cached_tokens[step.prompt_index] = step.output.cached_tokens
        for delta in step.output.choices:
            self.completion_tokens[(step.prompt_index, delta.index)] = delta.completion_tokens

    def usage(self) -> Usage:
        prompt = sum(self.prompt_tokens.values())
        completion = sum(self.completion_tokens.values())
        return make_usage(prompt, completion, sum(self.cached_tokens.values()))


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


def usage_of(states: Sequence[PromptState]) -> Usage:
    """Usage of a collected response."""
    prompt = sum(state.prompt_tokens for state in states)
    completion = sum(state.completion_tokens for state in states)
    return make_usage(prompt, completion, sum(state.cached_tokens for state in states))


def make_usage(prompt: int, completion: int, cached: int) -> Usage:
    """OpenAI's usage object, with the prompt tokens the prefix cache served."""
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
    )


async def collect(generation: Generation, num_prompts: int) -> list[PromptState]:
    """Read a generation to its end; one PromptState per prompt."""
    states = [PromptState() for _ in range(num_prompts)]
    async for step in generation.steps():
        states[step.prompt_index].add(step.output)
    return states


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
