"""Prefill: prompts of admitted requests become cache rows, in chunks, on top of cached prefixes.

Each step the engine hands the prefiller a token budget (unbounded when no stream is decoding,
so a lone prompt runs in one forward). Admitted requests are served in order:

- a prompt whose first blocks are in the prefix cache starts from a staging cache holding their
  KV, and computes only the rest (at least its last token, whose logits start generation);
- a prompt longer than what is left of the budget runs a chunk this step and the next chunk on
  the next one, in its own staging cache, while the running streams keep decoding;
- prompts with nothing cached that fit whole run together as one batched forward, as before.

A finished prompt joins the decode batch (`commit`) and leaves its full blocks in the prefix
cache; a finished sequence leaves its prompt and generated tokens too, so the next turn of a
conversation hits. Echo with logprobs bypasses the lookup and takes every position's logits
from the prefill itself, so the prompt runs through the model once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from backends.engine.contract import Backend, Seq, StagedBackend
from backends.engine.detokenizer import token_bytes, token_text
from backends.engine.outputs import TokenLogprob, TopLogprob
from backends.engine.prefix_cache import PrefixCache
from backends.engine.state import ChoiceState, Request

log = logging.getLogger("ladle.engine")


@dataclass(slots=True, eq=False)
class PrefillJob:
    """One admitted request whose prompt is not fully in its parent sequence's cache yet."""

    request: Request
    done: int = 0  # prompt positions in the staging cache (cached + computed)
    staged: bool = False
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)

    @property
    def parent(self) -> ChoiceState:
        return self.request.sequences[0]

    @property
    def remaining(self) -> int:
        return len(self.request.prompt_ids) - self.done

    @property
    def echo(self) -> bool:
        return self.request.params.echo and self.request.params.logprobs is not None


@dataclass(slots=True)
class PrefillResult:
    """Requests whose prompt is complete, with their first-token logits, and requests that failed."""

    ready: list[tuple[Request, torch.Tensor]] = field(default_factory=list)  # logits [V]
    failed: list[tuple[Request, Exception]] = field(default_factory=list)


