"""Every error of the API in OpenAI's shape, auth, CORS, health and the body limit, on live servers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from backends.errors import ModelLoadError
from handler.config import Settings
from tests.conftest_http import LiveServer, live_server, wait_until
from tests.fake_engine import FakeModel

KEY = "sk-test-1234"
ORIGIN = "http://allowed.example"


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    settings = Settings(completion_max_prompt=50, max_body_size=20_000)
    with live_server(settings) as live:
        yield live


def post(server: LiveServer, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(server.url + path, timeout=30, **kwargs)


def assert_error(
    response: httpx.Response, status: int, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return dict(error)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "max_tokens": "5"}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 5.5}, "max_tokens"),
        ({"prompt": "x", "n": True}, "n"),
        ({"prompt": "x", "temperature": 3}, "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "logprobs": 6}, "logprobs"),
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"prompt": "x", "presence_penalty": -3}, "presence_penalty"),
        ({"prompt": "x", "best_of": 2, "stream": True}, "best_of"),
        ({"prompt": "x", "logit_bias": {"99999": 1}}, "logit_bias"),
        ({"prompt": "x", "n": 6}, "n"),
        ({}, "prompt"),
    ],
)
def test_invalid_completion_requests(server: LiveServer, body: dict[str, Any], param: str) -> None:
    error = assert_error(post(server, "/v1/completions", json=body), 400, param)
    assert error["type"] == "invalid_request_error"


def test_malformed_json_and_non_object_bodies(server: LiveServer) -> None:
    for content in (b"{not json", b"", b'{"prompt": NaN}', b"\xff\xfe"):
        assert_error(post(server, "/v1/completions", content=content), 400, code="invalid_json")
    assert_error(post(server, "/v1/completions", json=["prompt"]), 400)


def test_context_and_prompt_limits(server: LiveServer) -> None:
    too_long = post(server, "/v1/completions", json={"prompt": "x", "max_tokens": 300})
    assert_error(too_long, 400, code="context_length_exceeded")
    big_prompt = post(server, "/v1/completions", json={"prompt": "word " * 60})
    assert "COMPLETION_MAX_PROMPT" in assert_error(big_prompt, 400, "prompt")["message"]


def test_openai_client_raises_bad_request(server: LiveServer) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="m", prompt="x", temperature=2.5)
    assert info.value.status_code == 400 and info.value.param == "temperature"  # type: ignore[attr-defined]


def test_not_found_and_method_not_allowed(server: LiveServer) -> None:
    assert_error(httpx.get(server.url + "/v1/nothing"), 404)
    assert_error(httpx.get(server.url + "/v1/models/no-such-model"), 404, "model", "model_not_found")
    wrong = httpx.get(server.url + "/v1/completions")
    assert_error(wrong, 405)
    assert "POST" in wrong.headers["allow"]
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_models(server: LiveServer) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    [card] = client.models.list().data
    assert (card.id, card.object, card.created, card.owned_by) == ("fake-model", "model", 1700000000, "ladle")
    assert client.models.retrieve("fake-model").id == "fake-model"


def test_body_over_the_limit_is_413(server: LiveServer) -> None:
    assert_error(post(server, "/v1/completions", json={"prompt": "x" * 30_000}), 413)

    def chunked() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(30):
            yield b"x" * 1000
        yield b'"}'

    assert_error(post(server, "/v1/completions", content=chunked()), 413)


def test_generation_failure_is_500_without_details(server: LiveServer) -> None:
    error = assert_error(post(server, "/v1/completions", json={"prompt": "FAIL", "max_tokens": 10}), 500)
    assert error["type"] == "server_error" and "injected" not in error["message"]
    crash = post(server, "/v1/completions", json={"prompt": "CRASH"})
    error = assert_error(crash, 500)
    assert "secret" not in crash.text and "Traceback" not in crash.text and error["type"] == "server_error"


@pytest.mark.parametrize("stream", [False, True])
def test_a_value_error_inside_the_engine_is_a_500_with_a_log_line(
    server: LiveServer, caplog: pytest.LogCaptureFixture, stream: bool
) -> None:
    # Its message reads like a parameter's; it used to be answered 400 with param "top_p".
    caplog.set_level(logging.ERROR, logger="ladle")
    response = post(server, "/v1/completions", json={"prompt": "VALUEBUG", "stream": stream})
    error = assert_error(response, 500)
    assert (error["type"], error["param"], error["message"]) == (
        "server_error",
        None,
        "internal server error",
    )
    assert "secret" not in response.text
    bugs = [r.exc_info[1] for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], ValueError)]
    assert bugs and "secret internal detail" in str(bugs[0])  # the traceback is in the log, not the body
    assert post(server, "/v1/completions", json={"prompt": "fine", "max_tokens": 2}).status_code == 200


def test_server_keeps_serving_after_failures(server: LiveServer) -> None:
    assert post(server, "/v1/completions", json={"prompt": "CRASH"}).status_code == 500
    assert post(server, "/v1/completions", json={"prompt": "fine"}).status_code == 200


def test_unknown_fields_are_ignored_and_logged_once(
    server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ladle")
    for _ in range(3):
        response = post(
            server, "/v1/completions", json={"prompt": "x", "max_tokens": 1, "vendor_thing": {"a": 1}}
        )
        assert response.status_code == 200
    assert sum("vendor_thing" in record.getMessage() for record in caplog.records) == 1


def test_openapi_document(server: LiveServer) -> None:
    schema = httpx.get(server.url + "/openapi.json").json()
    assert schema["openapi"].startswith("3.") and "/v1/chat/completions" in schema["paths"]


@pytest.fixture(scope="module")
def guarded() -> Iterator[LiveServer]:
    with live_server(Settings(api_key=KEY, cors_origins=(ORIGIN,))) as live:
        yield live


def test_api_key(guarded: LiveServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assert_error(httpx.get(guarded.url + "/v1/models"), 401, code="invalid_api_key")
    wrong = httpx.get(guarded.url + "/v1/models", headers={"Authorization": "Bearer sk-wrong"})
    assert_error(wrong, 401)
    assert (
        httpx.get(guarded.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    )
    assert httpx.get(guarded.url + "/health").status_code == 200
    assert httpx.get(guarded.url + "/ping").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=guarded.url + "/v1", api_key="nope", max_retries=0).models.list()
    client = openai.OpenAI(base_url=guarded.url + "/v1", api_key=KEY, max_retries=0)
    assert client.completions.create(model="m", prompt="x", max_tokens=1).choices
    assert KEY not in caplog.text and "sk-wrong" not in caplog.text


def test_cors_only_for_listed_origins(guarded: LiveServer) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    allowed = httpx.options(guarded.url + "/v1/completions", headers={"Origin": ORIGIN, **preflight})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.options(
        guarded.url + "/v1/completions", headers={"Origin": "http://evil.example", **preflight}
    )
    assert "access-control-allow-origin" not in other.headers
    simple = httpx.get(guarded.url + "/health", headers={"Origin": ORIGIN})
    assert simple.headers["access-control-allow-origin"] == ORIGIN
    assert (
        "access-control-allow-origin"
        not in httpx.get(guarded.url + "/health", headers={"Origin": "http://x"}).headers
    )


def test_no_cors_headers_by_default(server: LiveServer) -> None:
    response = httpx.get(server.url + "/health", headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in response.headers


def test_health_is_503_until_the_model_loads() -> None:
    release = threading.Event()

    def slow_loader(settings: Settings) -> FakeModel:
        release.wait(30)
        return FakeModel()

    with live_server(loader=slow_loader, healthy=False) as live:
        assert httpx.get(live.url + "/health").status_code == 503
        assert httpx.get(live.url + "/ping").json() == {"status": "loading"}
        assert_error(httpx.get(live.url + "/v1/models"), 503, code="model_loading")
        release.set()
        live.wait_healthy()
        assert httpx.get(live.url + "/ping").json() == {"status": "ok"}


def test_load_failure_is_reported() -> None:
    failures: list[BaseException] = []

    def broken_loader(settings: Settings) -> FakeModel:
        raise ModelLoadError("no such model: /nowhere")

    from handler.asgi.app import create_app

    app = create_app(Settings(), loader=broken_loader, on_load_error=failures.append)
    with LiveServer(app).running(healthy=False) as live:
        wait_until(lambda: bool(failures), 30, "the load failure was not reported")
        assert httpx.get(live.url + "/health").json() == {"status": "failed"}
        error = assert_error(httpx.post(live.url + "/v1/completions", json={"prompt": "x"}), 503)
        assert "no such model" in error["message"]
