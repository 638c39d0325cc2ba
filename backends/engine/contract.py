"""The model-runner contract every backend fulfils, and what it knows of its model.

A backend turns token ids into next-token logits and keeps its own KV cache. It never
samples, never decodes text and never decides to stop: the engine does that, once,
for every backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True, slots=True)
class FastPaths:
    """The speed-ups a backend really runs with, read off the loaded model: a silent fallback shows.

    `attention` is the implementation set on the model (eager, sdpa, flash_attention_2, ...);
    `cache` the KV cache kind ("dynamic": grown per step; "static": preallocated slots);
    `compiled_decode` whether the decode step runs through torch.compile.
    """

    attention: str = "eager"
    cache: str = "dynamic"
    compiled_decode: bool = False


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """Facts about the served model that the engine and the API need."""

    name: str
    context_length: int
    vocab_size: int
    eos_token_ids: frozenset[int]
    is_encoder_decoder: bool = False
    decoder_start_token_id: int | None = None
    bos_token_id: int | None = None
    backend: str = "hf_eager"
    device: str = "cpu"
    devices: tuple[str, ...] = ()
    dtype: str = "float32"
    created: int = 0
    fast_paths: FastPaths = FastPaths()

    def generation_room(self, prompt_tokens: int) -> int:
        """Tokens a sequence may generate after a prompt of this length: what the context leaves
        after a decoder-only prompt; an encoder-decoder's prompt has the encoder to itself, and
        its decoder starts with one token."""
        if self.is_encoder_decoder:
            return self.context_length - 1
        return self.context_length - prompt_tokens


@dataclass(slots=True, eq=False)
class Seq:
    """What a backend sees of one sequence: its id and its tokens.

    For decoder-only models `token_ids` is prompt plus generated tokens. For
    encoder-decoder models `encoder_ids` is the prompt and `token_ids` the decoder
    tokens (starting with the decoder start token).
    """

    seq_id: int
    token_ids: list[int]
    encoder_ids: list[int] | None = None


@runtime_checkable
class Backend(Protocol):
    """Turns token ids into logits; owns the KV cache of every live sequence."""

    info: ModelInfo
    tokenizer: PreTrainedTokenizerBase

    def prefill(self, seqs: Sequence[Seq]) -> torch.Tensor:
        """Run the prompts of new sequences; return next-token logits [len(seqs), vocab].

        Creates each sequence's cache row.
        """
        ...

    def decode(self, seqs: Sequence[Seq]) -> torch.Tensor:
        """Feed each sequence's last token; return next-token logits [len(seqs), vocab]."""
        ...

    def fork(self, parent: Seq, children: Sequence[Seq]) -> None:
        """Give each child a copy of the parent's cache row (n choices share one prefill)."""
        ...

    def release(self, seqs: Sequence[Seq]) -> None:
        """Free the cache rows of finished or cancelled sequences."""
        ...

    def score(self, token_ids: Sequence[int]) -> torch.Tensor:
        """Logits at every position of a prompt, without a cache: [len(token_ids), vocab]."""
        ...

    def warm_up(self) -> None:
        """Prepare the decode step before serving (compile it, capture its CUDA graphs); a no-op
        where nothing needs preparing. The engine calls it once, on the thread that runs its steps."""
        ...


@runtime_checkable
class StagedBackend(Backend, Protocol):
    """A decoder-only backend that prefills a prompt in slices, on top of KV copied in from the
    prefix cache, and exports the KV it computed. Every backend of ladle implements it.

    A staged sequence has a cache of its own, outside the decode batch, until `commit` merges it.
    `release` frees a staged sequence too. KV travels as one (keys, values) pair per layer,
    each [kv_heads, tokens, head_dim], on the layer's device.
    """

    def begin(self, seq: Seq, prefix: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Open a staging cache for a new sequence, holding `prefix` as its first tokens' KV."""
        ...

    def extend(self, seq: Seq, count: int, all_logits: bool = False) -> torch.Tensor:
        """Run the next `count` uncached tokens of a staged sequence.

        Returns the logits of its last position [1, vocab], or of every position run [count, vocab].
        """
        ...

    def commit(self, seq: Seq) -> None:
        """Move a fully prefilled staged sequence into the decode batch."""
        ...

    def export(self, seq: Seq, start: int, end: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Copies of the KV of positions start..end-1 of a live or staged sequence, per layer."""
        ...

    def cached_tokens(self) -> int:
        """Token positions held in the caches of live and staged sequences (padding excluded)."""
        ...
