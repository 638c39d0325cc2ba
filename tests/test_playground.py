"""The web playground: its routes, then the page itself in headless Chromium against a real server."""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from handler import playground
from handler.asgi.app import create_app
from handler.config import Settings, settings_from_env
from handler.model import load_served_model
from tests.conftest_http import LiveServer, live_server, wait_until
from tests.fake_engine import fake_loader
from tests.tiny_models import tiny_model_dir

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
API_KEY = "pg-secret"
# Tokens asked of the stopped answers: the tiny Llama's 1024-token context less a fresh prompt.
LONG_ANSWER = 990
STOP_STEPS = 20  # engine steps allowed at a time while a long answer is stopped


# -- the routes, without a browser ------------------------------------------------------------


@pytest.fixture(scope="module")
def static_client() -> Iterator[TestClient]:
    with TestClient(Starlette(routes=playground.routes())) as client:
        yield client


@pytest.mark.parametrize(
    ("path", "media_type"),
    [("/", "text/html"), ("/playground/app.js", "text/javascript"), ("/playground/style.css", "text/css")],
)
def test_files_are_served_with_their_types(static_client: TestClient, path: str, media_type: str) -> None:
    response = static_client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == f"{media_type}; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"


def test_page_forbids_other_origins(static_client: TestClient) -> None:
    csp = static_client.get("/").headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp


@pytest.mark.parametrize(
    "path", ["/playground/__init__.py", "/playground/index.html", "/playground/..%2Fapp.py"]
)
def test_only_the_assets_are_served(static_client: TestClient, path: str) -> None:
    assert static_client.get(path).status_code == 404


def page_scripts() -> list[str]:
    """The scripts index.html loads, in its order; each is a deferred file under /playground/."""
    page = (playground.HERE / "index.html").read_text()
    names = []
    for attributes in re.findall(r"<script\b([^>]*)>", page):
        source = re.search(r'\bsrc="/playground/([^"]+)"', attributes)
        assert source and re.search(r"\bdefer\b", attributes), attributes
        names.append(source.group(1))
    return names


def test_every_script_the_page_loads_is_served(static_client: TestClient) -> None:
    scripts = page_scripts()
    for name in scripts:
        response = static_client.get(f"/playground/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"] == "text/javascript; charset=utf-8", name
        assert response.headers["cache-control"] == "no-cache", name
    # And no script is served that the page does not load.
    assert sorted(scripts) == sorted(name for name in playground.ASSETS if name.endswith(".js"))


def test_scripts_load_after_the_scripts_they_use() -> None:
    """Each script shares what it offers as one `window.ladle…` name; its users come later."""
    offered: set[str] = set()
    for name in page_scripts():
        text = (playground.HERE / name).read_text()
        own = set(re.findall(r"window\.(ladle\w+) =[^=]", text))
        used = set(re.findall(r"window\.(ladle\w+)", text)) - own
        assert used <= offered, f"{name} uses {sorted(used - offered)} before it is loaded"
        offered |= own


@pytest.mark.parametrize("name", sorted(playground.ASSETS))
def test_every_asset_stays_under_400_lines(name: str) -> None:
    lines = len((playground.HERE / name).read_text().splitlines())
    assert lines < 400, f"{name} has {lines} lines: split it by concern"


def test_nothing_comes_from_the_internet() -> None:
    for name in ("index.html", *playground.ASSETS):
        text = (playground.HERE / name).read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), name


@pytest.mark.parametrize(
    ("value", "on"), [(None, True), ("", True), ("0", True), ("false", True), ("1", False), ("yes", False)]
)
def test_no_playground_turns_it_off(value: str | None, on: bool) -> None:
    assert settings_from_env({} if value is None else {"NO_PLAYGROUND": value}).no_playground is not on


def _serves_playground(app: Starlette) -> bool:
    return any(getattr(route, "endpoint", None) is playground.index for route in app.routes)


