"""The library honours every completion parameter as the HTTP API does: the same tiny model, the
same request through `load_model()(...)`, `agenerate` and POST /v1/completions, the same choices."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from backends.engine.params import SamplingParams
from backends.library import Model, load_model
from handler.config import Settings
from handler.model import load_served_model
from tests.conftest_http import LiveServer, live_server
from tests.tiny_models import tiny_model_dir

PROMPT = "once upon a time"
# One case per parameter (with what it needs to show); "STOP" is replaced by a piece of greedy text.
CASES: list[dict[str, Any]] = [
    {"seed": 11},  # every other parameter at its default
    {"max_tokens": 7, "temperature": 0},
    {"n": 2, "temperature": 0.9, "seed": 7, "max_tokens": 5},
    {"best_of": 3, "n": 2, "temperature": 1.0, "seed": 3, "max_tokens": 4},
    {"min_tokens": 5, "max_tokens": 6, "temperature": 0},
    {"top_p": 0.6, "seed": 1, "max_tokens": 6},
    {"top_k": 4, "seed": 2, "max_tokens": 6},
    {"min_p": 0.1, "seed": 3, "max_tokens": 6},
    {"presence_penalty": 1.5, "frequency_penalty": -1.0, "temperature": 0, "max_tokens": 8},
    {"repetition_penalty": 1.4, "temperature": 0, "max_tokens": 8},
    {"logit_bias": {"7": 100.0}, "temperature": 0, "max_tokens": 3},
    {"logprobs": 3, "temperature": 0, "max_tokens": 4},
    {"echo": True, "temperature": 0, "max_tokens": 3},
    {"echo": True, "logprobs": 2, "temperature": 0, "max_tokens": 3},
    {"stop": "STOP", "temperature": 0, "max_tokens": 12},
    {"stop": ["zzzz", "STOP"], "temperature": 0, "max_tokens": 12, "logprobs": 1},
    {"ignore_eos": True, "temperature": 0, "max_tokens": 9},
    {"seed": 123, "temperature": 1.7, "max_tokens": 6},
    {"structured_outputs": {"regex": "[a-z]{2,12}"}, "seed": 5, "max_tokens": 8},
]
# Request keywords that are spelled differently from the SamplingParams field they set.
FIELD_OF = {"structured_outputs": "grammar"}
# Library-only parameters: the HTTP API does not take them (tested with the engine).
LIBRARY_ONLY = {"stop_token_ids", "skip_special_tokens"}


@pytest.fixture(scope="module")
def model() -> Iterator[Model]:
    loaded = load_model(str(tiny_model_dir("llama")))
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def http() -> Iterator[LiveServer]:
    settings = Settings(model=str(tiny_model_dir("llama")), served_model_name="tiny")
    with live_server(settings, loader=load_served_model) as live:
        yield live


@pytest.fixture(scope="module")
def stop(model: Model) -> str:
    """A piece from the middle of the greedy text, so that the stop cases really stop."""
    text = "".join(c["text"] for c in model(PROMPT, temperature=0, max_tokens=12))
    middle = text[len(text) // 2 :].strip()
    assert len(middle) >= 2, text
    return middle[:2]


def joined(choices: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Streamed choice pieces joined per index: text, logprob lists, the last finish_reason."""
    whole: dict[int, dict[str, Any]] = {}
    for piece in choices:
        entry = whole.setdefault(piece["index"], {"text": "", "logprobs": None, "finish_reason": None})
        entry["text"] += piece["text"]
        if piece["logprobs"] is not None:
            entry["logprobs"] = entry["logprobs"] or {k: [] for k in piece["logprobs"]}
            for key, values in piece["logprobs"].items():
                entry["logprobs"][key] += values
        entry["finish_reason"] = piece["finish_reason"] or entry["finish_reason"]
    return [whole[index] for index in sorted(whole)]


def from_http(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"text": c["text"], "logprobs": c["logprobs"], "finish_reason": c["finish_reason"]}
        for c in sorted(body["choices"], key=lambda c: c["index"])
    ]


