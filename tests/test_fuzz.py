"""Schemathesis fuzzes every route of the served /openapi.json (a bounded, derandomized slice; the
full run is `python -m reliability.fuzz`), then the bugs fuzzing and probing found stay fixed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests

from reliability.fuzz import fuzz, refused_param, shape_problem, without
from reliability.fuzz_bounds import Oversized, oversized_requests, refusal_problem, send
from reliability.live import Checked, fuzz_server

MAX_EXAMPLES = 50  # per operation and mode: about 450 requests, some 40 s on two busy cores


@pytest.fixture(scope="module")
def server() -> Iterator[Checked]:
    with fuzz_server() as checked:
        yield checked


def test_the_fuzzed_api_answers_every_case_within_its_contract(server: Checked) -> None:
    report = fuzz(server.url, MAX_EXAMPLES)
    assert not report.failures, report.summary()
    assert report.total >= 300, report.summary()
    # Generation itself was reached, not only validation.
    assert report.statuses[200] >= 20, report.summary()
    server.assert_healthy()


def post(server: Checked, body: Any, path: str = "/v1/completions") -> httpx.Response:
    return httpx.post(server.url + path, content=json.dumps(body), timeout=60)


def error_of(response: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"prompt": "a \ud800 b"}, "prompt"),
        ("/v1/completions", {"prompt": ["ok", "\udfff"]}, "prompt"),
        ("/v1/completions", {"prompt": "ok", "model": "\ud800"}, "model"),
        ("/v1/completions", {"prompt": "ok", "stop": ["\ud800"]}, "stop"),
        ("/v1/completions", {"prompt": "ok", "\ud800": 1}, "\\ud800"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "\udc00"}]}, "messages"),
    ],
)
def test_lone_surrogates_are_refused_not_a_500(server: Checked, path: str, body: Any, param: str) -> None:
    # Found by probing: the tokenizer raised TypeError and the encoder UnicodeEncodeError (500).
    error = error_of(post(server, body, path))
    assert error["code"] == "invalid_unicode" and error["param"] == param


def test_a_valid_surrogate_pair_is_fine(server: Checked) -> None:
    assert post(server, {"prompt": "smile \ud83d\ude00", "max_tokens": 2}).status_code == 200


def test_a_huge_top_k_is_refused_not_a_failed_batch(server: Checked) -> None:
    # Found by fuzzing: top_k past int64 overflowed in the sampler and failed every request in its batch.
    assert error_of(post(server, {"prompt": "x", "top_k": 2**63, "temperature": 1}))["param"] == "top_k"
    body = {"prompt": "x", "top_k": 2**31 - 1, "temperature": 1, "max_tokens": 2}
    assert post(server, body).status_code == 200


def test_deep_nesting_is_refused_not_a_500(server: Checked) -> None:
    # Found by probing: the chat template recursed into tool_calls until RecursionError (500).
    nested: Any = 1
    for _ in range(400):
        nested = [nested]
    message = {"role": "assistant", "content": "x", "tool_calls": [{"a": nested}]}
    body: dict[str, Any] = {"messages": [message, {"role": "user", "content": "hi"}], "max_tokens": 2}
    assert error_of(post(server, body, "/v1/chat/completions"))["param"] == "messages.0.tool_calls"
    shallow = {**body, "messages": [{**message, "tool_calls": [{"a": [[1]]}]}, body["messages"][1]]}
    assert post(server, shallow, "/v1/chat/completions").status_code == 200


# -- the harness's own oracle -------------------------------------------------------------------

OK_CHUNK = json.dumps(
    {"id": "c", "object": "text_completion", "created": 1, "model": "m", "choices": [], "usage": None}
)
ERROR = json.dumps({"error": {"message": "m", "type": "t", "param": None, "code": None}})


@pytest.mark.parametrize(
    ("status", "body", "content_type", "bad"),
    [
        (200, b"{}", "application/json", False),
        (500, ERROR.encode(), "application/json", True),
        (400, ERROR.encode(), "application/json", False),
        (400, b'{"detail": "no"}', "application/json", True),
        (404, b"Not Found", "text/plain", True),
        (200, f"data: {OK_CHUNK}\n\ndata: [DONE]\n\n".encode(), "text/event-stream", False),
        (200, f"data: {OK_CHUNK}\n\n".encode(), "text/event-stream", True),
        (200, f": keep-alive\n\ndata: {OK_CHUNK}\n\ndata: [DONE]\n\n".encode(), "text/event-stream", False),
        (200, f": other\n\ndata: {OK_CHUNK}\n\ndata: [DONE]\n\n".encode(), "text/event-stream", True),
        (200, f"data: {ERROR}\n\ndata: [DONE]\n\n".encode(), "text/event-stream", True),
        (200, b'data: {"object": "text_completion"}\n\ndata: [DONE]\n\n', "text/event-stream", True),
    ],
)
def test_the_oracle_tells_bad_answers(status: int, body: bytes, content_type: str, bad: bool) -> None:
    assert (shape_problem(status, body, content_type) is not None) is bad


def test_resending_drops_the_refused_parameter() -> None:
    body = {"n": 9, "messages": [{"role": "user"}, {"role": "user", "content": "x"}]}
    assert without(body, "n") == {"messages": body["messages"]}
    assert without(body, "messages.0") == {"n": 9, "messages": [{"role": "user", "content": "x"}]}
    assert without(body, "messages.5") is None and without(body, "prompt") is None
    assert refused_param(ERROR.replace("null", '"n"', 1).encode()) == "n"
    assert refused_param(b"nonsense") is None


@pytest.mark.parametrize("penalty", [5e-324, 1e-3, 1e300])
def test_an_extreme_repetition_penalty_is_refused(server: Checked, penalty: float) -> None:
    # Found by fuzzing: 5e-324 turned the scores to inf and the logprobs to NaN (null in the JSON).
    body = {"prompt": [[0]], "logprobs": 1, "repetition_penalty": penalty, "temperature": 1}
    assert error_of(post(server, body))["param"] == "repetition_penalty"


def test_a_vanishing_temperature_samples_greedily(server: Checked) -> None:
    body = {"prompt": "Once", "max_tokens": 6, "logprobs": 1}
    greedy = post(server, {**body, "temperature": 0}).json()["choices"][0]
    tiny = post(server, {**body, "temperature": 5e-324}).json()["choices"][0]
    assert tiny["text"] == greedy["text"]
    assert all(isinstance(value, float) for value in tiny["logprobs"]["token_logprobs"])


# -- requests far past each bound (reliability/fuzz_bounds.py) ------------------------------------


@pytest.mark.parametrize("request_", oversized_requests(), ids=lambda r: r.name)
def test_a_request_far_past_a_bound_is_a_400_naming_its_field(server: Checked, request_: Oversized) -> None:
    assert request_.size < 4 * 1024 * 1024  # within MAX_BODY_SIZE: the bound, not the body limit, refuses it
    with requests.Session() as session:
        response = send(session, server.url, request_)
    assert refusal_problem(request_, response.status_code, response.content) is None, response.text
    assert server.running() == 0  # nothing reached the engine


def test_the_bounds_oracle_tells_bad_answers() -> None:
    stop = oversized_requests()[0]
    assert refusal_problem(stop, 400, ERROR.replace("null", '"stop"', 1).encode()) is None
    assert refusal_problem(stop, 400, ERROR.encode()) is not None  # no param named
    assert refusal_problem(stop, 200, b"{}") is not None
    assert refusal_problem(stop, 400, b"oops") is not None