def test_app_leaves_the_playground_out_with_no_playground(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _serves_playground(create_app(Settings(), loader=fake_loader()))
    assert not _serves_playground(create_app(Settings(no_playground=True), loader=fake_loader()))
    monkeypatch.setenv("NO_PLAYGROUND", "1")
    assert not _serves_playground(create_app(loader=fake_loader()))  # the app reads the environment


# -- the page in a real browser ---------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from chromium()


def chromium() -> Iterator[Any]:
    """Debian's Chromium under Playwright for a module's tests; skips where either is missing."""
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: the set-up installs Debian's (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
    with sync_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        sync_api.expect.set_options(timeout=15_000)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(browser: Any) -> Iterator[LiveServer]:
    # One sequence at a time: a request served after Stop proves the stopped one freed its place.
    settings = Settings(model=str(tiny_model_dir("llama")), served_model_name="tiny", max_batch_size=1)
    with live_server(settings, loader=load_served_model) as live:
        yield live


class Page:
    """A fresh browser context on the playground, recording console errors and foreign requests."""

    def __init__(self, browser: Any, url: str, **context: Any) -> None:
        self.url = url
        self.context = browser.new_context(**{"viewport": {"width": 1280, "height": 800}, **context})
        self.errors: list[str] = []
        self.foreign: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def _route(self, route: Any) -> None:
        if route.request.url.startswith(self.url + "/") or route.request.url.startswith("data:"):
            route.continue_()
        else:
            self.foreign.append(route.request.url)
            route.abort()

    def open(self) -> Any:
        self.page.goto(self.url + "/")
        return self.page

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"playground-{name}.png"))


@pytest.fixture
def tab(browser: Any, server: LiveServer) -> Iterator[Page]:
    tab = Page(browser, server.url)
    yield tab
    tab.context.close()


