"""Tool calls parsed out of generated text: whole, and streamed piece by piece."""

from __future__ import annotations

import json
from typing import Any

import pytest

from handler.api.tools.parser import ToolCallParser, parse_tool_calls

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
