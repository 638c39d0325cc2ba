"""The OpenAI API as plain async functions: a request dict in, a body or a stream of chunks out.

Starlette routes call this; a serverless `handle(job)` can call it the same way.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from handler.api.bounds import Limits, RequestBounds
from handler.api.chat import ChatStream, chat_body
from handler.api.choices import PromptState
from handler.api.completions import CompletionStream, completion_body
from handler.api.errors import (
    ENGINE_ERRORS,
    APIError,
    InternalError,
    NotFoundError,
    from_engine_error,
    from_validation_error,
)
from handler.api.generation import Generation, collect
from handler.api.job import Job
from handler.api.prompts import Prompt, PromptBuilder
from handler.api.requests import (
    ChatCompletionRequest,
    CompletionRequest,
    SamplingRequest,
    check_json_values,
)
from handler.api.responses import (
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    ErrorResponse,
    ModelCard,
    ModelList,
)
from handler.api.tools.grammar import tool_spec

if TYPE_CHECKING:
    from backends.engine.params import SamplingParams
    from handler.config import Settings
    from handler.model import ServedModel

log = logging.getLogger("ladle")
# Prompts and outputs go here, and only with LOG_PROMPTS=1: they are the users' data.
prompt_log = logging.getLogger("ladle.prompts")

RequestT = TypeVar("RequestT", bound=SamplingRequest)
Reply = BaseModel | AsyncGenerator[BaseModel, None]
# Enough to warn about every field real clients send, not enough for a hostile one to grow it.
MAX_LOGGED_FIELDS = 256


class OpenAIService:
    """Validates requests, submits them to the engine and shapes what it returns."""

    def __init__(self, model: ServedModel, settings: Settings) -> None:
        self.model = model
        self.name = settings.served_model_name or model.info.name
        self.created = model.info.created or int(time.time())
        self.limits = Limits.from_settings(settings)
        self.bounds = RequestBounds.from_settings(settings)
        self.log_prompts = settings.log_prompts
        self.prompts = PromptBuilder(
            model.tokenizer,
            vocab_size=model.info.vocab_size,
            max_prompt_tokens=settings.completion_max_prompt,
            chat_template=PromptBuilder.read_template(settings.chat_template),
        )
        self.interval = settings.completion_max_interval / 1000.0
        self.tool_max_schema_size = settings.tool_max_schema_size
        self._unknown_fields: set[str] = set()

    def models(self) -> ModelList:
        """GET /v1/models."""
        return ModelList(data=[self._card()])

    def model_card(self, model_id: str) -> ModelCard:
        """GET /v1/models/{id}; an unknown id is a 404."""
        if model_id != self.name:
            raise NotFoundError(
                f"The model '{model_id}' does not exist", param="model", code="model_not_found"
            )
        return self._card()

    def _card(self) -> ModelCard:
        return ModelCard(id=self.name, created=self.created, owned_by="ladle")

    async def completion(self, body: Any) -> Reply:
        """POST /v1/completions: a Completion, or (stream) an async iterator of chunks."""
        self.bounds.check_completion(body)
        request = self._parse(CompletionRequest, body)
        params = request.sampling_params(self.limits)
        await self._compile_grammar(params, request.grammar_param)
        prompts = self.prompts.completion_prompts(request.prompt)
        job = self._job("cmpl", request, prompts, params)
        generation = self._submit(job)
        if request.streaming:
            return _guarded(CompletionStream(job).chunks(generation), generation, self._logged(job))
        return self._log_reply(job, completion_body(job, await _collected(generation, len(prompts))))

    async def chat_completion(self, body: Any) -> Reply:
        """POST /v1/chat/completions: a ChatCompletion, or (stream) an async iterator of chunks."""
        self.bounds.check_chat(body)
        request = self._parse(ChatCompletionRequest, body)
        params = request.sampling_params(self.limits)
        await self._compile_grammar(params, request.grammar_param)
        tools = request.tool_plan(self.tool_max_schema_size)
        if tools is not None and tools.calls_allowed:
            params.grammar = tool_spec(tools, params.grammar, request.grammar_param)
            await self._compile_grammar(params, "tools")
        offered = tools.definitions() if tools is not None and tools.calls_allowed else None
        prompt = self.prompts.chat_prompt(request.messages, offered)
        job = self._job("chatcmpl", request, [prompt], params)
        generation = self._submit(job)
        if request.streaming:
            return _guarded(ChatStream(job, tools).chunks(generation), generation, self._logged(job))
        return self._log_reply(job, chat_body(job, await _collected(generation, 1), tools))

    def _parse(self, model: type[RequestT], body: Any) -> RequestT:
        if not isinstance(body, dict):
            raise APIError("the request body must be a JSON object")
        check_json_values(body)
        try:
            request = model.model_validate(body)
        except ValidationError as exc:
            raise from_validation_error(exc) from None
        for name in request.model_extra or {}:
            if name not in self._unknown_fields and len(self._unknown_fields) < MAX_LOGGED_FIELDS:
                self._unknown_fields.add(name)
                log.warning("ignoring unknown request field %r (logged once)", name[:64])
        return request

    async def _compile_grammar(self, params: SamplingParams, param: str | None) -> None:
        """Compile the output constraint before admission (off the event loop, cached): a bad one is a 400."""
        if params.grammar is None:
            return
        try:
            await self.model.engine.grammars.compile_async(params.grammar, param)
        except ENGINE_ERRORS as exc:
            raise from_engine_error(exc) from None

    def _job(self, kind: str, request: SamplingRequest, prompts: list[Prompt], params: SamplingParams) -> Job:
        return Job(
            id=f"{kind}-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=request.model or self.name,
            prompts=prompts,
            params=params,
            include_usage=request.include_usage,
            interval=self.interval,
        )

    def _submit(self, job: Job) -> Generation:
        """Admit the job; the engine validates its params (SamplingParams.validate) as it admits them."""
        try:
            share = self.limits.tokens_per_sequence(len(job.prompts), job.params)
            if self.log_prompts:
                for index, prompt in enumerate(job.prompts):
                    prompt_log.info("%s prompt %d: %r", job.id, index, prompt.text)
            return Generation.submit(self.model.engine, job.prompts, self._params_for(job, share), job.id)
        except ENGINE_ERRORS as exc:
            raise from_engine_error(exc) from None

    def _params_for(self, job: Job, share: int) -> Callable[[Prompt], SamplingParams]:
        params, info = job.params, self.model.info

        def params_for(prompt: Prompt) -> SamplingParams:
            if params.max_tokens is not None:
                return params
            room = info.generation_room(len(prompt.token_ids))
            # max_tokens null: up to the context, within the server's limits (no room: the engine says so).
            max_tokens = min(room, self.limits.max_tokens, share) if room > 0 else None
            return dataclasses.replace(params, max_tokens=max_tokens)

        return params_for

    def _log_reply(self, job: Job, reply: BaseModel) -> BaseModel:
        if self.log_prompts:
            prompt_log.info("%s output: %r", job.id, choice_texts([reply]))
        return reply

    def _logged(self, job: Job) -> Callable[[list[BaseModel]], None] | None:
        """What a stream calls with all its chunks at its end, when prompts are logged."""
        if not self.log_prompts:
            return None

        def log_output(chunks: list[BaseModel]) -> None:
            prompt_log.info("%s output: %r", job.id, choice_texts(chunks))

        return log_output


def choice_texts(bodies: list[BaseModel]) -> dict[int, str]:
    """The text of each choice, joined over the chunks of a stream (or from one whole body)."""
    texts: dict[int, str] = {}
    for body in bodies:
        for index, text in _texts(body):
            texts[index] = texts.get(index, "") + (text or "")
    return texts


def _texts(body: BaseModel) -> list[tuple[int, str | None]]:
    if isinstance(body, Completion):
        return [(choice.index, choice.text) for choice in body.choices]
    if isinstance(body, ChatCompletion):
        return [(choice.index, choice.message.content) for choice in body.choices]
    if isinstance(body, ChatCompletionChunk):
        return [(choice.index, choice.delta.content) for choice in body.choices]
    return []


async def _collected(generation: Generation, num_prompts: int) -> list[PromptState]:
    try:
        return await collect(generation, num_prompts)
    except ENGINE_ERRORS as exc:
        raise from_engine_error(exc) from None


async def _guarded(
    chunks: AsyncGenerator[BaseModel, None],
    generation: Generation,
    log_output: Callable[[list[BaseModel]], None] | None = None,
) -> AsyncGenerator[BaseModel, None]:
    """Chunks, ending in one error event if generation fails midway; closing it aborts the generation."""
    sent: list[BaseModel] = []
    try:
        async for chunk in chunks:
            if log_output is not None:
                sent.append(chunk)
            yield chunk
    except ENGINE_ERRORS as exc:
        error = from_engine_error(exc)
        yield ErrorResponse.model_validate(error.body())
    except Exception:
        log.exception("a stream failed")
        yield ErrorResponse.model_validate(InternalError("internal server error").body())
    finally:
        generation.abort()
        await chunks.aclose()
        if log_output is not None:
            log_output(sent)
