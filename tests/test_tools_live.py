"""Tool calling through a live server with the official openai client, on a tiny random Llama: random
weights call nothing on their own, so every well-formed call here is the grammar's doing."""

from __future__ import annotations

import json
from typing import Any, Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.conftest_http import tiny_llama_fixtures

MESSAGES: Any = [{"role": "user", "content": "What is the forecast?"}]


# Small schemas: the tiny tokenizer spends about a token per character, in a 1024-token context.
class Forecast(BaseModel):
    unit: Literal["c", "f"]
    days: int = Field(ge=1, le=7)


class Alarm(BaseModel):
    hour: int = Field(ge=0, le=23)


TOOLS: Any = [openai.pydantic_function_tool(Forecast), openai.pydantic_function_tool(Alarm)]
SCHEMAS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}
NAMED: Any = {"type": "function", "function": {"name": "Alarm"}}


server, client = tiny_llama_fixtures()


def create(client: openai.OpenAI, **fields: Any) -> Any:
    fields.setdefault("max_tokens", 90)
    return client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS, **fields)


def accumulate(stream: Any) -> tuple[str | None, list[tuple[str, str]], str | None]:
    """Content, (name, arguments) per call and finish_reason, joined from streamed deltas."""
    content: str | None = None
    calls: dict[int, list[str]] = {}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                content = (content or "") + choice.delta.content
            for call in choice.delta.tool_calls or []:
                if call.id is not None:
                    assert call.index not in calls and call.type == "function"
                    calls[call.index] = [call.function.name, ""]
                calls[call.index][1] += call.function.arguments or ""
            finish = choice.finish_reason or finish
    return content, [(name, arguments) for name, arguments in calls.values()], finish


def check_calls(message: Any, names: set[str]) -> None:
    assert message.tool_calls, message
    for call in message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_") and call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_named_tool_is_called(client: openai.OpenAI) -> None:
    result = create(client, tool_choice=NAMED, seed=0)
    choice = result.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    check_calls(choice.message, {"Alarm"})
    assert len(choice.message.tool_calls) == 1


@pytest.mark.parametrize("tool_choice", [NAMED, "required"])
def test_streamed_call_equals_the_whole_one(client: openai.OpenAI, tool_choice: Any) -> None:
    whole = create(client, tool_choice=tool_choice, parallel_tool_calls=False, seed=5)
    content, calls, finish = accumulate(
        create(client, tool_choice=tool_choice, parallel_tool_calls=False, seed=5, stream=True)
    )
    message = whole.choices[0].message
    assert finish == whole.choices[0].finish_reason == "tool_calls"
    assert content == message.content
    assert calls == [(c.function.name, c.function.arguments) for c in message.tool_calls]
    check_calls(message, {"Forecast", "Alarm"})
    assert len(calls) == 1  # parallel_tool_calls false: at most one


def test_required_with_parallel_calls_validates_every_call(client: openai.OpenAI) -> None:
    choice = create(client, tool_choice="required", seed=0, max_tokens=120).choices[0]
    calls = choice.message.tool_calls
    if choice.finish_reason == "tool_calls":
        check_calls(choice.message, {"Forecast", "Alarm"})
    else:  # cut short in a further call: the whole calls before it are still valid
        assert choice.finish_reason == "length" and calls
        for call in calls[:-1]:
            jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_the_stream_helper_matches_the_body(client: openai.OpenAI) -> None:
    fields: Any = {"model": "tiny", "messages": MESSAGES, "tools": TOOLS, "tool_choice": NAMED, "seed": 3}
    whole = client.chat.completions.create(**fields, max_tokens=90).choices[0].message
    with client.chat.completions.stream(**fields, max_tokens=90) as stream:
        final = stream.get_final_completion().choices[0].message
    assert final.content is None and whole.content is None
    assert [(c.function.name, c.function.arguments) for c in final.tool_calls or []] == [
        (c.function.name, c.function.arguments) for c in whole.tool_calls or []
    ]
    assert isinstance((final.tool_calls or [])[0].function.parsed_arguments, Alarm)


def test_parse_with_strict_pydantic_tools(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model="tiny", messages=MESSAGES, tools=TOOLS, tool_choice=NAMED, max_tokens=90, seed=2
    )
    [call] = completion.choices[0].message.tool_calls or []
    assert isinstance(call.function.parsed_arguments, Alarm)


def test_auto_may_answer_in_text(client: openai.OpenAI) -> None:
    choice = create(client, seed=0, max_tokens=16).choices[0]
    # A random model writes text, which auto allows (required would have forced a call).
    assert choice.message.tool_calls is None and choice.finish_reason == "length"
    assert choice.message.content and "<tool_call>" not in choice.message.content


def test_none_leaves_text_alone(client: openai.OpenAI) -> None:
    choice = create(client, tool_choice="none", seed=0, max_tokens=8).choices[0]
    assert choice.message.tool_calls is None and choice.finish_reason == "length"
    assert choice.message.content


def test_a_tool_result_conversation(client: openai.OpenAI) -> None:
    first = create(client, tool_choice=NAMED, seed=1).choices[0].message
    history: Any = [
        *MESSAGES,
        first.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": "alarm set"},
    ]
    second = client.chat.completions.create(
        model="tiny", messages=history, tools=TOOLS, tool_choice=NAMED, max_tokens=90, seed=1
    )
    check_calls(second.choices[0].message, {"Alarm"})


def test_a_tool_schema_the_grammar_cannot_enforce_is_a_400(client: openai.OpenAI) -> None:
    tool: Any = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "not": {}}}}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=MESSAGES, tools=[tool], tool_choice="required")
    body: Any = info.value.body
    assert body["param"] == "tools" and "not" in body["message"]
