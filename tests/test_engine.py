"""The engine core over a scripted backend: batching, admission, cancellation, failures."""

from __future__ import annotations

import asyncio

import pytest
import torch

from backends.engine.async_engine import AsyncEngine
from backends.engine.core import EngineCore
from backends.engine.params import SamplingParams
from backends.engine.steps import StepResult
from backends.errors import ContextLengthError, GenerationError, InvalidRequestError, QueueFullError
from tests.fake_backend import FakeBackend, count_up


def greedy(**kwargs: object) -> SamplingParams:
    return SamplingParams(temperature=0.0, **kwargs)  # type: ignore[arg-type]


def run_to_end(core: EngineCore, limit: int = 200) -> list[StepResult]:
    results = []
    for _ in range(limit):
        if not core.has_work():
            return results
        results.append(core.step())
    raise AssertionError("engine did not finish")


def tokens_of(results: list[StepResult], request_id: str, index: int = 0) -> list[int]:
    return [
        t
        for r in results
        for o in r.outputs
        if o.request_id == request_id
        for c in o.choices
        if c.index == index
        for t in c.token_ids
    ]


def test_join_and_leave_mid_flight() -> None:
    backend = FakeBackend()
    core = EngineCore(backend, max_batch_size=4)
    a = core.add_request([20, 21], greedy(max_tokens=5), "a")
    core.step()
    core.step()
    b = core.add_request([50], greedy(max_tokens=4), "b")
    results = run_to_end(core)
    assert tokens_of(results, a) == [24, 25, 26]  # three more after the two steps before b
    assert tokens_of(results, b) == [51, 52, 53, 54]
    # b was prefilled on its own, then decoded in the same forward as a
    assert ("prefill", [1]) in backend.calls
    decodes = [ids for kind, ids in backend.calls if kind == "decode"]
    assert [0, 1] in decodes
    # a finished first and left; b's last decode ran alone
    assert decodes[-1] == [1]
    assert backend.rows == {}


def test_every_sequence_gets_one_token_per_step() -> None:
    core = EngineCore(FakeBackend(), max_batch_size=8)
    ids = [core.add_request([10 + i], greedy(max_tokens=4)) for i in range(3)]
    result = core.step()
    assert sorted(o.request_id for o in result.outputs) == sorted(ids)
    assert all(len(o.choices[0].token_ids) == 1 for o in result.outputs)


def test_batch_size_limit_queues_the_rest() -> None:
    backend = FakeBackend()
    core = EngineCore(backend, max_batch_size=2)
    for i in range(5):
        core.add_request([10 + i], greedy(max_tokens=2))
    core.step()
    assert core.num_running == 2 and core.num_queued == 3
    run_to_end(core)
    assert max(len(ids) for kind, ids in backend.calls if kind == "decode") <= 2


def test_queue_full_is_refused_at_once() -> None:
    core = EngineCore(FakeBackend(), max_batch_size=1, max_queued_requests=2)
    core.add_request([10], greedy())
    core.add_request([11], greedy())
    with pytest.raises(QueueFullError):
        core.add_request([12], greedy())
    core.step()  # one admitted: room in the queue again
    core.add_request([12], greedy())


def test_abort_stops_compute_within_one_step() -> None:
    backend = FakeBackend()
    core = EngineCore(backend, max_batch_size=4)
    a = core.add_request([10], greedy(max_tokens=50))
    b = core.add_request([20], greedy(max_tokens=5))
    core.step()
    core.abort(a)
    core.step()
    last_decode = [ids for kind, ids in backend.calls if kind == "decode"][-1]
    assert last_decode == [1]
    assert ("release", [0]) in backend.calls
    run_to_end(core)
    assert backend.rows == {} and b


def test_abort_while_waiting_never_runs() -> None:
    backend = FakeBackend()
    core = EngineCore(backend, max_batch_size=1)
    core.add_request([10], greedy(max_tokens=2))
    waiting = core.add_request([11], greedy(max_tokens=2))
    core.abort(waiting)
    run_to_end(core)
    assert all(1 not in ids for _, ids in backend.calls)


