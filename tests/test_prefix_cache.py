"""Prefix caching: the pool's keys, bound and eviction, and output that does not change with it."""

from __future__ import annotations

import random
from typing import Any

import openai
import pytest
import torch

from backends.engine.contract import Seq, StagedBackend
from backends.engine.core import EngineCore
from backends.engine.params import SamplingParams
from backends.engine.prefix_cache import BLOCK_TOKENS, PrefixCache
from backends.options import BackendOptions
from handler.config import Settings
from handler.model import load_served_model
from tests.conftest_http import live_server
from tests.test_hf_bettertransformer import fast_backend
from tests.tiny_models import build, tiny_backend, tiny_model_dir

B = BLOCK_TOKENS


def _fake_kv(start: int, end: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    values = torch.arange(start, end, dtype=torch.float32)[None, :, None]  # [1, n, 1]
    return [(values, -values)]


def test_blocks_chain_on_every_token_before_them() -> None:
    cache = PrefixCache(capacity_tokens=8 * B)
    prompt = list(range(3 * B + 5))
    assert cache.insert(prompt, len(prompt), _fake_kv) == 4  # three full blocks and the partial last one
    assert cache.match(prompt).tokens == 3 * B + 4  # a hit leaves at least one token to compute
    other_first_block = [999, *prompt[1:]]  # blocks 2 and 3 equal, but their prefix differs
    assert cache.match(other_first_block).tokens == 0
    assert cache.match(prompt[: 2 * B + 1]).tokens == 2 * B
    assert cache.match(prompt[: 2 * B]).tokens == 2 * B - 1  # the leading tokens of the next block
    assert cache.insert(prompt, len(prompt), _fake_kv) == 0  # nothing new: nothing exported


def test_a_hit_shorter_than_a_block_is_no_hit_and_is_not_counted() -> None:
    cache = PrefixCache(capacity_tokens=8 * B)
    prompt = list(range(2 * B))
    cache.insert(prompt, len(prompt), _fake_kv)
    assert cache.match([*prompt[: B - 2], 999, 998]).tokens == 0  # B - 2 tokens shared
    assert cache.stats.hit_tokens == 0 and cache.stats.queried_tokens == B
    assert cache.match([*prompt[:B], 999]).tokens == B


def test_a_prompt_reuses_the_tokens_it_shares_with_a_block_where_the_chain_stops() -> None:
    cache = PrefixCache(capacity_tokens=8 * B)
    turn = list(range(2 * B + 20))  # a finished turn: two full blocks and a partial one of 20 tokens
    cache.insert(turn, len(turn), _fake_kv)
    follow_up = [*turn, 7000, 7001]  # the next turn resends it and adds its own tokens
    hit = cache.match(follow_up)
    assert hit.tokens == 2 * B + 20 and hit.partial is not None
    assert [k.flatten().tolist() for k, _ in hit.kv()] == [list(map(float, range(2 * B + 20)))]
    diverging = turn[: B + 10] + [9000] * B  # leaves the second block after 10 of its tokens
    hit = cache.match(diverging)
    assert hit.tokens == B + 10 and len(hit.blocks) == 1
    assert [v.flatten().tolist() for _, v in hit.kv()] == [[-float(i) for i in range(B + 10)]]
    assert cache.stats.pool_tokens == 2 * B + 20


def test_pool_never_grows_past_its_bound_and_evicts_leaves_first() -> None:
    cache = PrefixCache(capacity_tokens=10 * B)
    rng = random.Random(0)
    for _ in range(200):
        prompt = [rng.randrange(1000) for _ in range(rng.randrange(1, 6 * B))]
        cache.insert(prompt, len(prompt), _fake_kv)
        assert len(cache.blocks) <= 10 and cache.stats.pool_tokens <= 10 * B
        assert cache.stats.pool_tokens == sum(len(b.tokens) for b in cache.blocks.values())
        assert sorted(k for kids in cache.children.values() for k in kids) == sorted(cache.blocks)
        assert cache.stats.pool_bytes == sum(b.nbytes() for b in cache.blocks.values())
    assert cache.stats.evicted_blocks > 0
    shared = list(range(4 * B + 1))
    cache.insert(shared, len(shared), _fake_kv)
    for i in range(6):  # six one-block prompts push out older blocks, never the chain just used
        cache.match(shared)
        cache.insert([5000 + i] * B, B, _fake_kv)
    assert cache.match(shared).tokens == 4 * B
    with pytest.raises(ValueError):
        PrefixCache(capacity_tokens=B - 1)


def _run(
    core: EngineCore, prompts: list[list[int]], params: SamplingParams, stagger: bool = False
) -> list[Any]:
    """Greedy tokens and chosen-token logprobs per prompt, requests joining one step apart if asked."""
    ids = []
    got: dict[str, tuple[list[int], list[float]]] = {}
    pending = list(prompts)
    while pending or core.has_work():
        if pending and (stagger or not ids):
            batch = [pending.pop(0)] if stagger else [pending.pop(0) for _ in range(len(pending))]
            for p in batch:
                rid = core.add_request(p, params)
                ids.append(rid)
                got[rid] = ([], [])
        for out in core.step().outputs:
            for c in out.choices:
                got[out.request_id][0].extend(c.token_ids)
                got[out.request_id][1].extend(e.logprob or 0.0 for e in c.logprobs)
    return [got[r] for r in ids]


def _prompts(vocab: int, seed: int) -> list[list[int]]:
    """Prompts sharing 0, 1, many blocks, all of their blocks, or part of a block with those before them."""
    rng = random.Random(seed)
    base = [rng.randrange(5, vocab) for _ in range(5 * B + 7)]
    return [
        base,
        [rng.randrange(5, vocab) for _ in range(40)],  # nothing shared
        base[:B] + [rng.randrange(5, vocab) for _ in range(20)],  # one block
        base[: 4 * B] + [rng.randrange(5, vocab) for _ in range(9)],  # many blocks
        base[: 5 * B + 1],  # the whole prompt but the one token that must be computed
        base,  # the same prompt again: every full block and the partial last one
        base[: 3 * B + 10] + [rng.randrange(5, vocab) for _ in range(12)],  # leaves a block midway
    ]


def _compare(backend_on: Any, backend_off: Any, vocab: int, seed: int, cache_tokens: int) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, logprobs=1)
    prompts = _prompts(vocab, seed)
    off = _run(EngineCore(backend_off, 8, prefix_cache_tokens=None), prompts, params, stagger=True)
    core = EngineCore(backend_on, 8, prefix_cache_tokens=cache_tokens, prefill_chunk_tokens=24)
    on = _run(core, prompts, params, stagger=True)
    stats = core.prefix_cache
    assert stats is not None and stats.hit_tokens >= (1 + 4 + 5 + 5 + 3) * B + 10  # the hits really happened
    for (tokens_on, lp_on), (tokens_off, lp_off) in zip(on, off, strict=True):
        assert tokens_on == tokens_off
        assert max(abs(a - b) for a, b in zip(lp_on, lp_off, strict=True)) < 1e-4


