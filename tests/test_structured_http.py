"""Structured outputs through a live server with the official openai client: response_format and
structured_outputs on a tiny random Llama (random weights: only the grammar makes the output valid)."""

from __future__ import annotations

import json
from typing import Any, Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from handler.config import Settings
from handler.model import load_served_model
from tests.conftest_http import live_server, tiny_llama_fixtures

MESSAGES: Any = [{"role": "user", "content": "Describe a person."}]

NESTED = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "minItems": 2, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 10}, "zip": {"type": "integer"}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "nickname": {"anyOf": [{"type": "string", "maxLength": 6}, {"type": "null"}]},
    },
    "required": ["name", "code", "role", "tags", "address", "nickname"],
    "additionalProperties": False,
}


class Address(BaseModel):
    city: str = Field(max_length=10)
    zip: int


class Person(BaseModel):
    name: str = Field(max_length=12)
    age: int = Field(ge=0, le=120)
    role: Literal["admin", "user", "guest"]
    address: Address
    email: str | None = Field(max_length=20)


server, client = tiny_llama_fixtures()


def _schema_format(schema: dict[str, Any], strict: bool = True) -> Any:
    return {"type": "json_schema", "json_schema": {"name": "out", "schema": schema, "strict": strict}}


def test_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    done = 0
    for seed in range(4):
        completion = client.chat.completions.parse(
            model="tiny", messages=MESSAGES, response_format=Person, max_tokens=150, seed=seed
        )
        choice = completion.choices[0]
        if choice.finish_reason == "stop":
            assert isinstance(choice.message.parsed, Person)
            done += 1
        else:
            assert choice.finish_reason == "length"
    assert done >= 2


def test_json_object_streamed(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        response_format={"type": "json_object"},
        max_tokens=60,
        seed=3,
        stream=True,
    )
    text, reasons = "", []
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.finish_reason:
                reasons.append(choice.finish_reason)
    assert text.startswith("{")
    assert reasons in (["stop"], ["length"])
    if reasons == ["stop"]:
        assert isinstance(json.loads(text), dict)


def test_strict_json_schema_nested_validates(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        response_format=_schema_format(NESTED),
        max_tokens=200,
        n=4,
        seed=7,
        logprobs=True,
        top_logprobs=2,
    )
    stopped = [c for c in result.choices if c.finish_reason == "stop"]
    assert len(stopped) >= 2
    for choice in stopped:
        value = json.loads(choice.message.content or "")
        jsonschema.validate(value, NESTED)
        # The logprobs describe the masked distribution: the chosen token has the best or a listed one.
        assert choice.logprobs is not None and choice.logprobs.content
        for entry in choice.logprobs.content:
            assert entry.logprob > float("-inf")


def test_max_tokens_inside_a_structure_is_length(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model="tiny", messages=MESSAGES, response_format=_schema_format(NESTED), max_tokens=5
    )
    assert result.choices[0].finish_reason == "length"
    assert (result.choices[0].message.content or "").startswith('{"na')


def test_structured_outputs_on_completions(client: openai.OpenAI) -> None:
    choice = client.completions.create(
        model="tiny",
        prompt="Answer:",
        max_tokens=10,
        n=3,
        seed=1,
        extra_body={"structured_outputs": {"choice": ["yes", "no", "maybe"]}},
    )
    assert {c.text for c in choice.choices} <= {"yes", "no", "maybe"}
    assert all(c.finish_reason == "stop" for c in choice.choices)
    best = client.completions.create(
        model="tiny",
        prompt="Answer:",
        max_tokens=10,
        n=2,
        best_of=4,
        seed=1,
        extra_body={"structured_outputs": {"choice": ["yes", "no", "maybe"]}},
    )
    assert len(best.choices) == 2 and {c.text for c in best.choices} <= {"yes", "no", "maybe"}
    regex = client.completions.create(
        model="tiny",
        prompt="Code:",
        max_tokens=20,
        seed=2,
        extra_body={"structured_outputs": {"regex": "[A-Z]{3}-[0-9]{2}"}},
    )
    assert regex.choices[0].finish_reason == "stop"
    assert len(regex.choices[0].text) == 6 and regex.choices[0].text[3] == "-"


