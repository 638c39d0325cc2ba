"""Stop strings on streamed text: matching across deltas, hold-back and release."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from backends.engine.stopping import StopMatcher


def run(stops: Sequence[str], deltas: Sequence[str]) -> tuple[list[str], bool, str]:
    """Feeds deltas in order; returns what each feed emitted, whether it stopped, and the flush."""
    matcher = StopMatcher(stops)
    out: list[str] = []
    stopped = False
    for delta in deltas:
        text, stopped = matcher.feed(delta)
        out.append(text)
    return out, stopped, matcher.flush()


def first_stop(text: str, stops: Sequence[str]) -> int:
    """Index of the earliest stop in text, or -1."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found, default=-1)


def test_stop_inside_one_delta() -> None:
    out, stopped, rest = run(["STOP"], ["Hello STOP world"])
    assert (out, stopped, rest) == (["Hello "], True, "")


def test_stop_across_two_deltas() -> None:
    out, stopped, _ = run(["STOP"], ["Hello ST", "OP world"])
    assert out == ["Hello ", ""] and stopped


def test_stop_across_three_deltas() -> None:
    out, stopped, _ = run(["<end>"], ["abc<", "en", "d>xyz"])
    assert out == ["abc", "", ""] and stopped


def test_stop_ending_inside_a_delta_drops_what_follows() -> None:
    out, stopped, _ = run(["\n\n"], ["one\n", "\ntwo three"])
    assert out == ["one", ""] and stopped


def test_after_stopping_feed_returns_nothing() -> None:
    matcher = StopMatcher(["x"])
    assert matcher.feed("abxcd") == ("ab", True)
    assert matcher.feed("more") == ("", True)
    assert matcher.flush() == ""
    assert matcher.stopped


def test_earliest_stop_wins() -> None:
    out, stopped, _ = run(["world", "lo"], ["hello world"])
    assert out == ["hel"] and stopped
    out, stopped, _ = run(["lo", "world"], ["hello world"])
    assert out == ["hel"] and stopped


def test_overlapping_prefixes() -> None:
    assert run(["abc", "ab"], ["xxab", "c"])[:2] == (["xx", ""], True)
    assert run(["abc", "ab"], ["xxa", "bd"])[:2] == (["xx", ""], True)
    # "ab" alone is held back while it may still become "abc", and found once it cannot.
    matcher = StopMatcher(["abc"])
    assert matcher.feed("xxab") == ("xx", False)
    assert matcher.feed("d") == ("abd", False)


def test_longer_stop_starting_earlier_beats_a_shorter_one_inside_it() -> None:
    # "bc" completes first, but "abcd" starts earlier; the outcome must not depend on the split.
    assert run(["abcd", "bc"], ["xabc", "d!"])[:2] == (["x", ""], True)
    assert run(["abcd", "bc"], ["xabcd!"])[:2] == (["x"], True)
    assert run(["abcd", "bc"], ["xabc", "e"])[:2] == (["x", "a"], True)
    # Generation ending while the decision is pending: flush cuts at the stop and reports it.
    matcher = StopMatcher(["abcd", "bc"])
    assert matcher.feed("xabc") == ("x", False)
    assert matcher.flush() == "a"
    assert matcher.stopped


def test_held_back_prefix_is_released_when_it_stops_matching() -> None:
    matcher = StopMatcher(["</answer>"])
    assert matcher.feed("The result </") == ("The result ", False)
    assert matcher.feed("ans") == ("", False)
    assert matcher.feed("wer") == ("", False)
    assert matcher.feed("s are fine") == ("</answers are fine", False)
    assert matcher.flush() == ""


def test_partial_stop_at_a_later_position_is_held() -> None:
    matcher = StopMatcher(["abab"])
    # "aba" is not a prefix of "abab" at its start, but its suffix "ab" is.
    assert matcher.feed("aba") == ("", False)
    assert matcher.feed("c") == ("abac", False)
    assert matcher.feed("ababab") == ("", True)


def test_flush_releases_held_text() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("end ST") == ("end ", False)
    assert matcher.flush() == "ST"
    assert not matcher.stopped


def test_no_stops() -> None:
    matcher = StopMatcher([])
    assert matcher.feed("anything at all") == ("anything at all", False)
    assert matcher.feed("") == ("", False)
    assert matcher.flush() == ""
    assert StopMatcher([""]).feed("abc") == ("abc", False)


def test_duplicate_and_empty_stops_are_ignored() -> None:
    assert StopMatcher(["a", "", "a", "b"]).stops == ("a", "b")


