"""The engine core: admission, continuous batching, sampling, detokenizing and stopping.

One `step()` runs the prompts of newly admitted requests (one forward) and one decode
forward over every running sequence of every request; each sequence gains one token.
Sequences that finish or are cancelled leave at once and free their cache rows.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence as Seqs
from dataclasses import dataclass, field

import torch

from backends.base import Backend, Seq
from backends.detokenizer import IncrementalDetokenizer, token_bytes, token_text
from backends.errors import (
    ContextLengthError,
    EngineStoppedError,
    GenerationError,
    InvalidRequestError,
    QueueFullError,
)
from backends.grammar import GrammarCompiler
from backends.grammar.mask import grammar_mask
from backends.outputs import RequestOutput, TokenLogprob, TopLogprob
from backends.params import SamplingParams
from backends.sampler import Sampler, make_generator
from backends.sequence import Request, Sequence
from backends.stopping import StopMatcher

log = logging.getLogger("ladle.engine")


@dataclass(slots=True)
class StepResult:
    """What one step produced: outputs per request, and requests that failed."""

    outputs: list[RequestOutput] = field(default_factory=list)
    failures: dict[str, Exception] = field(default_factory=dict)


class EngineCore:
    """Synchronous engine; `step()` is the unit of work a driver loop calls."""

    def __init__(self, backend: Backend, max_batch_size: int = 16, max_queued_requests: int = 256) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
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
        self._running: list[Sequence] = []
        self._next_seq_id = 0
        self.accepting = True

    # -- admission (any thread) -----------------------------------------------------------------

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_queued(self) -> int:
        return len(self._waiting)

    def has_work(self) -> bool:
        return bool(self._running or self._waiting)

    def add_request(
        self, prompt_ids: Seqs[int], params: SamplingParams, request_id: str | None = None
    ) -> str:
        """Validate and queue a request; raises at once if it cannot be served."""
        prompt = self._check(list(prompt_ids), params)
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

    def _check(self, prompt: list[int], params: SamplingParams) -> list[int]:
        try:
            params.validate(self.info.vocab_size)
        except InvalidRequestError:
            raise
        except ValueError as exc:
            raise InvalidRequestError(str(exc), param=str(exc).split(" ", 1)[0]) from exc
        if params.num_sequences > self.max_batch_size:
            raise InvalidRequestError(
                f"n (or best_of) of {params.num_sequences} exceeds the batch size limit of {self.max_batch_size}",
                param="n",
            )
        if not prompt:
            start = self.info.bos_token_id
            if start is None:
                raise InvalidRequestError(
                    "the prompt is empty and the model has no BOS token", param="prompt"
                )
            prompt = [start]
        if any(not 0 <= t < self.info.vocab_size for t in prompt):
            raise InvalidRequestError("the prompt holds token ids outside the vocabulary", param="prompt")
        context = self.info.context_length
        room = self.info.generation_room(len(prompt))  # a decoder-only prompt must leave room for one
        if len(prompt) > context or room < 1:
            raise ContextLengthError(
                f"the prompt has {len(prompt)} tokens; this model's context length is {context}",
                param="prompt",
            )
        if params.max_tokens is not None and params.max_tokens > room:
            raise ContextLengthError(
                f"this model's context length is {context} tokens, but {len(prompt)} prompt tokens and "
                f"max_tokens={params.max_tokens} were asked"
            )
        return prompt

    # -- the step (one thread at a time) --------------------------------------------------------

    def step(self) -> StepResult:
        """Admit, prefill, decode once, and return what every touched request produced."""
        result = StepResult()
        self._drop_aborted(result)
        touched: dict[str, Request] = {}
        # Decode before prefilling: a backend's decode takes exactly its live sequences, and
        # the newly admitted ones get their first token from the prefill itself.
        if self._running:
            self._decode(list(self._running), result, touched)
        admitted = [r for r in self._admit() if self._setup(r, result)]
        if admitted:
            self._prefill(admitted, result, touched)
        self._finish(touched, result)
        return result

    def _drop_aborted(self, result: StepResult) -> None:
        with self._lock:
            gone = [r for r in self._waiting if r.aborted]
            for request in gone:
                self._waiting.remove(request)
                del self._requests[request.request_id]
        dead = [s for s in self._running if s.request.aborted]
        if dead:
            self._release(dead)
            for request in {s.request.request_id: s.request for s in dead}.values():
                self._requests.pop(request.request_id, None)

    def _admit(self) -> list[Request]:
        admitted: list[Request] = []
        with self._lock:
            free = self.max_batch_size - len(self._running)
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
        params, info = request.params, self.info
        start = next((t for t in (info.decoder_start_token_id, info.bos_token_id) if t is not None), 0)
        room = info.generation_room(len(request.prompt_ids))
        max_tokens = min(params.max_tokens or room, room)
        for index in range(params.num_sequences):
            if info.is_encoder_decoder:
                seq = Seq(self._next_seq_id, [start], encoder_ids=request.prompt_ids)
            else:
                seq = Seq(self._next_seq_id, list(request.prompt_ids))
            self._next_seq_id += 1
            seed = None if params.seed is None else params.seed + index
            prompt_context = [] if info.is_encoder_decoder else request.prompt_ids
            request.sequences.append(
                Sequence(
                    seq=seq,
                    request=request,
                    index=index,
                    params=params,
                    prompt_ids=request.prompt_ids,
                    max_tokens=max_tokens,
                    generator=make_generator(seed),
                    detokenizer=IncrementalDetokenizer(
                        self.tokenizer, prompt_context, params.skip_special_tokens
                    ),
                    stopper=StopMatcher(params.stop),
                    matcher=None if request.grammar is None else request.grammar.matcher(),
                )
            )

    def _prefill(self, admitted: list[Request], result: StepResult, touched: dict[str, Request]) -> None:
        parents = [r.sequences[0] for r in admitted]
        try:
            logits = self.backend.prefill([s.seq for s in parents])  # [R, V]
            rows: list[Sequence] = []
            row_logits: list[torch.Tensor] = []
            for i, request in enumerate(admitted):
                children = request.sequences[1:]
                if children:
                    self.backend.fork(request.sequences[0].seq, [c.seq for c in children])
                for s in request.sequences:
                    rows.append(s)
                    row_logits.append(logits[i])
                if request.params.echo and request.params.logprobs is not None:
                    request.prompt_logprobs = self._prompt_logprobs(request)
            self._running.extend(rows)
            self._sample(torch.stack(row_logits), rows, touched)
        except Exception as exc:
            if len(admitted) > 1:  # one prompt may be at fault (too large for memory): retry each alone
                log.warning("prefill of %d requests failed (%s); retrying one by one", len(admitted), exc)
                self._release([s for r in admitted for s in r.sequences])
                for request in admitted:
                    request.sequences.clear()
                    request.prompt_logprobs = None
                    if self._setup(request, result):
                        self._prefill([request], result, touched)
                return
            log.exception("prefill failed for %d request(s)", len(admitted))
            self._fail(admitted, exc, result)

    def _decode(self, decoding: list[Sequence], result: StepResult, touched: dict[str, Request]) -> None:
        try:
            logits = self.backend.decode([s.seq for s in decoding])  # [B, V]
            self._sample(logits, decoding, touched)
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

    def _release(self, seqs: list[Sequence]) -> None:
        gone = set(map(id, seqs))
        self._running = [s for s in self._running if id(s) not in gone]
        try:
            self.backend.release([s.seq for s in seqs])
        except Exception:
            log.exception("releasing cache rows failed; dropping the whole batch")
            self.backend.release([s.seq for s in self._running])
            raise

    def _sample(self, logits: torch.Tensor, rows: list[Sequence], touched: dict[str, Request]) -> None:
        result = self.sampler(logits, rows, grammar_mask(rows, lambda: self.grammars.tokenizer))
        for i, s in enumerate(rows):
            touched[s.request.request_id] = s.request
            self._advance(s, result.token_ids[i], result.logprobs[i], result.top_logprobs[i])

    def _advance(self, s: Sequence, token: int, logprob: float, top: list[tuple[int, float]]) -> None:
        s.append(token)
        s.cumulative_logprob += logprob
        if s.params.logprobs is not None:
            s.delta_logprobs.append(self._token_logprob(token, logprob, top))
        params = s.params
        ended = None if s.matcher is None else s.matcher.advance(token)  # "stop" once the grammar is complete
        if (token in self.info.eos_token_ids and not params.ignore_eos) or token in params.stop_token_ids:
            self._close(s, ended or "stop")
            return
        text, stopped = s.stopper.feed(s.detokenizer.add(token))
        s.delta_text += text
        if stopped:
            s.finish_reason = "stop"
        elif ended is not None:
            self._close(s, ended)
        elif len(s.output_ids) >= s.max_tokens:
            self._close(s, "length")

    def _close(self, s: Sequence, reason: str) -> None:
        text, stopped = s.stopper.feed(s.detokenizer.flush())
        if not stopped:
            text += s.stopper.flush()  # flush may still find a stop that a longer one was masking
        s.delta_text += text
        s.finish_reason = "stop" if stopped or s.stopper.stopped else reason

    def _token_logprob(self, token: int, logprob: float | None, top: list[tuple[int, float]]) -> TokenLogprob:
        tok = self.tokenizer
        return TokenLogprob(
            token_id=token,
            token=token_text(tok, token),
            bytes=list(token_bytes(tok, token)),
            logprob=logprob,
            top=[TopLogprob(t, token_text(tok, t), list(token_bytes(tok, t)), lp) for t, lp in top],
        )

    def _prompt_logprobs(self, request: Request) -> list[TokenLogprob]:
        ids = request.prompt_ids
        k = request.params.logprobs or 0
        logprobs = torch.log_softmax(self.backend.score(ids).float(), dim=-1)  # [S, V]
        entries = [self._token_logprob(ids[0], None, [])]
        for pos in range(1, len(ids)):
            row = logprobs[pos - 1]
            top = torch.topk(row, k) if k else None
            pairs = (
                list(zip(top.indices.tolist(), top.values.tolist(), strict=True)) if top is not None else []
            )
            entries.append(self._token_logprob(ids[pos], float(row[ids[pos]]), pairs))
        return entries

    def _finish(self, touched: dict[str, Request], result: StepResult) -> None:
        done = [s for s in self._running if s.finished]
        if done:
            self._release(done)
        for request in touched.values():
            if request.request_id in result.failures:
                continue
            deltas = [s.take_delta() for s in request.sequences if s.delta_ids or s.delta_text]
            prompt_logprobs = None
            if request.prompt_logprobs is not None and not request.prompt_logprobs_sent:
                prompt_logprobs, request.prompt_logprobs_sent = request.prompt_logprobs, True
            finished = request.finished
            result.outputs.append(
                RequestOutput(request.request_id, len(request.prompt_ids), deltas, finished, prompt_logprobs)
            )
            if finished:
                self._requests.pop(request.request_id, None)

    def shutdown(self) -> None:
        """Stop admitting; waiting and running requests are aborted."""
        with self._lock:
            self.accepting = False
            for request in self._requests.values():
                request.aborted = True
