"""Tool definitions validated into a ToolPlan, and tools rendered into the prompt."""

from __future__ import annotations

import json
from typing import Any

import pytest

from handler.api.errors import APIError
from handler.api.prompts import PromptBuilder
from handler.api.requests import ChatCompletionRequest, ChatMessage
from handler.api.tools.grammar import tool_grammar
from handler.api.tools.plan import ToolPlan
from handler.api.tools.prompt import TemplateSupport, fallback_instructions, with_tools
from handler.config import Settings
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
    return ChatCompletionRequest.model_validate({"messages": USER, **fields}).tool_plan(
        Settings().tool_max_schema_size
    )


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
    with_break = "{% for t in tools %}{% break %}{% endfor %}{{ messages }}"
    assert TemplateSupport.of(with_break).tools
    unknown_tag = "{% generation %}{{ tools }}{% endgeneration %}"
    assert TemplateSupport.of(unknown_tag) == TemplateSupport(tools=True, history=False)
    assert not TemplateSupport.of("{% set tools_used = 1 %}{{ messages }}").tools


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
