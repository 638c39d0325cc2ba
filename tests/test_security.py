"""Security: API keys compared in constant time and never logged, prompts and outputs never logged
unless asked, no remote code, no CORS unless configured, and no path opened because of a request."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

import handler.asgi.auth
from backends.errors import ModelLoadError
from handler.config import Settings, settings_from_env
from handler.model import load_served_model
from reliability.live import single_thread
from tests.conftest_http import LiveServer, live_server
from tests.tiny_models import tiny_model_dir

KEY = "sk-" + uuid.uuid4().hex
MARKER = "zq" + uuid.uuid4().hex[:12]  # in every prompt; must show up in no log line


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured record as formatted, with its traceback and its raw arguments."""
    parts = []
    for record in caplog.records:
        parts += [record.getMessage(), record.exc_text or "", repr(record.args)]
        if record.exc_info and record.exc_info[1] is not None:
            parts.append(repr(record.exc_info[1]))
    return "\n".join(parts)


# -- API keys -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed() -> Iterator[LiveServer]:
    with live_server(Settings(api_key=KEY)) as live:
        yield live


def test_api_keys_are_compared_in_constant_time(keyed: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = handler.asgi.auth.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(handler.asgi.auth.hmac, "compare_digest", spy)
    wrong = "sk-" + "0" * (len(KEY) - 3)
    cases = {
        f"Bearer {KEY}": 200,
        f"Bearer {wrong}": 401,
        "Bearer sk-short": 401,
        f"Basic {KEY}": 401,
        "": 401,
    }
    for header, status in cases.items():
        response = httpx.get(keyed.url + "/v1/models", headers={"Authorization": header}, timeout=30)
        assert response.status_code == status, header
        if status == 401:
            assert response.json()["error"]["code"] == "invalid_api_key"
    # Every key sent, right or wrong, went through compare_digest against the configured one.
    assert len(compared) == len(cases)
    assert all(expected == KEY.encode() for _, expected in compared)


def test_api_keys_never_reach_a_log(keyed: LiveServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "sk-" + uuid.uuid4().hex
    for key in (KEY, wrong):
        httpx.get(keyed.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
        httpx.post(
            keyed.url + "/v1/completions", headers={"Authorization": f"Bearer {key}"}, json={}, timeout=30
        )
    settings = settings_from_env({"API_KEY": KEY})
    logging.getLogger("ladle").info("settings: %r %s", settings, settings)
    assert KEY not in log_text(caplog) and wrong not in log_text(caplog)
    assert KEY not in repr(settings) and KEY not in str(settings)


# -- prompts and outputs ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> Iterator[LiveServer]:
    settings = Settings(
        model=str(tiny_model_dir("llama")), served_model_name="tiny", completion_max_prompt=200
    )
    with single_thread(), live_server(settings, loader=load_served_model) as live:
        yield live


def exercise(server: LiveServer) -> list[str]:
    """Requests carrying MARKER down every path (success, stream, refusal, engine failure); their outputs."""
    url, outputs = server.url, []
    chat = {"messages": [{"role": "user", "content": f"{MARKER} hello"}], "max_tokens": 8}
    for path, body in [
        ("/v1/completions", {"prompt": f"{MARKER} once", "max_tokens": 8, "stop": [MARKER]}),
        ("/v1/chat/completions", chat),
        ("/v1/completions", {"prompt": f"{MARKER} s", "max_tokens": 8, "stream": True, "user": MARKER}),
        ("/v1/chat/completions", {**chat, "stream": True, "unknown_field": MARKER}),
        ("/v1/completions", {"prompt": f"{MARKER} " * 300, "max_tokens": 8}),  # too long: refused
        ("/v1/completions", {"prompt": MARKER, "max_tokens": 8, "logit_bias": {MARKER: 1}}),  # refused
        ("/v1/completions", {"prompt": f"{MARKER} \ud800"}),  # refused
    ]:
        response = httpx.post(url + path, content=json.dumps(body), timeout=60)
        outputs += [json.dumps(response.json())] if not response.text.startswith("data:") else [response.text]
    return outputs


def failing_decode(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every forward pass raise: the engine logs the failure, which must not carry the prompt."""
    backend = server.model.engine.core.backend

    def decode(seqs: Any) -> Any:
        raise RuntimeError("injected failure")

    monkeypatch.setattr(backend, "decode", decode)


def test_prompts_and_outputs_are_never_logged_by_default(
    tiny: LiveServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    outputs = exercise(tiny)
    with monkeypatch.context() as patch:
        failing_decode(tiny, patch)
        body = {"prompt": f"{MARKER} fail", "max_tokens": 8}
        assert httpx.post(tiny.url + "/v1/completions", json=body, timeout=60).status_code == 500
    logged = log_text(caplog)
    assert "injected failure" in logged  # the failure was logged, without its prompt
    assert MARKER not in logged
    texts = [
        c.get("text") or c["message"]["content"]
        for o in outputs
        if o.startswith("{")
        for c in json.loads(o).get("choices", [])
    ]
    assert all(text not in logged for text in texts if len(text) >= 8)


def test_log_prompts_logs_prompts_and_outputs(tiny: LiveServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ladle.prompts")
    service = tiny.state.service
    service.log_prompts = True
    try:
        body = {"prompt": f"{MARKER} on", "max_tokens": 4, "temperature": 0}
        text = httpx.post(tiny.url + "/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
        stream = httpx.post(tiny.url + "/v1/completions", json={**body, "stream": True}, timeout=60)
        assert stream.status_code == 200
    finally:
        service.log_prompts = False
    lines = [r.getMessage() for r in caplog.records if r.name == "ladle.prompts"]
    assert sum(MARKER in line and "prompt" in line for line in lines) == 2
    assert sum(repr(text) in line for line in lines if "output" in line) == 2  # greedy: the same text twice


@pytest.mark.skipif(
    "log_prompts" not in {f.name for f in dataclasses.fields(Settings)},
    reason="waits for LOG_PROMPTS in handler/config.py",
)
def test_log_prompts_is_off_unless_set() -> None:
    assert settings_from_env({}).log_prompts is False  # type: ignore[attr-defined]
    assert settings_from_env({"LOG_PROMPTS": "1"}).log_prompts is True  # type: ignore[attr-defined]


# -- remote code, CORS --------------------------------------------------------------------------


def test_trust_remote_code_is_off_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().trust_remote_code is False
    assert settings_from_env({}).trust_remote_code is False
    assert settings_from_env({"TRUST_REMOTE_CODE": "1"}).trust_remote_code is True
    seen: dict[str, Any] = {}
    monkeypatch.setattr("backends.load_model", lambda model, **options: seen.update(options))
    monkeypatch.setenv("TRUST_REMOTE_CODE", "1")  # the server's settings decide, not a second read
    load_served_model(Settings(model="some/model"))
    assert seen["options"].trust_remote_code is False


@pytest.mark.parametrize("model_type", ["llama", "ladle-evil"])
def test_code_shipped_with_a_model_never_runs(tmp_path: Path, model_type: str) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir("llama"), model)
    ran = tmp_path / "ran"
    (model / "evil.py").write_text(f"import pathlib\npathlib.Path({str(ran)!r}).write_text('ran')\n")
    config = json.loads((model / "config.json").read_text())
    config.update(model_type=model_type, auto_map={"AutoConfig": "evil.C", "AutoModelForCausalLM": "evil.M"})
    (model / "config.json").write_text(json.dumps(config))
    try:
        load_served_model(Settings(model=str(model))).close()  # a known type loads its own class
    except ModelLoadError:
        assert model_type != "llama"
    assert not ran.exists()


def test_no_cors_headers_unless_configured(tiny: LiveServer) -> None:
    origin = {"Origin": "http://evil.example"}
    preflight = {**origin, "Access-Control-Request-Method": "POST"}
    responses = [
        httpx.options(tiny.url + "/v1/completions", headers=preflight, timeout=30),
        httpx.get(tiny.url + "/v1/models", headers=origin, timeout=30),
        httpx.get(tiny.url + "/v1/models/nope", headers=origin, timeout=30),
        httpx.post(tiny.url + "/v1/completions", headers=origin, json={"prompt": 1}, timeout=30),
    ]
    for response in responses:
        assert not [name for name in response.headers if name.lower().startswith("access-control-")]


# -- the model field never opens a path ---------------------------------------------------------

_opened: list[tuple[str, str]] = []
_watching = threading.Event()


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _watching.is_set():
        text = repr(args)
        if MARKER in text or "passwd" in text:
            _opened.append((event, text))


sys.addaudithook(_audit)  # hooks cannot be removed: this one does nothing unless a test watches


@pytest.mark.parametrize(
    "model",
    [
        "/etc/passwd",
        f"/tmp/{MARKER}",
        f"../../../../tmp/{MARKER}",
        f"~/{MARKER}",
        f"file:///tmp/{MARKER}",
        f"{MARKER}/{MARKER}.gguf",
        f"\\\\\\\\host\\\\{MARKER}",
    ],
)
def test_the_model_field_never_opens_a_path(tiny: LiveServer, model: str) -> None:
    _opened.clear()
    _watching.set()
    try:
        body = {"model": model, "prompt": "Hi", "max_tokens": 2}
        whole = httpx.post(tiny.url + "/v1/completions", json=body, timeout=60)
        chat = {
            "model": model,
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 2,
            "stream": True,
        }
        stream = httpx.post(tiny.url + "/v1/chat/completions", json=chat, timeout=60)
        card = httpx.get(tiny.url + "/v1/models/" + quote(model, safe=""), timeout=60)
    finally:
        _watching.clear()
    assert whole.status_code == 200 and stream.status_code == 200
    assert card.status_code == 404 and card.json()["error"]["code"] == "model_not_found"
    assert _opened == []
