"""Compiling constraints: once per distinct spec, off the engine thread, bounded in time, size and memory."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from backends.errors import InvalidRequestError
from backends.grammar.llg import CompiledGrammar, GrammarCompileError, GrammarTokenizer
from backends.grammar.spec import GrammarSpec

log = logging.getLogger("ladle.grammar")

MAX_GRAMMAR_BYTES = 64 * 1024  # a schema, regex or grammar larger than this is refused
COMPILE_TIMEOUT_S = 5.0  # a compile that takes longer is refused (400)
CACHE_SIZE = 128  # compiled grammars kept, least recently used dropped first
MAX_GRAMMAR_SYMBOLS = 200_000  # llguidance's bound on the compiled grammar's size


class GrammarCompiler:
    """Turns GrammarSpecs into CompiledGrammars for one model's tokenizer, with an LRU cache.

    `compile` is synchronous (the library API and the engine's fallback call it);
    `compile_async` is what the HTTP layer awaits before submitting a request, so that a bad
    grammar is a 400 before admission and compiling never blocks the event loop or a step.
    Errors are cached too, so a repeated bad schema costs nothing.
    """

    def __init__(
        self,
        hf_tokenizer: Any,
        eos_token_ids: Iterable[int],
        cache_size: int = CACHE_SIZE,
        max_bytes: int = MAX_GRAMMAR_BYTES,
        timeout: float = COMPILE_TIMEOUT_S,
    ) -> None:
        self._hf_tokenizer = hf_tokenizer
        self._eos = frozenset(eos_token_ids)
        self.cache_size = cache_size
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._tokenizer: GrammarTokenizer | None = None
        self._tokenizer_error: str | None = None
        self._cache: OrderedDict[GrammarSpec, CompiledGrammar | GrammarCompileError] = OrderedDict()
        self._lock = threading.Lock()
        self._tokenizer_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    @property
    def tokenizer(self) -> GrammarTokenizer:
        """The grammar engine's view of the vocabulary, built on first use (and timed)."""
        with self._tokenizer_lock:
            if self._tokenizer is None and self._tokenizer_error is None:
                start = time.perf_counter()
                try:
                    self._tokenizer = GrammarTokenizer(self._hf_tokenizer, self._eos)
                    log.info("grammar tokenizer built in %.2f s", time.perf_counter() - start)
                except GrammarCompileError as exc:
                    self._tokenizer_error = str(exc)
                    log.warning("structured outputs are unavailable: %s", exc)
            if self._tokenizer is None:
                raise GrammarCompileError(self._tokenizer_error or "no grammar tokenizer")
            return self._tokenizer

    def prepare(self) -> bool:
        """Build the tokenizer index now (at load); False if this model cannot use grammars."""
        try:
            self.tokenizer  # noqa: B018
            return True
        except GrammarCompileError:
            return False

    def cached(self, spec: GrammarSpec) -> CompiledGrammar | None:
        """The compiled grammar of `spec` if it is in the cache (no compile)."""
        with self._lock:
            hit = self._cache.get(spec)
            if isinstance(hit, CompiledGrammar):
                self._cache.move_to_end(spec)
                return hit
            return None

    def compile(self, spec: GrammarSpec, param: str | None = "grammar") -> CompiledGrammar:
        """The compiled grammar of `spec`; InvalidRequestError naming `param` if it cannot be."""
        if spec.size > self.max_bytes:
            raise InvalidRequestError(
                f"the {_noun(spec)} is {spec.size} bytes; the limit is {self.max_bytes} bytes",
                param=param,
            )
        with self._lock:
            hit = self._cache.get(spec)
            if hit is not None:
                self._cache.move_to_end(spec)
        if hit is None:
            hit = self._build(spec)
            with self._lock:
                self._cache[spec] = hit
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        if isinstance(hit, GrammarCompileError):
            raise _request_error(spec, hit, param)
        return hit

    async def compile_async(self, spec: GrammarSpec, param: str | None = "grammar") -> CompiledGrammar:
        """`compile` on a worker thread under the time limit; a cache hit returns at once."""
        hit = self.cached(spec)
        if hit is not None:
            return hit
        if spec.size > self.max_bytes:
            return self.compile(spec, param)  # raises the size error without a thread hop
        loop = asyncio.get_running_loop()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ladle-grammar")
        future = loop.run_in_executor(self._pool, self.compile, spec, param)
        try:
            return await asyncio.wait_for(future, self.timeout)
        except asyncio.TimeoutError:
            raise InvalidRequestError(
                f"the {_noun(spec)} took longer than {self.timeout:g} s to compile; simplify it",
                param=param,
            ) from None

    def _build(self, spec: GrammarSpec) -> CompiledGrammar | GrammarCompileError:
        start = time.perf_counter()
        try:
            compiled: CompiledGrammar | GrammarCompileError = CompiledGrammar(
                spec, self.tokenizer, MAX_GRAMMAR_SYMBOLS
            )
        except GrammarCompileError as exc:
            compiled = exc
        log.debug("compiled a %s grammar in %.1f ms", spec.kind, 1000 * (time.perf_counter() - start))
        return compiled

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _noun(spec: GrammarSpec) -> str:
    return {
        "json_schema": "JSON schema",
        "json_object": "JSON grammar",
        "regex": "regex",
        "choice": "choice list",
        "lark": "grammar",
    }[spec.kind]


def _request_error(spec: GrammarSpec, exc: GrammarCompileError, param: str | None) -> InvalidRequestError:
    message = str(exc)
    if exc.keyword is None and not message.startswith("structured outputs"):
        message = f"invalid {_noun(spec)}: {message}"
    return InvalidRequestError(message, param=param, code="invalid_grammar")
