"""Admission: what a request may ask for, and the sequences it becomes once admitted.

Waiting requests are admitted strictly in arrival order (the head of the queue waits for room
rather than being overtaken), and a request that could never fit (a prompt past the context,
more choices than the batch holds) is refused when it arrives, not after it has waited.
"""

from __future__ import annotations

from typing import Any

from backends.engine.contract import ModelInfo, Seq
from backends.engine.detokenizer import IncrementalDetokenizer
from backends.engine.params import SamplingParams
from backends.engine.sampler import make_generator
from backends.engine.state import ChoiceState, Request
from backends.engine.stopping import StopMatcher
from backends.errors import ContextLengthError, InvalidRequestError


def check_request(
    info: ModelInfo, max_batch_size: int, prompt: list[int], params: SamplingParams
) -> list[int]:
    """The prompt to run (BOS for an empty one); raises if the request can never be served."""
    params.validate(info.vocab_size)
    if params.num_sequences > max_batch_size:
        raise InvalidRequestError(
            f"n (or best_of) of {params.num_sequences} exceeds the batch size limit of {max_batch_size}",
            param="n",
        )
    if not prompt:
        start = info.bos_token_id
        if start is None:
            raise InvalidRequestError("the prompt is empty and the model has no BOS token", param="prompt")
        prompt = [start]
    if any(not 0 <= t < info.vocab_size for t in prompt):
        raise InvalidRequestError("the prompt holds token ids outside the vocabulary", param="prompt")
    context = info.context_length
    room = info.generation_room(len(prompt))  # a decoder-only prompt must leave room for one
    if len(prompt) > context or room < 1:
        raise ContextLengthError(
            f"the prompt has {len(prompt)} tokens; this model's context length is {context}",
            param="prompt",
        )
    if params.max_tokens is not None and params.max_tokens > room:
        raise ContextLengthError(
            f"this model's context length is {context} tokens, but {len(prompt)} prompt tokens and "
            f"max_tokens={params.max_tokens} were asked"
        )
    return prompt


def make_sequences(request: Request, info: ModelInfo, tokenizer: Any, first_seq_id: int) -> int:
    """Give an admitted request its `n` (or `best_of`) sequences; returns the next free seq id."""
    params = request.params
    start = next((t for t in (info.decoder_start_token_id, info.bos_token_id) if t is not None), 0)
    room = info.generation_room(len(request.prompt_ids))
    max_tokens = min(params.max_tokens or room, room)
    seq_id = first_seq_id
    for index in range(params.num_sequences):
        if info.is_encoder_decoder:
            seq = Seq(seq_id, [start], encoder_ids=request.prompt_ids)
        else:
            seq = Seq(seq_id, list(request.prompt_ids))
        seq_id += 1
        seed = None if params.seed is None else params.seed + index
        prompt_context = [] if info.is_encoder_decoder else request.prompt_ids
        request.sequences.append(
            ChoiceState(
                seq=seq,
                request=request,
                index=index,
                params=params,
                prompt_ids=request.prompt_ids,
                max_tokens=max_tokens,
                generator=make_generator(seed),
                detokenizer=IncrementalDetokenizer(tokenizer, prompt_context, params.skip_special_tokens),
                stopper=StopMatcher(params.stop),
                matcher=None if request.grammar is None else request.grammar.matcher(),
            )
        )
    return seq_id