class Prefiller:
    """Runs prompts under a per-step token budget; owns the prefix cache."""

    def __init__(self, backend: Backend, chunk_tokens: int, cache_tokens: int | None) -> None:
        self.backend = backend
        self.chunk_tokens = chunk_tokens
        # Encoder-decoders (and backends without staging) prefill whole prompts, uncached.
        self.staged: StagedBackend | None = None
        if isinstance(backend, StagedBackend) and not backend.info.is_encoder_decoder:
            self.staged = backend
        self.cache = PrefixCache(cache_tokens) if cache_tokens and self.staging else None
        self.jobs: list[PrefillJob] = []

    @property
    def staging(self) -> bool:
        return self.staged is not None

    @property
    def num_sequences(self) -> int:
        return sum(job.request.params.num_sequences for job in self.jobs)

    def add(self, requests: Sequence[Request]) -> None:
        self.jobs.extend(PrefillJob(r) for r in requests)

    def drop_aborted(self) -> list[Request]:
        """Forget aborted requests and free their staging caches at once."""
        gone = [j for j in self.jobs if j.request.aborted]
        if gone:
            self.jobs = [j for j in self.jobs if not j.request.aborted]
            self.backend.release([s.seq for j in gone for s in j.request.sequences])
        return [j.request for j in gone]

    def run(self, decoding: bool) -> PrefillResult:
        """Spend this step's budget on the waiting prompts, oldest first."""
        result = PrefillResult()
        budget = self.chunk_tokens if decoding else None
        whole: list[PrefillJob] = []
        for job in list(self.jobs):
            if budget is not None and budget <= 0:
                break
            if not job.staged and self.staging:
                try:
                    self._look_up(job)
                except Exception as exc:  # copying the cached KV in failed: this request alone fails
                    log.exception("prefix lookup of request %s failed", job.request.request_id)
                    self._abandon(job, exc, result)
                    continue
            fits = budget is None or job.remaining <= budget
            if not self.staging or (not job.staged and fits and not job.echo):
                whole.append(job)
                spent = job.remaining
            else:
                spent = self._chunk(job, budget, result)
            if budget is not None:
                budget -= spent
        if whole:
            self._run_whole(whole, result)
        return result

    def remember(self, seqs: Sequence[ChoiceState]) -> None:
        """Keep the computed blocks of finished sequences (prompt and output) in the prefix cache."""
        if self.cache is None:
            return
        for s in seqs:
            # The last token was sampled but never fed: its KV does not exist.
            self._keep(s.seq.token_ids, len(s.seq.token_ids) - 1, s.seq)

    def _keep(self, token_ids: list[int], computed: int, seq: Seq) -> None:
        """Insert a sequence's blocks; a failure costs future hits, never this request."""
        assert self.cache is not None and self.staged is not None  # a cache exists only with staging
        try:
            self.cache.insert(token_ids, computed, partial(self.staged.export, seq))
        except Exception:
            log.exception("keeping sequence %d in the prefix cache failed", seq.seq_id)

    # -- paths ----------------------------------------------------------------------------------

    def _look_up(self, job: PrefillJob) -> None:
        """Open a staging cache over the cached prefix, if there is one to use."""
        if self.cache is None or job.echo:
            return
        hit = self.cache.match(job.request.prompt_ids)
        if hit.tokens and self.staged is not None:
            self.staged.begin(job.parent.seq, hit.kv())
            job.staged, job.done = True, hit.tokens
            job.request.cached_tokens = job.done

    def _chunk(self, job: PrefillJob, budget: int | None, result: PrefillResult) -> int:
        """Run the next slice of a staged prompt; returns the tokens it computed."""
        staged = self.staged
        assert staged is not None  # prompts are chunked only when the backend stages
        count = job.remaining if budget is None else min(job.remaining, budget)
        try:
            if not job.staged:
                staged.begin(job.parent.seq, [])
                job.staged = True
            logits = staged.extend(job.parent.seq, count, all_logits=job.echo)  # [C or 1, V]
            if job.echo:
                self._add_prompt_logprobs(job, logits)
            job.done += count
            if job.remaining == 0:
                staged.commit(job.parent.seq)
                self._complete(job, logits[-1], result)
        except Exception as exc:
            log.exception("prefill of request %s failed", job.request.request_id)
            self._abandon(job, exc, result)
        return count

    def _run_whole(self, jobs: list[PrefillJob], result: PrefillResult) -> None:
        """Whole uncached prompts in one batched forward; on failure, each alone in chunks."""
        try:
            logits = self.backend.prefill([j.parent.seq for j in jobs])  # [R, V]
        except Exception as exc:
            if len(jobs) == 1:
                log.exception("prefill failed for request %s", jobs[0].request.request_id)
                self._abandon(jobs[0], exc, result)
                return
            # One prompt may be at fault (too large for memory): run each on its own.
            log.warning("prefill of %d requests failed (%s); retrying one by one", len(jobs), exc)
            self.backend.release([j.parent.seq for j in jobs])
            for job in jobs:
                if self.staging:
                    self._chunk(job, None, result)
                else:
                    self._run_whole([job], result)
            return
        for i, job in enumerate(jobs):
            job.done = len(job.request.prompt_ids)
            if job.echo:
                job.prompt_logprobs = prompt_logprobs(self.backend, job.request)
            self._complete(job, logits[i], result)

    def _complete(self, job: PrefillJob, logits: torch.Tensor, result: PrefillResult) -> None:
        self.jobs.remove(job)
        if job.echo:
            job.request.prompt_logprobs = job.prompt_logprobs
        if self.cache is not None:
            self._keep(job.parent.seq.token_ids, job.done, job.parent.seq)
        result.ready.append((job.request, logits))

    def _abandon(self, job: PrefillJob, exc: Exception, result: PrefillResult) -> None:
        if job in self.jobs:
            self.jobs.remove(job)
        result.failed.append((job.request, exc))

    def _add_prompt_logprobs(self, job: PrefillJob, logits: torch.Tensor) -> None:
        """Logprobs of the prompt tokens that the rows of this chunk predict."""
        ids, tok = job.request.prompt_ids, self.backend.tokenizer
        if job.done == 0:
            job.prompt_logprobs.append(token_logprob(tok, ids[0], None, []))
        rows = torch.log_softmax(logits.float(), dim=-1)  # [C, V]
        k = job.request.params.logprobs or 0
        for j in range(rows.shape[0]):
            pos = job.done + j + 1
            if pos < len(ids):
                job.prompt_logprobs.append(_entry(tok, rows[j], ids[pos], k))


def prompt_logprobs(backend: Backend, request: Request) -> list[TokenLogprob]:
    """Every prompt token's logprob from a separate scoring pass (backends without staging)."""
    ids, tok = request.prompt_ids, backend.tokenizer
    k = request.params.logprobs or 0
    rows = torch.log_softmax(backend.score(ids).float(), dim=-1)  # [S, V]
    return [token_logprob(tok, ids[0], None, [])] + [
        _entry(tok, rows[pos - 1], ids[pos], k) for pos in range(1, len(ids))
    ]


def _entry(tokenizer: Any, row: torch.Tensor, token: int, k: int) -> TokenLogprob:
    top = torch.topk(row, k) if k else None
    pairs = list(zip(top.indices.tolist(), top.values.tolist(), strict=True)) if top is not None else []
    return token_logprob(tokenizer, token, float(row[token]), pairs)


def token_logprob(
    tokenizer: Any, token: int, logprob: float | None, top: list[tuple[int, float]]
) -> TokenLogprob:
    """A chosen token with its logprob and the top alternatives, with their texts and bytes."""
    return TokenLogprob(
        token_id=token,
        token=token_text(tokenizer, token),
        bytes=list(token_bytes(tokenizer, token)),
        logprob=logprob,
        top=[TopLogprob(t, token_text(tokenizer, t), list(token_bytes(tokenizer, t)), lp) for t, lp in top],
    )