@pytest.mark.parametrize("kind", ["llama", "gpt2", "bloom"])
def test_hf_eager_output_is_the_same_with_the_cache(kind: str) -> None:
    backend = tiny_backend(kind)
    assert isinstance(backend, StagedBackend)
    _compare(backend, backend, backend.info.vocab_size, seed=1, cache_tokens=64 * B)


def test_hf_bettertransformer_output_is_the_same_with_the_cache() -> None:
    model = build("llama")
    fast = fast_backend("llama", slots=8, max_len=512, model=model)
    _compare(fast, fast, fast.info.vocab_size, seed=2, cache_tokens=64 * B)


def test_output_is_the_same_after_evictions_and_with_neighbours() -> None:
    backend = tiny_backend("llama")
    vocab = backend.info.vocab_size
    params = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True, logprobs=1)
    rng = random.Random(3)
    shared = [rng.randrange(5, vocab) for _ in range(3 * B)]
    prompts = [shared + [rng.randrange(5, vocab) for _ in range(rng.randrange(1, 50))] for _ in range(12)]
    prompts += [[rng.randrange(5, vocab) for _ in range(2 * B + 3)] for _ in range(6)]  # evict
    prompts += prompts[:4]
    off = _run(EngineCore(backend, 8, prefix_cache_tokens=None), prompts, params)
    core = EngineCore(backend, 8, prefix_cache_tokens=6 * B, prefill_chunk_tokens=16)
    on = _run(core, prompts, params, stagger=True)
    assert core.prefix_cache is not None and core.prefix_cache.evicted_blocks > 0
    assert core.prefix_cache.pool_tokens <= 6 * B
    for (tokens_on, lp_on), (tokens_off, lp_off) in zip(on, off, strict=True):
        assert tokens_on == tokens_off
        assert max(abs(a - b) for a, b in zip(lp_on, lp_off, strict=True)) < 1e-4
    assert not backend.batches and not backend.staged and backend.cached_tokens() == 0


