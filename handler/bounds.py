"""Bounds on the sizes a request controls, checked on the parsed request before any work is done.

Whatever a client sends within MAX_BODY_SIZE must cost the server time and memory linear in it, and
no more than a setting allows: a request past a bound is answered 400, naming the field, before
anything is tokenized or reaches the engine thread.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from handler.errors import APIError

if TYPE_CHECKING:
    from handler.config import Settings
    from handler.protocol import ChatCompletionRequest, ChatMessage, CompletionRequest, SamplingRequest


@dataclass(frozen=True, slots=True)
class RequestBounds:
    """The most of each size one request may ask for (defaults: those of Settings)."""

    max_stop_length: int = 1024
    max_logit_bias: int = 1024
    max_prompts: int = 32
    max_prompt_tokens: int = 4096
    max_messages: int = 1024
    max_message_chars: int = 262_144

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestBounds:
        return cls(
            max_stop_length=settings.completion_max_stop_length,
            max_logit_bias=settings.completion_max_logit_bias,
            max_prompts=settings.completion_max_prompts,
            max_prompt_tokens=settings.completion_max_prompt,
            max_messages=settings.chat_max_messages,
            max_message_chars=settings.chat_max_chars,
        )

    def check_completion(self, request: CompletionRequest) -> None:
        """Stops, logit_bias, the number of prompts and the length of token-id prompts."""
        self._check_sampling(request)
        prompt = request.prompt
        if isinstance(prompt, str) or not prompt or isinstance(prompt[0], int):
            prompts: list[object] = [prompt]
        else:
            prompts = list(prompt)
        _at_most(
            "prompt", f"{len(prompts)} prompts", len(prompts), self.max_prompts, "COMPLETION_MAX_PROMPTS"
        )
        for item in prompts:
            # Token ids are counted as they are, before any of them is looked up or decoded.
            if isinstance(item, list) and len(item) > self.max_prompt_tokens:
                raise APIError(
                    f"the prompt has {len(item)} tokens; this server accepts at most "
                    f"{self.max_prompt_tokens} (COMPLETION_MAX_PROMPT)",
                    param="prompt",
                    code="context_length_exceeded",
                )

    def check_chat(self, request: ChatCompletionRequest) -> None:
        """Stops, logit_bias, and the number and total size of the messages."""
        self._check_sampling(request)
        messages = request.messages
        count = len(messages)
        _at_most("messages", f"{count} messages", count, self.max_messages, "CHAT_MAX_MESSAGES")
        size = sum(message_chars(message) for message in messages)
        what = f"messages of {size} characters in all"
        _at_most("messages", what, size, self.max_message_chars, "CHAT_MAX_CHARS")

    def _check_sampling(self, request: SamplingRequest) -> None:
        stops = [request.stop] if isinstance(request.stop, str) else request.stop or []
        for stop in stops:
            what = f"a stop string of {len(stop)} characters"
            _at_most("stop", what, len(stop), self.max_stop_length, "COMPLETION_MAX_STOP_LENGTH")
        entries = len(request.logit_bias or {})
        what = f"logit_bias with {entries} entries"
        _at_most("logit_bias", what, entries, self.max_logit_bias, "COMPLETION_MAX_LOGIT_BIAS")


def message_chars(message: ChatMessage) -> int:
    """The characters one message brings to the conversation: content, names and tool calls."""
    size = len(message.text()) + len(message.name or "") + len(message.tool_call_id or "")
    if message.tool_calls:
        size += len(json.dumps(message.tool_calls, ensure_ascii=False))
    return size


def _at_most(param: str, what: str, value: int, bound: int, setting: str) -> None:
    if value > bound:
        raise APIError(
            f"{what}: more than this server accepts, at most {bound} ({setting})",
            param=param,
            code="request_too_large",
        )
