"""The `ladle` command and `python -m handler`: parse flags, then serve with uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from handler.config import OPTIONS, ConfigError, Option, Settings, parse_value, settings_from_env

log = logging.getLogger("ladle")


EPILOG = """\
Flags override environment variables, which override the defaults.

Read from the environment only:
  NO_PLAYGROUND=1    do not serve the playground at /
  COMPILE=0|1        hf_bettertransformer: compile the decode step (default: on CUDA only)
  MAX_CONTEXT=N      hf_bettertransformer: tokens per KV cache slot (default 2048 CPU, 4096 GPU)
  MAX_MEMORY=...     hf_int8: per-device budget, e.g. 0:20GiB,1:20GiB,cpu:64GiB
  LOAD_IN_4BIT=1     hf_int8: nf4 weights instead of LLM.int8
  OMP_NUM_THREADS=N  as THREADS, for every OpenMP user in the process
  LADLE_CGROUP_ROOT  where THREADS=0 reads the cgroup CPU quota (default /sys/fs/cgroup)
"""


def build_parser() -> argparse.ArgumentParser:
    """One flag per setting; each help line names its environment variable and default."""
    parser = argparse.ArgumentParser(
        prog="ladle",
        description="Serve a Transformers text-generation model behind an OpenAI-compatible API.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for option in OPTIONS:
        parser.add_argument(
            option.flag, dest=option.field, default=None, metavar=_metavar(option), **_extra(option)
        )
    return parser


def _metavar(option: Option) -> str | None:
    return None if option.kind == "bool" else option.env


def _shown_default(option: Option) -> str:
    if option.default in (None, ()):
        return "unset"
    if option.kind == "bool":
        return str(option.default).lower()
    return str(option.default)


def _extra(option: Option) -> dict[str, Any]:
    help_text = f"{option.help} (env {option.env}; default: {_shown_default(option)})"
    if option.kind == "bool":
        return {"help": help_text, "action": argparse.BooleanOptionalAction}
    return {"help": help_text, "type": _typed(option)}


def _typed(option: Option) -> Any:
    def convert(raw: str) -> Any:
        try:
            return parse_value(option, raw, option.flag)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = option.kind
    return convert


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    """Settings from the environment, overridden by the flags in argv."""
    args = build_parser().parse_args(argv)
    return settings_from_env(overrides=vars(args))


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `ladle` console command."""
    try:
        settings = parse_settings(argv)
    except ConfigError as exc:
        sys.exit(f"ladle: {exc}")
    from handler.asgi.server import serve

    sys.exit(serve(settings))
