"""The playground's response-format choice: served, wired into chat requests, and (with Chromium) used."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from handler import playground
from handler.config import Settings
from handler.model import load_served_model
from tests.conftest_http import LiveServer, live_server
from tests.test_playground import Page, chromium, expect, last_answer, wait_done
from tests.tiny_models import tiny_model_dir

SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}


def test_format_script_is_served_and_loaded_before_app() -> None:
    with TestClient(Starlette(routes=playground.routes())) as client:
        response = client.get("/playground/format.js")
    assert response.status_code == 200 and "ladleResponseFormat" in response.text
    page = (playground.HERE / "index.html").read_text()
    assert page.index("/playground/format.js") < page.index("/playground/app.js")
    assert "window.ladleResponseFormat" in (playground.HERE / "app.js").read_text()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from chromium()


@pytest.fixture(scope="module")
def server(browser: Any) -> Iterator[LiveServer]:
    settings = Settings(model=str(tiny_model_dir("llama")), served_model_name="tiny")
    with live_server(settings, loader=load_served_model) as live:
        yield live


def test_json_schema_answer_streams_valid_json(browser: Any, server: LiveServer) -> None:
    tab = Page(browser, server.url)
    try:
        page = tab.open()
        schema_box = page.get_by_label("JSON schema", exact=True)
        expect(schema_box).to_be_hidden()
        page.get_by_label("Response format").select_option("json_schema")
        expect(schema_box).to_be_visible()
        schema_box.fill("{not json")
        expect(schema_box).to_have_attribute("aria-invalid", "true")
        schema_box.fill(json.dumps(SCHEMA))
        expect(schema_box).not_to_have_attribute("aria-invalid", "true")
        box = page.get_by_label("Message", exact=True)
        box.fill("Are you ok?")
        box.press("Enter")
        answer = last_answer(page)
        wait_done(answer)
        text = answer.locator(".content").text_content() or ""
        assert json.loads(text) in ({"ok": True}, {"ok": False})
        assert not tab.errors and not tab.foreign
    finally:
        tab.context.close()
