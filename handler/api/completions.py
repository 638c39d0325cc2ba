"""Responses of /v1/completions: the JSON body and the stream of chunks."""

from __future__ import annotations

from collections.abc import Sequence

from backends.engine.outputs import TokenLogprob
from handler.api.choices import PendingDelta, PromptState
from handler.api.chunks import ChunkStream
from handler.api.generation import Step
from handler.api.job import Job
from handler.api.logprobs import completion_logprobs, text_length
from handler.api.responses import Completion, CompletionChoice
from handler.api.usage import usage_of


def completion_body(job: Job, states: Sequence[PromptState]) -> Completion:
    """The whole completion: n choices per prompt (the best n of best_of), indexed prompt * n + choice."""
    choices: list[CompletionChoice] = []
    for prompt_index, state in enumerate(states):
        prompt = job.prompts[prompt_index]
        echoed = prompt.text if job.echo else ""
        echoed_logprobs = (state.prompt_logprobs or []) if job.echo else []
        for rank, choice in enumerate(state.best(job.n)):
            logprobs = None
            if job.logprobs:
                logprobs = completion_logprobs([*echoed_logprobs, *choice.logprobs])
            choices.append(
                CompletionChoice(
                    index=prompt_index * job.n + rank,
                    text=echoed + "".join(choice.text),
                    logprobs=logprobs,
                    finish_reason=choice.finish_reason,
                )
            )
    return Completion(
        id=job.id, created=job.created, model=job.model, choices=choices, usage=usage_of(states)
    )


class CompletionStream(ChunkStream[Completion]):
    """Turns engine steps into completion chunks, echoing each choice's prompt in its first chunk."""

    def __init__(self, job: Job) -> None:
        super().__init__(job)
        self.offsets: dict[int, int] = {}  # text_offset of each choice's next token
        self.prompt_logprobs: dict[int, list[TokenLogprob]] = {}

    def _chunk(self, group: list[Step]) -> Completion:
        pending: dict[int, PendingDelta] = {}
        for step in group:
            self.usage.add(step)
            if step.output.prompt_logprobs is not None:
                self.prompt_logprobs[step.prompt_index] = step.output.prompt_logprobs
            for delta in step.output.choices:
                index = step.prompt_index * self.job.n + delta.index
                entry = pending.setdefault(index, PendingDelta())
                if index not in self.offsets:
                    self._echo(step.prompt_index, entry)
                    self.offsets[index] = 0
                entry.add(delta)
        choices = [self._choice(index, entry) for index, entry in sorted(pending.items())]
        return self._new_chunk([choice for choice in choices if choice is not None])

    def _echo(self, prompt_index: int, entry: PendingDelta) -> None:
        if self.job.echo:
            entry.text.append(self.job.prompts[prompt_index].text)
            entry.logprobs.extend(self.prompt_logprobs.get(prompt_index, []))

    def _choice(self, index: int, entry: PendingDelta) -> CompletionChoice | None:
        if entry.empty:
            return None
        text = "".join(entry.text)
        logprobs = None
        if self.job.logprobs:
            logprobs = completion_logprobs(entry.logprobs, self.offsets[index])
            self.offsets[index] += text_length(entry.logprobs)
        return CompletionChoice(index=index, text=text, logprobs=logprobs, finish_reason=entry.finish_reason)

    def _new_chunk(self, choices: list[CompletionChoice], usage: bool = False) -> Completion:
        return Completion(
            id=self.job.id,
            created=self.job.created,
            model=self.job.model,
            choices=choices,
            usage=self.usage.usage() if usage else None,
        )
