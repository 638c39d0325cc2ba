"""Tool calls parsed out of generated text, streamed in OpenAI's delta shape.

A call is `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (see tool_grammar). The
parser reads a choice's text as it streams: text outside calls is content, except text that may
still begin `<tool_call>` and whitespace at its end, which wait for what follows (the markup never
reaches the content, and whitespace between calls is not content). Inside a call, the name goes
out once, with a new id, as soon as it is complete; then the arguments go out piece by piece,
holding back what may still be the end of the call (closing braces, whitespace, `</tool_call>`).
A JSON body reads the same text through the same parser, so the arguments of a streamed call
joined are exactly those of the same call in a body.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

from handler.api.tools.grammar import CALL_CLOSE, CALL_OPEN

# The start of a call's object up to its arguments, when the name comes first (the grammar's order).
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')
# A beginning of </tool_call> (or of another tag) at the end of the text.
_PARTIAL_TAG = re.compile(r"<[/a-z_]*")


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


@dataclass(slots=True)
class CallDelta:
    """What one chunk adds to the tool call at `index`: id and name once, then arguments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(slots=True)
class ParsedText:
    """What a piece of generated text holds: content and tool-call deltas."""

    content: str = ""
    calls: list[CallDelta] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.content and not self.calls


@dataclass(slots=True)
class _OpenCall:
    index: int
    named: bool = False
    sent: int = 0  # characters of the arguments already sent


@dataclass(slots=True)
class ToolCall:
    """A whole call, as a JSON body holds it."""

    id: str
    name: str
    arguments: str


class ToolCallParser:
    """Splits one choice's text, fed piece by piece, into content and tool-call deltas."""

    def __init__(self) -> None:
        self._buffer = ""
        self._held_space = ""
        self._call: _OpenCall | None = None
        self.num_calls = 0

    def feed(self, text: str, final: bool = False) -> ParsedText:
        """Parse the next piece of text; `final` flushes everything held back."""
        self._buffer += text
        out = ParsedText()
        while self._step(out):
            pass
        if final:
            self._flush(out)
        return out

    def _step(self, out: ParsedText) -> bool:
        """Consume what can be consumed; True when it should run again."""
        if self._call is None:
            start = self._buffer.find(CALL_OPEN)
            if start < 0:
                keep = _partial_suffix(self._buffer, CALL_OPEN)
                self._content(out, self._buffer[: len(self._buffer) - keep])
                self._buffer = self._buffer[len(self._buffer) - keep :]
                return False
            self._content(out, self._buffer[:start])
            self._held_space = ""  # whitespace before a call is not content
            self._buffer = self._buffer[start + len(CALL_OPEN) :]
            self._call = _OpenCall(index=self.num_calls)
            self.num_calls += 1
            return True
        end = self._buffer.find(CALL_CLOSE)
        if end < 0:
            self._progress(out, self._buffer, complete=False)
            return False
        self._progress(out, self._buffer[:end], complete=True)
        self._buffer = self._buffer[end + len(CALL_CLOSE) :]
        self._call = None
        return True

    def _content(self, out: ParsedText, text: str) -> None:
        body = text.rstrip()
        if body:
            out.content += self._held_space + body
            self._held_space = ""
        self._held_space += text[len(body) :]

    def _progress(self, out: ParsedText, body: str, complete: bool) -> None:
        call = self._call
        if call is None:
            return
        head = _HEAD.match(body)
        if head is None:
            if complete:
                self._whole(out, call, body)
            return
        if not call.named:
            name = json.loads('"' + head.group(1) + '"')
            out.calls.append(CallDelta(index=call.index, id=new_call_id(), name=name))
            call.named = True
        rest = body[head.end() :]
        arguments = _without_object_end(rest) if complete else _without_maybe_end(rest)
        self._send_arguments(out, call, arguments)

    def _send_arguments(self, out: ParsedText, call: _OpenCall, arguments: str) -> None:
        piece = arguments[call.sent :]
        if not piece:
            return
        call.sent = len(arguments)
        if out.calls and out.calls[-1].index == call.index:
            out.calls[-1].arguments += piece
        else:
            out.calls.append(CallDelta(index=call.index, arguments=piece))

    def _whole(self, out: ParsedText, call: _OpenCall, body: str) -> None:
        """A complete call in another key order (not the grammar's): parsed once it is closed."""
        try:
            value = json.loads(body)
        except ValueError:
            value = None
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            # Not a call after all: the text stays, as content.
            self.num_calls -= 1
            out.content += self._held_space + CALL_OPEN + body + CALL_CLOSE
            self._held_space = ""
            return
        arguments = value.get("arguments", value.get("parameters", {}))
        text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        out.calls.append(CallDelta(index=call.index, id=new_call_id(), name=value["name"], arguments=text))

    def _flush(self, out: ParsedText) -> None:
        call = self._call
        if call is not None:
            # Cut short (max_tokens or a stop string) after its object or inside it: a whole object
            # is a whole call; of a cut one, what there is of the arguments goes out.
            body = _without_partial_tag(self._buffer).rstrip()
            head = _HEAD.match(body)
            if _is_call(body):
                self._progress(out, body, complete=True)
            elif call.named and head is not None:
                self._send_arguments(out, call, body[head.end() :])
            self._call = None
        elif self._buffer:
            self._content(out, self._buffer)
        self._buffer = ""
        if self.num_calls == 0:
            out.content += self._held_space
        self._held_space = ""


# Linear scans from the end (a regex anchored at $ retries from every position: quadratic).
def _without_partial_tag(text: str) -> str:
    start = text.rfind("<")
    return text[:start] if start >= 0 and _PARTIAL_TAG.fullmatch(text, start) else text


def _without_maybe_end(text: str) -> str:
    """Without what may still be the end of a call: closing braces, whitespace, a partial tag."""
    text = _without_partial_tag(text)
    while True:
        shorter = text.rstrip().rstrip("}")
        if shorter == text:
            return text
        text = shorter


def _without_object_end(text: str) -> str:
    """Without the brace (and whitespace) that closes the call's object."""
    text = text.rstrip()
    return text[:-1].rstrip() if text.endswith("}") else text


def _is_call(body: str) -> bool:
    try:
        value = json.loads(body)
    except ValueError:
        return False
    return isinstance(value, dict) and isinstance(value.get("name"), str)


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of `text` that is a beginning of `marker`."""
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


def parse_tool_calls(text: str) -> tuple[str | None, list[ToolCall]]:
    """The content and the calls of a whole text; content is None when there are only calls."""
    parsed = ToolCallParser().feed(text, final=True)
    calls: list[ToolCall] = []
    for delta in parsed.calls:
        if delta.id is not None:
            calls.append(ToolCall(id=delta.id, name=delta.name or "", arguments=delta.arguments))
        else:
            calls[-1].arguments += delta.arguments
    content = parsed.content
    return (content or None) if calls else content, calls
