"""Incremental detokenization of generated tokens, and the exact bytes of single tokens."""

from __future__ import annotations

import functools
import json
import re
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

REPLACEMENT_CHAR = "\ufffd"
# Prompt tokens that seed the window, so that the first generated token keeps its leading space.
SEED_TOKENS = 5
# More tokens may be needed when the seed would begin in the middle of a character.
MAX_SEED_TOKENS = 16
# A character spans at most 4 bytes; a tail still incomplete after this many tokens never completes.
MAX_HELD_TOKENS = 16
# Earlier character boundaries tried as the next window start when the newest one decodes to nothing.
BACKTRACK = 4
# Past this many tokens the window moves on even if that risks a decoder's leading-space strip.
MAX_WINDOW = 64

_BYTE_FALLBACK_RE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_METASPACE = "▁"


def _decode(tokenizer: PreTrainedTokenizerBase, ids: list[int], skip_special_tokens: bool) -> str:
    """Decodes ids to one string, as tokenizer.decode does for the whole sequence."""
    text = tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
    assert isinstance(text, str)
    return text


# One known gap: a byte-fallback run that is not valid UTF-8 decodes, in a full decode, to one U+FFFD
# per byte token, valid start included; a stream that has already shown that start cannot follow.
class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt_ids: Sequence[int] = (),
        skip_special_tokens: bool = True,
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        # Dropping skipped tokens up front is what decode(skip_special_tokens=True) does anyway, and it
        # keeps them out of the window where they would hide the context a decoder needs.
        self._skipped = _info(tokenizer).special_ids if skip_special_tokens else frozenset()
        # The window: ids from the prefix offset on. Offsets below are relative to its start.
        self._ids: list[int] = self._seed(prompt_ids)
        self._read = len(self._ids)
        # Window offsets known to fall on character boundaries (earlier read offsets), oldest first.
        self._marks: list[int] = [self._read] if self._read else []
        self._prefix_text = self._decode(self._ids) if self._ids else ""

    def _decode(self, ids: list[int]) -> str:
        """Decodes a slice of the window."""
        return _decode(self._tokenizer, ids, self._skip_special)

    def _seed(self, prompt_ids: Sequence[int]) -> list[int]:
        """Picks the last few prompt tokens, starting on a character boundary where possible."""
        kept: list[int] = []
        for token_id in reversed(prompt_ids):
            if len(kept) >= MAX_SEED_TOKENS:
                break
            if int(token_id) not in self._skipped:
                kept.append(int(token_id))
        kept.reverse()
        size = min(SEED_TOKENS, len(kept))
        while size < len(kept) and self._decode(kept[-size:]).startswith(REPLACEMENT_CHAR):
            size += 1
        return kept[len(kept) - size :]

    def add(self, token_id: int) -> str:
        """Appends one generated token; returns the text it completes ('' while held back)."""
        token_id = int(token_id)  # numpy and torch scalars hash differently from ints
        if token_id in self._skipped:
            return ""
        self._ids.append(token_id)
        text = self._decode(self._ids)
        if len(text) > len(self._prefix_text) and not text.endswith(REPLACEMENT_CHAR):
            delta = text[len(self._prefix_text) :]
            self._advance(text)
            return delta
        if len(self._ids) - self._read < MAX_HELD_TOKENS:
            return ""
        # The held bytes are not a character and never will be: give them up, as a full decode would.
        delta = text[len(self._prefix_text) :]
        self._ids, self._read, self._marks, self._prefix_text = [], 0, [], ""
        return delta

    def _advance(self, text: str) -> None:
        """Moves the window past the emitted text, keeping a little decoded context before it."""
        start, prefix = 0, text
        found = False
        for mark in reversed(self._marks[-BACKTRACK:]):
            candidate = self._decode(self._ids[mark:])
            # An empty context (say a lone "▁" that a decoder strips) cannot carry a leading space.
            if candidate:
                start, prefix, found = mark, candidate, True
                break
        if not found and self._marks and len(self._ids) > MAX_WINDOW:
            start = self._marks[-1]
            prefix = self._decode(self._ids[start:])
        end = len(self._ids)
        self._ids = self._ids[start:]
        self._marks = [mark - start for mark in self._marks if mark > start]
        self._marks.append(end - start)
        self._read = end - start
        self._prefix_text = prefix

    def flush(self) -> str:
        """Returns whatever is still held back (possibly with U+FFFD for bytes that never completed)."""
        if len(self._ids) == self._read:
            return ""
        text = self._decode(self._ids)
        if len(text) <= len(self._prefix_text):
            return ""
        delta = text[len(self._prefix_text) :]
        self._advance(text)
        return delta


