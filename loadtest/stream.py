"""Reading an OpenAI-style server-sent-event stream and timing what arrives.

The definitions follow the shared yardstick (shared/tools/loadgen.py), so numbers from both
tools mean the same thing:
  TTFT    request sent -> first chunk with non-empty content
  ITL     mean gap between consecutive content chunks: (t_last - t_first) / (chunks - 1)
  gaps    every gap between consecutive content chunks, each its own sample: a stall of a
          few seconds in one stream shows in the gap percentiles and the worst gap, where
          the per-request mean ITL would dilute it
  tokens  usage.completion_tokens when the server sends it, else the number of content chunks
"""

from __future__ import annotations

import json
from argparse import ArgumentParser, Namespace
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any


@dataclass(slots=True)
class StreamRecord:
    """What one streamed response delivered, with arrival times (perf_counter seconds)."""

    sent_at: float
    chat: bool
    content_times: list[float] = field(default_factory=list)
    text: str = ""
    usage_tokens: int | None = None
    finish_reason: str | None = None
    done: bool = False
    error: str | None = None

    @property
    def ttft_s(self) -> float | None:
        return self.content_times[0] - self.sent_at if self.content_times else None

    @property
    def itl_s(self) -> float | None:
        times = self.content_times
        return (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else None

    @property
    def gaps_s(self) -> list[float]:
        """Every gap between consecutive content chunks, in order."""
        times = self.content_times
        return [b - a for a, b in pairwise(times)]

    @property
    def tokens(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else len(self.content_times)

    def problem(self) -> str | None:
        """Why this stream counts as a failure, or None."""
        if self.error:
            return self.error
        if not self.done and not self.finish_reason:
            return "the stream ended without a finish_reason or data: [DONE]"
        if not self.content_times and not self.finish_reason:
            return "the stream held neither content nor a finish_reason"
        return None

    @property
    def note(self) -> str | None:
        """A departure from OpenAI's stream format that still delivered a whole answer (the
        yardstick times these too): `transformers serve` ends without `data: [DONE]`."""
        return "no data: [DONE]" if not self.done and self.finish_reason else None


class SSEReader:
    """Feeds raw bytes of an SSE body, in whatever pieces they arrive, into a StreamRecord."""

    def __init__(self, record: StreamRecord) -> None:
        self.record = record
        self._buffer = b""

    def feed(self, data: bytes, now: float) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self._line(line.decode("utf-8", "replace").rstrip("\r"), now)

    def close(self, now: float) -> None:
        if self._buffer:
            self._line(self._buffer.decode("utf-8", "replace").rstrip("\r"), now)
            self._buffer = b""

    def _line(self, line: str, now: float) -> None:
        if not line.startswith("data:"):
            return  # blank separators, ": comments", "event:" lines
        data = line[5:].strip()
        if data == "[DONE]":
            self.record.done = True
            return
        try:
            event = json.loads(data)
        except json.JSONDecodeError:
            self.record.error = f"bad SSE JSON: {data[:200]}"
            return
        if not isinstance(event, dict):
            self.record.error = f"unexpected SSE event: {data[:200]}"
            return
        self._event(event, now)

    def _event(self, event: dict[str, Any], now: float) -> None:
        record = self.record
        if event.get("error"):
            record.error = f"error event: {json.dumps(event['error'])[:300]}"
            return
        usage = event.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            record.usage_tokens = usage["completion_tokens"]
        for choice in event.get("choices") or []:
            content = (choice.get("delta") or {}).get("content") if record.chat else choice.get("text")
            if content:
                record.text += content
                record.content_times.append(now)
            if choice.get("finish_reason"):
                record.finish_reason = choice["finish_reason"]


IGNORE_EOS_MODES = ("fields", "hf-generation-config")


def add_request_options(parser: Any) -> None:
    """The options that shape every request body: the runner and the locustfile take the same."""
    parser.add_argument("--model", default="", help="the request's model field; default: first of /v1/models")
    parser.add_argument("--max-tokens", type=int, default=64, help="max_tokens of every request")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature")
    parser.add_argument(
        "--ignore-eos",
        action="store_true",
        default=False,
        help="force max_tokens tokens (see --ignore-eos-mode for how)",
    )
    parser.add_argument(
        "--ignore-eos-mode",
        choices=IGNORE_EOS_MODES,
        default=IGNORE_EOS_MODES[0],
        help="how --ignore-eos is sent: fields (min_tokens and ignore_eos, which ladle, vLLM and"
        " llama.cpp accept) or hf-generation-config (transformers serve's generation_config)",
    )
    parser.add_argument("--extra-body", default="", help="JSON object merged into every request body")


def _defaults() -> Namespace:
    parser = ArgumentParser(add_help=False)
    add_request_options(parser)
    return parser.parse_args([])


DEFAULT_REQUEST_OPTIONS = _defaults()


def body_from_options(options: Any, prompt: str, *, chat: bool, stream: bool, model: str) -> dict[str, Any]:
    """request_body with the fields add_request_options parsed into `options`."""
    return request_body(
        prompt,
        chat=chat,
        stream=stream,
        model=model,
        max_tokens=options.max_tokens,
        temperature=options.temperature,
        ignore_eos=options.ignore_eos,
        extra=json.loads(options.extra_body) if options.extra_body else None,
        ignore_eos_mode=options.ignore_eos_mode,
    )


def request_body(
    prompt: str,
    *,
    chat: bool,
    stream: bool,
    model: str,
    max_tokens: int,
    temperature: float,
    ignore_eos: bool,
    extra: dict[str, Any] | None = None,
    ignore_eos_mode: str = "fields",
) -> dict[str, Any]:
    """The JSON body of one completions or chat completions request.

    `ignore_eos_mode` says how a forced length is asked for: "fields" (min_tokens and
    ignore_eos) or "hf-generation-config" (`transformers serve`'s generation_config string).
    """
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "temperature": temperature}
    if chat:
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if ignore_eos and ignore_eos_mode == "hf-generation-config":
        # `transformers serve` refuses unknown fields and takes a GenerationConfig as JSON text.
        body["generation_config"] = json.dumps(
            {"min_new_tokens": max_tokens, "max_new_tokens": max_tokens, "do_sample": temperature > 0}
        )
    elif ignore_eos:
        # Not in OpenAI's spec; ladle, vLLM and llama.cpp accept these to force full length.
        body["min_tokens"] = max_tokens
        body["ignore_eos"] = True
    body.update(extra or {})
    return body


# The yardstick's fixed prompt set (shared/tools/loadgen.py): request i sends PROMPTS[i % 20].
PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain what a hash table is in simple terms.",
    "List three benefits of regular exercise.",
    "Translate 'good morning, how are you?' into Spanish.",
    "What is 17 multiplied by 23? Show your reasoning.",
    "Write a Python function that reverses a string.",
    "Give me a recipe for a simple tomato pasta.",
    "Why is the sky blue?",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "What are the main differences between TCP and UDP?",
    "Suggest a name for a small coffee shop near the beach.",
    "Describe the water cycle for a ten-year-old.",
    "Write a haiku about autumn leaves.",
    "How do I make a cup of green tea?",
    "What does the acronym CPU stand for, and what does it do?",
    "Tell me a fun fact about octopuses.",
    "Write an email asking my manager for a day off next Friday.",
    "Explain the difference between weather and climate.",
    "What should I pack for a weekend camping trip?",
)
