"""What a response needs to know of its request: ids, names, prompts, parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backends.engine.params import SamplingParams
    from handler.api.prompts import Prompt


@dataclass(frozen=True, slots=True)
class Job:
    """What a response needs to know of its request: ids, names, shape of its choices."""

    id: str
    created: int
    model: str
    prompts: list[Prompt]
    params: SamplingParams
    include_usage: bool = False
    interval: float = 0.0

    @property
    def n(self) -> int:
        return self.params.n

    @property
    def echo(self) -> bool:
        return self.params.echo

    @property
    def logprobs(self) -> bool:
        return self.params.logprobs is not None
