"""What one sampled token does to a choice: its logprob, the grammar state, eos and stop ids, the
text and its stop strings, and max_tokens. A choice that ends this way gets its finish_reason;
the engine then frees its cache row.
"""

from __future__ import annotations

from collections.abc import Set
from typing import Any

from backends.engine.prefill import token_logprob
from backends.engine.state import ChoiceState


def advance(
    s: ChoiceState,
    token: int,
    logprob: float,
    top: list[tuple[int, float]],
    eos_token_ids: Set[int],
    tokenizer: Any,
) -> None:
    """Append a sampled token (with its logprob and top alternatives) and finish the choice if it ends here."""
    s.append(token)
    s.cumulative_logprob += logprob
    params = s.params
    if params.logprobs is not None:
        s.delta_logprobs.append(token_logprob(tokenizer, token, logprob, top))
    ended = None if s.matcher is None else s.matcher.advance(token)  # "stop" once the grammar is complete
    if (token in eos_token_ids and not params.ignore_eos) or token in params.stop_token_ids:
        close(s, ended or "stop")
        return
    text, stopped = s.stopper.feed(s.detokenizer.add(token))
    s.delta_text += text
    if stopped:
        s.finish_reason = "stop"
    elif ended is not None:
        close(s, ended)
    elif len(s.output_ids) >= s.max_tokens:
        close(s, "length")


def close(s: ChoiceState, reason: str) -> None:
    """Finish a choice for `reason`, releasing the text its detokenizer and stop matcher held back."""
    text, stopped = s.stopper.feed(s.detokenizer.flush())
    if not stopped:
        text += s.stopper.flush()  # flush may still find a stop that a longer one was masking
    s.delta_text += text
    s.finish_reason = "stop" if stopped or s.stopper.stopped else reason
