"""Where the weights go: MAX_MEMORY budgets, accelerate device maps, and the devices they name."""

from __future__ import annotations

import re
from typing import Any

import torch

Budget = dict[int | str, str]
DeviceMap = dict[str, int | str]

# The units accelerate's convert_file_size_to_int reads; it takes a lower-case "b" for bits, so
# the unit is normalized to bytes here.
_UNITS = {"kb": "KB", "mb": "MB", "gb": "GB", "kib": "KiB", "mib": "MiB", "gib": "GiB"}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmg]i?b)$", re.IGNORECASE)
_NAMED_DEVICES = ("cpu", "disk", "mps")


def parse_max_memory(text: str) -> Budget:
    """Parse MAX_MEMORY: `0:20GiB,1:20GiB,cpu:64GiB` -> {0: "20GiB", 1: "20GiB", "cpu": "64GiB"}."""
    budget: Budget = {}
    entries = [e.strip() for e in text.split(",") if e.strip()]
    if not entries:
        raise ValueError("MAX_MEMORY is empty: give device:size pairs such as 0:20GiB,cpu:64GiB")
    for entry in entries:
        device_text, sep, size = (part.strip() for part in entry.rpartition(":"))
        if not sep or not device_text:
            raise ValueError(f"MAX_MEMORY entry {entry!r} is not device:size (such as 0:20GiB or cpu:64GiB)")
        device = _device_key(device_text)
        match = _SIZE.match(size)
        if not match:
            raise ValueError(
                f"MAX_MEMORY size {size!r} for {device_text} is not a size with a unit "
                "(KB, MB, GB, KiB, MiB or GiB), such as 20GiB or 500MB"
            )
        if device in budget:
            raise ValueError(f"MAX_MEMORY names device {device_text} twice")
        budget[device] = match[1] + _UNITS[match[2].lower()]
    return budget


def _device_key(text: str) -> int | str:
    name = text.lower().removeprefix("cuda:")
    if name.isdigit():
        return int(name)
    if name in _NAMED_DEVICES:
        return name
    raise ValueError(f"MAX_MEMORY device {text!r} is not a GPU index, cpu or disk")


def as_budget(max_memory: str | dict[Any, Any] | None) -> dict[int | str, int | str] | None:
    """A budget from MAX_MEMORY text or a dict (sizes as text, or int bytes); None or blank: none."""
    if max_memory is None or (isinstance(max_memory, str) and not max_memory.strip()):
        return None
    if isinstance(max_memory, str):
        return dict(parse_max_memory(max_memory))
    budget: dict[int | str, int | str] = {}
    for key, size in max_memory.items():
        device = _device_key(str(key))
        if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
            budget[device] = size
        else:
            budget.update(parse_max_memory(f"{key}:{size}"))
    return budget


def plan_device_map(
    model_or_config: Any,
    max_memory: str | dict[Any, Any] | None,
    no_split_module_classes: list[str] | None = None,
    *,
    dtype: torch.dtype | None = None,
    bits: int | None = 8,
    trust_remote_code: bool = False,
) -> DeviceMap:
    """Place a model's modules over the budget's devices, GPUs first, balanced, as accelerate would.

    Works from a config alone (on an empty-weights model) and needs no GPU, so a budget may name
    devices this machine does not have. Linear weights are sized as `bits`-bit (None: unquantized)
    and every other tensor in `dtype` (default: the tensor's own), as bitsandbytes will store them.
    """
    from accelerate import infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    model = _empty_model(model_or_config, dtype, trust_remote_code)
    no_split = list(no_split_module_classes or getattr(model, "_no_split_modules", None) or [])
    sizing: dict[str, Any] = {"dtype": dtype, "special_dtypes": _quantized_dtypes(model, bits)}
    budget = as_budget(max_memory)
    # get_balanced_memory converts the sizes in place: hand it a copy.
    balanced = get_balanced_memory(
        model, dict(budget) if budget else None, no_split_module_classes=no_split, **sizing
    )
    plan = infer_auto_device_map(model, max_memory=balanced, no_split_module_classes=no_split, **sizing)
    return dict(plan)


def _empty_model(model_or_config: Any, dtype: torch.dtype | None, trust_remote_code: bool) -> Any:
    """The model itself, or one built from the config with every tensor on the meta device."""
    if isinstance(model_or_config, torch.nn.Module):
        return model_or_config
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    config = model_or_config
    auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    with init_empty_weights():
        model = auto.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)  # type: ignore[no-untyped-call]
    # Tied weights (embedding and head) must land on one device; accelerate finds them by identity.
    model.tie_weights()
    return model


def quantized_modules(model: Any) -> list[str]:
    """Names of the linear layers bitsandbytes replaces (all but the head and tied weights)."""
    from transformers.pytorch_utils import Conv1D
    from transformers.quantizers.base import get_keys_to_not_convert
    from transformers.quantizers.quantizers_utils import should_convert_module

    skip = get_keys_to_not_convert(model)
    return [
        name
        for name, module in model.named_modules()
        if (type(module) is torch.nn.Linear or isinstance(module, Conv1D))
        and should_convert_module(name, skip)
    ]


def _quantized_dtypes(model: Any, bits: int | None) -> dict[str, Any]:
    if bits is None:
        return {}
    from accelerate.utils import CustomDtype

    size: Any = torch.int8 if bits == 8 else CustomDtype.INT4
    return {f"{name}.weight": size for name in quantized_modules(model)}


def device_name(device: int | str | torch.device) -> str:
    """A device-map value as text: 0 -> "cuda:0"; "cpu" and "disk" stay."""
    if isinstance(device, int):
        return f"cuda:{device}"
    return str(device)


def placement_devices(model: Any) -> tuple[str, ...]:
    """Every device that holds some of the model's weights, GPUs first, then cpu and disk."""
    device_map = getattr(model, "hf_device_map", None)
    if device_map:
        names = {device_name(d) for d in device_map.values()}
    else:
        names = {str(p.device) for p in model.parameters()}
    return tuple(sorted(names, key=_device_order))


def _device_order(name: str) -> tuple[int, int, str]:
    kind, _, index = name.partition(":")
    rank = {"cpu": 1, "disk": 2, "meta": 3}.get(kind, 0)
    return rank, int(index) if index.isdigit() else -1, kind


def input_device(model: Any) -> torch.device:
    """Where input ids must go: the device the input embedding runs on."""
    embed = model.get_input_embeddings()
    # A module offloaded to cpu or disk keeps its weights on "meta" until its accelerate hook
    # brings them to the execution device for the forward: that device is the one that counts.
    hook = getattr(embed, "_hf_hook", None)
    for part in getattr(hook, "hooks", None) or [hook]:  # a SequentialHook holds several
        execution = getattr(part, "execution_device", None)
        if execution is not None:
            return torch.device(device_name(execution))
    return torch.device(embed.weight.device)