@functools.lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """Inverts GPT-2's byte-to-unicode table, which maps every byte to a printable character."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table: dict[str, int] = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


def _decoder_types(node: Any) -> set[str]:
    """Collects the type names in a serialized decoder, looking inside Sequence decoders."""
    if not isinstance(node, dict):
        return set()
    types = {str(node.get("type"))}
    if node.get("type") == "Replace" and node.get("pattern", {}).get("String") == _METASPACE:
        types.add("Metaspace")
    for child in node.get("decoders", []) or []:
        types |= _decoder_types(child)
    return types


class _TokenizerInfo:
    """What this module caches about one tokenizer: its family, special ids and per-token bytes."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        added = dict(getattr(tokenizer, "added_tokens_decoder", {}) or {})
        specials = {int(i) for i, tok in added.items() if getattr(tok, "special", False)}
        specials.update(int(i) for i in tokenizer.all_special_ids)
        self.special_ids: frozenset[int] = frozenset(specials)
        self.added: dict[int, str] = {int(i): str(tok) for i, tok in added.items()}
        self.byte_level, self.byte_fallback, self.metaspace = self._family(tokenizer)
        self.bytes: dict[int, bytes] = {}
        self.text: dict[int, str] = {}

    @staticmethod
    def _family(tokenizer: PreTrainedTokenizerBase) -> tuple[bool, bool, bool]:
        """Tells byte-level BPE, byte fallback and Metaspace apart from the tokenizer's decoder."""
        backend = getattr(tokenizer, "backend_tokenizer", None) if tokenizer.is_fast else None
        decoder = getattr(backend, "decoder", None)
        if decoder is None:
            # Slow tokenizers: GPT-2 style ones keep a byte decoder, SentencePiece ones an sp_model.
            sentencepiece = hasattr(tokenizer, "sp_model")
            return hasattr(tokenizer, "byte_decoder"), sentencepiece, sentencepiece
        try:
            types = _decoder_types(json.loads(decoder.__getstate__()))
        except (AttributeError, TypeError, ValueError):
            types = set()
        return "ByteLevel" in types, "ByteFallback" in types, "Metaspace" in types

    def token_bytes(self, tokenizer: PreTrainedTokenizerBase, token_id: int) -> bytes:
        """The exact bytes one token stands for, computed once per id."""
        cached = self.bytes.get(token_id)
        if cached is None:
            cached = self.bytes[token_id] = self._compute_bytes(tokenizer, token_id)
        return cached

    def _compute_bytes(self, tokenizer: PreTrainedTokenizerBase, token_id: int) -> bytes:
        """Maps a token's vocabulary string back to bytes by the tokenizer family's rules."""
        if token_id in self.added:
            return self.added[token_id].encode()
        piece = tokenizer.convert_ids_to_tokens(token_id)
        if not isinstance(piece, str):
            return _decode(tokenizer, [token_id], False).encode()
        if self.byte_level:
            table = _unicode_to_byte()
            return b"".join(bytes([table[c]]) if c in table else c.encode() for c in piece)
        if self.byte_fallback:
            match = _BYTE_FALLBACK_RE.fullmatch(piece)
            if match:
                return bytes([int(match.group(1), 16)])
        if self.metaspace:
            return piece.replace(_METASPACE, " ").encode()
        return _decode(tokenizer, [token_id], False).encode()


_INFOS: weakref.WeakKeyDictionary[Any, _TokenizerInfo] = weakref.WeakKeyDictionary()


def _info(tokenizer: PreTrainedTokenizerBase) -> _TokenizerInfo:
    """The cached facts about a tokenizer, built on first use."""
    try:
        info = _INFOS.get(tokenizer)
    except TypeError:  # an unhashable or non-weakrefable tokenizer: build afresh
        return _TokenizerInfo(tokenizer)
    if info is None:
        info = _INFOS[tokenizer] = _TokenizerInfo(tokenizer)
    return info


def token_bytes(tokenizer: PreTrainedTokenizerBase, token_id: int) -> bytes:
    """The exact bytes a single token stands for (a Metaspace "▁" counts as a space)."""
    return _info(tokenizer).token_bytes(tokenizer, int(token_id))


def token_text(tokenizer: PreTrainedTokenizerBase, token_id: int) -> str:
    """A display string for a single token; U+FFFD stands for bytes of an incomplete character."""
    info = _info(tokenizer)
    token_id = int(token_id)
    text = info.text.get(token_id)
    if text is None:
        raw = info.token_bytes(tokenizer, token_id)
        text = info.text[token_id] = raw.decode("utf-8", errors="replace")
    return text
