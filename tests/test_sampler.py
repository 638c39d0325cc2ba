"""The shared sampler: each transform against hand-computed values, and batch independence."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from backends.engine import draw as draw_mod
from backends.engine.params import SamplingParams
from backends.engine.sampler import Sampler, SampleResult, make_generator, wants_logprobs

INF = math.inf
NO_IDS = cast(torch.LongTensor, torch.empty(0, dtype=torch.long))  # the warpers ignore input_ids


@dataclass
class Row:
    params: SamplingParams
    prompt_ids: list[int] = field(default_factory=list)
    output_ids: list[int] = field(default_factory=list)
    generator: torch.Generator = field(default_factory=lambda: make_generator(0))


def row(prompt: Sequence[int] = (), output: Sequence[int] = (), seed: int = 0, **kw: object) -> Row:
    params = SamplingParams(**kw)  # type: ignore[arg-type]
    params.validate()
    return Row(params, list(prompt), list(output), make_generator(seed))


def t(*values: float) -> torch.Tensor:
    return torch.tensor([values], dtype=torch.float32)


def adjusted(logits: torch.Tensor, rows: list[Row], eos: Sequence[int] = ()) -> torch.Tensor:
    """Logits after bias and penalties (steps 2-5)."""
    s = Sampler(eos, logits.shape[1])
    return s._adjust(logits, rows).clone()


def fixed_uniforms(monkeypatch: pytest.MonkeyPatch, *us: float) -> None:
    """Make the sampler's draws the given uniforms (one per sampled row, in order)."""

    def fake(rows: Sequence[object], device: torch.device) -> torch.Tensor:
        return torch.tensor(us[: len(rows)], dtype=torch.float32, device=device)

    monkeypatch.setattr(draw_mod, "_uniforms", fake)


def picks(monkeypatch: pytest.MonkeyPatch, logits: torch.Tensor, r: Row, us: Sequence[float]) -> list[int]:
    """The token `r` gets for each uniform in `us` (one batch of copies of `r`)."""
    fixed_uniforms(monkeypatch, *us)
    return Sampler([], logits.shape[1])(logits.expand(len(us), -1), [r] * len(us)).token_ids


def support(monkeypatch: pytest.MonkeyPatch, logits: torch.Tensor, r: Row) -> set[int]:
    grid = [i / 1000 for i in range(1000)]
    return set(picks(monkeypatch, logits, r, grid))


def log_p(*probs: float) -> torch.Tensor:
    return torch.tensor([probs], dtype=torch.float64).log().float()


# sorted descending: 1 (.5), 3 (.25), 2 (.125), 0 (.0625), 4 (.0625)
DYADIC = log_p(0.0625, 0.5, 0.125, 0.25, 0.0625)


# ---- steps 2-5: bias and penalties ----


def test_logit_bias_adds_to_listed_ids_of_its_row_only() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]] * 2)
    out = adjusted(logits, [row(logit_bias={0: 10.0, 3: -2.5}), row()])
    assert out.tolist() == [[10.0, 1.0, 2.0, 0.5, 4.0], [0.0, 1.0, 2.0, 3.0, 4.0]]


def test_greedy_argmax_after_bias_and_ties_go_to_lowest_id() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]] * 3)
    rows = [
        row(temperature=0, logit_bias={1: 5.0}),
        row(temperature=0),
        row(temperature=0, logit_bias={2: 2.0}),
    ]
    assert Sampler([], 5)(logits, rows).token_ids == [1, 4, 2]  # row 3: 4.0 vs 4.0, lowest id wins


def test_repetition_penalty_positive_and_negative_scores_each_token_once() -> None:
    logits = t(2.0, -2.0, 1.0, -1.0, 0.5, 3.0, 0.0)
    r = row(prompt=[0, 1, 6], output=[1, 3, 1], repetition_penalty=2.0)
    expected = [1.0, -4.0, 1.0, -2.0, 0.5, 3.0, 0.0]  # 0, 1, 3, 6 seen; 1 seen thrice, penalized once
    assert adjusted(logits, [r]).tolist() == [expected]


