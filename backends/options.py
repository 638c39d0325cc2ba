"""What a backend is loaded with (`BackendOptions`), and the rows of the configuration table that set it.

A backend reads no environment variable: the server reads these rows once into its `Settings`
(which extend `BackendOptions`), a library caller passes them as keyword arguments to
`load_model()`, which reads the ones not given from the environment through the same rows.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from backends.settings_table import Option, read_env, rows


@dataclass(frozen=True, slots=True)
class BackendOptions:
    """Every option a backend reads; each backend takes the ones that concern it."""

    dtype: str | None = None
    device: str = "auto"
    trust_remote_code: bool = False
    max_batch_size: int = 16
    compile: bool | None = None
    max_context: int | None = None
    max_memory: str | dict[Any, Any] | None = None
    load_in_4bit: bool = False
    # hf_int8 only, from Python only: an accelerate device map instead of the planned placement.
    device_map: str | dict[str, Any] | None = None

    @classmethod
    def copy_of(cls, options: BackendOptions) -> BackendOptions:
        """Just the backend options of `options` (the server's Settings extend this class)."""
        return cls(**{f.name: getattr(options, f.name) for f in dataclasses.fields(cls)})


BACKEND_OPTIONS: tuple[Option, ...] = rows(
    BackendOptions,
    Option("dtype", "DTYPE", "weight dtype (float32, float16, bfloat16); unset picks one for the device"),
    Option(
        "device", "DEVICE", "where the model runs: auto, cpu, cuda or cuda:N; CUDA that does not work exits"
    ),
    Option("trust_remote_code", "TRUST_REMOTE_CODE", "allow model code from the model's repository"),
    Option("max_batch_size", "MAX_BATCH_SIZE", "sequences the engine runs in one batch", 1),
    Option(
        "compile",
        "COMPILE",
        "hf_bettertransformer: compile the decode step with torch.compile; unset compiles on CUDA only",
    ),
    Option(
        "max_context",
        "MAX_CONTEXT",
        "hf_bettertransformer: tokens per KV cache slot; unset is 4096 (or the model's sliding window)",
        2,
    ),
    Option(
        "max_memory",
        "MAX_MEMORY",
        "hf_int8: per-device budget such as 0:20GiB,1:20GiB,cpu:64GiB; unset spreads over every visible GPU",
    ),
    Option("load_in_4bit", "LOAD_IN_4BIT", "hf_int8: nf4 weights instead of LLM.int8"),
)

_FIELDS = frozenset(f.name for f in dataclasses.fields(BackendOptions))


def backend_options(
    environ: Mapping[str, str] | None = None, base: BackendOptions | None = None, **given: Any
) -> BackendOptions:
    """The options given (None counts as not given), else `base`'s, else the environment's, else the defaults.

    Without `base`, the environment is read through the rows above; `environ` defaults to the
    process's, which is where a library caller's defaults come from, as the server's do.
    """
    unknown = sorted(set(given) - _FIELDS)
    if unknown:
        raise TypeError(f"unknown backend option {unknown[0]!r}; options are {', '.join(sorted(_FIELDS))}")
    if base is None:
        base = BackendOptions(**read_env(BACKEND_OPTIONS, os.environ if environ is None else environ))
    return dataclasses.replace(base, **{name: value for name, value in given.items() if value is not None})
