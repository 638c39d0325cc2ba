"""Tool calling over HTTP with the official openai client, on the fake engine with a scripted answer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from handler.config import Settings
from tests.conftest_http import LiveServer, live_server
from tests.fake_engine import fake_loader

ANSWER = (
    "Checking.\n"
    '<tool_call>\n{"name":"get_weather","arguments":{"city":"Paris","unit":"c"}}\n</tool_call>\n'
    '<tool_call>\n{"name":"get_time","arguments":{}}\n</tool_call>'
)
USER: Any = [{"role": "user", "content": "Weather in Paris?"}]


class GetWeather(BaseModel):
    """Weather in a city."""

    city: str
    unit: str


TOOLS: Any = [
    openai.pydantic_function_tool(GetWeather, name="get_weather"),
    {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
    },
]


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    settings = Settings(completion_max_prompt=4000)
    with live_server(settings, loader=fake_loader(context_length=4096)) as live:
        engine = live.model.engine
        engine.script = list(engine.tokenizer(ANSWER, add_special_tokens=False).input_ids)
        engine.eos_after = len(engine.script)
        yield live


@pytest.fixture(scope="module")
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def last_prompt(server: LiveServer) -> str:
    return str(server.model.tokenizer.decode(server.model.engine.submitted[-1][0]))


def test_calls_come_back_as_tool_calls(client: openai.OpenAI, server: LiveServer) -> None:
    result = client.chat.completions.create(model="m", messages=USER, tools=TOOLS, temperature=0)
    [choice] = result.choices
    assert choice.finish_reason == "tool_calls"
    message = choice.message
    assert message.content == "Checking."
    calls = message.tool_calls or []
    assert [(c.type, c.function.name, json.loads(c.function.arguments)) for c in calls] == [  # type: ignore[union-attr]
        ("function", "get_weather", {"city": "Paris", "unit": "c"}),
        ("function", "get_time", {}),
    ]
    assert all(c.id.startswith("call_") for c in calls) and len({c.id for c in calls}) == 2
    prompt = last_prompt(server)
    assert '"name": "get_weather"' in prompt and "<tool_call>" in prompt  # the fallback declared them


def test_streamed_deltas_add_up_to_the_whole_message(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="m", messages=USER, tools=TOOLS, temperature=0)
    stream = client.chat.completions.create(model="m", messages=USER, tools=TOOLS, temperature=0, stream=True)
    content, finish = "", None
    calls: dict[int, dict[str, Any]] = {}
    for chunk in stream:
        for choice in chunk.choices:
            delta = choice.delta
            content += delta.content or ""
            assert "<" not in (delta.content or "")
            finish = choice.finish_reason or finish
            for call in delta.tool_calls or []:
                entry = calls.setdefault(call.index, {"id": None, "name": None, "arguments": ""})
                if call.id is not None:
                    assert entry["id"] is None and call.type == "function"  # id, type and name once
                    entry["id"], entry["name"] = call.id, call.function.name  # type: ignore[union-attr]
                else:
                    assert call.function is not None and call.function.name is None
                entry["arguments"] += call.function.arguments or ""  # type: ignore[union-attr]
    message = whole.choices[0].message
    assert finish == whole.choices[0].finish_reason == "tool_calls"
    assert content == message.content
    assert [(c["name"], c["arguments"]) for c in calls.values()] == [
        (c.function.name, c.function.arguments)  # type: ignore[union-attr]
        for c in message.tool_calls or []
    ]


def test_every_choice_gets_its_calls(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(model="m", messages=USER, tools=TOOLS, temperature=0, n=2)
    assert [c.finish_reason for c in result.choices] == ["tool_calls", "tool_calls"]
    ids = [call.id for c in result.choices for call in c.message.tool_calls or []]
    assert len(ids) == 4 and len(set(ids)) == 4


def test_the_openai_stream_helper_accumulates_the_calls(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(model="m", messages=USER, tools=TOOLS, temperature=0) as stream:
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0].function.arguments) == {"city": "Paris", "unit": "c"}


def test_none_offers_no_tools_and_parses_nothing(client: openai.OpenAI, server: LiveServer) -> None:
    result = client.chat.completions.create(model="m", messages=USER, tools=TOOLS, tool_choice="none")
    message = result.choices[0].message
    assert message.tool_calls is None and message.content == ANSWER
    assert result.choices[0].finish_reason == "stop"
    assert "get_weather" not in last_prompt(server)


def test_a_conversation_with_a_call_and_its_result(client: openai.OpenAI, server: LiveServer) -> None:
    first = client.chat.completions.create(model="m", messages=USER, tools=TOOLS)
    message = first.choices[0].message
    history: Any = [
        *USER,
        message.model_dump(exclude_none=True),
        *[
            {"role": "tool", "tool_call_id": call.id, "content": f"result {i}"}
            for i, call in enumerate(message.tool_calls or [])
        ],
    ]
    client.chat.completions.create(model="m", messages=history, tools=TOOLS)
    prompt = last_prompt(server)
    assert (
        '<s>assistant\nChecking.\n<tool_call>\n{"name":"get_weather","arguments":{"city":"Paris","unit":"c"}}'
        in prompt
    )
    assert (
        "<s>user\n<tool_response>\nresult 0\n</tool_response>\n<tool_response>\nresult 1\n</tool_response></s>"
        in prompt
    )


def test_legacy_functions_answer_a_function_call(client: openai.OpenAI) -> None:
    functions: Any = [t["function"] for t in TOOLS]
    result = client.chat.completions.create(model="m", messages=USER, functions=functions)
    choice = result.choices[0]
    assert choice.finish_reason == "function_call" and choice.message.tool_calls is None
    assert choice.message.function_call is not None and choice.message.function_call.name == "get_weather"
    stream = client.chat.completions.create(model="m", messages=USER, functions=functions, stream=True)
    name, arguments = None, ""
    for chunk in stream:
        for streamed in chunk.choices:
            if streamed.delta.function_call is not None:
                name = streamed.delta.function_call.name or name
                arguments += streamed.delta.function_call.arguments or ""
    assert (name, arguments) == (choice.message.function_call.name, choice.message.function_call.arguments)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
            "tools.0.function.parameters",
        ),
        ({"tools": [{"type": "function", "function": {"name": "f", "description": "x" * 40_000}}]}, "tools"),
        ({"tools": [{"type": "nope", "function": {"name": "f"}}]}, "tools.0.type"),
    ],
)
def test_bad_tool_requests_are_400s_naming_the_field(
    client: openai.OpenAI, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=USER, **fields)
    body: Any = info.value.body
    assert body["param"] == param and body["type"] == "invalid_request_error"


def test_tools_with_a_json_response_format(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model="m", messages=USER, tools=TOOLS, response_format={"type": "json_object"}, temperature=0
    )
    assert result.choices[0].finish_reason == "tool_calls"  # the scripted answer calls; JSON was allowed too
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="m", messages=USER, tools=TOOLS, extra_body={"structured_outputs": {"regex": "a+"}}
        )
    body: Any = info.value.body
    assert body["param"] == "structured_outputs"


def test_legacy_history_renders_like_tool_history(client: openai.OpenAI, server: LiveServer) -> None:
    functions: Any = [t["function"] for t in TOOLS]
    history: Any = [
        *USER,
        {"role": "assistant", "content": None, "function_call": {"name": "get_time", "arguments": "{}"}},
        {"role": "function", "name": "get_time", "content": "noon"},
    ]
    client.chat.completions.create(model="m", messages=history, functions=functions)
    prompt = last_prompt(server)
    assert '<s>assistant\n<tool_call>\n{"name":"get_time","arguments":{}}\n</tool_call></s>' in prompt
    assert "<s>user\n<tool_response>\nnoon\n</tool_response></s>" in prompt
