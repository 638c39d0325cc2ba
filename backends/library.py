"""The Python library API: `load_model()` and a callable model that streams choices."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from backends import registry
from backends.engine.async_engine import AsyncEngine
from backends.engine.contract import Backend, ModelInfo
from backends.engine.core import DEFAULT_PREFILL_CHUNK, DEFAULT_PREFIX_CACHE_TOKENS, EngineCore
from backends.engine.outputs import ChoiceDelta, RequestOutput, TokenLogprob
from backends.engine.params import SamplingParams
from backends.errors import InvalidRequestError
from backends.grammar import from_response_format, from_structured_outputs
from backends.options import BackendOptions, backend_options
from backends.runner import loading

log = logging.getLogger("ladle")

_PARAM_NAMES = {f.name for f in fields(SamplingParams)}


def load_backend(
    model: str | None = None,
    *,
    backend: str = "hf_eager",
    cache_dir: str | None = None,
    options: BackendOptions | None = None,
    **given: Any,
) -> Backend:
    """Resolve MODEL and load it with the named backend.

    The backend options (the fields of BackendOptions: dtype, device, trust_remote_code,
    max_batch_size, compile, max_context, max_memory, load_in_4bit, device_map) come from
    their keyword argument when given, else from `options` when given, else from their environment
    variable (DTYPE, DEVICE, ... read as the server reads them), else their default.
    """
    chosen = backend_options(base=options, **given)
    load = registry.loader(backend)
    source = loading.resolve(model, cache_dir, chosen.trust_remote_code)
    return load(source, chosen)


def load_model(
    model: str | None = None,
    *,
    backend: str = "hf_eager",
    max_queued_requests: int = 256,
    prefill_chunk_tokens: int = DEFAULT_PREFILL_CHUNK,
    prefix_cache_tokens: int | None = DEFAULT_PREFIX_CACHE_TOKENS,
    cache_dir: str | None = None,
    options: BackendOptions | None = None,
    **given: Any,
) -> Model:
    """Load a model (the default model when none is named) ready to generate.

    Backend options are keyword arguments (`dtype=`, `device=`, `max_batch_size=`, `compile=`,
    `max_context=`, ...: see load_backend); `max_batch_size` sizes the engine's batch too.
    `prefix_cache_tokens=None` turns the prefix cache off.
    """
    chosen = backend_options(base=options, **given)
    loaded = load_backend(model, backend=backend, cache_dir=cache_dir, options=chosen)
    core = EngineCore(
        loaded, chosen.max_batch_size, max_queued_requests, prefill_chunk_tokens, prefix_cache_tokens
    )
    return Model(core)


def make_params(**kwargs: Any) -> SamplingParams:
    """SamplingParams from keyword arguments, validated as the engine validates them; an unknown or
    invalid one raises InvalidRequestError (a ValueError) whose `param` names it.

    `response_format` (OpenAI's) and `structured_outputs` (vLLM's) become `grammar`.
    """
    for name, convert in (
        ("response_format", from_response_format),
        ("structured_outputs", from_structured_outputs),
    ):
        if name in kwargs:
            spec = convert(kwargs.pop(name), name)
            if spec is not None:
                if kwargs.get("grammar") is not None:
                    raise InvalidRequestError(
                        f"{name}: only one of response_format, structured_outputs, grammar", name
                    )
                kwargs["grammar"] = spec
    unknown = sorted(set(kwargs) - _PARAM_NAMES)
    if unknown:
        raise InvalidRequestError(f"unknown parameter: {unknown[0]}", unknown[0])
    if isinstance(kwargs.get("stop"), str):
        kwargs["stop"] = [kwargs["stop"]]
    params = SamplingParams(**kwargs)
    params.validate()
    return params


class Model:
    """A loaded model: call it with a prompt to stream OpenAI-shaped completion choices."""

    def __init__(self, core: EngineCore) -> None:
        self._core: EngineCore | None = core
        self.tokenizer = core.tokenizer
        self.info: ModelInfo = core.info
        self._engine: AsyncEngine | None = None

    @property
    def core(self) -> EngineCore:
        """The engine core that runs this model; a closed model has none (RuntimeError)."""
        if self._core is None:
            raise RuntimeError("the model is closed")
        return self._core

    @property
    def backend(self) -> Backend:
        """The backend that holds the weights and the KV cache."""
        return self.core.backend

    @property
    def engine(self) -> AsyncEngine:
        """The asyncio driver of this model's engine (created on first use, in the running loop)."""
        if self._engine is None:
            self._engine = AsyncEngine(self.core)
        return self._engine

    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        """Token ids of a prompt (a string is tokenized with the tokenizer's special tokens)."""
        if isinstance(prompt, str):
            return list(self.tokenizer(prompt).input_ids)
        return list(prompt)

    def prompt_text(self, prompt: str | Sequence[int]) -> str:
        """The prompt as echo shows it: the string itself, or the ids decoded (special tokens kept)."""
        if isinstance(prompt, str):
            return prompt
        return str(self.tokenizer.decode(list(prompt), skip_special_tokens=False)) if prompt else ""

    def __call__(self, prompt: str | Sequence[int] = "", **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Generate for one prompt, yielding a choice dict per new piece of text of each choice."""
        if self._engine is not None and self._engine.running:
            raise RuntimeError("the async engine is running: use `async for c in model.agenerate(...)`")
        params = self._params(kwargs)
        shaper = ChoiceShaper(params, self.prompt_text(prompt) if params.echo else "")
        request_id = self.core.add_request(self.encode(prompt), params)
        return self._drive(request_id, shaper)

    def _drive(self, request_id: str, shaper: ChoiceShaper) -> Iterator[dict[str, Any]]:
        try:
            while True:
                result = self.core.step()
                if request_id in result.failures:
                    raise result.failures[request_id]
                for output in result.outputs:
                    if output.request_id == request_id:
                        yield from shaper.choices(output)
                        if output.finished:
                            return
        finally:
            self.core.abort(request_id)

    async def agenerate(
        self, prompt: str | Sequence[int] = "", **kwargs: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """The async variant of calling the model; needs the engine started (`await model.engine.start()`)."""
        params = self._params(kwargs)
        shaper = ChoiceShaper(params, self.prompt_text(prompt) if params.echo else "")
        engine = self.engine
        if not engine.running:
            await engine.start()
        stream = engine.submit(self.encode(prompt), params)
        async for output in stream:
            for choice in shaper.choices(output):
                yield choice

    def _params(self, kwargs: dict[str, Any]) -> SamplingParams:
        """make_params, and the grammar compiled now, so that its error names the keyword it came from."""
        source = next(
            (k for k in ("response_format", "structured_outputs", "grammar") if k in kwargs), "grammar"
        )
        params = make_params(**kwargs)
        if params.grammar is not None:
            self.core.grammars.compile(params.grammar, param=source)
        return params

    def close(self) -> None:
        """Stop the engine and let go of the weights and every cache, so that their memory is freed.

        Requests still running are aborted; the model cannot generate afterwards. Shut a started
        async engine down first (`await model.engine.shutdown()`). Memory is returned once nothing
        else holds the backend (a reference kept to `model.backend` keeps it alive).
        """
        core, self._core, self._engine = self._core, None, None
        if core is None:
            return
        core.shutdown()
        del core
        gc.collect()  # the model's modules hold reference cycles
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class ChoiceShaper:
    """One request's engine outputs as choice dicts, shaped as the HTTP API's completions are.

    Each choice's first piece starts with the prompt when `echo` is asked (and its logprobs with
    `logprobs`); `text_offset` counts characters from the start of the choice's text, echo included.
    With `best_of`, nothing can be chosen before the end: the best `n` come whole, once finished.
    """

    def __init__(self, params: SamplingParams, prompt_text: str) -> None:
        self.params = params
        self.prompt_text = prompt_text
        self.prompt_logprobs: list[TokenLogprob] = []
        self.offsets: dict[int, int] = {}  # text_offset of each choice's next token
        self.collected: dict[int, _Collected] = {}  # best_of: everything each sequence made

    @property
    def ranking(self) -> bool:
        return self.params.best_of is not None and self.params.best_of > self.params.n

    def choices(self, output: RequestOutput) -> Iterator[dict[str, Any]]:
        """The choice dicts one engine output brings (none while best_of is still running)."""
        if output.prompt_logprobs is not None:
            self.prompt_logprobs = output.prompt_logprobs
        for delta in output.choices:
            text, entries = delta.text, list(delta.logprobs)
            if delta.index not in self.offsets:
                self.offsets[delta.index] = 0
                if self.params.echo:
                    text, entries = self.prompt_text + text, [*self.prompt_logprobs, *entries]
            if self.ranking:
                self.collected.setdefault(delta.index, _Collected()).add(text, entries, delta)
            elif text or entries or delta.finish_reason is not None:
                yield self._choice(delta.index, text, entries, delta.finish_reason)
        if self.ranking and output.finished:
            yield from self._best()

    def _best(self) -> Iterator[dict[str, Any]]:
        ranked = sorted(
            sorted(self.collected.items()), key=lambda item: item[1].cumulative_logprob, reverse=True
        )
        for rank, (index, choice) in enumerate(ranked[: self.params.n]):
            self.offsets[index] = 0
            yield {**self._choice(index, choice.text, choice.logprobs, choice.finish_reason), "index": rank}

    def _choice(
        self, index: int, text: str, entries: list[TokenLogprob], finish_reason: str | None
    ) -> dict[str, Any]:
        logprobs = None
        if self.params.logprobs is not None:
            logprobs = _logprobs(entries, self.offsets[index])
            self.offsets[index] += sum(len(entry.token) for entry in entries)
        return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}


@dataclass(slots=True)
class _Collected:
    """One best_of sequence, whole."""

    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    cumulative_logprob: float = 0.0

    def add(self, text: str, entries: list[TokenLogprob], delta: ChoiceDelta) -> None:
        self.text += text
        self.logprobs.extend(entries)
        self.finish_reason = delta.finish_reason or self.finish_reason
        self.cumulative_logprob = delta.cumulative_logprob


def _logprobs(entries: list[TokenLogprob], offset: int) -> dict[str, Any]:
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        # Nothing predicts the first echoed prompt token, so it has no alternatives (as the API says).
        "top_logprobs": [None if e.logprob is None else {t.token: t.logprob for t in e.top} for e in entries],
        "text_offset": offsets,
    }
