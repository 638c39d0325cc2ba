"""The server's bounds on one request: what it may ask for (Limits) and the sizes it controls
(RequestBounds); their defaults are those of Settings, read from it rather than written again.

Whatever a client sends within MAX_BODY_SIZE must cost the server time and memory linear in it, and
no more than a setting allows: a request past a RequestBounds bound is answered 400, naming the
field, before it is validated (100,000 messages took pydantic seconds on the event loop), tokenized,
or sent to the engine thread. Fields of the wrong type are left to validation, which names them.
The bounds of each sampling parameter's value are not here: `backends.engine.params.BOUNDS`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from handler.api.errors import APIError
from handler.config import Settings

if TYPE_CHECKING:
    from backends.engine.params import SamplingParams

_DEFAULT: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(Settings)}
T = TypeVar("T", "Limits", "RequestBounds")


def _setting(name: str) -> Any:
    """A bound read from the setting `name`: its default, and where from_settings finds it."""
    return dataclasses.field(default=_DEFAULT[name], metadata={"setting": name})


def _from_settings(cls: type[T], settings: Settings) -> T:
    return cls(**{f.name: getattr(settings, f.metadata["setting"]) for f in dataclasses.fields(cls)})


@dataclass(frozen=True, slots=True)
class Limits:
    """The most one request may ask for: max_tokens, n (and best_of), logprobs, tokens in all."""

    max_tokens: int = _setting("completion_max_tokens")
    max_n: int = _setting("completion_max_n")
    max_logprobs: int = _setting("completion_max_logprobs")
    max_total_tokens: int = _setting("completion_max_total_tokens")

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return _from_settings(cls, settings)

    def tokens_per_sequence(self, num_prompts: int, params: SamplingParams) -> int:
        """The most tokens each sequence may generate so the request stays within max_total_tokens."""
        sequences = num_prompts * params.num_sequences
        share = self.max_total_tokens // sequences
        if share < 1:
            raise APIError(
                f"this request asks for {sequences} sequences; one request may generate at most "
                f"{self.max_total_tokens} tokens (COMPLETION_MAX_TOTAL_TOKENS)",
                param="n",
            )
        if params.max_tokens is not None and params.max_tokens > share:
            raise APIError(
                f"{sequences} sequence(s) of max_tokens={params.max_tokens} exceed the "
                f"{self.max_total_tokens} tokens one request may generate (COMPLETION_MAX_TOTAL_TOKENS)",
                param="max_tokens",
            )
        return share


@dataclass(frozen=True, slots=True)
class RequestBounds:
    """The most of each size one request may ask for."""

    max_stop_length: int = _setting("completion_max_stop_length")
    max_logit_bias: int = _setting("completion_max_logit_bias")
    max_prompts: int = _setting("completion_max_prompts")
    max_prompt_tokens: int = _setting("completion_max_prompt")
    max_messages: int = _setting("chat_max_messages")
    max_message_chars: int = _setting("chat_max_chars")

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestBounds:
        return _from_settings(cls, settings)

    def check_completion(self, body: object) -> None:
        """Stops, logit_bias, the number of prompts and the length of token-id prompts."""
        if not isinstance(body, dict):
            return  # validation says what is wrong with it
        self._check_sampling(body)
        prompt = body.get("prompt")
        if not isinstance(prompt, list) or not prompt:
            return
        if isinstance(prompt[0], int):
            self._check_token_ids(prompt)
            return
        count = len(prompt)
        _at_most("prompt", f"{count} prompts", count, self.max_prompts, "COMPLETION_MAX_PROMPTS")
        for item in prompt:
            if isinstance(item, list):
                self._check_token_ids(item)

    def check_chat(self, body: object) -> None:
        """Stops, logit_bias, and the number and total size of the messages."""
        if not isinstance(body, dict):
            return
        self._check_sampling(body)
        messages = body.get("messages")
        if not isinstance(messages, list):
            return
        count = len(messages)
        _at_most("messages", f"{count} messages", count, self.max_messages, "CHAT_MAX_MESSAGES")
        size = sum(message_chars(message) for message in messages)
        what = f"messages of {size} characters in all"
        _at_most("messages", what, size, self.max_message_chars, "CHAT_MAX_CHARS")

    def _check_token_ids(self, ids: list[object]) -> None:
        # Counted as they are, before any id is validated, looked up or decoded.
        if len(ids) > self.max_prompt_tokens:
            raise APIError(
                f"the prompt has {len(ids)} tokens; this server accepts at most "
                f"{self.max_prompt_tokens} (COMPLETION_MAX_PROMPT)",
                param="prompt",
                code="context_length_exceeded",
            )

    def _check_sampling(self, body: dict[str, Any]) -> None:
        stop = body.get("stop")
        for item in [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []:
            if isinstance(item, str):
                what = f"a stop string of {len(item)} characters"
                _at_most("stop", what, len(item), self.max_stop_length, "COMPLETION_MAX_STOP_LENGTH")
        bias = body.get("logit_bias")
        entries = len(bias) if isinstance(bias, dict) else 0
        what = f"logit_bias with {entries} entries"
        _at_most("logit_bias", what, entries, self.max_logit_bias, "COMPLETION_MAX_LOGIT_BIAS")


def message_chars(message: object) -> int:
    """The characters one message (as sent) brings to the conversation: content, names, tool calls."""
    if not isinstance(message, dict):
        return 0
    size = 0
    content = message.get("content")
    if isinstance(content, str):
        size += len(content)
    elif isinstance(content, list):
        size += sum(
            len(part["text"])
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    for key in ("name", "tool_call_id"):
        value = message.get(key)
        size += len(value) if isinstance(value, str) else 0
    if message.get("tool_calls") is not None:
        # Too deep to encode: validation refuses it, naming the field.
        with contextlib.suppress(RecursionError, ValueError, TypeError):
            size += len(json.dumps(message["tool_calls"], ensure_ascii=False))
    return size


def _at_most(param: str, what: str, value: int, bound: int, setting: str) -> None:
    if value > bound:
        raise APIError(
            f"{what}: more than this server accepts, at most {bound} ({setting})",
            param=param,
            code="request_too_large",
        )
