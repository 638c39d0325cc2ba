"""Chunked prefill: running streams keep decoding while a long prompt is prefilled in slices."""

from __future__ import annotations

import random
from typing import Any

import pytest

from backends.engine.core import EngineCore
from backends.engine.params import SamplingParams
from backends.engine.prefill import prompt_logprobs
from backends.engine.state import Request
from tests.test_hf_bettertransformer import fast_backend
from tests.tiny_models import tiny_backend

CHUNK = 16


def _backend(name: str) -> Any:
    return tiny_backend("llama") if name == "hf_eager" else fast_backend("llama", slots=8, max_len=512)


def _long_prompt(backend: Any, length: int = 300) -> list[int]:
    rng = random.Random(length)
    return [rng.randrange(5, backend.info.vocab_size) for _ in range(length)]


def _with_streams(backend: Any) -> tuple[EngineCore, list[str]]:
    core = EngineCore(backend, max_batch_size=8, prefill_chunk_tokens=CHUNK)
    params = SamplingParams(temperature=0.0, max_tokens=60, ignore_eos=True)
    streams = [core.add_request([5 + i, 6, 7], params) for i in range(3)]
    core.step()
    return core, streams


@pytest.mark.parametrize("name", ["hf_eager", "hf_bettertransformer"])
def test_streams_receive_a_token_every_step_of_a_long_prefill(name: str) -> None:
    backend = _backend(name)
    core, streams = _with_streams(backend)
    prompt = _long_prompt(backend)
    long_id = core.add_request(prompt, SamplingParams(temperature=0.0, max_tokens=2))
    steps = 0
    while True:
        result = core.step()
        steps += 1
        produced = {o.request_id: sum(len(c.token_ids) for c in o.choices) for o in result.outputs}
        assert all(produced.get(s) == 1 for s in streams), produced
        if produced.get(long_id):
            break
    assert steps == -(-len(prompt) // CHUNK)  # one chunk per step, no more, no less


@pytest.mark.parametrize("name", ["hf_eager", "hf_bettertransformer"])
def test_cancel_during_chunked_prefill_frees_everything(name: str) -> None:
    backend = _backend(name)
    core, streams = _with_streams(backend)
    long_id = core.add_request(_long_prompt(backend), SamplingParams(n=2, max_tokens=2))
    core.step()
    core.step()
    assert backend.staged and core.prefiller.jobs
    held = backend.cached_tokens()
    core.abort(long_id)
    core.step()
    assert not backend.staged and not core.prefiller.jobs and long_id not in core._requests
    assert backend.cached_tokens() <= held - 2 * CHUNK + len(streams)  # the streams grew by one each
    for stream in streams:
        core.abort(stream)
    core.step()
    assert not core.has_work() and backend.cached_tokens() == 0 and core.kv_tokens == 0


def test_echo_logprobs_come_from_the_chunks_and_equal_a_scoring_pass() -> None:
    backend = tiny_backend("gpt2")
    core, _ = _with_streams(backend)
    prompt = _long_prompt(backend, 70)
    params = SamplingParams(echo=True, logprobs=2, max_tokens=1, temperature=0.0)
    rid = core.add_request(prompt, params)
    calls: list[int] = []
    score = backend.score
    backend.score = lambda ids: calls.append(len(ids)) or score(ids)  # type: ignore[method-assign]
    got = None
    while got is None:
        for out in core.step().outputs:
            if out.request_id == rid and out.prompt_logprobs is not None:
                got = out.prompt_logprobs
    assert calls == []  # the prompt ran through the model once, in chunks
    expected = prompt_logprobs(backend, Request("x", prompt, params, 0.0))
    assert [e.token_id for e in got] == prompt and got[0].logprob is None
    for a, b in zip(got[1:], expected[1:], strict=True):
        assert a.logprob is not None and b.logprob is not None and abs(a.logprob - b.logprob) < 1e-4
        assert [t.token_id for t in a.top] == [t.token_id for t in b.top]


def test_waiting_requests_are_admitted_in_order() -> None:
    backend = tiny_backend("llama")
    core = EngineCore(backend, max_batch_size=2, prefill_chunk_tokens=CHUNK)
    params = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)
    first = core.add_request(_long_prompt(backend, 100), SamplingParams(n=2, max_tokens=3))
    later = [core.add_request([5, 6, 7], params) for _ in range(3)]
    order: list[str] = []
    while core.has_work():
        for out in core.step().outputs:
            if out.request_id not in order:
                order.append(out.request_id)
    assert order == [first, *later]


