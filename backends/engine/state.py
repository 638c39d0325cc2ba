"""The state the engine keeps between steps: of each request, and of each choice it is generating."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from backends.engine.contract import Seq
from backends.engine.outputs import ChoiceDelta, TokenLogprob

if TYPE_CHECKING:
    import torch

    from backends.engine.detokenizer import IncrementalDetokenizer
    from backends.engine.params import SamplingParams
    from backends.engine.stopping import StopMatcher
    from backends.grammar import CompiledGrammar, GrammarMatcher


@dataclass(slots=True, eq=False)
class ChoiceState:
    """One choice being generated: its tokens, RNG, text state and finish reason."""

    seq: Seq
    request: Request
    index: int
    params: SamplingParams
    prompt_ids: list[int]
    max_tokens: int
    generator: torch.Generator
    detokenizer: IncrementalDetokenizer
    stopper: StopMatcher
    matcher: GrammarMatcher | None = None  # the grammar state of a constrained sequence
    output_ids: list[int] = field(default_factory=list)
    cumulative_logprob: float = 0.0
    finish_reason: str | None = None
    # what this step produced, gathered into a ChoiceDelta
    delta_text: str = ""
    delta_ids: list[int] = field(default_factory=list)
    delta_logprobs: list[TokenLogprob] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def append(self, token_id: int) -> None:
        """Record a generated token, in the backend's view too."""
        self.output_ids.append(token_id)
        self.seq.token_ids.append(token_id)
        self.delta_ids.append(token_id)

    def take_delta(self) -> ChoiceDelta:
        """The ChoiceDelta of this step, resetting the step's buffers."""
        delta = ChoiceDelta(
            index=self.index,
            text=self.delta_text,
            token_ids=self.delta_ids,
            logprobs=self.delta_logprobs,
            finish_reason=self.finish_reason,
            cumulative_logprob=self.cumulative_logprob,
            completion_tokens=len(self.output_ids),
        )
        self.delta_text, self.delta_ids, self.delta_logprobs = "", [], []
        return delta


@dataclass(slots=True, eq=False)
class Request:
    """One submitted request: its prompt, parameters and sequences."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    arrival: float
    sequences: list[ChoiceState] = field(default_factory=list)
    aborted: bool = False
    prompt_logprobs: list[TokenLogprob] | None = None
    prompt_logprobs_sent: bool = False
    grammar: CompiledGrammar | None = None  # the compiled params.grammar
    cached_tokens: int = 0  # prompt tokens served from the prefix cache
    last_output: float | None = None  # when its last output with tokens was made (time.monotonic)

    @property
    def finished(self) -> bool:
        return bool(self.sequences) and all(s.finished for s in self.sequences)