def expect(target: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


def set_params(page: Any, **values: str) -> None:
    for label, value in values.items():
        page.get_by_label(label.replace("_", " ").capitalize(), exact=True).fill(value)


def open_params(page: Any) -> None:
    """On a phone the parameters are a panel opened from the header."""
    page.get_by_role("button", name="Parameters", exact=True).click()
    expect(page.get_by_label("Temperature")).to_be_visible()


def close_params(page: Any) -> None:
    page.keyboard.press("Escape")
    expect(page.get_by_label("Temperature")).to_be_hidden()


def last_answer(page: Any) -> Any:
    return page.locator("article.message:not(.user)").last


def stat(answer: Any, name: str) -> Any:
    return answer.locator(f'[data-stat="{name}"] .stat-value')


def wait_done(answer: Any) -> None:
    expect(answer).not_to_have_attribute("aria-busy", "true")


def api(server: LiveServer, path: str, **body: Any) -> dict[str, Any]:
    response = httpx.post(server.url + path, json=body, timeout=60)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def test_page_loads_clean_at_desktop_and_phone_width(browser: Any, server: LiveServer) -> None:
    for name, viewport in (("desktop", (1280, 800)), ("phone", (375, 740))):
        tab = Page(browser, server.url, viewport={"width": viewport[0], "height": viewport[1]})
        page = tab.open()
        expect(page.locator("#server-text")).to_have_text("tiny · hf_eager")
        expect(page.get_by_label("Message", exact=True)).to_be_focused()
        # Every control has an accessible name.
        unnamed = page.evaluate(
            """[...document.querySelectorAll('input:not([type=radio]), textarea, select, button')]
                 .filter(e => e.checkVisibility() && !e.labels?.length && !e.textContent.trim())
                 .map(e => e.id)"""
        )
        assert unnamed == []
        # Nothing overflows sideways at a phone's width.
        assert page.evaluate("document.documentElement.scrollWidth") <= viewport[0]
        if name == "phone":
            open_params(page)
            expect(page.get_by_role("button", name="Parameters", exact=True)).to_have_attribute(
                "aria-expanded", "true"
            )
            tab.screenshot("phone-parameters")
            close_params(page)
        tab.screenshot(f"{name}-empty")
        assert tab.errors == [] and tab.foreign == []
        tab.context.close()


def test_chat_streams_an_answer_with_stats_and_token_alternatives(tab: Page, server: LiveServer) -> None:
    page = tab.open()
    page.get_by_label("Preset").select_option("precise")
    set_params(page, max_tokens="12")
    page.get_by_label("System prompt").fill("Be brief.")
    box = page.get_by_label("Message", exact=True)
    box.fill("Hello there")
    box.press("Enter")

    answer = last_answer(page)
    wait_done(answer)
    expected = api(
        server,
        "/v1/chat/completions",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}],
        max_tokens=12,
        temperature=0,
    )["choices"][0]
    assert answer.locator(".content").text_content() == expected["message"]["content"]
    expect(stat(answer, "tokens")).to_have_text("12")
    expect(stat(answer, "finish")).to_have_text(expected["finish_reason"])
    expect(stat(answer, "TTFT")).to_have_text(re.compile(r"^\d+ ms$"))
    expect(stat(answer, "tok/s")).to_have_text(re.compile(r"^\d+\.\d$"))
    assert box.input_value() == ""

    # Second turn, with token probabilities: the whole conversation goes back to the server.
    page.get_by_label("Show token probabilities").check()
    box.fill("And again")
    with page.expect_request("**/v1/chat/completions") as sent:
        page.get_by_role("button", name="Send").click()
    body = sent.value.post_data_json
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    assert body["messages"][2]["content"] == expected["message"]["content"]
    assert body["logprobs"] is True and body["top_logprobs"] == 5 and body["temperature"] == 0
    answer = last_answer(page)
    wait_done(answer)
    tokens = answer.locator(".tok")
    assert tokens.count() >= 1
    tokens.first.hover()
    tip = page.get_by_role("tooltip")
    expect(tip).to_be_visible()
    expect(tip).to_contain_text("logprob")
    # One row per alternative, for each token in the span (a character can take several byte tokens).
    assert tip.locator("li").count() == 5 * tip.locator(".tip-head").count() > 0
    tab.screenshot("desktop-chat")
    # The tooltip follows keyboard focus too.
    page.mouse.move(0, 0)
    tokens.first.focus()
    expect(tip).to_be_visible()
    page.keyboard.press("End")
    expect(tokens.last).to_be_focused()

    page.get_by_role("button", name="Clear conversation").click()
    expect(page.locator("article.message")).to_have_count(0)
    assert tab.errors == [] and tab.foreign == []


