"""Tool calling without a server: validation into a ToolPlan, prompt rendering, parsing, the grammar."""

from __future__ import annotations

import json
from typing import Any

import pytest

from handler.errors import APIError
from handler.prompts import PromptBuilder
from handler.protocol import ChatCompletionRequest, ChatMessage
from handler.tool_grammar import call_schema, tool_grammar
from handler.tool_parser import ToolCallParser, parse_tool_calls
from handler.tool_prompt import TemplateSupport, fallback_instructions, with_tools
from handler.tools import ToolPlan
from tests import tiny_tokenizers
from tests.tiny_models import CHAT_TEMPLATE

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}
USER = [{"role": "user", "content": "Weather in Paris?"}]


def plan(**fields: Any) -> ToolPlan | None:
    return ChatCompletionRequest.model_validate({"messages": USER, **fields}).tool_plan()


def refused(**fields: Any) -> APIError:
    with pytest.raises(APIError) as info:
        plan(**fields)
    return info.value


# --- validation -------------------------------------------------------------------------------


def test_plan_defaults_to_auto_and_parallel() -> None:
    result = plan(tools=[WEATHER, TIME])
    assert result is not None
    assert (result.choice, result.parallel, result.legacy, result.forced) == ("auto", True, False, False)
    assert [f.name for f in result.callable_functions] == ["get_weather", "get_time"]
    assert plan() is None


def test_named_required_none_and_parallel() -> None:
    named = plan(tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert named is not None and named.named == "get_time" and named.forced
    assert [f.name for f in named.callable_functions] == ["get_time"]
    required = plan(tools=[WEATHER], tool_choice="required", parallel_tool_calls=False)
    assert required is not None and required.forced and required.named is None and not required.parallel
    none = plan(tools=[WEATHER], tool_choice="none")
    assert none is not None and not none.calls_allowed and tool_grammar(none) is None


def test_legacy_functions_map_onto_tools() -> None:
    result = plan(functions=[WEATHER["function"]], function_call={"name": "get_weather"})
    assert result is not None and result.legacy and result.named == "get_weather" and not result.parallel
    assert result.definitions()[0] == {"type": "function", "function": WEATHER["function"]}
    auto = plan(functions=[WEATHER["function"]], function_call="auto")
    assert auto is not None and auto.choice == "auto"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"function_call": "auto"}, "function_call"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
        ({"functions": [WEATHER["function"]], "function_call": {"name": "nope"}}, "function_call"),
        ({"tools": []}, "tools"),
        ({"tools": [WEATHER], "functions": [WEATHER["function"]]}, "functions"),
        ({"tools": [WEATHER, WEATHER]}, "tools.1.function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
            "tools.0.function.parameters",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"properties": [1]}}}]},
            "tools.0.function.parameters",
        ),
    ],
)
def test_bad_tool_fields_name_the_field(fields: dict[str, Any], param: str) -> None:
    assert refused(**fields).param == param


def test_tool_schema_size_has_a_limit() -> None:
    big = {
        "type": "function",
        "function": {"name": "big", "parameters": {"type": "object", "description": "x" * 40_000}},
    }
    request = ChatCompletionRequest.model_validate({"messages": USER, "tools": [big]})
    with pytest.raises(APIError) as info:
        request.tool_plan(max_size=32 * 1024)
    assert info.value.param == "tools" and "TOOL_MAX_SCHEMA_SIZE" in info.value.message
    assert request.tool_plan(max_size=64 * 1024) is not None


@pytest.mark.parametrize(
    "tool",
    [
        {"type": "custom", "function": {"name": "f"}},
        {"type": "function", "function": {"name": "bad name"}},
        {"type": "function", "function": {"name": "f", "parameters": "{}"}},
    ],
)
def test_malformed_tools_are_400s_at_validation(tool: dict[str, Any]) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate({"messages": USER, "tools": [tool]})
    assert info.value.errors()[0]["loc"][0] == "tools"


# --- rendering --------------------------------------------------------------------------------

