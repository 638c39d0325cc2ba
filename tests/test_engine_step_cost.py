"""Per-step work the engine skips when there is nothing to do, without changing what it produces."""

from __future__ import annotations

from typing import Any

import pytest

from backends.engine import core as core_module
from backends.engine.core import EngineCore
from backends.engine.params import SamplingParams
from backends.grammar import GrammarSpec
from backends.hf_eager import HFEagerBackend
from tests.tiny_models import build, tiny_model_dir


def _backend() -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = str(tiny_model_dir("llama"))  # a byte-level tokenizer, so a grammar compiles
    return HFEagerBackend(
        AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path), "tiny"
    )


def test_decode_scans_rows_for_a_grammar_only_while_a_constrained_sequence_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    real = core_module.grammar_mask

    def counted(rows: Any, tokenizer: Any) -> Any:
        calls.append(len(rows))
        return real(rows, tokenizer)

    monkeypatch.setattr(core_module, "grammar_mask", counted)
    core = EngineCore(_backend(), max_batch_size=4)
    free = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    plain = [core.add_request([5, 6, 7], free), core.add_request([8, 9], free)]
    core.step()  # prefill: the new rows are checked once
    calls.clear()
    for _ in range(3):
        core.step()
    assert calls == []  # decode of unconstrained rows never looks for a grammar

    digits = SamplingParams(max_tokens=4, grammar=GrammarSpec.regex("[0-9]{4}"), seed=1)
    constrained = core.add_request([10, 11], digits)
    texts: dict[str, str] = {}
    while core.has_work():
        for out in core.step().outputs:
            texts[out.request_id] = texts.get(out.request_id, "") + "".join(c.text for c in out.choices)
    assert calls and core._constrained == 0  # scanned while it ran; counted out when it left
    assert texts[constrained].isdigit() and len(texts[constrained]) == 4  # the mask still applies
    assert set(plain) <= set(texts)


def test_kv_tokens_follow_every_join_and_leave() -> None:
    model, tokenizer = build("llama")
    backend = HFEagerBackend(model, tokenizer, "tiny")
    core = EngineCore(backend, max_batch_size=4, prefix_cache_tokens=None)
    lengths = [3, 40, 9]
    for n, length in enumerate(lengths):
        core.add_request(list(range(5, 5 + length)), SamplingParams(max_tokens=2 + 3 * n, ignore_eos=True))
    while core.has_work():
        core.step()
        held = sum(len(s.seq.token_ids) - 1 for s in core._running)  # the last sampled token has no KV
        assert core.kv_tokens == backend.cached_tokens() == held
    assert core.kv_tokens == 0