def test_a_finished_turn_leaves_its_output_behind_and_n_shares_the_hit() -> None:
    backend = tiny_backend("llama")
    rng = random.Random(4)
    first = [rng.randrange(5, backend.info.vocab_size) for _ in range(2 * B + 3)]
    core = EngineCore(backend, 8)
    params = SamplingParams(temperature=0.0, max_tokens=2 * B, ignore_eos=True)
    [(answer, _)] = _run(core, [first], params)
    turn = first + answer + [7, 8, 9]
    outputs = []
    core.add_request(turn, SamplingParams(n=3, temperature=1.0, seed=5, max_tokens=3))
    while core.has_work():
        outputs += core.step().outputs
    cached = {o.cached_tokens for o in outputs}
    # Every position the turn computed hits, its output and its partial last block included.
    assert cached == {len(first) + len(answer) - 1}
    assert {c.index for o in outputs for c in o.choices} == {0, 1, 2}


def test_prompts_sharing_less_than_a_block_with_the_cache_prefill_together(monkeypatch: Any) -> None:
    # A hit of a few tokens would take each prompt out of the batched forward: 16 forwards
    # instead of one for 16 short prompts that start alike. Under a block, the cache is not used.
    backend = tiny_backend("llama")
    rng = random.Random(6)
    vocab = backend.info.vocab_size
    shared = [rng.randrange(5, vocab) for _ in range(B - 4)]
    core = EngineCore(backend, 8)
    _run(core, [shared + [rng.randrange(5, vocab) for _ in range(10)]], SamplingParams(max_tokens=2))
    forwards: list[int] = []
    staged: list[int] = []
    prefill, begin = backend.prefill, backend.begin
    monkeypatch.setattr(backend, "prefill", lambda seqs: forwards.append(len(seqs)) or prefill(seqs))
    monkeypatch.setattr(backend, "begin", lambda seq, kv: staged.append(seq.seq_id) or begin(seq, kv))
    prompts = [shared + [rng.randrange(5, vocab) for _ in range(10)] for _ in range(4)]
    for prompt in prompts:
        core.add_request(prompt, SamplingParams(max_tokens=2))
    outputs = core.step().outputs
    assert forwards == [4] and staged == []
    assert [o.cached_tokens for o in outputs] == [0, 0, 0, 0]
    long_hit = shared + prompts[0][len(shared) :] + [7, 8]  # the whole first block and more cached
    while core.has_work():
        core.step()
    core.add_request(long_hit, SamplingParams(max_tokens=1))
    assert core.step().outputs[0].cached_tokens >= B and len(staged) == 1


def test_staged_prefill_in_chunks_equals_one_prefill() -> None:
    for backend in (tiny_backend("gpt2"), fast_backend("llama", slots=4, max_len=256)):
        rng = random.Random(5)
        prompt = [rng.randrange(5, backend.info.vocab_size) for _ in range(150)]
        whole = Seq(1, list(prompt))
        reference = backend.prefill([whole])[0]
        score = backend.score(prompt)  # [S, V]
        chunked = Seq(2, list(prompt))
        backend.begin(chunked, [])
        rows = [backend.extend(chunked, n, all_logits=True) for n in (1, 48, 64, 37)]
        backend.commit(chunked)
        assert (rows[-1][-1] - reference).abs().max() < 1e-4
        assert (torch.cat(rows) - score).abs().max() < 1e-4
        for seq in (whole, chunked):
            seq.token_ids.append(11)
        decoded = backend.decode([whole, chunked])
        assert (decoded[0] - decoded[1]).abs().max() < 1e-4
        exported = backend.export(chunked, 0, 150)
        assert (exported[0][0] - backend.export(whole, 0, 150)[0][0]).abs().max() < 1e-5
        backend.release([whole, chunked])
        assert backend.cached_tokens() == 0


