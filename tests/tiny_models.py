"""Tiny random models of several architectures, built from configs and saved once per process."""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from tests import tiny_tokenizers

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<s>' + message['role'] + '\n' + message['content'] + '</s>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<s>assistant\n' }}{% endif %}"
)

KINDS = ("llama", "gpt2", "bloom", "t5", "bart")
_VERSION = "1"


def _config(kind: str, tokenizer: Any) -> Any:
    import transformers as tf

    vocab = len(tokenizer)
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if kind == "llama":
        return tf.LlamaConfig(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            **special,
        )
    if kind == "gpt2":
        return tf.GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=1024, **special)
    if kind == "bloom":
        return tf.BloomConfig(vocab_size=vocab, hidden_size=64, n_layer=2, n_head=4, **special)
    if kind == "t5":
        return tf.T5Config(
            vocab_size=vocab,
            d_model=64,
            d_ff=128,
            d_kv=16,
            num_layers=2,
            num_heads=4,
            decoder_start_token_id=tokenizer.pad_token_id,
            **special,
        )
    if kind == "bart":
        return tf.BartConfig(
            vocab_size=vocab,
            d_model=64,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=128,
            decoder_ffn_dim=128,
            max_position_embeddings=1024,
            decoder_start_token_id=tokenizer.eos_token_id,
            forced_eos_token_id=None,
            **special,
        )
    raise ValueError(f"unknown tiny model kind {kind!r}")


def tokenizer_for(kind: str) -> Any:
    """The tiny tokenizer family a kind of model uses in real life."""
    if kind in ("gpt2", "bloom", "bart"):
        return tiny_tokenizers.byte_level_bpe()
    if kind == "t5":
        return tiny_tokenizers.unigram()
    return tiny_tokenizers.sentencepiece_bpe_byte_fallback()


def build(kind: str = "llama", seed: int = 0) -> tuple[Any, Any]:
    """A fresh (model, tokenizer) pair with seeded random weights, in float32."""
    import transformers as tf

    tokenizer = tokenizer_for(kind)
    config = _config(kind, tokenizer)
    torch.manual_seed(seed)
    auto = tf.AutoModelForSeq2SeqLM if config.is_encoder_decoder else tf.AutoModelForCausalLM
    model = auto.from_config(config, dtype=torch.float32)
    model.eval()
    return model, tokenizer


@functools.cache
def tiny_model_dir(kind: str = "llama") -> Path:
    """A saved tiny model with its tokenizer and a chat template, built once per process."""
    root = Path(os.environ.get("LADLE_TEST_MODELS", tempfile.gettempdir())) / f"ladle-tiny-{os.getpid()}"
    path = root / f"{kind}-v{_VERSION}"
    if (path / "config.json").is_file():
        return path
    model, tokenizer = build(kind)
    tokenizer.chat_template = CHAT_TEMPLATE
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def tiny_backend(kind: str = "llama") -> Any:
    """An hf_eager backend over a freshly built tiny model."""
    from backends.hf_eager import HFEagerBackend

    model, tokenizer = build(kind)
    return HFEagerBackend(model, tokenizer, f"tiny-{kind}")
