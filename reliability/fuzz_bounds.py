"""Hostile requests at every bound a request controls: each is far past its bound yet within
MAX_BODY_SIZE, and must be answered 400 naming the field, at once, with no harm to anyone else.

Before the bounds, the first of them (one stop string of 200,000 characters) drove a server to
20 GB of memory and froze every stream. `fuzz` sends them all after the schemathesis cases;
`reliability.bounds_pace` times them against live streams.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import requests

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"


@dataclass(frozen=True, slots=True)
class Oversized:
    """One hostile request: where it goes, its raw body, and the param its 400 must name."""

    name: str
    path: str
    body: bytes
    param: str | None

    @property
    def size(self) -> int:
        return len(self.body)


def _json(body: object) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def _deep(depth: int) -> bytes:
    # json.dumps itself recurses; the body is written out instead.
    return b'{"prompt":"x","user":' + b"[" * depth + b'"x"' + b"]" * depth + b"}"


def oversized_requests() -> list[Oversized]:
    """One request past each bound (the default settings'), each under 4 MiB."""
    user = {"role": "user", "content": "x"}
    return [
        Oversized(
            "stop: one string of 200,000 chars",
            COMPLETIONS,
            _json({"prompt": "x", "stop": "s" * 200_000}),
            "stop",
        ),
        Oversized(
            "stop: four strings of 100,000 chars",
            CHAT,
            _json({"messages": [user], "stop": ["t" * 100_000] * 4}),
            "stop",
        ),
        Oversized(
            "logit_bias: 200,000 entries",
            COMPLETIONS,
            _json({"prompt": "x", "logit_bias": {str(i): 1 for i in range(200_000)}}),
            "logit_bias",
        ),
        Oversized("prompt: 100,000 prompts", COMPLETIONS, _json({"prompt": ["x"] * 100_000}), "prompt"),
        Oversized("prompt: 1,000,000 token ids", COMPLETIONS, _json({"prompt": [1] * 1_000_000}), "prompt"),
        Oversized("messages: 100,000 messages", CHAT, _json({"messages": [user] * 100_000}), "messages"),
        Oversized(
            "messages: 3,000,000 chars",
            CHAT,
            _json({"messages": [{"role": "user", "content": "y" * 3_000_000}]}),
            "messages",
        ),
        Oversized("JSON nested 100,000 deep", COMPLETIONS, _deep(100_000), None),
    ]


def refusal_problem(request: Oversized, status: int, body: bytes) -> str | None:
    """Why the answer to an oversized request is wrong (not a 400 naming its field), or None."""
    if status != 400:
        return f"{request.name}: status {status}, not 400: {body[:200]!r}"
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return f"{request.name}: a 400 without an OpenAI error body: {body[:200]!r}"
    if request.param is not None and error.get("param") != request.param:
        return f"{request.name}: param {error.get('param')!r}, not {request.param!r}"
    return None


def send(session: requests.Session, base_url: str, request: Oversized) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    return session.post(base_url + request.path, data=request.body, headers=headers, timeout=120)
