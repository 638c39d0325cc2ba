"""Tools in the prompt: the chat template's own rendering where it has one, ladle's fallback where not.

A template that reads the `tools` variable renders the definitions itself (Transformers passes
them); one that reads `tool_calls` renders the history's calls. For a template without either
(SmolLM2's), the fallback writes the definitions into the system turn, a call in the history as
the text the model is asked to write (`<tool_call>` JSON `</tool_call>`), and tool results as a
user turn of `<tool_response>` blocks, so that every chat template can carry a tool conversation.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from handler.api.tools.grammar import CALL_CLOSE, CALL_OPEN

FALLBACK_INSTRUCTIONS = (
    "You can call functions to answer. Their definitions, as JSON schemas:\n"
    "<tools>\n{tools}\n</tools>\n"
    "To call a function, write one JSON object with its name and its arguments between "
    f"{CALL_OPEN} and {CALL_CLOSE} tags, one call per pair of tags:\n"
    f'{CALL_OPEN}\n{{"name": <function name>, "arguments": <arguments object>}}\n{CALL_CLOSE}\n'
    "Each result comes back to you in a <tool_response> tag."
)


@dataclass(frozen=True, slots=True)
class TemplateSupport:
    """What a chat template renders by itself: tool definitions, and calls in the history."""

    tools: bool
    history: bool

    @classmethod
    def of(cls, template: str) -> TemplateSupport:
        from jinja2 import Environment, TemplateSyntaxError, meta

        try:
            # Transformers renders with loop controls on; its own tags (`generation`) fail to parse here.
            parsed = Environment(extensions=["jinja2.ext.loopcontrols"]).parse(template)
            reads_tools = "tools" in meta.find_undeclared_variables(parsed)
        except TemplateSyntaxError:
            reads_tools = re.search(r"\btools\b", template) is not None
        return cls(tools=reads_tools, history="tool_calls" in template)


def fallback_instructions(tools: list[dict[str, Any]]) -> str:
    """The system text that declares the tools to a template with no tool support."""
    return FALLBACK_INSTRUCTIONS.replace(
        "{tools}", "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    )


def with_tools(
    conversation: list[dict[str, Any]], tools: list[dict[str, Any]] | None, support: TemplateSupport
) -> list[dict[str, Any]]:
    """The conversation as this template should see it: tool history and definitions in its reach."""
    if support.history:
        conversation = [_native_calls(message) for message in conversation]
    else:
        conversation = _fallback_history(conversation)
    if tools and not support.tools:
        conversation = _with_system(conversation, fallback_instructions(tools))
    return conversation


def _native_calls(message: dict[str, Any]) -> dict[str, Any]:
    """Arguments as objects: templates write them with `tojson`, which would quote a JSON string."""
    calls = message.get("tool_calls")
    if not calls:
        return message
    return {**message, "tool_calls": [_call_with_object(call) for call in calls]}


def _call_with_object(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
        return call
    try:
        arguments = json.loads(function["arguments"])
    except ValueError:
        return call
    return {**call, "function": {**function, "arguments": arguments}}


def call_text(call: dict[str, Any]) -> str:
    """One call of the history as the fallback asks the model to write it."""
    function = _call_with_object(call).get("function") or {}
    body = {"name": function.get("name", ""), "arguments": function.get("arguments", {})}
    return f"{CALL_OPEN}\n{json.dumps(body, ensure_ascii=False, separators=(',', ':'))}\n{CALL_CLOSE}"


def _fallback_history(conversation: list[dict[str, Any]]) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = []
    for message in conversation:
        if message["role"] == "assistant" and message.get("tool_calls"):
            parts = [message["content"]] if message.get("content") else []
            parts += [call_text(call) for call in message["tool_calls"]]
            result.append({"role": "assistant", "content": "\n".join(parts)})
        elif message["role"] == "tool":
            response = f"<tool_response>\n{message['content']}\n</tool_response>"
            previous = result[-1] if result else None
            if previous is not None and previous.get("from_tools"):
                previous["content"] += "\n" + response
            else:
                result.append({"role": "user", "content": response, "from_tools": True})
        else:
            result.append(message)
    return [{k: v for k, v in message.items() if k != "from_tools"} for message in result]


def _with_system(conversation: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    if conversation and conversation[0]["role"] == "system":
        first = conversation[0]
        content = f"{first['content']}\n\n{text}" if first["content"] else text
        return [{**first, "content": content}, *conversation[1:]]
    return [{"role": "system", "content": text}, *conversation]
