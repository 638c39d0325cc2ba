"""hf_eager on tiny random models: batched logits equal each sequence's logits alone."""

from __future__ import annotations

import random

import pytest
import torch

from backends.engine.contract import Seq
from backends.engine.core import EngineCore
from backends.engine.params import SamplingParams
from tests.fake_backend import FakeBackend  # noqa: F401  (keeps the fake importable in this suite)
from tests.tiny_models import tiny_backend

KINDS = ["llama", "gpt2", "bloom", "t5", "bart"]


def _seq(backend: object, seq_id: int, prompt: list[int]) -> Seq:
    if backend.is_encoder_decoder:  # type: ignore[attr-defined]
        start = backend.info.decoder_start_token_id  # type: ignore[attr-defined]
        return Seq(seq_id, [start], encoder_ids=prompt)
    return Seq(seq_id, list(prompt))


def _alone(backend: object, prompt: list[int], tokens: list[int]) -> list[torch.Tensor]:
    """Logits after the prompt and after each forced token, with the sequence alone."""
    seq = _seq(backend, 10_000, prompt)
    out = [backend.prefill([seq])[0].clone()]  # type: ignore[attr-defined]
    for t in tokens:
        seq.token_ids.append(t)
        out.append(backend.decode([seq])[0].clone())  # type: ignore[attr-defined]
    backend.release([seq])  # type: ignore[attr-defined]
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_batched_logits_match_alone_as_sequences_join_and_leave(kind: str) -> None:
    backend = tiny_backend(kind)
    rng = random.Random(kind)
    vocab = backend.info.vocab_size
    steps = 6
    prompts = [[rng.randrange(5, vocab) for _ in range(rng.randrange(1, 24))] for _ in range(16)]
    forced = [[rng.randrange(5, vocab) for _ in range(steps)] for _ in range(16)]
    reference = [_alone(backend, p, f) for p, f in zip(prompts, forced, strict=True)]
    seqs = [_seq(backend, i, p) for i, p in enumerate(prompts)]
    done = [0] * 16  # forced tokens each sequence has consumed
    joins = {0: range(0, 6), 2: range(6, 12), 3: range(12, 16)}  # step -> sequences that join then
    running: list[int] = []
    worst = 0.0
    for step in range(steps + 3):
        if step in joins:
            new = list(joins[step])
            logits = backend.prefill([seqs[i] for i in new])
            for row, i in enumerate(new):
                worst = max(worst, (logits[row] - reference[i][0]).abs().max().item())
            running += new
        if step == 4:  # some leave mid-flight
            gone = [i for i in running if i % 3 == 0]
            backend.release([seqs[i] for i in gone])
            running = [i for i in running if i not in gone]
        finished = [i for i in running if done[i] == steps]
        if finished:
            backend.release([seqs[i] for i in finished])
            running = [i for i in running if i not in finished]
        active = list(running)
        if not active:
            continue
        for i in active:
            seqs[i].token_ids.append(forced[i][done[i]])
            done[i] += 1
        logits = backend.decode([seqs[i] for i in active])
        for row, i in enumerate(active):
            worst = max(worst, (logits[row] - reference[i][done[i]]).abs().max().item())
    assert worst < 1e-4


@pytest.mark.parametrize("kind", ["llama", "gpt2", "t5"])
def test_seeded_sampling_is_the_same_with_other_neighbours(kind: str) -> None:
    backend = tiny_backend(kind)
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=12)

    def run(neighbours: int) -> list[int]:
        core = EngineCore(backend, max_batch_size=16)
        rng = random.Random(neighbours)
        target = core.add_request([7, 8, 9, 10], params)
        for _ in range(neighbours):
            prompt = [rng.randrange(5, backend.info.vocab_size) for _ in range(rng.randrange(1, 12))]
            core.add_request(prompt, SamplingParams(temperature=1.0, max_tokens=rng.randrange(1, 16)))
        tokens: list[int] = []
        while core.has_work():
            for out in core.step().outputs:
                if out.request_id == target:
                    tokens += [t for c in out.choices for t in c.token_ids]
        return tokens

    alone = run(0)
    assert len(alone) == 12
    assert run(5) == alone
    assert run(11) == alone


@pytest.mark.parametrize("kind", KINDS)
def test_engine_greedy_batched_equals_one_at_a_time(kind: str) -> None:
    backend = tiny_backend(kind)
    rng = random.Random(1)
    prompts = [
        [rng.randrange(5, backend.info.vocab_size) for _ in range(rng.randrange(1, 20))] for _ in range(8)
    ]
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)

    def generate(batch: list[list[int]]) -> dict[int, list[int]]:
        core = EngineCore(backend, max_batch_size=16)
        ids: dict[str, int] = {}
        got: dict[int, list[int]] = {i: [] for i in range(len(batch))}
        while core.has_work() or len(ids) < len(batch):
            if len(ids) < len(batch):  # requests arrive one per step, joining those mid-flight
                ids[core.add_request(batch[len(ids)], params)] = len(ids)
            for out in core.step().outputs:
                got[ids[out.request_id]] += [t for c in out.choices for t in c.token_ids]
        return got

    together = generate(prompts)
    for i, p in enumerate(prompts):
        assert generate([p])[0] == together[i]
