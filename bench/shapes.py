"""Model shapes to benchmark with random weights, and the checkpoints built from them.

A GPU machine may have no network, so the realistic models of a benchmark are built from a
config with random weights: speed does not depend on the weights' values as long as
generation is forced to its full length. The tokenizer is a word-level one with one word per
id, so any vocabulary size works and decoding costs about what a real tokenizer's does.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("ladle.bench")

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2

# Llama-family shapes. smollm2-135m is the default model's shape; llama-1b/3b/8b are Llama 3.x's.
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 512,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": True,
    },
    "smollm2-135m": {
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "vocab_size": 49152,
        "max_position_embeddings": 8192,
        "rope_theta": 100000.0,
        "tie_word_embeddings": True,
    },
    "llama-1b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 8192,
        "rope_theta": 500000.0,
        "tie_word_embeddings": True,
    },
    "llama-3b": {
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 28,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 8192,
        "rope_theta": 500000.0,
        "tie_word_embeddings": True,
    },
    "llama-8b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 8192,
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
    },
}


def shape_config(name: str) -> dict[str, Any]:
    """The config keys of a named shape, or of a JSON config file (a path ending in .json)."""
    if name.endswith(".json"):
        data: dict[str, Any] = json.loads(Path(name).read_text())
        data.pop("architectures", None)
        data.pop("model_type", None)
        return data
    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}: use one of {', '.join(SHAPES)} or a config .json file")
    return dict(SHAPES[name])


def word_tokenizer(vocab_size: int) -> Any:
    """A fast tokenizer with exactly `vocab_size` ids: three specials, then words w3, w4, ..."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"w{i}": i for i in range(len(SPECIAL_TOKENS), vocab_size)})
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<unk>"
    )


def build_checkpoint(shape: str, directory: Path, dtype: str = "float32", device: str = "cpu") -> Path:
    """Build a Llama-architecture model of `shape` with seeded random weights and save it with a
    tokenizer to `directory`, where `load_model(str(directory), ...)` reads it like any checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0, **shape_config(shape))
    torch.manual_seed(0)
    # Random init on the target device: initializing billions of weights on a CPU takes minutes.
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    word_tokenizer(config.vocab_size).save_pretrained(str(directory))
    log.info("built %s (%s, %s) in %s", shape, dtype, device, directory)
    del model
    return directory