def test_repetition_penalty_matches_transformers() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 8, generator=gen)
    rows = [row([1, 2], [2, 5], repetition_penalty=1.3), row([7], [], repetition_penalty=0.7), row([0, 0])]
    ours = adjusted(logits, rows)
    for i, r in enumerate(rows):
        proc = RepetitionPenaltyLogitsProcessor(r.params.repetition_penalty)
        ids = torch.tensor([r.prompt_ids + r.output_ids])
        expected = proc(ids, logits[i : i + 1].clone())
        torch.testing.assert_close(ours[i : i + 1], expected)


def test_presence_and_frequency_penalties_count_generated_tokens_only() -> None:
    logits = t(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    r = row(prompt=[0, 0, 1], output=[2, 2, 2, 4], frequency_penalty=0.5, presence_penalty=1.0)
    # token 2: 0.5 * 3 + 1 = 2.5; token 4: 0.5 * 1 + 1 = 1.5; prompt tokens untouched
    assert adjusted(logits, [r]).tolist() == [[0.0, 0.0, -2.5, 0.0, -1.5, 0.0]]
    only_presence = row(output=[3, 3], presence_penalty=-0.5)
    assert adjusted(logits, [only_presence]).tolist() == [[0.0, 0.0, 0.0, 0.5, 0.0, 0.0]]


def test_min_tokens_suppresses_every_eos_and_stop_token_then_allows_them() -> None:
    logits = t(0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
    sampler = Sampler([5, 6], 7)
    for n_out, ignore_eos in [(0, False), (1, False), (1, True)]:
        r = row(output=[0] * n_out, temperature=0, min_tokens=2, stop_token_ids=[3], ignore_eos=ignore_eos)
        assert sampler._adjust(logits, [r]).tolist() == [[0.0, 1.0, 2.0, -INF, 4.0, -INF, -INF]]
        assert sampler(logits, [r]).token_ids == [4]
    done = row(output=[0, 0], temperature=0, min_tokens=2, stop_token_ids=[3])
    assert sampler(logits, [done]).token_ids == [6]


def test_transforms_apply_in_order_bias_then_repetition_then_presence() -> None:
    logits = t(1.0, 1.0, 1.0, 1.0)
    r = row(output=[0], logit_bias={0: -3.0}, repetition_penalty=2.0, presence_penalty=1.0)
    assert adjusted(logits, [r]).tolist() == [[-5.0, 1.0, 1.0, 1.0]]  # (1 - 3) * 2 - 1


def test_adjust_does_not_modify_the_callers_logits() -> None:
    logits = t(1.0, 2.0, 3.0)
    Sampler([2], 3)(logits, [row(output=[1], min_tokens=3, presence_penalty=1.0, logit_bias={0: 1.0})])
    assert logits.tolist() == [[1.0, 2.0, 3.0]]


# ---- step 8: temperature, truncation and the draw ----


def test_sampled_token_is_the_inverse_cdf_pick_of_the_rows_own_uniform() -> None:
    logits = t(0.3, -1.0, 2.0, 0.0, 1.1, -0.4)
    probs = torch.softmax(logits.double()[0] / 0.7, dim=-1)
    cdf = probs.cumsum(0).tolist()
    for seed in range(40):
        u = torch.rand(1, generator=make_generator(seed)).item()
        expected = next(i for i, c in enumerate(cdf) if c > u)
        got = Sampler([], 6)(logits, [row(seed=seed, temperature=0.7)])
        assert got.token_ids == [expected]


def test_temperature_empirical_frequencies_match_softmax() -> None:
    logits = t(1.0, 0.0, -1.0, 0.5, 2.0)
    sampler = Sampler([], 5)
    r = row(seed=7, temperature=1.5)
    counts = [0] * 5
    for _ in range(2000):
        counts[sampler(logits, [r]).token_ids[0]] += 1
    expected = torch.softmax(logits[0] / 1.5, dim=-1).tolist()
    for c, p in zip(counts, expected, strict=True):
        assert abs(c / 2000 - p) < 0.035


def test_low_temperature_concentrates_on_the_argmax() -> None:
    logits = t(1.0, 0.0, 1.2, 0.5)
    rows = [row(seed=s, temperature=0.01) for s in range(20)]
    assert Sampler([], 4)(logits.expand(20, 4), rows).token_ids == [2] * 20


def test_top_k_keeps_the_k_most_likely(monkeypatch: pytest.MonkeyPatch) -> None:
    assert support(monkeypatch, DYADIC, row(top_k=2)) == {1, 3}
    assert support(monkeypatch, DYADIC, row(top_k=1)) == {1}
    assert support(monkeypatch, DYADIC, row(top_k=-1)) == {0, 1, 2, 3, 4}
    assert support(monkeypatch, DYADIC, row(top_k=50)) == {0, 1, 2, 3, 4}
    # kept {1: 2/3, 3: 1/3}, drawn in descending order
    assert picks(monkeypatch, DYADIC, row(top_k=2), [0.0, 0.66, 0.67, 0.999]) == [1, 1, 3, 3]


def test_top_p_keeps_the_token_that_crosses(monkeypatch: pytest.MonkeyPatch) -> None:
    assert support(monkeypatch, DYADIC, row(top_p=0.49)) == {1}  # 0.5 crosses 0.49
    assert support(monkeypatch, DYADIC, row(top_p=0.51)) == {1, 3}  # 0.5 + 0.25 crosses 0.51
    assert support(monkeypatch, DYADIC, row(top_p=0.74)) == {1, 3}
    assert support(monkeypatch, DYADIC, row(top_p=0.76)) == {1, 3, 2}
    assert support(monkeypatch, DYADIC, row(top_p=0.9)) == {0, 1, 2, 3}  # stable sort: 0 before 4
    assert support(monkeypatch, DYADIC, row(top_p=1.0)) == {0, 1, 2, 3, 4}


def test_top_p_applies_after_top_k_renormalizes(monkeypatch: pytest.MonkeyPatch) -> None:
    # top_k=2 leaves {1: 2/3, 3: 1/3}; top_p=0.6 is then crossed by token 1 alone
    assert support(monkeypatch, DYADIC, row(top_k=2, top_p=0.6)) == {1}
    assert support(monkeypatch, DYADIC, row(top_k=2, top_p=0.7)) == {1, 3}


def test_min_p_drops_tokens_below_min_p_times_max(monkeypatch: pytest.MonkeyPatch) -> None:
    assert support(monkeypatch, DYADIC, row(min_p=0.3)) == {1, 3}  # threshold 0.15
    assert support(monkeypatch, DYADIC, row(min_p=0.2)) == {1, 3, 2}  # threshold 0.1
    assert support(monkeypatch, DYADIC, row(min_p=0.1)) == {0, 1, 2, 3, 4}  # threshold 0.05


def test_at_least_the_most_likely_token_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    assert support(monkeypatch, DYADIC, row(top_p=1e-6)) == {1}
    assert support(monkeypatch, DYADIC, row(min_p=1.0)) == {1}
    assert support(monkeypatch, DYADIC, row(top_k=1, top_p=1e-6, min_p=1.0, temperature=0.05)) == {1}


@pytest.mark.parametrize(
    "kw",
    [
        {"top_k": 3},
        {"top_p": 0.8},
        {"min_p": 0.2},
        {"temperature": 0.5, "top_k": 10, "top_p": 0.7},
        {"temperature": 1.7, "top_p": 0.95, "min_p": 0.05},
        {"temperature": 0.9, "top_k": 20, "top_p": 0.5, "min_p": 0.1},
    ],
)
def test_truncation_matches_transformers_warpers(kw: dict[str, float]) -> None:
    params = SamplingParams(**kw)  # type: ignore[arg-type]
    logits = torch.randn(4, 64, generator=torch.Generator().manual_seed(3)) * 2
    vals, order = draw_mod._truncate(logits / params.temperature, [params] * 4)
    scores = TemperatureLogitsWarper(params.temperature)(NO_IDS, logits.clone())
    if params.top_k > 0:
        scores = TopKLogitsWarper(params.top_k)(NO_IDS, scores)
    if params.top_p < 1.0:
        scores = TopPLogitsWarper(params.top_p)(NO_IDS, scores)
    if params.min_p > 0.0:
        scores = MinPLogitsWarper(params.min_p)(NO_IDS, scores)
    for i in range(4):
        ours = set(order[i][vals[i] > -INF].tolist())
        theirs = set(torch.nonzero(scores[i] > -INF).flatten().tolist())
        assert ours == theirs


def test_inverse_cdf_never_lands_on_a_zero_probability_token() -> None:
    probs = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.5, 0.0, 0.5, 0.0], [0.0, 0.3, 0.0, 0.7]])
    pos = draw_mod._inverse_cdf(probs, torch.tensor([1.0, 0.5, 0.0]))
    assert pos.tolist() == [1, 2, 1]


