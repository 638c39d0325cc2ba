"""What one engine step hands back, and the hook through which others hear of every step.

`EngineCore.subscribe(observer)` adds a `StepObserver`: a callable that the core calls after each
step with that step's `StepResult`, on the thread that ran the step, before the outputs reach
their streams. The result's `stats` say what the step did in numbers (its duration, the batch,
tokens, time to first token and between tokens per request), so that a metrics exporter needs
nothing else. An observer must be quick and must not touch the engine; one that raises is
logged, and the step's requests are served all the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from backends.engine.outputs import RequestOutput
from backends.engine.state import Request


@dataclass(slots=True)
class StepStats:
    """One step in numbers (times in seconds, from time.monotonic)."""

    seconds: float = 0.0  # how long the step ran
    batch_size: int = 0  # choices that gained output this step (a token each)
    prompt_tokens: int = 0  # prompts of the requests whose first token came this step
    generation_tokens: int = 0  # tokens generated this step
    kv_tokens: int = 0  # cache positions held after the step (an estimate where the backend has no count)
    time_to_first_token: list[float] = field(default_factory=list)  # from admission, per request
    inter_token_latency: list[float] = field(default_factory=list)  # since the request's last output


@dataclass(slots=True)
class StepResult:
    """What one step produced: outputs per request, requests that failed, and the step's stats."""

    outputs: list[RequestOutput] = field(default_factory=list)
    failures: dict[str, Exception] = field(default_factory=dict)
    stats: StepStats = field(default_factory=StepStats)


StepObserver = Callable[[StepResult], None]


def request_output(request: Request) -> RequestOutput:
    """A request's output of this step: the deltas of its choices that produced anything."""
    deltas = [s.take_delta() for s in request.sequences if s.delta_ids or s.delta_text]
    prompt_logprobs = None
    if request.prompt_logprobs is not None and not request.prompt_logprobs_sent:
        prompt_logprobs, request.prompt_logprobs_sent = request.prompt_logprobs, True
    return RequestOutput(
        request.request_id,
        len(request.prompt_ids),
        deltas,
        request.finished,
        prompt_logprobs,
        request.cached_tokens,
    )


def count_outputs(stats: StepStats, outputs: Iterable[tuple[Request, RequestOutput]], now: float) -> None:
    """Add the step's outputs to its stats; `now` (time.monotonic) is when they were made."""
    for request, output in outputs:
        stats.batch_size += len(output.choices)
        tokens = sum(len(choice.token_ids) for choice in output.choices)
        if not tokens:
            continue
        stats.generation_tokens += tokens
        if request.last_output is None:
            stats.time_to_first_token.append(now - request.arrival)
            stats.prompt_tokens += output.prompt_tokens
        else:
            stats.inter_token_latency.append(now - request.last_output)
        request.last_output = now
