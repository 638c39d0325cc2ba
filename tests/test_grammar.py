"""backends/grammar: specs, request translation, the compiler's cache and limits, and the mask stage."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import torch

from backends.engine.params import SamplingParams
from backends.engine.sampler import Sampler, make_generator
from backends.errors import InvalidRequestError
from backends.grammar import GrammarCompiler, GrammarSpec, from_response_format, from_structured_outputs
from backends.grammar.llg import CompiledGrammar
from backends.grammar.mask import apply_grammar, grammar_mask, unpack
from tests.tiny_models import tokenizer_for


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return tokenizer_for("llama")


@pytest.fixture(scope="module")
def compiler(tokenizer: Any) -> GrammarCompiler:
    return GrammarCompiler(tokenizer, [tokenizer.eos_token_id])


def test_json_schema_specs_are_canonical_and_keep_key_order() -> None:
    a = GrammarSpec.json_schema({"type": "object", "properties": {"b": {}, "a": {}}})
    b = GrammarSpec.json_schema('{ "type" : "object",\n "properties": {"b": {}, "a": {}} }')
    assert a == b and hash(a) == hash(b)
    assert a.value.index('"b"') < a.value.index('"a"')  # property order is output order
    with pytest.raises(ValueError, match="kind"):
        GrammarSpec("yaml", "")  # type: ignore[arg-type]


def test_request_fields_to_specs() -> None:
    assert from_response_format({"type": "text"}) is None
    assert from_response_format({"type": "json_object"}) == GrammarSpec.json_object()
    assert (
        from_response_format({"type": "json_schema", "json_schema": {"name": "x"}})
        == GrammarSpec.json_object()
    )
    schema = {"type": "integer"}
    assert from_response_format(
        {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    ) == GrammarSpec.json_schema(schema)
    assert from_structured_outputs({"json": '{"type": "integer"}'}) == GrammarSpec.json_schema(schema)
    assert from_structured_outputs({"regex": "a+"}) == GrammarSpec.regex("a+")
    assert from_structured_outputs({"choice": ["a", "b"]}) == GrammarSpec.choice(["a", "b"])
    assert from_structured_outputs({"grammar": 'start: "a"'}) == GrammarSpec.lark('start: "a"')
    for bad in (
        {},
        {"regex": "a", "json": {}},
        {"choice": []},
        {"choice": [1]},
        {"regex": ""},
        {"json": "{"},
    ):
        with pytest.raises(InvalidRequestError) as info:
            from_structured_outputs(bad)
        assert info.value.param == "structured_outputs"
    with pytest.raises(InvalidRequestError) as info:
        from_response_format({"type": "json_schema"})
    assert info.value.param == "response_format"


def test_params_refuse_min_tokens_and_ignore_eos_with_a_grammar() -> None:
    for kwargs in ({"min_tokens": 1}, {"ignore_eos": True}):
        with pytest.raises(ValueError, match="grammar") as info:
            SamplingParams(grammar=GrammarSpec.json_object(), **kwargs).validate()  # type: ignore[arg-type]
        assert str(info.value).split(" ", 1)[0] in kwargs


def test_cache_returns_the_same_grammar_and_stays_bounded(tokenizer: Any) -> None:
    compiler = GrammarCompiler(tokenizer, [tokenizer.eos_token_id], cache_size=2)
    specs = [GrammarSpec.regex(f"a{i}") for i in range(3)]
    first = compiler.compile(specs[0])
    assert compiler.compile(specs[0]) is first
    compiler.compile(specs[1])
    compiler.compile(specs[2])
    assert compiler.cached(specs[0]) is None  # least recently used, dropped
    assert compiler.cached(specs[2]) is not None and len(compiler._cache) == 2


def test_compile_errors_name_the_param_and_the_keyword(compiler: GrammarCompiler) -> None:
    cases = [
        (GrammarSpec.json_schema({"type": "array", "uniqueItems": True}), "uniqueItems"),
        (GrammarSpec.json_schema({"if": {}, "then": {}}), "if"),
        (GrammarSpec.json_schema({"type": "nonsense"}), "invalid JSON schema"),
        (GrammarSpec.json_schema({"$ref": "#/missing"}), "invalid JSON schema"),
        (GrammarSpec.regex("[a-"), "invalid regex"),
        (GrammarSpec.lark("start: undefined_rule"), "invalid grammar"),
    ]
    for spec, words in cases:
        for _ in range(2):  # the second time from the cache of errors
            with pytest.raises(InvalidRequestError) as info:
                compiler.compile(spec, param="response_format")
            assert info.value.param == "response_format"
            assert words in str(info.value)


def test_size_limit(tokenizer: Any) -> None:
    compiler = GrammarCompiler(tokenizer, [tokenizer.eos_token_id], max_bytes=100)
    with pytest.raises(InvalidRequestError, match="limit is 100 bytes") as info:
        asyncio.run(compiler.compile_async(GrammarSpec.regex("a" * 101), "structured_outputs"))
    assert info.value.param == "structured_outputs"


def test_time_limit(tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    compiler = GrammarCompiler(tokenizer, [tokenizer.eos_token_id], timeout=0.05)
    real = compiler._build

    def slow(spec: GrammarSpec) -> Any:
        time.sleep(0.5)
        return real(spec)

    monkeypatch.setattr(compiler, "_build", slow)
    with pytest.raises(InvalidRequestError, match="longer than") as info:
        asyncio.run(compiler.compile_async(GrammarSpec.regex("abc"), "response_format"))
    assert info.value.param == "response_format"
    compiler.close()


def test_compile_async_hits_the_cache(compiler: GrammarCompiler) -> None:
    spec = GrammarSpec.choice(["x", "y"])
    first = asyncio.run(compiler.compile_async(spec))
    assert isinstance(first, CompiledGrammar)
    assert asyncio.run(compiler.compile_async(spec)) is first


def test_unpack_bits() -> None:
    bitmask = torch.tensor([[0b1011, 0], [0, -(2**31)]], dtype=torch.int32)
    allowed = unpack(bitmask, 70)
    assert allowed.shape == (2, 70)
    assert allowed[0].nonzero().flatten().tolist() == [0, 1, 3]
    assert allowed[1].nonzero().flatten().tolist() == [63]  # the sign bit is token 31 of word 1
    assert unpack(bitmask, 40).shape == (2, 40)


def _allowed_ids(scores: torch.Tensor) -> list[int]:
    return (scores > float("-inf")).nonzero().flatten().tolist()


def test_mask_lines_up_with_logits_wider_than_the_vocabulary(
    compiler: GrammarCompiler, tokenizer: Any
) -> None:
    matcher = compiler.compile(GrammarSpec.choice(["ab"])).matcher()
    width = compiler.tokenizer.vocab_size + 40  # padding columns of an embedding matrix
    scores = torch.zeros(2, width)
    apply_grammar(scores, [None, matcher], compiler.tokenizer)
    assert _allowed_ids(scores[0]) == list(range(width))  # the unconstrained row is untouched
    allowed = _allowed_ids(scores[1])
    assert allowed and all(tokenizer.decode([t]) and "ab".startswith(tokenizer.decode([t])) for t in allowed)
    assert max(allowed) < compiler.tokenizer.vocab_size


def test_complete_grammar_allows_only_eos(compiler: GrammarCompiler, tokenizer: Any) -> None:
    matcher = compiler.compile(GrammarSpec.regex("a")).matcher()
    scores = torch.zeros(1, compiler.tokenizer.vocab_size)
    apply_grammar(scores, [matcher], compiler.tokenizer)
    assert tokenizer.eos_token_id not in _allowed_ids(scores[0])  # not before the grammar may end
    (token,) = compiler.tokenizer.ll.greedy_tokenize("a")
    assert matcher.advance(token) == "stop"
    scores = torch.zeros(1, compiler.tokenizer.vocab_size)
    apply_grammar(scores, [matcher], compiler.tokenizer)
    assert _allowed_ids(scores[0]) == [tokenizer.eos_token_id]


def test_unconstrained_batches_get_no_mask(compiler: GrammarCompiler) -> None:
    class Row:
        matcher = None

    assert grammar_mask([Row(), Row()], lambda: compiler.tokenizer) is None


def test_sampler_masks_before_logprobs(compiler: GrammarCompiler) -> None:
    matcher = compiler.compile(GrammarSpec.choice(["yes", "no"])).matcher()

    class Row:
        params = SamplingParams(temperature=1.0, logprobs=5)
        prompt_ids: list[int] = []  # noqa: RUF012
        output_ids: list[int] = []  # noqa: RUF012
        generator = make_generator(0)

    vocab = compiler.tokenizer.vocab_size
    logits = torch.randn(1, vocab)
    mask = grammar_mask([type("R", (), {"matcher": matcher})()], lambda: compiler.tokenizer)
    result = Sampler([], vocab)(logits, [Row()], mask)
    expected = torch.zeros(1, vocab)
    apply_grammar(
        expected, [compiler.compile(GrammarSpec.choice(["yes", "no"])).matcher()], compiler.tokenizer
    )
    allowed = set(_allowed_ids(expected[0]))
    assert result.token_ids[0] in allowed
    assert {t for t, _ in result.top_logprobs[0]} == allowed  # masked tokens are not listed
    total = sum(torch.tensor([lp for _, lp in result.top_logprobs[0]]).exp().tolist())
    assert len(allowed) < 5 and total == pytest.approx(1.0, abs=1e-4)  # all the mass is on allowed tokens


def test_a_vocabulary_without_byte_tokens_is_refused_with_a_400_not_an_empty_answer() -> None:
    """A word-level tokenizer builds, but llguidance cannot compute its masks (they would allow
    only EOS): every constrained request is a 400 naming its field, and says why."""
    from bench.shapes import word_tokenizer

    compiler = GrammarCompiler(word_tokenizer(300), [2])
    with pytest.raises(InvalidRequestError) as caught:
        compiler.compile(GrammarSpec("choice", '["w10", "w11"]'), param="structured_outputs")
    assert caught.value.param == "structured_outputs"
    assert "not available for this tokenizer" in str(caught.value)
    assert compiler.prepare() is False