def test_a_row_never_draws_a_token_cut_to_minus_inf() -> None:
    logits = t(0.0, -INF, 3.0, -INF, 1.0)
    rows = [row(seed=s, temperature=2.0) for s in range(200)]
    assert set(Sampler([], 5)(logits.expand(200, 5), rows).token_ids) <= {0, 2, 4}


# ---- step 6: logprobs ----


def test_logprobs_are_log_softmax_of_the_adjusted_logits_before_temperature(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    logits = t(0.5, 2.0, -1.0, 1.5, 0.0, 3.0, -2.0, -3.0)
    r = row(output=[5], logit_bias={0: 1.0}, presence_penalty=1.0, temperature=0.3, top_k=3, logprobs=4)
    expected = torch.log_softmax(t(1.5, 2.0, -1.0, 1.5, 0.0, 2.0, -2.0, -3.0), dim=-1)[0]
    fixed_uniforms(monkeypatch, 0.999)  # the least likely of the kept {1, 5, 0}: stable sort gives 1, 5, 0
    out = Sampler([], 8)(logits, [r])
    assert out.token_ids == [0]
    assert out.logprobs[0] == pytest.approx(expected[0].item(), abs=1e-6)
    ids = [tok for tok, _ in out.top_logprobs[0]]
    values = [lp for _, lp in out.top_logprobs[0]]
    assert set(ids[:2]) == {1, 5} and set(ids[2:]) == {0, 3}
    assert values == sorted(values, reverse=True)
    assert values == pytest.approx(expected[ids].tolist(), abs=1e-6)


def test_chosen_logprob_is_right_when_not_in_the_top_k(monkeypatch: pytest.MonkeyPatch) -> None:
    logits = t(3.0, 2.0, 1.0, -4.0)
    fixed_uniforms(monkeypatch, 0.99999)  # no truncation: vocabulary order, so the last id
    out = Sampler([], 4)(logits, [row(logprobs=2)])
    assert out.token_ids == [3]
    expected = torch.log_softmax(logits, dim=-1)[0]
    assert out.logprobs[0] == pytest.approx(expected[3].item(), abs=1e-6)
    assert [tok for tok, _ in out.top_logprobs[0]] == [0, 1]


def test_logprobs_only_for_rows_that_want_them() -> None:
    logits = torch.tensor([[1.0, 2.0, 0.0]] * 4)
    rows = [row(temperature=0), row(temperature=0, logprobs=0), row(temperature=0, n=1, best_of=2), row()]
    out = Sampler([], 3)(logits, rows)
    lp = torch.log_softmax(logits[0], dim=-1)[1].item()
    assert out.logprobs[0] == 0.0 and out.logprobs[3] == 0.0
    assert out.logprobs[1] == pytest.approx(lp) and out.logprobs[2] == pytest.approx(lp)
    assert out.top_logprobs == [[], [], [], []]
    assert [wants_logprobs(r.params) for r in rows] == [False, True, True, False]


def test_logprobs_k_larger_than_vocab_is_trimmed() -> None:
    out = Sampler([], 3)(t(1.0, 2.0, 0.0), [row(temperature=0, logprobs=20)])
    assert [tok for tok, _ in out.top_logprobs[0]] == [1, 0, 2]
    assert sum(math.exp(lp) for _, lp in out.top_logprobs[0]) == pytest.approx(1.0)


# ---- batches ----


def mixed_rows(seed: int) -> list[Row]:
    return [
        row(temperature=0),
        row(temperature=0, logit_bias={3: 4.0}, logprobs=2),
        row(seed=seed, temperature=0.8, top_p=0.9),
        row(seed=seed + 1, temperature=1.2),
        row([1, 2], [2, 2, 5], seed=seed + 2, repetition_penalty=1.2, frequency_penalty=0.4, logprobs=3),
        row(output=[1], seed=seed + 3, min_tokens=4, top_k=3, min_p=0.1, logit_bias={0: -1.0}),
    ]


def assert_same(a: SampleResult, b: SampleResult) -> None:
    assert a.token_ids == b.token_ids
    assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
    assert [[tok for tok, _ in r] for r in a.top_logprobs] == [[tok for tok, _ in r] for r in b.top_logprobs]


def test_mixed_batch_gives_each_row_what_it_gets_alone() -> None:
    logits = torch.randn(6, 16, generator=torch.Generator().manual_seed(5))
    sampler = Sampler([7], 16)
    for seed in range(10):
        batch = sampler(logits, mixed_rows(seed))
        alone = [sampler(logits[i : i + 1], [r]) for i, r in enumerate(mixed_rows(seed))]
        merged = SampleResult(
            [a.token_ids[0] for a in alone],
            [a.logprobs[0] for a in alone],
            [a.top_logprobs[0] for a in alone],
        )
        assert_same(batch, merged)


def fake_model(tokens: list[int], vocab: int) -> torch.Tensor:
    """Deterministic next-token logits [V] from the sequence so far."""
    gen = torch.Generator().manual_seed(len(tokens) * 1000 + (tokens[-1] if tokens else 0))
    return torch.randn(vocab, generator=gen) * 2


def test_seeded_row_is_reproducible_whatever_its_neighbours() -> None:
    vocab, steps = 64, 20
    kw: dict[str, Any] = {"temperature": 0.8, "top_p": 0.9, "presence_penalty": 0.5}

    def run(neighbours: int, rng: random.Random) -> list[int]:
        me = row([1, 2, 3], seed=42, **kw)
        rows = [me]
        for _ in range(neighbours):
            extra: dict[str, Any] = {"temperature": rng.choice([0.0, 0.5, 1.3]), "top_k": rng.choice([0, 5])}
            rows.insert(rng.randrange(len(rows) + 1), row(seed=rng.randrange(1 << 30), **extra))
        sampler = Sampler([0], vocab)
        for _ in range(steps):
            logits = torch.stack([fake_model(r.output_ids, vocab) for r in rows])
            for r, tok in zip(rows, sampler(logits, rows).token_ids, strict=True):
                r.output_ids.append(tok)
        return me.output_ids

    alone = run(0, random.Random(0))
    assert len(set(alone)) > 3  # it really samples
    for trial in range(3):
        assert run(3, random.Random(trial)) == alone


# ---- shapes, dtypes, generators ----


def test_columns_past_vocab_size_are_never_chosen_nor_counted() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0, 0.5, -1.0, 50.0, 60.0, 70.0]] * 64)
    rows = [row(seed=s, temperature=2.0, logprobs=5, logit_bias={1: 0.5}) for s in range(63)]
    rows.append(row(temperature=0, repetition_penalty=3.0, output=[6, 2]))  # 2 -> 2/3 < 1
    out = Sampler([7, 4], 5)(logits, rows)
    assert max(out.token_ids) < 5 and out.token_ids[-1] == 1
    assert sum(math.exp(lp) for _, lp in out.top_logprobs[0]) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits_give_the_float32_results(dtype: torch.dtype) -> None:
    logits = torch.tensor([[0.5, -1.25, 2.0, 1.75, 0.0, -3.0]] * 4)
    sampler = Sampler([2], 6)

    def rows() -> list[Row]:
        return [
            row(temperature=0),
            row(temperature=0, logprobs=3, min_tokens=1),
            row(seed=3, top_p=0.8, logprobs=2),
            row(seed=4, output=[3], presence_penalty=0.5),
        ]

    assert_same(sampler(logits.to(dtype), rows()), sampler(logits, rows()))
    assert sampler(logits.to(dtype), rows()).token_ids[0] == 2
    assert sampler(logits[:1].to(dtype), [row(temperature=0)]).token_ids == [2]


