"""The `ladle` command and `python -m handler`: parse flags, then serve with uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from backends.options import BACKEND_OPTIONS
from handler.config import (
    OPTIONS,
    SERVER_OPTIONS,
    ConfigError,
    Option,
    Settings,
    parse_value,
    settings_from_env,
)

log = logging.getLogger("ladle")


def build_parser() -> argparse.ArgumentParser:
    """One flag per setting of the table; each help line names its environment variable and default."""
    parser = argparse.ArgumentParser(
        prog="ladle",
        description="Serve a Transformers text-generation model behind an OpenAI-compatible API.",
        epilog=epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    groups = (
        (parser.add_argument_group("server"), SERVER_OPTIONS),
        (
            parser.add_argument_group("model and backend (load_model()'s keyword arguments too)"),
            BACKEND_OPTIONS,
        ),
    )
    for group, options in groups:
        for option in options:
            if option.flagged:
                group.add_argument(
                    option.flag, dest=option.field, default=None, metavar=_metavar(option), **_extra(option)
                )
    return parser


def epilog() -> str:
    """Precedence, then the settings read from the environment only, from the table too."""
    lines = ["Flags override environment variables, which override the defaults.", ""]
    lines.append("Read from the environment only:")
    for option in OPTIONS:
        if not option.flagged:
            lines.append(f"  {option.env:<18} {_help_line(option)}")
    lines.append(
        f"  {'OMP_NUM_THREADS':<18} as THREADS, for every OpenMP user in the process (when THREADS is 0)"
    )
    return "\n".join(lines) + "\n"


def _metavar(option: Option) -> str | None:
    return None if option.kind == "bool" else option.env


def _shown_default(option: Option) -> str:
    if option.default in (None, ()):
        return "unset"
    if option.kind == "bool":
        return str(option.default).lower()
    return str(option.default)


def _help_line(option: Option) -> str:
    return f"{option.help} (env {option.env}; default: {_shown_default(option)})"


def _extra(option: Option) -> dict[str, Any]:
    help_text = _help_line(option)
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
