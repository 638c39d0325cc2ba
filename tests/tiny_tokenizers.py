"""Tiny but real fast tokenizers, trained in-process on a fixed multilingual corpus."""

from __future__ import annotations

import functools
import json

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = (UNK, BOS, EOS, PAD)

# Several scripts, accents, CJK, ZWJ emoji, flags and a decomposed accent (e + U+0301), so that the
# rarer characters end up split across byte tokens.
CORPUS: tuple[str, ...] = (
    "The capital of France is Paris. The capital of Germany is Berlin.",
    "Hello world! How are you today? I am fine, thank you very much.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps.",
    "Streaming text one token at a time must never lose a single character.",
    "Numbers like 1234, 56.78 and 90% appear in text; so do (brackets) and 'quotes'.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "Le café est très chaud. L'élève a réussi l'examen à Noël, où il a mangé une crêpe.",
    "Ça va ? Voilà une phrase française avec des accents : é, è, ê, à, ù, ç, ô, î.",
    "Der Bär läuft über die Straße. Grüße aus München und Köln!",
    "Schöne Grüße, die Äpfel sind süß und die Bäume sind groß.",
    "你好，世界！今天天气很好。我们一起去北京吧。",
    "中文分词是一个有趣的问题。机器学习和人工智能。",
    "こんにちは、世界。東京は日本の首都です。ありがとうございます。",
    "カタカナとひらがなと漢字を使います。",
    "Family: 👨‍👩‍👧 and 👩‍💻 at work, thumbs up 👍🏽, party 🎉 and a heart ❤️.",
    "Flags: 🇫🇷 🇩🇪 🇯🇵 🇺🇸 and a rainbow flag 🏳️‍🌈.",
    "Combining marks: cafe\u0301, nai\u0308ve, Zoe\u0308 and n\u0303 in man\u0303ana.",
    "Mixed: Paris 巴黎 パリ 🇫🇷 cafe\u0301 Straße 👨‍👩‍👧 end.",
)

SP_ALPHABET = "".join(chr(c) for c in range(0x20, 0x7F)) + "\n▁éèàçßäöü你好世界\u200d"


def _wrap(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    """Wraps a backend tokenizer with the four special tokens set."""
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token=UNK, bos_token=BOS, eos_token=EOS, pad_token=PAD
    )
    assert wrapped.vocab_size == len(wrapped), "special tokens must live inside the trained vocab"
    return wrapped


@functools.cache
def byte_level_bpe() -> PreTrainedTokenizerFast:
    """GPT-2 style: ByteLevel pre-tokenizer and decoder over a BPE model."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return _wrap(tok)


@functools.cache
def sentencepiece_bpe_byte_fallback() -> PreTrainedTokenizerFast:
    """Llama style: Metaspace, BPE with byte fallback, Replace+ByteFallback+Fuse+Strip decoder."""
    draft = Tokenizer(models.BPE(unk_token=UNK))
    # Trained split on whitespace, as sentencepiece does, so that no learnt piece spans two words.
    draft.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    # A fixed alphabet (the trainer breaks frequency ties at random) that leaves most CJK, emoji and
    # combining marks to the byte-fallback path.
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=list(SP_ALPHABET),
        limit_alphabet=len(SP_ALPHABET),
        show_progress=False,
    )
    draft.train_from_iterator(CORPUS, trainer=trainer)
    trained = json.loads(draft.to_str())["model"]
    # Llama's layout: special tokens, then the 256 byte tokens, then the learnt pieces.
    vocab: dict[str, int] = {}
    for piece in [*SPECIAL_TOKENS, *(f"<0x{b:02X}>" for b in range(256))]:
        vocab[piece] = len(vocab)
    for piece, _ in sorted(trained["vocab"].items(), key=lambda item: item[1]):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=UNK, fuse_unk=True, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return _wrap(tok)


@functools.cache
def unigram() -> PreTrainedTokenizerFast:
    """T5 style: Metaspace pre-tokenizer and decoder over a Unigram model."""
    draft = Tokenizer(models.Unigram())
    draft.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=500, special_tokens=list(SPECIAL_TOKENS), unk_token=UNK, show_progress=False
    )
    draft.train_from_iterator(CORPUS, trainer=trainer)
    trained = json.loads(draft.to_str())["model"]["vocab"]
    # The trainer leaves float noise and gives the characters it adds at the end scores in hash order:
    # coarse rounding and a sort make the model the same in every process.
    pieces = sorted(
        ((piece, round(score, 1)) for piece, score in trained if piece not in SPECIAL_TOKENS),
        key=lambda item: (-item[1], item[0]),
    )
    vocab = [(piece, 0.0) for piece in SPECIAL_TOKENS] + pieces
    tok = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return _wrap(tok)


ALL_BUILDERS = (byte_level_bpe, sentencepiece_bpe_byte_fallback, unigram)