def test_failing_step_fails_only_its_batch() -> None:
    backend = FakeBackend()
    core = EngineCore(backend, max_batch_size=4)
    a = core.add_request([10], greedy(max_tokens=5))
    b = core.add_request([20], greedy(max_tokens=5))
    core.step()
    backend.fail_on = 1
    result = core.step()
    assert set(result.failures) == {a, b}
    assert all(isinstance(e, GenerationError) for e in result.failures.values())
    assert core.num_running == 0 and backend.rows == {}
    backend.fail_on = None
    c = core.add_request([30], greedy(max_tokens=3))
    assert tokens_of(run_to_end(core), c) == [31, 32, 33]


def test_failing_prefill_fails_only_the_new_requests() -> None:
    backend = FakeBackend()
    core = EngineCore(backend, max_batch_size=4)
    a = core.add_request([10], greedy(max_tokens=4))
    core.step()
    backend.fail_on = 1
    b = core.add_request([20], greedy(max_tokens=4))
    result = core.step()
    assert set(result.failures) == {b}
    backend.fail_on = None
    assert tokens_of([result, *run_to_end(core)], a) == [12, 13, 14]


def test_n_choices_share_one_prefill() -> None:
    backend = FakeBackend()
    core = EngineCore(backend, max_batch_size=8)
    r = core.add_request([10, 11], greedy(max_tokens=3, n=3))
    results = run_to_end(core)
    assert [c for c in backend.calls if c[0] == "prefill"] == [("prefill", [0])]
    assert ("fork", [0, 1, 2]) in backend.calls
    for index in range(3):
        assert tokens_of(results, r, index) == [12, 13, 14]
    assert results[-1].outputs[-1].finished


def test_eos_stops_and_min_tokens_holds_it_back() -> None:
    backend = FakeBackend()
    eos = backend.tokenizer.eos_token_id
    backend.script = lambda ids: eos if len(ids) >= 3 else count_up(ids)
    core = EngineCore(backend)
    r = core.add_request([10], greedy(max_tokens=10))
    results = run_to_end(core)
    assert tokens_of(results, r) == [11, 12, eos]
    assert results[-1].outputs[0].choices[0].finish_reason == "stop"
    # min_tokens masks eos: the second-best token (id 0, all other logits tie at 0) wins
    r = core.add_request([10], greedy(max_tokens=10, min_tokens=4))
    got = tokens_of(run_to_end(core), r)
    assert got[:2] == [11, 12] and eos not in got[:4] and got[4] == eos


def test_ignore_eos_generates_to_max_tokens() -> None:
    backend = FakeBackend()
    eos = backend.tokenizer.eos_token_id
    backend.script = lambda ids: eos
    core = EngineCore(backend)
    r = core.add_request([10], greedy(max_tokens=4, ignore_eos=True))
    results = run_to_end(core)
    assert tokens_of(results, r) == [eos] * 4
    assert results[-1].outputs[0].choices[0].finish_reason == "length"


def test_stop_string_cuts_text_and_finishes() -> None:
    backend = FakeBackend()
    tok = backend.tokenizer
    words = tok(" the cat sat on the mat").input_ids
    backend.script = lambda ids: words[len(ids)] if len(ids) < len(words) else words[-1]
    core = EngineCore(backend)
    r = core.add_request([words[0]], greedy(max_tokens=20, stop=["on"]))
    results = run_to_end(core)
    text = "".join(c.text for res in results for o in res.outputs if o.request_id == r for c in o.choices)
    assert text == tok.decode(words[1:]).split("on")[0]
    assert results[-1].outputs[0].choices[0].finish_reason == "stop"


