"""Stop strings matched on streamed text, holding back what may still become one."""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """Finds stop strings in streamed text and holds back what may still become one."""

    def __init__(self, stops: Sequence[str]) -> None:
        # An empty stop would match everywhere; the API layer treats it as no stop at all.
        self._stops: tuple[str, ...] = tuple(dict.fromkeys(s for s in stops if s))
        self._longest = max((len(s) for s in self._stops), default=0)
        self._prefixes: frozenset[str] = frozenset(s[:n] for s in self._stops for n in range(1, len(s)))
        self._pending = ""
        self._stopped = False

    @property
    def stops(self) -> tuple[str, ...]:
        """The stop strings matched, without duplicates or empty ones."""
        return self._stops

    @property
    def stopped(self) -> bool:
        """Whether a stop string has been found (by feed, or by flush at the end)."""
        return self._stopped

    def _first_match(self, text: str) -> int:
        """Start of the earliest complete stop in text, or -1."""
        first = -1
        for stop in self._stops:
            # Only an occurrence before the best so far matters, so search no further than that.
            end = len(text) if first < 0 else first + len(stop) - 1
            pos = text.find(stop, 0, end)
            if pos >= 0 and (first < 0 or pos < first):
                first = pos
        return first

    def _hold_start(self, text: str) -> int:
        """Start of the longest suffix of text that is a proper prefix of some stop (len(text) if none)."""
        for size in range(min(len(text), self._longest - 1), 0, -1):
            if text[-size:] in self._prefixes:
                return len(text) - size
        return len(text)

    def feed(self, delta: str) -> tuple[str, bool]:
        """Takes the next piece of text; returns (text safe to emit now, stopped?)."""
        if self._stopped:
            return "", True
        if not self._stops:
            return delta, False
        text = self._pending + delta
        match = self._first_match(text)
        hold = self._hold_start(text)
        # A longer stop that began earlier may still complete and win, so a later match waits for it.
        if match >= 0 and match <= hold:
            self._pending = ""
            self._stopped = True
            return text[:match], True
        self._pending = text[hold:]
        return text[:hold], False

    def flush(self) -> str:
        """At the end of generation: releases what was held back, cut at a stop found in it."""
        if self._stopped:
            return ""
        text, self._pending = self._pending, ""
        match = self._first_match(text)
        if match >= 0:
            self._stopped = True
            return text[:match]
        return text