def test_greedy_only_batch_never_sorts_nor_softmaxes(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("greedy-only path must not call this")

    for name in ["sort", "softmax", "log_softmax", "cumsum", "topk", "rand"]:
        monkeypatch.setattr(torch, name, boom)
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]])
    assert Sampler([0], 3)(logits, [row(temperature=0), row(temperature=0)]).token_ids == [1, 0]


def test_make_generator_maps_any_seed_and_reproduces() -> None:
    def draw(seed: int | None) -> list[float]:
        return torch.rand(4, generator=make_generator(seed)).tolist()

    assert draw(-1) == draw(2**64 - 1)
    assert draw(-(2**63)) == draw(2**63)
    assert draw(2**70 + 5) == draw(5)
    assert draw(123) == draw(123) != draw(124)
    assert draw(None) != draw(None)


def test_rejects_mismatched_logits_and_accepts_an_empty_batch() -> None:
    sampler = Sampler([0], 4)
    with pytest.raises(ValueError):
        sampler(torch.zeros(2, 4), [row()])
    with pytest.raises(ValueError):
        sampler(torch.zeros(4), [row()])
    assert sampler(torch.zeros(0, 4), []) == SampleResult([], [], [])


@pytest.mark.parametrize("candidates", [4, 16, 64])
def test_candidate_cut_equals_the_full_sort(monkeypatch: pytest.MonkeyPatch, candidates: int) -> None:
    """Cutting to the top candidates before sorting never changes the kept distribution."""
    import backends.engine.draw as draw_module

    gen = torch.Generator().manual_seed(candidates)
    x = torch.randn(8, 300, generator=gen) * torch.linspace(0.5, 6.0, 8).unsqueeze(1)  # flat to peaked rows
    params = [
        SamplingParams(top_p=0.9),
        SamplingParams(top_p=0.5, min_p=0.05),
        SamplingParams(top_k=3),
        SamplingParams(top_k=10, top_p=0.8),
        SamplingParams(min_p=0.2),
        SamplingParams(top_p=0.99),
        SamplingParams(min_p=0.01),
        SamplingParams(top_p=0.3),
    ]

    def distribution() -> torch.Tensor:
        cut, order = draw_module._truncate(x, params)
        dist = torch.zeros_like(x)
        return dist.scatter_add_(1, order, torch.softmax(cut, dim=-1))  # [R, V] by token id

    full = distribution()
    monkeypatch.setattr(draw_module, "_CANDIDATES", candidates)
    assert torch.allclose(distribution(), full, atol=1e-6)


def test_a_temperature_too_small_to_divide_by_is_greedy() -> None:
    logits = torch.tensor([[0.0, 3.0, 2.999, 1.0]])
    rows = [row(temperature=1e-9, seed=seed) for seed in range(8)]
    assert Sampler([], 4)(logits.expand(8, -1), rows).token_ids == [1] * 8


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("top_k", 2**31),
        ("repetition_penalty", 0.001),
        ("repetition_penalty", 101.0),
        ("seed", 2**64),
        ("temperature", 2.5),
    ],
)
def test_params_reject_what_would_overflow_the_sampler(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value}).validate()  # type: ignore[arg-type]