def test_context_length_and_parameter_errors() -> None:
    core = EngineCore(FakeBackend(context_length=16))
    with pytest.raises(ContextLengthError):
        core.add_request(list(range(10, 20)), greedy(max_tokens=8))
    with pytest.raises(ContextLengthError):
        core.add_request(list(range(10, 26)), greedy(max_tokens=None))
    with pytest.raises(InvalidRequestError) as err:
        core.add_request([10], SamplingParams(temperature=3.0))
    assert err.value.param == "temperature"
    with pytest.raises(InvalidRequestError):
        core.add_request([10**6], greedy())
    r = core.add_request(list(range(10, 20)), greedy(max_tokens=None))
    assert len(tokens_of(run_to_end(core), r)) == 6  # up to the context


def test_echo_prompt_logprobs_come_first() -> None:
    core = EngineCore(FakeBackend())
    r = core.add_request([10, 11, 12], greedy(max_tokens=2, echo=True, logprobs=2))
    first = core.step().outputs[0]
    assert first.request_id == r and first.prompt_logprobs is not None
    assert [e.token_id for e in first.prompt_logprobs] == [10, 11, 12]
    assert first.prompt_logprobs[0].logprob is None
    assert first.prompt_logprobs[1].logprob == pytest.approx(first.prompt_logprobs[1].top[0].logprob)
    assert run_to_end(core)[-1].outputs[0].prompt_logprobs is None


def test_echo_prompt_logprobs_match_the_scores_for_any_prompt_length() -> None:
    backend = FakeBackend()
    core = EngineCore(backend)
    ids = [10, 11, 12, 13]
    core.add_request(ids, greedy(max_tokens=1, echo=True, logprobs=3))
    entries = core.step().outputs[0].prompt_logprobs
    assert entries is not None
    expected = torch.log_softmax(backend.score(ids).float(), dim=-1)
    for pos in range(1, len(ids)):
        assert entries[pos].logprob == pytest.approx(expected[pos - 1, ids[pos]].item())
        best = torch.topk(expected[pos - 1], 3)
        assert [t.token_id for t in entries[pos].top] == best.indices.tolist()
        assert [t.logprob for t in entries[pos].top] == pytest.approx(best.values.tolist())
    run_to_end(core)
    core.add_request([10], greedy(max_tokens=1, echo=True, logprobs=0))  # nothing to score
    (alone,) = core.step().outputs[0].prompt_logprobs or []
    assert (alone.token_id, alone.logprob, alone.top) == (10, None, [])
    core.add_request(ids, greedy(max_tokens=1, echo=True, logprobs=0))
    entries = core.step().outputs[0].prompt_logprobs or []
    assert [e.top for e in entries] == [[]] * 4 and all(e.logprob is not None for e in entries[1:])


async def test_async_engine_streams_and_cancels() -> None:
    backend = FakeBackend()
    engine = AsyncEngine(EngineCore(backend, max_batch_size=4))
    await engine.start()
    try:
        # warmed up once, before serving, on the thread that runs the steps (CUDA graphs need it)
        assert len(backend.warmed_on) == 1 and backend.warmed_on[0].startswith("ladle-step")
        got = [
            t
            async for out in engine.submit([10], greedy(max_tokens=3))
            for c in out.choices
            for t in c.token_ids
        ]
        assert got == [11, 12, 13]
        stream = engine.submit([10], greedy(max_tokens=60))
        async for _ in stream:
            break  # closing the iterator aborts the request
        for _ in range(100):
            if engine.num_running == 0:
                break
            await asyncio.sleep(0.01)
        assert engine.num_running == 0 and backend.rows == {}
    finally:
        await engine.shutdown()


async def test_async_engine_reports_failures_and_serves_on() -> None:
    backend = FakeBackend()
    engine = AsyncEngine(EngineCore(backend))
    await engine.start()
    try:
        backend.fail_on = 0
        with pytest.raises(GenerationError):
            async for _ in engine.submit([10], greedy(max_tokens=3)):
                pass
        backend.fail_on = None
        outs = [o async for o in engine.submit([10], greedy(max_tokens=2))]
        assert outs[-1].finished
    finally:
        await engine.shutdown()