def test_structured_outputs_grammar_and_json_on_chat(client: openai.OpenAI) -> None:
    lark = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        max_tokens=20,
        extra_body={"structured_outputs": {"grammar": 'start: "x" ("+" "x")* "=" /[0-9]/'}},
    )
    text = lark.choices[0].message.content or ""
    if lark.choices[0].finish_reason == "stop":
        assert text.startswith("x") and text[-2] == "="
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    result = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        max_tokens=30,
        seed=0,
        extra_body={"structured_outputs": {"json": schema}},
    )
    if result.choices[0].finish_reason == "stop":
        jsonschema.validate(json.loads(result.choices[0].message.content or ""), schema)


def _bad(client: openai.OpenAI, **kwargs: Any) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=5, **kwargs)
    return info.value


@pytest.mark.parametrize(
    ("kwargs", "param", "words"),
    [
        ({"response_format": _schema_format({"type": "nonsense"})}, "response_format", "invalid JSON schema"),
        (
            {"response_format": _schema_format({"type": "array", "uniqueItems": True})},
            "response_format",
            "uniqueItems",
        ),
        ({"extra_body": {"structured_outputs": {"regex": "[a-"}}}, "structured_outputs", "invalid regex"),
        (
            {"extra_body": {"structured_outputs": {"regex": "a", "choice": ["a"]}}},
            "structured_outputs",
            "exactly one",
        ),
        (
            {
                "response_format": {"type": "json_object"},
                "extra_body": {"structured_outputs": {"regex": "a"}},
            },
            "response_format",
            "one output constraint",
        ),
        (
            {"response_format": {"type": "json_object"}, "extra_body": {"min_tokens": 2}},
            "min_tokens",
            "grammar",
        ),
        (
            {"response_format": {"type": "json_object"}, "extra_body": {"ignore_eos": True}},
            "ignore_eos",
            "grammar",
        ),
        ({"response_format": {"type": "json_schema"}}, "response_format", "json_schema"),
    ],
)
def test_bad_constraints_are_400s_naming_the_field(
    client: openai.OpenAI, kwargs: dict[str, Any], param: str, words: str
) -> None:
    error = _bad(client, **kwargs)
    body: Any = error.body
    assert body["param"] == param
    assert words in body["message"]


def test_a_schema_over_the_size_limit_is_a_400(client: openai.OpenAI) -> None:
    big = {"type": "object", "properties": {f"field_{i:05d}": {"type": "integer"} for i in range(5000)}}
    error = _bad(client, response_format=_schema_format(big))
    body: Any = error.body
    assert body["param"] == "response_format"
    assert "limit" in body["message"]


class City(BaseModel):
    name: str = Field(max_length=30)
    country: str = Field(max_length=30)
    population: int = Field(ge=0, le=100_000_000)  # greedy digits would otherwise run on


@pytest.mark.slow
def test_default_model_parse_and_streamed_json_object() -> None:
    with live_server(Settings(), loader=load_served_model) as live:
        client = openai.OpenAI(base_url=live.url + "/v1", api_key="x", max_retries=0, timeout=300)
        messages: Any = [{"role": "user", "content": "Describe the city of Paris as JSON."}]
        parsed = client.chat.completions.parse(
            model="default", messages=messages, response_format=City, max_tokens=80, temperature=0
        )
        choice = parsed.choices[0]
        assert choice.finish_reason == "stop" and isinstance(choice.message.parsed, City)
        assert "Paris" in choice.message.parsed.name
        question = 'What is the capital of France? Answer with a JSON object like {"capital": "..."}.'
        stream = client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": question}],
            response_format={"type": "json_object"},
            max_tokens=60,
            temperature=0,
            stream=True,
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert isinstance(json.loads(text), dict)
