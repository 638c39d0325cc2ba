"""Stop strings matched on streamed text, holding back what may still become one.

One Aho-Corasick automaton over the stop strings reads each character once: its state is the
longest suffix of the text so far that is a prefix of some stop, which is exactly what must be
held back. Memory is linear in the stops' total length, time linear in the text (a stop string
of 200,000 characters used to store every prefix of itself: 20 GB).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence


class _Automaton:
    """The trie of the stops with failure links; node 0 is the root (the empty string)."""

    __slots__ = ("depth", "fail", "goto", "match")

    def __init__(self, stops: Sequence[str]) -> None:
        self.goto: list[dict[str, int]] = [{}]
        self.depth: list[int] = [0]
        self.match: list[int] = [0]  # length of the longest stop that ends here (0: none)
        for stop in stops:
            node = 0
            for char in stop:
                child = self.goto[node].get(char)
                if child is None:
                    child = len(self.goto)
                    self.goto[node][char] = child
                    self.goto.append({})
                    self.depth.append(self.depth[node] + 1)
                    self.match.append(0)
                node = child
            self.match[node] = len(stop)
        self.fail = [0] * len(self.goto)
        self._link()

    def _link(self) -> None:
        # Breadth first, so a node's failure target (shallower) is linked before the node.
        queue = deque(self.goto[0].values())
        while queue:
            node = queue.popleft()
            for char, child in self.goto[node].items():
                queue.append(child)
                self.fail[child] = self.step(self.fail[node], char) if node else 0
                # A stop ending at the failure target also ends here; keep the longest (earliest start).
                self.match[child] = self.match[child] or self.match[self.fail[child]]

    def step(self, node: int, char: str) -> int:
        """The state after reading char in state node."""
        while node and char not in self.goto[node]:
            node = self.fail[node]
        return self.goto[node].get(char, 0)


class StopMatcher:
    """Finds stop strings in streamed text and holds back what may still become one."""

    def __init__(self, stops: Sequence[str]) -> None:
        # An empty stop would match everywhere; the API layer treats it as no stop at all.
        self._stops: tuple[str, ...] = tuple(dict.fromkeys(s for s in stops if s))
        self._automaton = _Automaton(self._stops)
        self._state = 0
        self._pending = ""  # the held-back text: the last depth[state] characters
        self._match = -1  # start, in _pending, of the earliest complete stop found there (-1: none)
        self._stopped = False

    @property
    def stops(self) -> tuple[str, ...]:
        """The stop strings matched, without duplicates or empty ones."""
        return self._stops

    @property
    def stopped(self) -> bool:
        """Whether a stop string has been found (by feed, or by flush at the end)."""
        return self._stopped

    def feed(self, delta: str) -> tuple[str, bool]:
        """Takes the next piece of text; returns (text safe to emit now, stopped?)."""
        if self._stopped:
            return "", True
        if not self._stops:
            return delta, False
        automaton, state, first = self._automaton, self._state, self._match
        text = self._pending + delta
        for end, char in enumerate(delta, start=len(self._pending) + 1):
            state = automaton.step(state, char)
            found = automaton.match[state]
            if found and (first < 0 or end - found < first):
                first = end - found
            # A longer stop that began earlier may still complete and win, so a match waits until
            # nothing held back starts before it. The hold start never moves back, so this is final.
            if first >= 0 and first <= end - automaton.depth[state]:
                self._pending, self._stopped = "", True
                return text[:first], True
        hold = len(text) - automaton.depth[state]
        self._state, self._pending = state, text[hold:]
        self._match = first - hold if first >= 0 else -1
        return text[:hold], False

    def flush(self) -> str:
        """At the end of generation: releases what was held back, cut at a stop found in it."""
        if self._stopped:
            return ""
        text, self._pending = self._pending, ""
        if self._match >= 0:
            self._stopped = True
            return text[: self._match]
        return text
