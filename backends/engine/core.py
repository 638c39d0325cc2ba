"""The engine core: admission, continuous batching, sampling, detokenizing and stopping.

One `step()` runs one decode forward over every running sequence of every request (each
gains one token), then spends a token budget on the prompts of admitted requests (prefill.py:
chunks, prefix cache). Sequences that finish or are cancelled leave at once and free their
cache rows; a finished sequence leaves its KV in the prefix cache first. Admission rules are
in scheduler.py; what a sampled token does to its choice in advance.py. Observers subscribed with
`subscribe` hear of every step (steps.py).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence

import torch

from backends.engine.advance import advance
from backends.engine.contract import Backend
from backends.engine.params import SamplingParams
from backends.engine.prefill import Prefiller
from backends.engine.prefix_cache import PrefixCacheStats
from backends.engine.sampler import Sampler
from backends.engine.scheduler import check_request, make_sequences
from backends.engine.state import ChoiceState, Request
from backends.engine.step_clock import StepLoad
from backends.engine.steps import StepObserver, StepResult, count_outputs, request_output
from backends.errors import EngineStoppedError, GenerationError, InvalidRequestError, QueueFullError
from backends.grammar import GrammarCompiler
from backends.grammar.mask import grammar_mask

log = logging.getLogger("ladle.engine")

# Prompt tokens prefilled per step while streams decode: on a 2-core CPU with SmolLM2-135M,
# a 128-token chunk costs about as much as two decode steps of 8 streams (README, "Chunked prefill").
DEFAULT_PREFILL_CHUNK = 128
DEFAULT_PREFIX_CACHE_TOKENS = 16384


class EngineCore:
    """Synchronous engine; `step()` is the unit of work a driver loop calls."""

    def __init__(
        self,
        backend: Backend,
        max_batch_size: int = 16,
        max_queued_requests: int = 256,
        prefill_chunk_tokens: int = DEFAULT_PREFILL_CHUNK,
        prefix_cache_tokens: int | None = DEFAULT_PREFIX_CACHE_TOKENS,
    ) -> None:
        if max_batch_size < 1 or prefill_chunk_tokens < 1:
            raise ValueError("max_batch_size and prefill_chunk_tokens must be >= 1")
        if max_queued_requests < 0:
            raise ValueError("max_queued_requests must be >= 0")
        self.backend = backend
        self.info = backend.info
        self.tokenizer = backend.tokenizer
        self.max_batch_size = max_batch_size
        self.max_queued_requests = max_queued_requests
        self.sampler = Sampler(self.info.eos_token_ids, self.info.vocab_size)
        self.grammars = GrammarCompiler(backend.tokenizer, self.info.eos_token_ids)
        self._lock = threading.Lock()
        self._waiting: deque[Request] = deque()
        self._requests: dict[str, Request] = {}
        self._running: list[ChoiceState] = []
        self._constrained = 0  # running sequences with a grammar: none, and decode scans no row for one
        self._next_seq_id = 0
        self.accepting = True
        self.step_load = StepLoad()  # what the step in flight does, for a stall report
        self.prefiller = Prefiller(backend, prefill_chunk_tokens, prefix_cache_tokens)
        self.kv_tokens = 0  # cache positions the backend holds, read after each step
        self._observers: list[StepObserver] = []

    # -- admission (any thread) -----------------------------------------------------------------

    @property
    def num_running(self) -> int:
        """Sequences holding cache rows: decoding, or with their prompt being prefilled in chunks."""
        return len(self._running) + self.prefiller.num_sequences

    @property
    def num_queued(self) -> int:
        return len(self._waiting)

    def has_work(self) -> bool:
        return bool(self._running or self._waiting or self.prefiller.jobs)

    @property
    def prefix_cache(self) -> PrefixCacheStats | None:
        """The prefix cache's counters and size, or None when it is off (or the model opts out)."""
        cache = self.prefiller.cache
        return cache.stats if cache is not None else None

    def add_request(
        self, prompt_ids: Sequence[int], params: SamplingParams, request_id: str | None = None
    ) -> str:
        """Validate and queue a request; raises at once if it cannot be served."""
        prompt = check_request(self.info, self.max_batch_size, list(prompt_ids), params)
        grammar = None if params.grammar is None else self.grammars.compile(params.grammar)
        request_id = request_id or uuid.uuid4().hex
        with self._lock:
            if not self.accepting:
                raise EngineStoppedError("the server is shutting down and admits no new requests")
            if request_id in self._requests:
                raise InvalidRequestError(f"request id {request_id} is already in use")
            if len(self._waiting) >= self.max_queued_requests:
                raise QueueFullError(f"the queue is full ({self.max_queued_requests} requests waiting)")
            request = Request(request_id, prompt, params, time.monotonic(), grammar=grammar)
            self._waiting.append(request)
            self._requests[request_id] = request
        return request_id

    def abort(self, request_id: str) -> None:
        """Cancel a request; its sequences leave the batch at the next step."""
        with self._lock:
            request = self._requests.get(request_id)
            if request is not None:
                request.aborted = True

    def subscribe(self, observer: StepObserver) -> None:
        """Call `observer` with the result of every step from now on (see steps.py)."""
        self._observers.append(observer)

    # -- the step (one thread at a time) --------------------------------------------------------

    def step(self) -> StepResult:
        """Decode once, admit, prefill under the step's budget, and return what every touched request produced."""
        started = time.monotonic()
        result = StepResult()
        self._drop_aborted(result)
        touched: dict[str, Request] = {}
        self.step_load = StepLoad(decoding=len(self._running))
        # Decode before prefilling: a backend's decode takes exactly its live sequences, and
        # the newly admitted ones get their first token from the prefill itself.
        if self._running:
            self._decode(list(self._running), result, touched)
        admitted = [r for r in self._admit() if self._setup(r, result)]
        self.prefiller.add(admitted)
        if self.prefiller.jobs:
            tokens = sum(job.remaining for job in self.prefiller.jobs)
            self.step_load = StepLoad(self.step_load.decoding, len(self.prefiller.jobs), tokens)
            self._prefill(result, touched)
        self._finish(touched, result)
        self._report(result, time.monotonic() - started)
        return result

    def _cached_tokens(self) -> int:
        """Cache positions held: the backend's count, else prompt plus output of each running choice."""
        if self.prefiller.staged is not None:
            return self.prefiller.staged.cached_tokens()
        return sum(len(s.prompt_ids) + len(s.output_ids) for s in self._running)

    def _report(self, result: StepResult, seconds: float) -> None:
        """Complete the step's stats (cache held, duration) and tell the observers."""
        self.kv_tokens = self._cached_tokens()
        result.stats.kv_tokens, result.stats.seconds = self.kv_tokens, seconds
        for observer in self._observers:
            try:
                observer(result)
            except Exception:  # an observer's bug must not fail the requests of the step
                log.exception("a step observer failed")

    def _drop_aborted(self, result: StepResult) -> None:
        with self._lock:
            gone = [r for r in self._waiting if r.aborted]
            for request in gone:
                self._waiting.remove(request)
                del self._requests[request.request_id]
        for request in self.prefiller.drop_aborted():
            self._requests.pop(request.request_id, None)
        dead = [s for s in self._running if s.request.aborted]
        if dead:
            self._release(dead)
            for request in {s.request.request_id: s.request for s in dead}.values():
                self._requests.pop(request.request_id, None)

    def _admit(self) -> list[Request]:
        admitted: list[Request] = []
        with self._lock:
            free = self.max_batch_size - len(self._running) - self.prefiller.num_sequences
            while self._waiting and self._waiting[0].params.num_sequences <= free:
                request = self._waiting.popleft()
                free -= request.params.num_sequences
                admitted.append(request)
        return admitted

    def _setup(self, request: Request, result: StepResult) -> bool:
        """Build a request's sequences; a failure here fails that request alone."""
        try:
            self._make_sequences(request)
            return True
        except Exception as exc:
            log.exception("setting up request %s failed", request.request_id)
            self._fail([request], exc, result)
            return False

    def _make_sequences(self, request: Request) -> None:
        self._next_seq_id = make_sequences(request, self.info, self.tokenizer, self._next_seq_id)

    def _prefill(self, result: StepResult, touched: dict[str, Request]) -> None:
        """Advance the admitted prompts; those complete join the batch with their first token."""
        done = self.prefiller.run(decoding=bool(self._running))
        for request, exc in done.failed:
            self._fail([request], exc, result)
        rows: list[ChoiceState] = []
        row_logits: list[torch.Tensor] = []
        for request, logits in done.ready:
            try:
                children = request.sequences[1:]
                if children:
                    self.backend.fork(request.sequences[0].seq, [c.seq for c in children])
            except Exception as exc:
                log.exception("forking request %s failed", request.request_id)
                self._fail([request], exc, result)
                continue
            rows.extend(request.sequences)
            row_logits.extend([logits] * len(request.sequences))
        if rows:
            self._running.extend(rows)
            self._constrained += sum(s.matcher is not None for s in rows)
            self._sample(torch.stack(row_logits), rows, touched)

    def _decode(self, decoding: list[ChoiceState], result: StepResult, touched: dict[str, Request]) -> None:
        try:
            logits = self.backend.decode([s.seq for s in decoding])  # [B, V]
            self._sample(logits, decoding, touched, constrained=self._constrained > 0)
        except Exception as exc:
            log.exception("decode failed for a batch of %d sequence(s)", len(decoding))
            self._fail(list({s.request.request_id: s.request for s in decoding}.values()), exc, result)

    def _fail(self, requests: list[Request], exc: Exception, result: StepResult) -> None:
        message = f"generation failed: {type(exc).__name__}"
        if isinstance(exc, InvalidRequestError):
            message = str(exc)
        seqs = [s for r in requests for s in r.sequences]
        self._release(seqs)
        for request in requests:
            result.failures[request.request_id] = (
                exc if isinstance(exc, InvalidRequestError) else GenerationError(message)
            )
            self._requests.pop(request.request_id, None)

    def _release(self, seqs: list[ChoiceState]) -> None:
        gone = set(map(id, seqs))
        self._constrained -= sum(s.matcher is not None for s in self._running if id(s) in gone)
        self._running = [s for s in self._running if id(s) not in gone]
        try:
            self.backend.release([s.seq for s in seqs])
        except Exception:
            log.exception("releasing cache rows failed; dropping the whole batch")
            self.backend.release([s.seq for s in self._running])
            raise

    def _sample(
        self,
        logits: torch.Tensor,
        rows: list[ChoiceState],
        touched: dict[str, Request],
        constrained: bool = True,
    ) -> None:
        mask = grammar_mask(rows, lambda: self.grammars.tokenizer) if constrained else None
        result = self.sampler(logits, rows, mask)
        for i, s in enumerate(rows):
            touched[s.request.request_id] = s.request
            top = result.top_logprobs[i]
            advance(s, result.token_ids[i], result.logprobs[i], top, self.info.eos_token_ids, self.tokenizer)

    def _finish(self, touched: dict[str, Request], result: StepResult) -> None:
        done = [s for s in self._running if s.finished]
        if done:
            self.prefiller.remember(done)
            self._release(done)
        made = [(r, request_output(r)) for r in touched.values() if r.request_id not in result.failures]
        for request, output in made:
            result.outputs.append(output)
            if output.finished:
                self._requests.pop(request.request_id, None)
        count_outputs(result.stats, made, time.monotonic())

    def shutdown(self) -> None:
        """Stop admitting; waiting and running requests are aborted."""
        with self._lock:
            self.accepting = False
            for request in self._requests.values():
                request.aborted = True
