"""Readiness as platforms probe it: /health and /ping while loading, ready and draining; the start-up log."""

from __future__ import annotations

import logging
import threading
from typing import Any

import httpx
import pytest

from handler.cli import parse_settings
from handler.config import Settings
from tests.conftest_http import live_server
from tests.fake_engine import fake_loader

CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


def gated_loader(gate: threading.Event) -> Any:
    """A loader that holds the model back until the test opens the gate."""
    load = fake_loader()

    def loader(settings: Settings) -> Any:
        gate.wait(60)
        return load(settings)

    return loader


def test_health_names_the_model_backend_and_devices() -> None:
    with live_server(Settings(served_model_name="served")) as live:
        health = httpx.get(live.url + "/health")
        ping = httpx.get(live.url + "/ping")
    assert health.status_code == 200 and ping.status_code == 200
    assert health.json() == {
        "status": "ok",
        "model": "served",
        "backend": "hf_eager",
        "device": "cpu",
        "devices": ["cpu"],
        "dtype": "float32",
        "fast_paths": {"attention": "eager", "cache": "dynamic", "compiled_decode": False},
    }
    assert ping.json() == {"status": "ok"}


@pytest.mark.parametrize("loading_status", [503, 204])
def test_loading_answers_the_configured_status_then_200(loading_status: int) -> None:
    gate = threading.Event()
    settings = Settings(health_loading_status=loading_status)
    with live_server(settings, loader=gated_loader(gate), healthy=False) as live:
        try:
            for path in ("/health", "/ping"):
                response = httpx.get(live.url + path)
                assert response.status_code == loading_status
                assert response.content == (b"" if loading_status == 204 else b'{"status":"loading"}')
            refused = httpx.post(live.url + "/v1/chat/completions", json=CHAT)
            assert refused.status_code == 503 and refused.headers["Retry-After"].isdigit()
            assert refused.json()["error"]["code"] == "model_loading"
        finally:
            gate.set()
        live.wait_healthy()
        assert httpx.get(live.url + "/ping").status_code == 200


def test_draining_fails_readiness_and_refuses_new_requests() -> None:
    with live_server() as live:
        live.state.begin_drain()
        health = httpx.get(live.url + "/health")
        assert health.status_code == 503
        assert health.json()["status"] == "draining" and health.json()["backend"] == "hf_eager"
        assert httpx.get(live.url + "/ping").json() == {"status": "draining"}
        for method, path, body in (("POST", "/v1/chat/completions", CHAT), ("GET", "/v1/models", None)):
            refused = httpx.request(method, live.url + path, json=body)
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
            assert refused.json()["error"]["code"] == "draining"
        assert httpx.get(live.url + "/metrics").status_code == 200


def test_start_up_log_says_what_is_served_where(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ladle"), live_server(Settings(served_model_name="logged")):
        pass
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("loading model") for m in messages)
    assert any("serving logged with backend hf_eager on cpu (devices: cpu; float32)" in m for m in messages)


def test_probes_are_open_but_metrics_need_the_api_key() -> None:
    with live_server(Settings(api_key="k-1")) as live:
        assert httpx.get(live.url + "/health").status_code == 200
        assert httpx.get(live.url + "/metrics").status_code == 401
        keyed = httpx.get(live.url + "/metrics", headers={"Authorization": "Bearer k-1"})
        assert keyed.status_code == 200 and "ladle_queue_depth" in keyed.text


def test_drain_settings_from_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRAIN_TIMEOUT", "7")
    monkeypatch.setenv("HEALTH_LOADING_STATUS", "204")
    assert parse_settings([]).drain_timeout == 7
    assert parse_settings(["--drain-timeout", "0"]).drain_timeout == 0
    assert parse_settings([]).health_loading_status == 204