def test_stop_ends_a_long_generation_and_the_server_frees_it(
    browser: Any, server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = server.model.engine
    # The tiny model writes a long answer faster than a busy machine's browser can click Stop
    # (the whole answer, once): the engine takes a step only with a permit, so the answer is
    # still running when Stop lands, and nothing but the stop can free its place.
    permits = threading.Semaphore(0)
    step = engine.core.step

    def gated_step() -> Any:
        permits.acquire(timeout=30)  # a missing permit slows the server down, never wedges it
        return step()

    monkeypatch.setattr(engine.core, "step", gated_step)
    tab = Page(browser, server.url, viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    page = tab.open()
    open_params(page)
    # Nearly the whole 1024-token context: a prompt that carried a stopped answer would not fit,
    # so each long request must start a fresh conversation (see the Clear below).
    set_params(page, max_tokens=str(LONG_ANSWER))
    page.get_by_label("Ignore end of text", exact=False).check()
    close_params(page)
    box = page.get_by_label("Message", exact=True)
    for stop_with in ("button", "Escape"):
        _stop_a_long_answer(page, engine, permits, stop_with)
        tab.screenshot("phone-chat-stopped")
        # How far a stopped answer got depends on the machine's load (hundreds of tokens on a busy
        # one): the next prompt must not carry it.
        page.get_by_role("button", name="Clear conversation").click()
        expect(page.locator("article.message")).to_have_count(0)

    # With one sequence allowed, this is served only because the stopped ones left.
    open_params(page)
    set_params(page, max_tokens="4")
    page.get_by_label("Ignore end of text", exact=False).uncheck()
    close_params(page)
    steps_before = engine.steps
    permits.release(STOP_STEPS)
    box.fill("Short one")
    box.press("Enter")
    wait_done(last_answer(page))
    expect(stat(last_answer(page), "finish")).to_have_text(re.compile("^(length|stop)$"))
    # Counted in steps, not seconds: a leftover long run would have taken hundreds of them.
    assert engine.steps - steps_before < 100
    assert tab.errors == []
    tab.context.close()


def _stop_a_long_answer(page: Any, engine: Any, permits: threading.Semaphore, stop_with: str) -> None:
    """Ask for a long answer, stop it (Stop button or Escape) while it streams, and see it freed."""
    while permits.acquire(blocking=False):
        pass  # the permits left by the last answer
    steps_before = engine.steps
    permits.release(STOP_STEPS)  # the prefill and the first tokens; then the engine waits
    box = page.get_by_label("Message", exact=True)
    box.fill("Tell me a long story")
    box.press("Enter")
    answer = last_answer(page)
    # A generous bound for a busy machine: the first tokens of a long run, not a speed.
    first_tokens = stat(answer, "tokens").filter(has_text=re.compile(r"^([5-9]|\d\d+)$"))
    expect(first_tokens.or_(answer.locator(".error"))).to_be_visible(timeout=90_000)
    failed = answer.locator(".error").all_text_contents()
    assert not failed, f"the {stop_with} run was refused: {failed}"
    expect(answer).to_have_attribute("aria-busy", "true")  # still streaming
    assert engine.num_running == 1
    if stop_with == "button":
        page.get_by_role("button", name="Stop").click()
    else:
        page.keyboard.press("Escape")
    wait_done(answer)
    expect(stat(answer, "finish")).to_have_text("stopped")
    requests = engine.core._requests
    wait_until(
        lambda: all(r.aborted for r in list(requests.values())), 30, "the stop never reached the engine"
    )
    # Steps enough to drop it, far too few to finish it: only the stop can free the place.
    permits.release(STOP_STEPS)
    wait_until(lambda: engine.num_running + engine.num_queued == 0, 30, "the stopped request kept running")
    assert engine.steps - steps_before <= 2 * STOP_STEPS < LONG_ANSWER
    expect(page.get_by_role("button", name="Stop")).to_be_hidden()


def test_completion_mode(browser: Any, server: LiveServer) -> None:
    tab = Page(browser, server.url, color_scheme="dark")
    page = tab.open()
    page.get_by_role("radio", name="Completion").check()
    expect(page.get_by_label("Prompt", exact=True)).to_be_visible()
    expect(page.get_by_label("System prompt")).to_be_hidden()
    page.get_by_label("Preset").select_option("precise")
    set_params(page, max_tokens="10")
    prompt = page.get_by_label("Prompt", exact=True)
    prompt.fill("Once upon a time")
    prompt.press("Enter")  # a newline in a prompt, not a request
    expect(page.locator("article.message")).to_have_count(0)
    prompt.fill("Once upon a time")
    prompt.press("Control+Enter")

    card = last_answer(page)
    wait_done(card)
    expected = api(server, "/v1/completions", prompt="Once upon a time", max_tokens=10, temperature=0)
    expect(card.locator(".prompt")).to_have_text("Once upon a time")
    assert card.locator(".content").text_content() == expected["choices"][0]["text"]
    expect(stat(card, "tokens")).to_have_text("10")
    expect(stat(card, "finish")).to_have_text("length")

    page.get_by_label("Show token probabilities").check()
    with page.expect_request("**/v1/completions") as sent:
        page.get_by_role("button", name="Generate").click()
    assert sent.value.post_data_json["logprobs"] == 5
    card = last_answer(page)
    wait_done(card)
    expect(card.locator(".tok")).to_have_count(10)
    card.locator(".tok").nth(2).hover()
    expect(page.get_by_role("tooltip")).to_contain_text("logprob")
    tab.screenshot("desktop-completion-dark")
    card.get_by_role("button", name="Continue from here").click()
    assert prompt.input_value() == "Once upon a time" + expected["choices"][0]["text"]
    assert tab.errors == [] and tab.foreign == []
    tab.context.close()


def test_parameters_and_mode_are_remembered(tab: Page) -> None:
    page = tab.open()
    page.get_by_label("Preset").select_option("creative")
    set_params(page, seed="42", max_tokens="3")
    page.get_by_label("Stop sequences").fill("\\n\\n\nTHE END")
    page.get_by_role("radio", name="Completion").check()
    page.reload()

    expect(page.get_by_role("radio", name="Completion")).to_be_checked()
    expect(page.get_by_label("Preset")).to_have_value("creative")
    expect(page.get_by_label("Seed")).to_have_value("42")
    page.get_by_label("Prompt", exact=True).fill("Hi")
    with page.expect_request("**/v1/completions") as sent:
        page.get_by_role("button", name="Generate").click()
    body = sent.value.post_data_json
    assert body["seed"] == 42 and body["max_tokens"] == 3 and body["stop"] == ["\n\n", "THE END"]
    assert (body["temperature"], body["presence_penalty"], body["stream"]) == (1, 0.5, True)
    assert body["stream_options"] == {"include_usage": True}
    wait_done(last_answer(page))
    # Editing a preset's value makes it a custom set.
    set_params(page, temperature="0.33")
    expect(page.get_by_label("Preset")).to_have_value("custom")


def test_api_errors_are_shown_readably(tab: Page) -> None:
    page = tab.open()
    set_params(page, max_tokens="5000")
    box = page.get_by_label("Message", exact=True)
    box.fill("Hi")
    box.press("Enter")
    alert = page.get_by_role("alert")
    expect(alert).to_have_text("400: max_tokens must be <= 4096, got 5000")
    # The message comes back to the box, ready to resend.
    expect(box).to_have_value("Hi")

    # An error event mid-stream (a failing engine is hard to arrange for real, so the stream is canned).
    chunk = {"choices": [{"index": 0, "delta": {"content": "Half an ans"}, "finish_reason": None}]}
    error = {"error": {"message": "the engine failed", "type": "server_error", "param": None, "code": None}}
    events = "".join(f"data: {json.dumps(event)}\n\n" for event in (chunk, error))
    page.route(
        "**/v1/chat/completions",
        lambda route: route.fulfill(status=200, content_type="text/event-stream", body=events),
    )
    set_params(page, max_tokens="5")
    box.press("Enter")
    answer = last_answer(page)
    expect(answer.get_by_role("alert")).to_have_text("the engine failed")
    expect(answer.locator(".content")).to_have_text("Half an ans")


def test_api_key_field_when_the_server_requires_one(browser: Any) -> None:
    settings = Settings(model=str(tiny_model_dir("llama")), served_model_name="locked", api_key=API_KEY)
    with live_server(settings, loader=load_served_model) as locked:
        tab = Page(browser, locked.url)
        page = tab.open()
        expect(page.locator("#server-text")).to_have_text("API key needed")
        key = page.get_by_label("API key")
        expect(key).to_be_visible()
        key.fill("wrong")
        key.press("Tab")
        box = page.get_by_label("Message", exact=True)
        box.fill("Hi")
        box.press("Enter")
        expect(page.get_by_role("alert")).to_contain_text("401: missing or incorrect API key")
        key.fill(API_KEY)
        key.press("Tab")
        expect(page.locator("#server-text")).to_have_text("locked · hf_eager")
        set_params(page, max_tokens="3")
        box.fill("Hi")
        box.press("Enter")
        wait_done(last_answer(page))
        expect(stat(last_answer(page), "finish")).to_have_text(re.compile("^(length|stop)$"))
        assert tab.foreign == []
        tab.context.close()
