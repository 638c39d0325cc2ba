"""What a request constrains its output to: one hashable value, the key of the compile cache."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

GrammarKind = Literal["json_schema", "json_object", "regex", "choice", "lark"]
KINDS: tuple[str, ...] = ("json_schema", "json_object", "regex", "choice", "lark")


@dataclass(frozen=True, slots=True)
class GrammarSpec:
    """A constraint on generated text.

    `value` depends on `kind`: a JSON schema as canonical JSON text (`json_schema`), nothing
    (`json_object`: any JSON object), a regular expression (`regex`), a JSON list of strings
    (`choice`), or a grammar in llguidance's Lark dialect, GBNF also accepted (`lark`; Lark
    may embed a JSON schema as `%json { ... }`). Build specs with the class methods, so that
    equal constraints are equal keys.
    """

    kind: GrammarKind
    value: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"grammar kind must be one of {', '.join(KINDS)}, got {self.kind!r}")

    @classmethod
    def json_schema(cls, schema: Any) -> GrammarSpec:
        """A JSON schema (a dict, a bool, or JSON text holding one), in canonical form."""
        if isinstance(schema, str):
            schema = json.loads(schema)
        return cls("json_schema", canonical_json(schema))

    @classmethod
    def json_object(cls) -> GrammarSpec:
        return cls("json_object")

    @classmethod
    def regex(cls, pattern: str) -> GrammarSpec:
        return cls("regex", pattern)

    @classmethod
    def choice(cls, options: list[str]) -> GrammarSpec:
        return cls("choice", json.dumps(list(options), ensure_ascii=False))

    @classmethod
    def lark(cls, grammar: str) -> GrammarSpec:
        return cls("lark", grammar)

    @property
    def size(self) -> int:
        """Bytes of the constraint's text, what the size limit counts."""
        return len(self.value.encode("utf-8", "surrogatepass"))


def canonical_json(value: Any) -> str:
    """Compact JSON text, so that the same schema is the same cache key however it was spaced.

    Keys keep their order: the order of `properties` is the order the output follows.
    """
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