def test_a_failed_batched_prefill_retries_each_prompt_alone() -> None:
    backend = tiny_backend("llama")
    prefill, extend = backend.prefill, backend.extend

    def oom_if_long(seqs: Any) -> Any:
        if any(len(s.token_ids) > 200 for s in seqs):
            raise MemoryError("injected")
        return prefill(seqs)

    def chunk_oom_if_long(seq: Any, count: int, all_logits: bool = False) -> Any:
        if len(seq.token_ids) > 200:
            raise MemoryError("injected")
        return extend(seq, count, all_logits)

    backend.prefill, backend.extend = oom_if_long, chunk_oom_if_long
    core = EngineCore(backend, max_batch_size=4, prefill_chunk_tokens=CHUNK)
    big = core.add_request(_long_prompt(backend, 300), SamplingParams(max_tokens=2))
    small = core.add_request([5, 6, 7], SamplingParams(max_tokens=2, ignore_eos=True))
    result = core.step()  # nothing decodes: both fit the step and run as one batch, which fails
    assert set(result.failures) == {big}
    assert [o.request_id for o in result.outputs] == [small]
    while core.has_work():
        core.step()
    assert not backend.batches and not backend.staged


def test_a_failing_prefix_copy_fails_that_request_alone() -> None:
    backend = tiny_backend("llama")
    core = EngineCore(backend, max_batch_size=4)
    prompt = _long_prompt(backend, 70)
    params = SamplingParams(max_tokens=2, ignore_eos=True)
    core.add_request(prompt, params)
    while core.has_work():
        core.step()
    begin = backend.begin

    def no_room(seq: Any, prefix: Any) -> None:
        if prefix:
            raise MemoryError("injected")
        begin(seq, prefix)

    backend.begin = no_room
    hit = core.add_request(prompt, params)
    other = core.add_request([5, 6, 7], params)
    result = core.step()
    assert set(result.failures) == {hit} and [o.request_id for o in result.outputs] == [other]


@pytest.mark.parametrize("when", ["waiting", "prefilling", "just_admitted_on_a_hit", "decoding"])
def test_a_cancelled_request_gives_its_place_to_the_next_at_the_next_step(when: str) -> None:
    """With every place taken, a request queued behind a cancelled one starts at the next step."""
    backend = tiny_backend("llama")
    prompt = _long_prompt(backend, 100)
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    # One place, or two with a stream decoding so that the long prompt is prefilled in chunks.
    core = EngineCore(backend, max_batch_size=2 if when == "prefilling" else 1, prefill_chunk_tokens=CHUNK)
    stream = core.add_request([5, 6, 7], params) if when == "prefilling" else None
    if when == "just_admitted_on_a_hit":
        core.add_request(prompt, SamplingParams(max_tokens=1))
        while core.has_work():
            core.step()
    if stream is not None:
        core.step()
    victim = core.add_request(prompt, params)
    queued = core.add_request([8, 9, 10], params)
    if when != "waiting":
        core.step()
    if when == "prefilling":
        assert core.prefiller.jobs and backend.staged
        # Mid-prefill, the long prompt counts as running (it holds rows), not as queued.
        assert core.num_running == 2 and core.num_queued == 1
    elif when == "just_admitted_on_a_hit":
        assert core._requests[victim].cached_tokens == len(prompt) - 1 and core.num_running == 1
    elif when == "decoding":
        core.step()
        assert core.num_running == 1
    core.abort(victim)
    produced = {o.request_id for o in core.step().outputs}
    assert queued in produced  # admitted and prefilled in the step that dropped the cancelled one
    assert victim not in core._requests and not backend.staged
    held = {s.seq.seq_id for s in core._running}
    assert {sid for b in backend.batches for sid in b.seq_ids} == held
    for rid in (queued, stream):
        if rid is not None:
            core.abort(rid)
    core.step()
    assert not core.has_work() and backend.cached_tokens() == 0
