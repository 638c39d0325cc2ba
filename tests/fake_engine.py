"""A scripted stand-in for backends' AsyncEngine and load_model, for the HTTP layer's tests.

Each choice j of a request reads a fixed script from offset 3*j (shifted by the seed), one token per
step, with logprob -0.1 * (num_sequences - j): later choices rank higher, which best_of tests rely on.
A prompt holding "FAIL" makes the stream raise GenerationError after two outputs; one holding "CRASH"
makes submit raise a RuntimeError, and one holding "VALUEBUG" a ValueError whose message reads like a
parameter's (both bugs, as far as the HTTP layer can tell: 500s, never 400s).
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from backends.engine.contract import ModelInfo
from backends.engine.outputs import ChoiceDelta, RequestOutput, TokenLogprob, TopLogprob
from backends.engine.params import SamplingParams
from backends.engine.steps import StepResult, StepStats
from backends.errors import (
    ContextLengthError,
    EngineStoppedError,
    GenerationError,
    QueueFullError,
)
from backends.grammar import GrammarCompiler
from tests import tiny_tokenizers

SCRIPT = "The quick brown fox jumps over the lazy dog. Hello world! How are you today? "
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


def fake_tokenizer(chat_template: str | None = CHAT_TEMPLATE) -> Any:
    """A copy of the tiny byte-level BPE tokenizer, with a chat template (or none)."""
    tokenizer = copy.deepcopy(tiny_tokenizers.byte_level_bpe())
    tokenizer.chat_template = chat_template
    return tokenizer


@dataclass(slots=True)
class _Choice:
    index: int
    tokens: list[int] = field(default_factory=list)
    sent: int = 0  # characters of text already handed out
    finish_reason: str | None = None
    cumulative: float = 0.0


class FakeStream:
    """The outputs of one fake request; abort() frees its place at once."""

    def __init__(
        self, engine: FakeEngine, request_id: str, prompt: list[int], params: SamplingParams
    ) -> None:
        self.engine = engine
        self.request_id = request_id
        self.prompt = prompt
        self.params = params
        self.aborted = False
        self.done = False
        self.held = 0  # KV cache positions its unfinished choices would hold: prompt + tokens each
        self.submitted = time.monotonic()
        self.last_output: float | None = None

    def abort(self) -> None:
        if not self.done:
            self.aborted = True
            self.engine.aborted.append(self.request_id)
        self._leave()

    def _leave(self) -> None:
        self.done = True
        self.engine.active.pop(self.request_id, None)

    async def __aiter__(self) -> AsyncIterator[RequestOutput]:
        choices = [_Choice(j) for j in range(self.params.num_sequences)]
        fail = "FAIL" in self.engine.tokenizer.decode(self.prompt)
        step = 0
        try:
            while not self.aborted and any(c.finish_reason is None for c in choices):
                await asyncio.sleep(self.engine.step_delay)
                if self.aborted:
                    return
                if fail and step == 2:
                    raise GenerationError("injected failure")
                deltas = [self._advance(c, len(choices)) for c in choices if c.finish_reason is None]
                live = [c for c in choices if c.finish_reason is None]
                self.held = sum(len(self.prompt) + len(c.tokens) for c in live)
                finished = all(c.finish_reason is not None for c in choices)
                output = RequestOutput(self.request_id, len(self.prompt), deltas, finished)
                if step == 0 and self.params.echo and self.params.logprobs is not None:
                    output.prompt_logprobs = self._prompt_logprobs()
                step += 1
                if finished:
                    self._leave()
                self.engine.notify(self, output)
                yield output
        finally:
            # Leaving the iteration early is an abort, as with the real RequestStream.
            self.abort()

    def _advance(self, choice: _Choice, num: int) -> ChoiceDelta:
        engine, params = self.engine, self.params
        offset = 0 if params.greedy else 3 * choice.index + 5 * (params.seed or 0)
        token = engine.script[(offset + len(choice.tokens)) % len(engine.script)]
        logprob = -0.1 * (num - choice.index)
        choice.tokens.append(token)
        choice.cumulative += logprob
        text = engine.tokenizer.decode(choice.tokens)
        limit = params.max_tokens or engine.info.generation_room(len(self.prompt))
        hits = [text.find(stop) for stop in params.stop if stop in text]
        if hits:
            text, choice.finish_reason = text[: min(hits)], "stop"
        elif (
            len(choice.tokens) >= engine.eos_after
            and not params.ignore_eos
            and len(choice.tokens) >= params.min_tokens
        ):
            choice.finish_reason = "stop"
        elif len(choice.tokens) >= limit:
            choice.finish_reason = "length"
        hold = 0 if choice.finish_reason else max((len(s) - 1 for s in params.stop), default=0)
        safe = max(choice.sent, len(text) - hold)
        delta_text, choice.sent = text[choice.sent : safe], safe
        return ChoiceDelta(
            index=choice.index,
            text=delta_text,
            token_ids=[token],
            logprobs=[self._logprob(token, logprob)] if params.logprobs is not None else [],
            finish_reason=choice.finish_reason,
            cumulative_logprob=choice.cumulative,
            completion_tokens=len(choice.tokens),
        )

    def _logprob(self, token: int, logprob: float | None) -> TokenLogprob:
        top = []
        for rank in range(self.params.logprobs or 0):
            alt = token if rank == 0 else (token + rank) % self.engine.info.vocab_size
            top.append(self.engine.top_logprob(alt, (logprob or -1.0) - rank))
        return self.engine.token_logprob(token, logprob, top)

    def _prompt_logprobs(self) -> list[TokenLogprob]:
        return [self._logprob(token, None if i == 0 else -1.0) for i, token in enumerate(self.prompt)]


class FakeEngine:
    """The AsyncEngine interface: synchronous admission, one stream per request."""

    def __init__(
        self,
        tokenizer: Any,
        info: ModelInfo,
        max_batch_size: int = 16,
        max_queued_requests: int = 256,
        step_delay: float = 0.002,
        eos_after: int = 40,
    ) -> None:
        self.tokenizer = tokenizer
        self.info = info
        self.max_batch_size = max_batch_size
        self.max_queued_requests = max_queued_requests
        self.step_delay = step_delay
        self.eos_after = eos_after
        self.script: list[int] = list(tokenizer(SCRIPT, add_special_tokens=False).input_ids)
        # Compiles (and so validates) constraints as the real engine does; the script ignores them.
        self.grammars = GrammarCompiler(tokenizer, info.eos_token_ids)
        self.active: dict[str, FakeStream] = {}
        self.submitted: list[tuple[list[int], SamplingParams]] = []
        self.aborted: list[str] = []
        self.started = False
        self._next_id = 0
        self.observers: list[Callable[[StepResult], None]] = []  # told of every output, as of a step
        self.step_age = 0.0  # never wedged
        self.prefix_cache = None

    @property
    def num_running(self) -> int:
        return min(len(self.active), self.max_batch_size)

    @property
    def num_queued(self) -> int:
        return max(0, len(self.active) - self.max_batch_size)

    @property
    def kv_tokens(self) -> int:
        return sum(stream.held for stream in self.active.values())

    def subscribe(self, observer: Callable[[StepResult], None]) -> None:
        self.observers.append(observer)

    def notify(self, stream: FakeStream, output: RequestOutput) -> None:
        """Tell the observers of one output as the real engine tells them of a step that made it."""
        now = time.monotonic()
        tokens = sum(len(choice.token_ids) for choice in output.choices)
        stats = StepStats(batch_size=len(output.choices), generation_tokens=tokens, kv_tokens=self.kv_tokens)
        if stream.last_output is None:
            stats.time_to_first_token.append(now - stream.submitted)
            stats.prompt_tokens = output.prompt_tokens
        else:
            stats.inter_token_latency.append(now - stream.last_output)
        stream.last_output = now
        for observer in self.observers:
            observer(StepResult([output], stats=stats))

    async def start(self) -> None:
        self.started = True

    def stall(self) -> None:
        """Never wedged (tests of a stall drive the real AsyncEngine)."""
        return None

    async def shutdown(self) -> None:
        self.started = False
        for stream in list(self.active.values()):
            stream.abort()

    def submit(
        self, prompt_ids: Sequence[int], params: SamplingParams, request_id: str | None = None
    ) -> FakeStream:
        if not self.started:
            raise EngineStoppedError("the engine is not running")
        params.validate(self.info.vocab_size)  # as EngineCore admits: InvalidRequestError naming the param
        prompt = list(prompt_ids) or [self.info.bos_token_id or 0]
        text = self.tokenizer.decode(prompt)
        if "CRASH" in text:
            raise RuntimeError("secret internal detail")
        if "VALUEBUG" in text:
            raise ValueError("top_p must be in (0, 1], got a secret internal detail")
        room = self.info.generation_room(len(prompt))
        if room < 1 or (params.max_tokens is not None and params.max_tokens > room):
            raise ContextLengthError(
                f"prompt of {len(prompt)} tokens and max_tokens={params.max_tokens} do not fit"
            )
        if len(self.active) >= self.max_batch_size + self.max_queued_requests:
            raise QueueFullError("the queue is full", retry_after=1.5)
        self._next_id += 1
        stream = FakeStream(self, request_id or f"fake-{self._next_id}", prompt, params)
        self.active[stream.request_id] = stream
        self.submitted.append((prompt, params))
        return stream

    def token_text(self, token: int) -> tuple[str, list[int]]:
        text = self.tokenizer.decode([token])
        return text, list(text.encode())

    def top_logprob(self, token: int, logprob: float) -> TopLogprob:
        text, raw = self.token_text(token)
        return TopLogprob(token_id=token, token=text, bytes=raw, logprob=logprob)

    def token_logprob(self, token: int, logprob: float | None, top: list[TopLogprob]) -> TokenLogprob:
        text, raw = self.token_text(token)
        return TokenLogprob(token_id=token, token=text, bytes=raw, logprob=logprob, top=top)


class FakeModel:
    """What load_model returns: tokenizer, info, engine, close()."""

    def __init__(
        self,
        name: str = "fake-model",
        context_length: int = 256,
        chat_template: str | None = CHAT_TEMPLATE,
        is_encoder_decoder: bool = False,
        **engine_options: Any,
    ) -> None:
        self.tokenizer = fake_tokenizer(chat_template)
        self.info = ModelInfo(
            name=name,
            context_length=context_length,
            vocab_size=len(self.tokenizer),
            eos_token_ids=frozenset({self.tokenizer.eos_token_id}),
            bos_token_id=self.tokenizer.bos_token_id,
            is_encoder_decoder=is_encoder_decoder,
            created=1700000000,
        )
        self.engine = FakeEngine(self.tokenizer, self.info, **engine_options)
        self.closed = False

    def close(self) -> None:
        self.closed = True


def load_model(model: str | None = None, **options: Any) -> FakeModel:
    """load_model's signature; engine options (max_batch_size, ...) reach the fake engine."""
    keep = {
        "max_batch_size",
        "max_queued_requests",
        "step_delay",
        "eos_after",
        "context_length",
        "chat_template",
    }
    return FakeModel(name=model or "fake-model", **{k: v for k, v in options.items() if k in keep})


def fake_loader(**options: Any) -> Any:
    """A create_app loader that builds a FakeModel with the server's engine settings."""

    def load(settings: Any) -> FakeModel:
        return FakeModel(
            name=settings.model or "fake-model",
            max_batch_size=settings.max_batch_size,
            max_queued_requests=settings.max_queued_requests,
            **options,
        )

    return load
