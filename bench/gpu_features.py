"""Feature probes of the GPU check: one request each through the served model, where the
feature is in this build.

On a GPU server these exercise what no CPU test can: a grammar's token mask applied to CUDA
logits, and prefix-cache writes and reads under hf_bettertransformer's CUDA graphs. A probe
whose feature is missing prints "not available in this build" and its target is skipped.
Adding a probe is one entry in PROBES: its metric (the target's key in `bench.gpu_targets`),
a test of whether the build has the feature, and one request that returns 1.0 when it worked.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.gpu_client import Client

CHOICES = ["w10", "w11 w12"]  # words of bench.shapes' word tokenizer: one and two tokens
SHARED_PROMPT_WORDS = 160  # several cache blocks at any usual block size, inside 256 columns


class Unavailable(Exception):
    """The server has the feature but cannot offer it for this model (it said why)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    value: float | None  # None: not run
    note: str


@dataclass(frozen=True, slots=True)
class Probe:
    """One feature: `missing()` says why the build lacks it (None if it has it); `check(client)`
    sends its request and returns (1.0 if it worked else 0.0, what it saw)."""

    metric: str
    title: str
    missing: Callable[[], str | None]
    check: Callable[[Client], tuple[float, str]]

    def attempt(self, client: Client) -> Outcome:
        why = self.missing()
        if why is not None:
            print(f"[gpu_check] {self.title}: not available in this build ({why})", flush=True)
            return Outcome(None, f"not available in this build: {why}")
        try:
            value, seen = self.check(client)
        except Unavailable as exc:
            print(f"[gpu_check] {self.title}: not available for this model ({exc})", flush=True)
            return Outcome(None, f"not available for this model: {exc}")
        except (RuntimeError, OSError, KeyError, IndexError, TypeError, ValueError) as exc:
            value, seen = 0.0, f"{type(exc).__name__}: {exc}"
        print(f"[gpu_check] {self.title}: {'ok' if value >= 1 else 'FAILED'}: {seen}", flush=True)
        return Outcome(value, seen)


def _field_missing(module: str, cls: str, name: str) -> str | None:
    try:
        owner = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as exc:
        return f"{module}.{cls}: {type(exc).__name__}"
    if name not in {f.name for f in dataclasses.fields(owner)}:
        return f"{cls} has no {name} field"
    return None


def grammar_missing() -> str | None:
    return _field_missing("backends.engine.params", "SamplingParams", "grammar")


def prefix_cache_missing() -> str | None:
    try:
        config = importlib.import_module("handler.config")
    except ImportError as exc:
        return f"handler.config: {type(exc).__name__}"
    if not any(option.env == "PREFIX_CACHE" for option in config.OPTIONS):
        return "no PREFIX_CACHE setting"
    return None


def constrained_request(client: Client) -> tuple[float, str]:
    """A completion constrained to a choice of strings (vLLM's `structured_outputs`)."""
    body: dict[str, Any] = {"model": client.model, "prompt": "w5 w6 w7", "max_tokens": 8}
    body.update(temperature=0.0, structured_outputs={"choice": CHOICES})
    try:
        text = client.json("POST", "/v1/completions", body)["choices"][0]["text"]
    except RuntimeError as exc:
        # The check's word-level tokenizer has no byte tokens, which llguidance needs: the server
        # refuses with a 400 saying so (a real model's byte-level vocabulary has them).
        if "not available for this tokenizer" in str(exc):
            raise Unavailable(str(exc)) from exc
        raise
    return (1.0 if text in CHOICES else 0.0), f"text {text!r}, allowed {CHOICES}"


def prefix_cache_hit(client: Client) -> tuple[float, str]:
    """The same long prompt twice: the second reports cached prompt tokens."""
    prompt = " ".join(f"w{100 + i}" for i in range(SHARED_PROMPT_WORDS))
    body = {"model": client.model, "prompt": prompt, "max_tokens": 4, "temperature": 0.0}
    client.json("POST", "/v1/completions", body)
    usage = client.json("POST", "/v1/completions", body)["usage"]
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return (1.0 if cached > 0 else 0.0), f"{cached} of {usage['prompt_tokens']} prompt tokens cached"


PROBES: tuple[Probe, ...] = (
    Probe("feature.constrained", "constrained request", grammar_missing, constrained_request),
    Probe("feature.prefix_cache", "prefix-cache hit", prefix_cache_missing, prefix_cache_hit),
)
