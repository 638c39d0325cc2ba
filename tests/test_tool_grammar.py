"""The tool grammar: its Lark text, and what llguidance lets through under it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from handler.api.errors import APIError
from handler.api.requests import ChatCompletionRequest
from handler.api.tools.grammar import call_schema, tool_grammar
from handler.api.tools.plan import ToolPlan
from handler.config import Settings
from tests import tiny_tokenizers
from tests.test_tools import TIME, USER, WEATHER, plan


def test_grammar_text_per_choice() -> None:
    auto = tool_grammar(plan(tools=[WEATHER, TIME]) or _no_plan())
    assert auto is not None and auto.startswith(
        '%llguidance {}\nstart: TEXT | head call_body ("\\n" call)*\n'
    )
    assert "fn: fn_0 | fn_1\n" in auto
    named = tool_grammar(
        plan(tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_time"}})
        or _no_plan()
    )
    assert (
        named is not None
        and "start: call\n" in named
        and "fn: fn_0\n" in named
        and "get_weather" not in named
    )
    single = tool_grammar(
        plan(tools=[WEATHER], tool_choice="required", parallel_tool_calls=False) or _no_plan()
    )
    assert single is not None and "start: call\n" in single
    parallel = tool_grammar(plan(tools=[WEATHER], tool_choice="required") or _no_plan())
    assert parallel is not None and 'start: call ("\\n" call)*\n' in parallel


def test_call_schema_moves_definitions_to_its_root() -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "messages": USER,
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "f",
                        "parameters": {
                            "properties": {"p": {"$ref": "#/$defs/P"}},
                            "$defs": {"P": {"type": "integer"}},
                        },
                    },
                }
            ],
        }
    )
    result = request.tool_plan(Settings().tool_max_schema_size)
    assert result is not None
    schema = call_schema(result.functions[0])
    assert schema["$defs"] == {"P": {"type": "integer"}} and "$defs" not in schema["properties"]["arguments"]
    assert list(schema["properties"]) == ["name", "arguments"] and schema["properties"]["name"] == {
        "const": "f"
    }


def _no_plan() -> ToolPlan:
    raise AssertionError("expected a tool plan")


def _matcher_for(grammar: str) -> Any:
    llguidance = pytest.importorskip("llguidance")
    hf = pytest.importorskip("llguidance.hf")

    tokenizer = tiny_tokenizers.byte_level_bpe()
    lltok = hf.from_tokenizer(tokenizer)
    compiled = llguidance.LLMatcher.grammar_from_lark(grammar)
    assert llguidance.LLMatcher.validate_grammar(compiled, lltok) == ""

    def accepts(text: str) -> bool:
        matcher = llguidance.LLMatcher(lltok, compiled)
        ids = tokenizer(text, add_special_tokens=False).input_ids
        return bool(matcher.consume_tokens(ids)) and not matcher.is_error() and matcher.is_accepting()

    return accepts


def call(name: str, arguments: dict[str, Any]) -> str:
    body = json.dumps({"name": name, "arguments": arguments}, separators=(",", ":"))
    return f"<tool_call>\n{body}\n</tool_call>"


PARIS = call("get_weather", {"city": "Paris", "unit": "c"})


def test_auto_grammar_allows_text_and_holds_a_started_call_to_the_schema() -> None:
    accepts = _matcher_for(tool_grammar(plan(tools=[WEATHER, TIME]) or _no_plan()) or "")
    assert accepts("It is sunny.")
    assert accepts("Let me look.\n" + PARIS)
    assert accepts(PARIS + "\n" + call("get_time", {}))
    assert not accepts("Let me look.<tool_call>\nsunny")  # a started call must be a call
    assert not accepts(call("get_weather", {"city": "Paris", "unit": "k"}))  # enum
    assert not accepts(call("get_weather", {"city": "Paris"}))  # required
    assert not accepts(call("launch", {}))  # undeclared
    assert not accepts(PARIS + " and more text")


def test_forced_grammars_allow_only_calls() -> None:
    required = _matcher_for(
        tool_grammar(plan(tools=[WEATHER, TIME], tool_choice="required") or _no_plan()) or ""
    )
    assert required(PARIS) and required(PARIS + "\n" + call("get_time", {}))
    assert not required("It is sunny.") and not required("")
    single = _matcher_for(
        tool_grammar(
            plan(tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False) or _no_plan()
        )
        or ""
    )
    assert single(PARIS) and not single(PARIS + "\n" + call("get_time", {}))
    named = _matcher_for(
        tool_grammar(
            plan(tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_time"}})
            or _no_plan()
        )
        or ""
    )
    assert named(call("get_time", {})) and not named(PARIS)


def test_auto_with_a_json_answer_format_answers_in_json_or_calls() -> None:
    answer = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    accepts = _matcher_for(tool_grammar(plan(tools=[WEATHER]) or _no_plan(), answer) or "")
    assert accepts('{"ok":true}') and accepts(PARIS)
    assert not accepts("It is sunny.") and not accepts('{"ok":1}') and not accepts('{"ok":true}' + PARIS)


def test_tool_spec_combines_with_json_formats_only() -> None:
    from backends.grammar import GrammarSpec
    from handler.api.tools.grammar import tool_spec

    auto = plan(tools=[WEATHER]) or _no_plan()
    combined = tool_spec(auto, GrammarSpec.json_object(), "response_format")
    assert (
        combined is not None
        and combined.kind == "lark"
        and 'answer: %json {"type": "object"' in combined.value
    )
    forced = plan(tools=[WEATHER], tool_choice="required") or _no_plan()
    assert tool_spec(forced, GrammarSpec.json_object(), "response_format") == tool_spec(forced, None, None)
    none = plan(tools=[WEATHER], tool_choice="none") or _no_plan()
    assert tool_spec(none, GrammarSpec.regex("a+"), "structured_outputs") == GrammarSpec.regex("a+")
    with pytest.raises(APIError) as info:
        tool_spec(auto, GrammarSpec.regex("a+"), "structured_outputs")
    assert info.value.param == "structured_outputs"
