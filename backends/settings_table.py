"""The configuration table's machinery: a row (`Option`), the one parser of a setting's text, the reader.

Each row is declared once, next to what it configures: `backends/options.py` holds the rows a
backend reads (the fields of `BackendOptions`), `handler/config.py` the server's (the other fields
of `Settings`) and composes both into the one table that the environment, the flags, `ladle --help`
and the README's configuration table come from. A row names its field; the field's dataclass gives
its default and its kind (from the annotation), so a default is written once too.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# The words ladle takes for a switch, in any case; every boolean setting is parsed with these.
TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"0", "false", "no", "off", ""})


class ConfigError(ValueError):
    """A setting has a value ladle cannot use; the message names the variable (or flag)."""


def parse_bool(text: str) -> bool | None:
    """True or False for a switch's text (case and surrounding spaces ignored); None when it is neither."""
    word = text.strip().lower()
    if word in TRUE:
        return True
    if word in FALSE:
        return False
    return None


@dataclass(frozen=True, slots=True)
class Option:
    """One setting: its field, its environment variable, what it means and its bounds.

    `flagged=False` makes a setting read from the environment only (no command-line flag).
    `owner` is the dataclass that holds the field; `rows()` sets it.
    """

    field: str
    env: str
    help: str
    minimum: int | None = None
    choices: tuple[str, ...] = ()
    flagged: bool = True
    owner: type[Any] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")

    @property
    def default(self) -> Any:
        return self._field().default

    @property
    def kind(self) -> str:
        """One of "str", "int", "float", "bool", "list", from the field's annotation."""
        annotation = str(self._field().type)
        for prefix, kind in (("bool", "bool"), ("tuple", "list"), ("int", "int"), ("float", "float")):
            if annotation.startswith(prefix):
                return kind
        return "str"

    def _field(self) -> dataclasses.Field[Any]:
        if self.owner is None:
            raise TypeError(f"option {self.env} is not bound to a dataclass: declare it with rows()")
        return {f.name: f for f in dataclasses.fields(self.owner)}[self.field]


def rows(owner: type[Any], *options: Option) -> tuple[Option, ...]:
    """The options, bound to the dataclass whose fields they set; a field it lacks is a TypeError."""
    names = {f.name for f in dataclasses.fields(owner)}
    missing = [o.field for o in options if o.field not in names]
    if missing:
        raise TypeError(f"{owner.__name__} has no field {missing[0]!r}")
    return tuple(dataclasses.replace(o, owner=owner) for o in options)


def parse_value(option: Option, raw: str, source: str) -> Any:
    """Turn the text of one setting into its typed value; `source` names it in errors.

    An empty text leaves a setting whose default is None (unset) unset, whatever its kind.
    """
    kind = option.kind
    text = raw.strip()
    if option.default is None and not text:
        return None
    if kind == "bool":
        value = parse_bool(text)
        if value is None:
            raise ConfigError(f"{source} must be true or false, got {raw!r}")
        return value
    if kind == "list":
        return tuple(item.strip() for item in text.split(",") if item.strip())
    if kind in ("int", "float"):
        return _number(option, kind, raw, source)
    if option.choices and text.lower() not in option.choices:
        raise ConfigError(f"{source} must be one of {', '.join(option.choices)}, got {raw!r}")
    return text.lower() if option.choices else text


def _number(option: Option, kind: str, raw: str, source: str) -> int | float:
    text = raw.strip()
    try:
        value = int(text) if kind == "int" else float(text)
        if not math.isfinite(value):
            raise ValueError(text)
    except ValueError:
        what = "an integer" if kind == "int" else "a number"
        raise ConfigError(f"{source} must be {what}, got {raw!r}") from None
    if option.minimum is not None and value < option.minimum:
        raise ConfigError(f"{source} must be >= {option.minimum}, got {value}")
    return value


def read_env(options: Iterable[Option], environ: Mapping[str, str]) -> dict[str, Any]:
    """The typed value of every option whose variable the environment sets, by field."""
    return {o.field: parse_value(o, environ[o.env], o.env) for o in options if o.env in environ}