def test_cached_tokens_reach_the_openai_client() -> None:
    settings = Settings(model=str(tiny_model_dir("llama")), served_model_name="tiny")
    with live_server(settings, loader=load_served_model) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)
        prompt = list(range(10, 10 + 3 * B + 5))
        first = client.completions.create(model="tiny", prompt=prompt, max_tokens=2)
        assert first.usage is not None and first.usage.prompt_tokens_details is not None
        assert first.usage.prompt_tokens_details.cached_tokens == 0
        again = client.completions.create(model="tiny", prompt=prompt, max_tokens=2)
        assert again.usage is not None and again.usage.prompt_tokens_details is not None
        # All but the last token, whose logits start the answer (its partial last block included).
        assert again.usage.prompt_tokens_details.cached_tokens == len(prompt) - 1
        chunks, repeat = (
            list(
                client.chat.completions.create(
                    model="tiny",
                    messages=[{"role": "user", "content": "hello there " * 30}],
                    max_tokens=2,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            for _ in range(2)
        )
        usage, repeated = chunks[-1].usage, repeat[-1].usage
        assert usage is not None and repeated is not None and repeated.prompt_tokens_details is not None
        assert repeated.prompt_tokens_details.cached_tokens == usage.prompt_tokens - 1 > 0
        metrics = server.url + "/metrics"
        import httpx

        body = httpx.get(metrics, timeout=10).text
        assert 'ladle_prefix_cache_tokens{kind="hit"}' in body and "ladle_prefix_cache_hit_rate" in body


@pytest.mark.slow
def test_default_model_output_is_the_same_with_the_cache() -> None:
    from backends.library import load_model

    model = load_model(max_batch_size=4)
    try:
        tok = model.tokenizer
        system = "You answer questions about the solar system in one short sentence. " * 6
        prompts = []
        for question in ("What is the largest planet?", "Which planet is closest to the sun?"):
            messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
            rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            prompts.append(list(tok(rendered, add_special_tokens=False).input_ids))
        _compare_prompts(model.backend, prompts)
    finally:
        model.close()


def _compare_prompts(backend: Any, prompts: list[list[int]]) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, logprobs=1)
    off = _run(EngineCore(backend, 4, prefix_cache_tokens=None), prompts, params, stagger=True)
    core = EngineCore(backend, 4)
    on = _run(core, prompts, params, stagger=True)
    assert core.prefix_cache is not None and core.prefix_cache.hit_tokens >= 2 * B
    for (tokens_on, lp_on), (tokens_off, lp_off) in zip(on, off, strict=True):
        assert tokens_on == tokens_off
        assert max(abs(a - b) for a, b in zip(lp_on, lp_off, strict=True)) < 1e-4


def test_hf_int8_output_stays_within_its_tolerance_with_the_cache() -> None:
    from backends import hf_int8
    from backends.hf_int8 import bitsandbytes_problem
    from backends.runner import loading

    if bitsandbytes_problem("cpu") is not None:
        pytest.skip("bitsandbytes does not run here")
    int8 = hf_int8.load(
        loading.ModelSource(str(tiny_model_dir("llama")), "tiny-llama", True), BackendOptions()
    )
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, logprobs=1)
    prompts = _prompts(int8.info.vocab_size, seed=6)
    off = _run(EngineCore(int8, 8, prefix_cache_tokens=None), prompts, params, stagger=True)
    core = EngineCore(int8, 8, prefix_cache_tokens=64 * B, prefill_chunk_tokens=24)
    on = _run(core, prompts, params, stagger=True)
    assert core.prefix_cache is not None and core.prefix_cache.hit_tokens > 0
    # LLM.int8 picks outlier columns over the whole input of a forward, so a prefix computed
    # with other tokens may round differently: its stated tolerance, not 1e-4.
    worst = max(abs(a - b) for (_, x), (_, y) in zip(on, off, strict=True) for a, b in zip(x, y, strict=True))
    assert worst < INT8_TOLERANCE, worst


INT8_TOLERANCE = 0.05  # on chosen-token logprobs, as hf_int8's agreement test allows picks to differ


def test_prefix_cache_setting_turns_it_off_and_sizes_it() -> None:
    from handler.config import settings_from_env

    assert settings_from_env({"PREFIX_CACHE": "0"}).prefix_cache is False
    tiny = str(tiny_model_dir("llama"))
    off = load_served_model(Settings(model=tiny, prefix_cache=False))
    on = load_served_model(Settings(model=tiny, prefix_cache_tokens=4 * B, prefill_chunk_tokens=7))
    try:
        assert off.core.prefix_cache is None  # type: ignore[attr-defined]
        stats = on.core.prefix_cache  # type: ignore[attr-defined]
        assert stats is not None and stats.capacity_tokens == 4 * B
        assert on.core.prefiller.chunk_tokens == 7  # type: ignore[attr-defined]
    finally:
        off.close()
        on.close()
