"""OpenAI's `response_format` and vLLM's `structured_outputs`, as plain dicts, to a GrammarSpec.

The HTTP layer validates their shapes first; the library API passes the user's dicts here
directly. Errors name the request field they came from.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from backends.errors import InvalidRequestError
from backends.grammar.spec import GrammarSpec

STRUCTURED_KEYS = ("json", "regex", "choice", "grammar", "json_object")


def from_response_format(
    value: Mapping[str, Any] | None, param: str = "response_format"
) -> GrammarSpec | None:
    """`{"type": "text" | "json_object" | "json_schema", "json_schema": {...}}` -> a spec (None for text)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidRequestError("response_format must be an object", param=param)
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return GrammarSpec.json_object()
    if kind != "json_schema":
        raise InvalidRequestError(
            f"response_format.type must be text, json_object or json_schema, got {kind!r}", param=param
        )
    block = value.get("json_schema")
    if not isinstance(block, Mapping) or not isinstance(block.get("name"), str):
        raise InvalidRequestError(
            "response_format json_schema needs a json_schema object with a name", param=param
        )
    schema = block.get("schema")
    if schema is None:  # OpenAI: a missing schema is any JSON object
        return GrammarSpec.json_object()
    return _schema(schema, param)


def from_structured_outputs(
    value: Mapping[str, Any] | None, param: str = "structured_outputs"
) -> GrammarSpec | None:
    """vLLM's object: exactly one of `json` (a schema), `regex`, `choice`, `grammar`, `json_object`."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidRequestError("structured_outputs must be an object", param=param)
    given = [k for k in STRUCTURED_KEYS if value.get(k) not in (None, False)]
    if len(given) != 1:
        raise InvalidRequestError(
            f"structured_outputs needs exactly one of {', '.join(STRUCTURED_KEYS)}; got {len(given)}",
            param=param,
        )
    key = given[0]
    item = value[key]
    if key == "json":
        return _schema(item, param)
    if key == "json_object":
        return GrammarSpec.json_object()
    if key == "choice":
        if not isinstance(item, list) or not item or not all(isinstance(c, str) and c for c in item):
            raise InvalidRequestError(
                "structured_outputs.choice must be a non-empty list of non-empty strings", param=param
            )
        return GrammarSpec.choice(item)
    if not isinstance(item, str) or not item:
        raise InvalidRequestError(f"structured_outputs.{key} must be a non-empty string", param=param)
    return GrammarSpec.regex(item) if key == "regex" else GrammarSpec.lark(item)


def _schema(schema: Any, param: str) -> GrammarSpec:
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError:
            raise InvalidRequestError("the JSON schema is not valid JSON", param=param) from None
    if not isinstance(schema, (Mapping, bool)):
        raise InvalidRequestError("the JSON schema must be an object", param=param)
    return GrammarSpec.json_schema(schema)