def test_unicode_stops() -> None:
    assert run(["東京"], ["今日は東", "京へ"])[:2] == (["今日は", ""], True)
    assert run(["👨‍👩‍👧"], ["a 👨‍", "👩‍", "👧 b"])[:2] == (["a ", "", ""], True)
    assert run(["e\u0301"], ["caf", "e", "\u0301!"])[:2] == (["caf", "", ""], True)
    assert run(["👨‍👩‍👧"], ["a 👨‍👩", " b"])[0] == ["a ", "👨‍👩 b"]


def test_stop_at_the_very_start() -> None:
    assert run(["Hello"], ["Hello", " world"]) == (["", ""], True, "")
    matcher = StopMatcher(["Hello"])
    assert matcher.feed("Hel") == ("", False)
    assert matcher.feed("lo world") == ("", True)


def test_held_text_is_bounded_by_the_longest_stop() -> None:
    matcher = StopMatcher(["aaaaaaaaab", "c"])
    emitted = 0
    for fed in range(1, 1001):
        text, stopped = matcher.feed("a")
        assert not stopped
        emitted += len(text)
        assert fed - emitted <= 9  # only a proper prefix of a stop may be held
    assert matcher.feed("b") == ("", True)


STOP_SETS: list[list[str]] = [
    ["STOP"],
    ["\n\n", "\n"],
    ["ab", "abc", "bca"],
    ["abcd", "bc", "cd"],
    ["</s>", "<|im_end|>", "User:"],
    ["東京", "京都"],
    ["aa", "aaa"],
    ["zzz"],  # never in the texts below
]
TEXTS = [
    "Hello STOP world STOP again",
    "line one\nline two\n\nline three",
    "xxabcabcbcabxx",
    "a bcd abcd bc cd",
    "The answer is 42.</s>User: next <|im_end|>",
    "今日は東京から京都へ行きます",
    "baaaab aaa",
    "no stop here at all, only text",
    "",
]


@pytest.mark.parametrize("stops", STOP_SETS, ids=lambda s: "|".join(s))
def test_random_splits_emit_the_text_before_the_first_stop(stops: list[str]) -> None:
    rng = random.Random(20240601)
    for text in TEXTS:
        index = first_stop(text, stops)
        expected = text if index < 0 else text[:index]
        for _ in range(200):
            cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(0, 6))))
            deltas = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
            matcher = StopMatcher(stops)
            emitted = ""
            stopped = False
            for delta in deltas:
                out, stopped = matcher.feed(delta)
                emitted += out
                if stopped:
                    break
            if not stopped:
                emitted += matcher.flush()
            assert emitted == expected, (stops, deltas)
            assert matcher.stopped == (index >= 0)


class ReferenceMatcher:
    """The obvious quadratic matcher (every prefix stored, every suffix tried): the oracle."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in dict.fromkeys(stops) if s]
        self.prefixes = {s[:n] for s in self.stops for n in range(1, len(s))}
        self.pending = ""
        self.stopped = False

    def first(self, text: str) -> int:
        return min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)

    def hold(self, text: str) -> int:
        sizes = [n for n in range(1, len(text) + 1) if text[-n:] in self.prefixes]
        return len(text) - max(sizes, default=0)

    def feed(self, delta: str) -> tuple[str, bool]:
        if self.stopped or not self.stops:
            return ("", True) if self.stopped else (delta, False)
        text = self.pending + delta
        match, hold = self.first(text), self.hold(text)
        if 0 <= match <= hold:
            self.pending, self.stopped = "", True
            return text[:match], True
        self.pending = text[hold:]
        return text[:hold], False

    def flush(self) -> str:
        if self.stopped:
            return ""
        text, self.pending = self.pending, ""
        match = self.first(text)
        self.stopped = match >= 0
        return text[:match] if match >= 0 else text


def test_every_feed_matches_the_reference_on_random_text() -> None:
    # Small alphabets make overlapping, nested and repeated stops common.
    rng = random.Random(13)
    for _ in range(3000):
        alphabet = "ab" if rng.random() < 0.5 else "abc"
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 5))) for _ in range(4)]
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(0, 8))))
        deltas = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        ours, reference = StopMatcher(stops), ReferenceMatcher(stops)
        for delta in deltas:
            assert ours.feed(delta) == reference.feed(delta), (stops, deltas)
        assert ours.flush() == reference.flush(), (stops, deltas)
        assert ours.stopped == reference.stopped


def test_a_huge_stop_costs_memory_linear_in_its_length() -> None:
    # The bug: one 200,000-character stop stored all its prefixes (20 GB) and searched them per token.
    import tracemalloc

    size = 200_000
    tracemalloc.start()
    try:
        matcher = StopMatcher(["a" * size + "b"])
        emitted = sum(len(matcher.feed("a" * 1000)[0]) for _ in range(size // 1000 + 5))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert emitted == 5000  # all but the last `size` characters, which may still become the stop
    assert matcher.feed("b") == ("", True)
    assert peak < 200 * 1024 * 1024, peak  # the old matcher needed some 40 GB here
