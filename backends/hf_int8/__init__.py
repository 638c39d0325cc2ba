"""hf_int8: bitsandbytes LLM.int8 (or nf4) weights, placed by accelerate over every visible GPU.

MAX_MEMORY (such as `0:20GiB,1:20GiB,cpu:64GiB`) caps what each device holds, so a model larger
than one GPU is split across all of them, and offloaded to the CPU (or disk) when the budget
names it. LOAD_IN_4BIT=1 loads nf4 weights instead of int8. bitsandbytes also runs on the CPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from backends.errors import ModelLoadError
from backends.hf_int8.placement import (
    DeviceMap,
    as_budget,
    device_name,
    input_device,
    parse_max_memory,
    placement_devices,
    plan_device_map,
)
from backends.hf_int8.quantization import (
    bitsandbytes_problem,
    quantization_config,
    quiet_bitsandbytes,
    weight_bytes,
)
from backends.options import BackendOptions
from backends.runner import loading
from backends.runner.transformers_runner import TransformersRunner

log = logging.getLogger("ladle.hf_int8")


class HFInt8Backend(TransformersRunner):
    """The shared runner over a bitsandbytes-quantized model that accelerate may split over devices."""

    name = "hf_int8"

    def __init__(self, model: Any, tokenizer: Any, model_name: str = "model", weights: str = "int8") -> None:
        super().__init__(model, tokenizer, model_name)
        quiet_bitsandbytes()
        # The runner takes the first parameter's device, which for a split model may be "meta"
        # (offloaded) or another GPU than the one the input embedding runs on.
        self.device = input_device(model)
        self.info = dataclasses.replace(
            self.info, device=str(self.device), devices=placement_devices(model), dtype=weights
        )


def load(source: loading.ModelSource, options: BackendOptions) -> HFInt8Backend:
    """Load a model with 8-bit (or nf4) weights over the devices max_memory (MAX_MEMORY) allows.

    With no device_map (or "auto"/"balanced"), the modules are balanced over every GPU the budget
    names (every visible one when there is no budget), then the CPU and disk if it names them.
    `device` (DEVICE) "cpu" or "cuda:N" puts the whole model there instead; "cuda" insists on GPUs.
    It reads dtype, device, trust_remote_code, max_memory, load_in_4bit and device_map.
    """
    budget = _budget(options.max_memory)
    four_bit, trust_remote_code = options.load_in_4bit, options.trust_remote_code
    pinned = _pinned_device(options.device)
    device_map = options.device_map
    if device_map is None and pinned is not None:
        device_map = {"": pinned}
    gpus = 0 if pinned == "cpu" else torch.cuda.device_count()
    _check_gpus(budget, gpus)
    main = "cuda" if gpus else "cpu"
    problem = bitsandbytes_problem(main)
    if problem:
        raise ModelLoadError(f"hf_int8: {problem}")
    torch_dtype = loading.pick_dtype(options.dtype, main)
    if device_map is None or device_map in ("auto", "balanced"):
        device_map = _plan(source, budget, torch_dtype, four_bit, trust_remote_code)
    # bitsandbytes quantizes only modules that stay on an accelerator (or all of them on a
    # CPU-only placement); transformers refuses a mixed placement unless told to keep the
    # offloaded ones unquantized.
    offload = isinstance(device_map, dict) and _offloads(device_map)
    kwargs: dict[str, Any] = {
        "dtype": torch_dtype,
        "device_map": device_map,
        "quantization_config": quantization_config(four_bit, torch_dtype, cpu_offload=offload),
    }
    if isinstance(device_map, str) and budget is not None:
        kwargs["max_memory"] = budget
    if isinstance(device_map, str) or "disk" in device_map.values():
        kwargs["offload_folder"] = str(_offload_folder(source))  # made only if a module goes there
    model, tokenizer = loading.load_pretrained(source, trust_remote_code, **kwargs)
    weights = "nf4" if four_bit else "int8"
    backend = HFInt8Backend(model, tokenizer, source.name, weights=weights)
    _log_loaded(backend, source.name, torch_dtype, offload)
    return backend


def _plan(
    source: loading.ModelSource,
    budget: dict[int | str, int | str] | None,
    torch_dtype: torch.dtype,
    four_bit: bool,
    trust_remote_code: bool,
) -> DeviceMap:
    config = loading.load_config(source, trust_remote_code)
    try:
        return plan_device_map(
            config, budget, dtype=torch_dtype, bits=4 if four_bit else 8, trust_remote_code=trust_remote_code
        )
    except ValueError as exc:
        raise ModelLoadError(f"hf_int8: cannot place {source.name} within MAX_MEMORY: {exc}") from exc


def _log_loaded(backend: HFInt8Backend, name: str, torch_dtype: torch.dtype, offload: bool) -> None:
    compute = str(torch_dtype).removeprefix("torch.")
    if offload:
        log.warning("hf_int8: modules offloaded to cpu or disk keep %s weights, unquantized", compute)
    log.info(
        "hf_int8: %s as %s weights (%s compute), %.1f MiB, on %s",
        name,
        backend.info.dtype,
        compute,
        weight_bytes(backend.model) / 2**20,
        _placement_summary(backend.model),
    )


def weight_ratio(source: loading.ModelSource, device: str = "cuda", load_in_4bit: bool = False) -> float:
    """Weight bytes of the model quantized over its weight bytes in float16, both loaded on `device`."""
    place: int | str = 0 if device == "cuda" else device
    half, _ = loading.load_pretrained(source, dtype=torch.float16, device_map={"": place})
    half_bytes = weight_bytes(half)
    del half
    options = BackendOptions(dtype="float16", load_in_4bit=load_in_4bit, device_map={"": place})
    quantized = load(source, options)
    return weight_bytes(quantized.model) / half_bytes


def _budget(max_memory: str | dict[Any, Any] | None) -> dict[int | str, int | str] | None:
    """The max_memory option (MAX_MEMORY) as a budget; a bad one fails the load with one line."""
    try:
        return as_budget(max_memory)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from exc


def _pinned_device(device: str | None) -> int | str | None:
    """Where DEVICE puts the whole model: "cpu", a GPU index, or None to spread over every GPU."""
    text = (device or "auto").strip().lower()
    if text == "auto":
        return None
    chosen = loading.choose_device(text)  # fails in one line where the CUDA asked for does not work
    if chosen == "cpu":
        return "cpu"
    return None if chosen == "cuda" else int(chosen.split(":", 1)[1])


def _check_gpus(budget: dict[int | str, int | str] | None, gpus: int) -> None:
    missing = sorted(k for k in budget or {} if isinstance(k, int) and k >= gpus)
    if missing:
        raise ModelLoadError(
            f"MAX_MEMORY names GPU {missing[0]} but {gpus} GPU{'s are' if gpus != 1 else ' is'} visible"
        )


def _offloads(device_map: dict[str, Any]) -> bool:
    """Whether some modules sit on cpu or disk while others run elsewhere."""
    places = {device_name(d) for d in device_map.values()}
    return places != {"cpu"} and bool(places & {"cpu", "disk"})


def _offload_folder(source: loading.ModelSource) -> Path:
    key = hashlib.sha256(source.path.encode()).hexdigest()[:12]
    return loading.default_cache_dir() / "offload" / f"{source.name.replace('/', '--')}-{key}"


def _placement_summary(model: Any) -> str:
    device_map = getattr(model, "hf_device_map", None) or {"": str(next(model.parameters()).device)}
    counts = Counter(device_name(d) for d in device_map.values())
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{d} ({n} modules)" for d, n in counts.items())


__all__ = [
    "HFInt8Backend",
    "bitsandbytes_problem",
    "load",
    "parse_max_memory",
    "plan_device_map",
    "weight_bytes",
    "weight_ratio",
]