NATIVE_TEMPLATE = (
    "{% if tools %}<tools>{% for t in tools %}{{ t.function.name }};{% endfor %}</tools>\n{% endif %}"
    "{% for m in messages %}{{ m.role }}:{{ m.content }}"
    "{% for c in m.tool_calls or [] %}[{{ c.function.name }}({{ c.function.arguments | tojson }})]{% endfor %}"
    "{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)
HISTORY: list[dict[str, Any]] = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}'},
            },
            {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
    {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
]


def builder(template: str) -> PromptBuilder:
    return PromptBuilder(
        tiny_tokenizers.byte_level_bpe(), vocab_size=10_000, max_prompt_tokens=4096, chat_template=template
    )


def test_template_support_is_detected() -> None:
    assert TemplateSupport.of(CHAT_TEMPLATE) == TemplateSupport(tools=False, history=False)
    assert TemplateSupport.of(NATIVE_TEMPLATE) == TemplateSupport(tools=True, history=True)


def test_fallback_puts_tools_in_the_system_turn_and_calls_in_the_history() -> None:
    messages = [ChatMessage.model_validate(m) for m in HISTORY]
    prompt = builder(CHAT_TEMPLATE).chat_prompt(messages, [WEATHER])
    assert prompt.text == (
        "<s>system\n" + fallback_instructions([WEATHER]) + "</s>\n"
        "<s>user\nWeather in Paris?</s>\n"
        '<s>assistant\n<tool_call>\n{"name":"get_weather","arguments":{"city":"Paris","unit":"c"}}\n</tool_call>\n'
        '<tool_call>\n{"name":"get_time","arguments":{}}\n</tool_call></s>\n'
        "<s>user\n<tool_response>\n21 C\n</tool_response>\n<tool_response>\nnoon\n</tool_response></s>\n"
        "<s>assistant\n"
    )
    assert json.dumps(WEATHER) in prompt.text and "<tool_call>" in fallback_instructions([WEATHER])


def test_fallback_joins_an_existing_system_message() -> None:
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    result = with_tools(conversation, [TIME], TemplateSupport(tools=False, history=False))
    assert result[0]["content"] == "Be brief.\n\n" + fallback_instructions([TIME]) and len(result) == 2


def test_a_template_with_tool_support_renders_them_itself() -> None:
    messages = [ChatMessage.model_validate(m) for m in HISTORY]
    prompt = builder(NATIVE_TEMPLATE).chat_prompt(messages, [WEATHER, TIME])
    assert prompt.text == (
        "<tools>get_weather;get_time;</tools>\n"
        "user:Weather in Paris?\n"
        'assistant:[get_weather({"city": "Paris", "unit": "c"})][get_time({})]\n'
        "tool:21 C\ntool:noon\nassistant:"
    )


def test_no_tools_offered_means_no_tool_text() -> None:
    messages = [ChatMessage.model_validate(m) for m in USER]
    assert "<tool" not in builder(CHAT_TEMPLATE).chat_prompt(messages, None).text
    assert "<tools>" not in builder(NATIVE_TEMPLATE).chat_prompt(messages, None).text


# --- parsing ----------------------------------------------------------------------------------

CALLS = (
    'Let me check.\n<tool_call>\n{"name":"get_weather","arguments":{"city":"Paris","unit":"c"}}\n</tool_call>\n'
    '<tool_call>\n{"name":"get_time","arguments":{"zone":{"name":"CET}"}}}\n</tool_call>'
)


def streamed(text: str, size: int) -> tuple[str, dict[int, dict[str, Any]]]:
    parser = ToolCallParser()
    pieces = [parser.feed(text[i : i + size]) for i in range(0, len(text), size)]
    pieces.append(parser.feed("", final=True))
    content = "".join(piece.content for piece in pieces)
    calls: dict[int, dict[str, Any]] = {}
    for piece in pieces:
        for delta in piece.calls:
            call = calls.setdefault(delta.index, {"ids": [], "names": [], "arguments": ""})
            if delta.id is not None:
                call["ids"].append(delta.id)
                call["names"].append(delta.name)
            call["arguments"] += delta.arguments
    return content, calls


def test_whole_text_parses_into_content_and_calls() -> None:
    content, calls = parse_tool_calls(CALLS)
    assert content == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris", "unit": "c"}),
        ("get_time", {"zone": {"name": "CET}"}}),
    ]
    assert all(c.id.startswith("call_") and len(c.id) > 10 for c in calls) and calls[0].id != calls[1].id
    assert parse_tool_calls('<tool_call>\n{"name":"f","arguments":{}}\n</tool_call>')[0] is None
    assert parse_tool_calls("just text") == ("just text", [])


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_streamed_pieces_join_into_the_whole_parse(size: int) -> None:
    content, calls = streamed(CALLS, size)
    whole_content, whole = parse_tool_calls(CALLS)
    assert content == whole_content
    assert [(c["names"], c["arguments"]) for c in calls.values()] == [([w.name], w.arguments) for w in whole]
    assert all(len(c["ids"]) == 1 for c in calls.values())


def test_markup_never_reaches_the_content_while_streaming() -> None:
    parser = ToolCallParser()
    seen = ""
    for char in CALLS:
        seen += parser.feed(char).content
        assert "<" not in seen and "tool_call" not in seen
    assert parser.num_calls == 2


def test_arguments_stream_before_the_call_ends() -> None:
    parser = ToolCallParser()
    first = parser.feed('<tool_call>\n{"name":"get_weather","arguments":{"city":"Pa')
    assert [(d.index, d.name, d.arguments) for d in first.calls] == [(0, "get_weather", '{"city":"Pa')]
    second = parser.feed('ris"}}\n</tool_')
    assert [d.arguments for d in second.calls] == ['ris"']
    last = parser.feed("call>", final=True)
    assert [d.arguments for d in last.calls] == ["}"] and not last.content


def test_text_that_only_looks_like_a_call_is_content() -> None:
    assert parse_tool_calls("a < b and <tool") == ("a < b and <tool", [])
    assert parse_tool_calls("<tool_call>not json</tool_call> ok") == (
        "<tool_call>not json</tool_call> ok",
        [],
    )
    reordered = '<tool_call>{"arguments": {"a": 1}, "name": "g"}</tool_call>'
    _, [call] = parse_tool_calls(reordered)
    assert (call.name, json.loads(call.arguments)) == ("g", {"a": 1})


def test_a_call_cut_short_keeps_what_it_has() -> None:
    content, [call] = parse_tool_calls('<tool_call>\n{"name":"f","arguments":{"a":"xy')
    assert content is None and (call.name, call.arguments) == ("f", '{"a":"xy')
    assert parse_tool_calls('<tool_call>\n{"na') == ("", [])
    # Only the closing tag was cut: the call is whole (found on the default model at max_tokens).
    for cut in ("", "\n", "\n</tool_c"):
        _, [whole] = parse_tool_calls('<tool_call>\n{"name":"f","arguments":{"a":{"b":1}}}' + cut)
        assert whole.arguments == '{"a":{"b":1}}'
        assert (
            streamed('<tool_call>\n{"name":"f","arguments":{"a":{"b":1}}}' + cut, 2)[1][0]["arguments"]
            == whole.arguments
        )


# --- grammar ----------------------------------------------------------------------------------


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
    result = request.tool_plan()
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
    from handler.tool_grammar import tool_spec

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
