"""Turning prompts and chat messages into token ids, within the server's prompt limit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from handler.api.errors import APIError
from handler.api.tools.prompt import TemplateSupport, with_tools

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from handler.api.requests import ChatMessage

PromptInput = str | list[str] | list[int] | list[list[int]]


@dataclass(frozen=True, slots=True)
class Prompt:
    """One prompt as the engine takes it, and its text as echo shows it."""

    token_ids: list[int]
    text: str


class PromptBuilder:
    """Tokenizes completion prompts and renders chat messages with a chat template."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        vocab_size: int,
        max_prompt_tokens: int,
        chat_template: str | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.max_prompt_tokens = max_prompt_tokens
        self.chat_template = chat_template
        self._supports: dict[str, TemplateSupport] = {}

    @classmethod
    def read_template(cls, path: str | None) -> str | None:
        """The text of the CHAT_TEMPLATE file, or None when none is set."""
        if path is None:
            return None
        return Path(path).read_text(encoding="utf-8")

    def completion_prompts(self, prompt: PromptInput) -> list[Prompt]:
        """One Prompt per prompt of a completions request (a string, strings, ids or lists of ids)."""
        if isinstance(prompt, str):
            return [self._from_text(prompt)]
        if not prompt:
            raise APIError("prompt must not be an empty list", param="prompt")
        ids = [item for item in prompt if isinstance(item, int)]
        if len(ids) == len(prompt):
            return [self._from_ids(ids)]
        prompts: list[Prompt] = []
        for item in prompt:
            if isinstance(item, str):
                prompts.append(self._from_text(item))
            elif isinstance(item, list):
                prompts.append(self._from_ids(item))
        return prompts

    def chat_prompt(
        self, messages: Sequence[ChatMessage], tools: list[dict[str, Any]] | None = None
    ) -> Prompt:
        """Render the conversation (and the tools, when given) with the chat template, ready for
        the assistant's turn; tool_prompt says how a template without tool support gets them."""
        template = self.chat_template or getattr(self.tokenizer, "chat_template", None)
        if not template:
            raise APIError(
                "this model has no chat template; set CHAT_TEMPLATE to a Jinja template file "
                "(or use /v1/completions)",
                param="messages",
                code="chat_template_missing",
            )
        support = self._support(template)
        conversation = with_tools([_message_dict(message) for message in messages], tools, support)
        text = self._render(conversation, template, tools if support.tools else None)
        ids = list(self.tokenizer(text, add_special_tokens=False).input_ids)
        return self._checked(ids, text, param="messages")

    def _support(self, template: str) -> TemplateSupport:
        cached = self._supports.get(template)
        if cached is None:
            cached = self._supports[template] = TemplateSupport.of(template)
        return cached

    def _render(self, conversation: list[dict[str, Any]], template: str, tools: list[Any] | None) -> str:
        from jinja2 import TemplateError

        try:
            rendered = self.tokenizer.apply_chat_template(
                conversation, chat_template=template, tools=tools, add_generation_prompt=True, tokenize=False
            )
        except TemplateError as exc:
            raise APIError(f"the chat template refused these messages: {exc}", param="messages") from None
        if not isinstance(rendered, str):
            raise APIError("the chat template did not render to text", param="messages")
        return rendered

    def _from_text(self, text: str) -> Prompt:
        ids = list(self.tokenizer(text).input_ids)
        return self._checked(ids, text, param="prompt")

    def _from_ids(self, ids: list[int]) -> Prompt:
        for token in ids:
            if token >= self.vocab_size:
                raise APIError(f"prompt token id {token} is outside the vocabulary", param="prompt")
        text = str(self.tokenizer.decode(ids, skip_special_tokens=False)) if ids else ""
        return self._checked(ids, text, param="prompt")

    def _checked(self, ids: list[int], text: str, param: str) -> Prompt:
        if len(ids) > self.max_prompt_tokens:
            raise APIError(
                f"the prompt has {len(ids)} tokens; this server accepts at most {self.max_prompt_tokens} "
                "(COMPLETION_MAX_PROMPT)",
                param=param,
                code="context_length_exceeded",
            )
        return Prompt(token_ids=ids, text=text)


def _message_dict(message: ChatMessage) -> dict[str, Any]:
    # Few templates know the "developer" role; it means what "system" means. The legacy
    # "function" role and function_call are a tool result and a tool call.
    role = {"developer": "system", "function": "tool"}.get(message.role, message.role)
    result: dict[str, Any] = {"role": role, "content": message.text()}
    for key in ("name", "tool_call_id", "tool_calls"):
        value = getattr(message, key)
        if value is not None:
            result[key] = value
    if message.function_call is not None and message.tool_calls is None:
        result["tool_calls"] = [{"id": "call_0", "type": "function", "function": message.function_call}]
    return result
