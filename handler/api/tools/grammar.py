"""The grammar (llguidance's Lark dialect) that keeps a model's tool calls well-formed.

Every call has one shape, whatever the chat template: `<tool_call>`, a newline, the compact JSON
object `{"name":"<function>","arguments":{...}}` whose arguments validate against the function's
`parameters` schema, a newline, `</tool_call>`. `required` and a named function make the whole
output calls; `auto` lets the model write text, and once it writes `<tool_call>` the rest of the
output is held to calls (a lazy lexeme ends the text at the first `<tool_call>`, and the text with
no call cannot contain one). With a JSON `response_format` too, `auto` answers in that JSON or
in calls; under `required` or a named function the output is the calls, as with OpenAI.
"""

from __future__ import annotations

import json
from typing import Any

from backends.grammar import GrammarSpec
from handler.api.errors import APIError
from handler.api.tools.plan import FunctionDefinition, ToolPlan, arguments_schema

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
# Compact JSON, no free whitespace: a small or random model cannot pad a call forever.
_COMPACT = {"whitespace_flexible": False, "lenient": False}


def tool_grammar(plan: ToolPlan, answer: dict[str, Any] | None = None) -> str | None:
    """The Lark grammar for this plan's output; None when calls are not allowed (`none`).

    `answer` is the JSON schema an answer without calls must follow (a JSON response_format).
    """
    if not plan.calls_allowed:
        return None
    functions = plan.callable_functions
    lines = ["%llguidance {}"]
    more = ' ("\\n" call)*' if plan.parallel and plan.named is None else ""
    if plan.forced:
        lines.append(f"start: call{more}")
    elif answer is not None:
        lines += [f"start: answer | call{more}", f"answer: %json {json.dumps(_compact(answer))}"]
    else:
        # One text with no call in it, or text up to the first call and then calls only.
        more_open = ' ("\\n" call)*' if plan.parallel else ""
        lines += [
            f"start: TEXT | head call_body{more_open}",
            "TEXT: /(?s:.*)/ & ~/(?s:.*)<tool_call>(?s:.*)/",
            "head[lazy]: /(?s:.*)<tool_call>/",
        ]
    lines += [
        f"call: {json.dumps(CALL_OPEN)} call_body",
        f"call_body: {json.dumps(chr(10))} fn {json.dumps(chr(10) + CALL_CLOSE)}",
        "fn: " + " | ".join(f"fn_{index}" for index in range(len(functions))),
    ]
    lines += [f"fn_{index}: %json {json.dumps(call_schema(f))}" for index, f in enumerate(functions)]
    return "\n".join(lines) + "\n"


def tool_spec(plan: ToolPlan, answer: GrammarSpec | None, answer_param: str | None) -> GrammarSpec | None:
    """The constraint of a request with these tools and `answer`, the one it already has (from
    `answer_param`); `answer` itself when calls are not allowed."""
    if not plan.calls_allowed:
        return answer
    schema: dict[str, Any] | None = None
    if answer is not None and not plan.forced:
        if answer.kind == "json_object":
            schema = {"type": "object"}
        elif answer.kind == "json_schema":
            value = json.loads(answer.value)
            schema = value if isinstance(value, dict) else {}
        else:
            raise APIError(
                f"a {answer.kind} constraint cannot be combined with tools under tool_choice auto; "
                "only a JSON response_format can",
                param=answer_param,
            )
    grammar = tool_grammar(plan, schema)
    return None if grammar is None else GrammarSpec.lark(grammar)


def _compact(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "x-guidance": _COMPACT}


def call_schema(function: FunctionDefinition) -> dict[str, Any]:
    """The JSON schema of one call's object: the function's name, then its arguments.

    The arguments schema moves one level down, so its definitions move up to the new root,
    where its `#/$defs/...` references (pydantic writes them for nested models) still point.
    """
    arguments = dict(arguments_schema(function))
    arguments.setdefault("type", "object")  # arguments are an object, even where the schema omits it
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"name": {"const": function.name}, "arguments": arguments},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }
    for key in ("$defs", "definitions"):
        if key in arguments:
            schema[key] = arguments.pop(key)
    return _compact(schema)
