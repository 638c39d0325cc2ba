"""When the engine last made progress, and what the step in flight is doing: a wedged engine shows."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StepLoad:
    """The work of one step: sequences decoded, then prompts prefilled (known once admitted)."""

    decoding: int = 0
    prefill_prompts: int = 0
    prefill_tokens: int = 0

    def describe(self) -> str:
        work = [f"decoding {self.decoding} sequence(s)"] if self.decoding else []
        if self.prefill_prompts:
            work.append(f"prefilling {self.prefill_prompts} prompt(s) of {self.prefill_tokens} tokens")
        return " and ".join(work) or "admitting requests"


@dataclass(frozen=True, slots=True)
class Stall:
    """No step has completed for `seconds` while work was pending."""

    seconds: float
    timeout: float
    step_seconds: float | None  # how long the step in flight has run; None when no step runs
    load: StepLoad

    def describe(self) -> str:
        """One line for /health and the log."""
        text = (
            f"no engine step has completed for {self.seconds:.0f} s (ENGINE_STALL_TIMEOUT {self.timeout:g} s)"
        )
        if self.step_seconds is None:
            return text + "; the engine loop is not stepping"
        return text + f"; the step in flight has run {self.step_seconds:.0f} s, {self.load.describe()}"


class StepClock:
    """Times the engine's steps; read from any thread (each field is one assignment)."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self._now = now
        self.progress_at = now()  # the last step's end, or when an idle engine got work
        self.step_began: float | None = None

    def restart(self) -> None:
        """Work arrived on an idle engine: its wait starts now, not at the last step long ago."""
        if self.step_began is None:
            self.progress_at = self._now()

    def begin(self) -> None:
        self.step_began = self._now()

    def end(self) -> float:
        """A step completed; returns how long it ran."""
        now = self._now()
        began, self.step_began = self.step_began, None
        self.progress_at = now
        return now - (began if began is not None else now)

    def age(self, pending: bool) -> float:
        """Seconds since the engine last made progress, counted only while work is pending."""
        return max(0.0, self._now() - self.progress_at) if pending else 0.0

    def step_seconds(self) -> float | None:
        began = self.step_began
        return None if began is None else self._now() - began