def library_kwargs(case: dict[str, Any]) -> dict[str, Any]:
    kwargs = dict(case)
    if "logit_bias" in kwargs:
        kwargs["logit_bias"] = {int(k): v for k, v in kwargs["logit_bias"].items()}
    return kwargs


def same(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> None:
    assert [c["text"] for c in ours] == [c["text"] for c in theirs]
    assert [c["finish_reason"] for c in ours] == [c["finish_reason"] for c in theirs]
    for mine, other in zip(ours, theirs, strict=True):
        if other["logprobs"] is None:
            assert mine["logprobs"] is None
            continue
        assert (
            set(mine["logprobs"])
            == set(other["logprobs"])
            == {
                "tokens",
                "token_logprobs",
                "top_logprobs",
                "text_offset",
            }
        )
        for key in ("tokens", "text_offset"):
            assert mine["logprobs"][key] == other["logprobs"][key], key
        assert mine["logprobs"]["token_logprobs"] == pytest.approx(
            other["logprobs"]["token_logprobs"], abs=1e-4
        )
        for top_mine, top_other in zip(
            mine["logprobs"]["top_logprobs"], other["logprobs"]["top_logprobs"], strict=True
        ):
            assert (top_mine is None) == (top_other is None)
            if top_other is not None:
                assert top_mine == pytest.approx(top_other, abs=1e-4)


def test_the_cases_cover_every_parameter() -> None:
    covered = {FIELD_OF.get(name, name) for case in CASES for name in case}
    assert covered == {f.name for f in dataclasses.fields(SamplingParams)} - LIBRARY_ONLY


@pytest.mark.parametrize("case", CASES, ids=lambda case: ",".join(case) or "defaults")
def test_the_library_gives_what_the_http_api_gives(
    model: Model, http: LiveServer, stop: str, case: dict[str, Any]
) -> None:
    case = {
        k: ([s.replace("STOP", stop) for s in v] if isinstance(v, list) else v.replace("STOP", stop))
        if k == "stop"
        else v
        for k, v in case.items()
    }
    body = httpx.post(http.url + "/v1/completions", json={"prompt": PROMPT, **case}, timeout=120)
    assert body.status_code == 200, body.text
    theirs = from_http(body.json())
    same(joined(model(PROMPT, **library_kwargs(case))), theirs)
    if "stop" in case:
        assert all(c["finish_reason"] == "stop" for c in theirs)
    if case.get("echo"):
        assert all(c["text"].startswith(PROMPT) for c in theirs)


async def test_agenerate_echoes_too(http: LiveServer) -> None:
    case = {"echo": True, "logprobs": 2, "temperature": 0, "max_tokens": 3}
    body = httpx.post(http.url + "/v1/completions", json={"prompt": PROMPT, **case}, timeout=120).json()
    model = load_model(str(tiny_model_dir("llama")))  # its own: a shut-down engine admits nothing more
    try:
        pieces = [c async for c in model.agenerate(PROMPT, **case)]
    finally:
        await model.engine.shutdown()
        model.close()
    assert pieces[0]["text"].startswith(PROMPT) and pieces[0]["logprobs"]["top_logprobs"][0] is None
    same(joined(pieces), from_http(body))


def test_token_id_prompts_echo_their_decoded_text(model: Model, http: LiveServer) -> None:
    ids = model.encode(PROMPT)
    case = {"echo": True, "logprobs": 1, "temperature": 0, "max_tokens": 3}
    body = httpx.post(http.url + "/v1/completions", json={"prompt": ids, **case}, timeout=120).json()
    same(joined(model(ids, **case)), from_http(body))


def test_streamed_http_joins_to_what_the_library_streams(model: Model, http: LiveServer) -> None:
    import json

    case = {"echo": True, "logprobs": 2, "n": 2, "temperature": 0.8, "seed": 5, "max_tokens": 4}
    pieces: list[dict[str, Any]] = []
    with httpx.stream(
        "POST", http.url + "/v1/completions", json={"prompt": PROMPT, "stream": True, **case}, timeout=120
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                pieces += json.loads(line[6:])["choices"]
    same(joined(model(PROMPT, **case)), joined(pieces))
