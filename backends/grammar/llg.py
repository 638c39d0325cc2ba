"""The grammar engine, llguidance, behind the few calls ladle needs; the only module that imports it.

Swapping in another engine (xgrammar) means rewriting this module: a tokenizer index built
once per model (`GrammarTokenizer`), a compile step that turns a `GrammarSpec` into a
validated template (`CompiledGrammar`), a per-sequence matcher (`GrammarMatcher`) that
consumes tokens, and one call that writes the token bitmasks of many matchers at once.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

import llguidance
import llguidance.hf
import torch
from llguidance.gbnf_to_lark import any_to_lark

from backends.engine.detokenizer import token_bytes
from backends.grammar.spec import GrammarSpec

log = logging.getLogger("ladle.grammar")

# Compact JSON: the separators "," and ":" and no free whitespace, so a model cannot pad its
# output with spaces and newlines until max_tokens; and never a silently ignored keyword.
JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "lenient": False}
_UNIMPLEMENTED = re.compile(r"Unimplemented keys: \[(.*?)\]")


class GrammarCompileError(ValueError):
    """The grammar is invalid or uses something the engine cannot enforce; the message says what."""

    def __init__(self, message: str, keyword: str | None = None) -> None:
        super().__init__(message)
        self.keyword = keyword


class GrammarTokenizer:
    """The model's vocabulary as the grammar engine sees it; built once per model (about a second)."""

    def __init__(self, hf_tokenizer: Any, eos_token_ids: Iterable[int]) -> None:
        eos = sorted(int(t) for t in eos_token_ids)
        try:
            self.ll = llguidance.hf.from_tokenizer(hf_tokenizer, eos_token=eos or None)
        except (ValueError, TypeError, AttributeError) as exc:
            # llguidance reads the Rust tokenizer's JSON, and knows not every decoder (T5's
            # Metaspace): fall back to each token's bytes, as ladle's detokenizer sees them.
            try:
                self.ll = llguidance.LLTokenizer(_TokenBytes(hf_tokenizer, eos), eos_token=eos or None)
            except Exception as inner:  # the Rust side raises plain Exceptions
                raise GrammarCompileError(
                    f"structured outputs are not available for this tokenizer: {exc}; {inner}"
                ) from inner
        self.eos_token_ids = eos or [int(self.ll.eos_token)]
        self.vocab_size = int(self.ll.vocab_size)
        self.words = (self.vocab_size + 31) // 32  # int32 words of one row's bitmask
        self._executor: llguidance.LLExecutor | None = None
        self._check_masks()

    def _check_masks(self) -> None:
        # A vocabulary without byte tokens (a word-level tokenizer) builds, but every mask then
        # fails ("NoExtensionBias") and would allow only EOS: refuse it once, here, so that each
        # request gets a 400 instead of an empty "complete" answer.
        probe = llguidance.LLMatcher(self.ll, llguidance.LLMatcher.grammar_from_regex("[a-z]+"), log_level=0)
        bitmask = torch.zeros(1, self.words, dtype=torch.int32)  # [1, W]
        probe.unsafe_compute_mask_ptr(bitmask.data_ptr(), self.words * 4)
        if probe.is_error():
            raise GrammarCompileError(
                f"structured outputs are not available for this tokenizer: its vocabulary cannot"
                f" spell every byte ({probe.get_error().strip().splitlines()[0]})"
            )

    def fill_bitmasks(self, matchers: Sequence[GrammarMatcher]) -> torch.Tensor:
        """The allowed tokens of each matcher, [M, words] int32 on the CPU (bit j of word w: id 32w+j).

        One matcher computes on this thread; several compute in parallel on llguidance's own
        threads (the GIL released), each mask costing what its grammar state needs, not O(V).
        """
        words = self.words
        bitmask = torch.zeros(len(matchers), words, dtype=torch.int32)  # [M, W]
        if len(matchers) == 1:
            matchers[0].ll.unsafe_compute_mask_ptr(bitmask.data_ptr(), words * 4)
        else:
            if self._executor is None:
                self._executor = llguidance.LLExecutor(num_threads=max(1, min(4, os.cpu_count() or 1)))
            pairs = [(m.ll, i) for i, m in enumerate(matchers)]
            self._executor.unsafe_compute_mask_ptr(pairs, bitmask.data_ptr(), words * 4, len(matchers))
        return bitmask


class _TokenBytes(llguidance.TokenizerWrapper):
    """A tokenizer as a list of token bytes, for llguidance's generic constructor.

    llguidance tokenizes forced text with it; the model's own tokenizer would add a Metaspace
    prefix ("o" becoming " o"), so this one matches the longest token bytes greedily instead.
    """

    def __init__(self, hf_tokenizer: Any, eos: list[int]) -> None:
        self.eos_token_id = eos[0] if eos else hf_tokenizer.eos_token_id
        self.bos_token_id = hf_tokenizer.bos_token_id
        self.special_token_ids = list(hf_tokenizer.all_special_ids)
        self.tokens = [token_bytes(hf_tokenizer, i) for i in range(len(hf_tokenizer))]
        self.is_tokenizer_wrapper = True
        special = set(self.special_token_ids)
        self._ids = {b: i for i, b in reversed(list(enumerate(self.tokens))) if b and i not in special}
        self._longest = max(map(len, self._ids), default=1)

    def __call__(self, text: str | bytes) -> list[int]:
        data = text.encode() if isinstance(text, str) else text
        ids, pos = [], 0
        while pos < len(data):
            for size in range(min(self._longest, len(data) - pos), 0, -1):
                token = self._ids.get(data[pos : pos + size])
                if token is not None:
                    ids.append(token)
                    pos += size
                    break
            else:
                pos += 1  # a byte no token spells: the grammar cannot produce it either
        return ids


def grammar_text(spec: GrammarSpec) -> str:
    """The engine's grammar for a spec (not yet validated)."""
    if spec.kind == "json_schema":
        return llguidance.LLMatcher.grammar_from_json_schema(spec.value, overrides=JSON_OPTIONS)  # type: ignore[arg-type]
    if spec.kind == "json_object":
        return llguidance.LLMatcher.grammar_from_json_schema('{"type":"object"}', overrides=JSON_OPTIONS)  # type: ignore[arg-type]
    if spec.kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(spec.value)
    if spec.kind == "choice":
        options = json.loads(spec.value)
        return llguidance.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(o) for o in options))
    try:
        lark = any_to_lark(spec.value)  # GBNF becomes Lark; Lark passes through
    except Exception as exc:  # the converter raises plain Exceptions on bad GBNF
        raise GrammarCompileError(f"the grammar is neither valid Lark nor GBNF: {exc}") from exc
    return llguidance.LLMatcher.grammar_from_lark(lark)


def _limits(max_grammar_size: int) -> llguidance.LLParserLimits:
    return llguidance.LLParserLimits(max_grammar_size=max_grammar_size, verbose_errors=False)


class CompiledGrammar:
    """A validated grammar: a template matcher in its start state, copied for each sequence."""

    __slots__ = ("_template", "spec")

    def __init__(self, spec: GrammarSpec, tokenizer: GrammarTokenizer, max_grammar_size: int) -> None:
        self.spec = spec
        try:
            text = grammar_text(spec)
            self._template = llguidance.LLMatcher(
                tokenizer.ll, text, log_level=0, limits=_limits(max_grammar_size)
            )
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # a Rust panic arrives as pyo3's PanicException, a BaseException
            raise GrammarCompileError(
                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            ) from exc
        if self._template.is_error():
            raise _compile_error(self._template.get_error())

    def matcher(self) -> GrammarMatcher:
        """A fresh matcher for one sequence."""
        return GrammarMatcher(self._template.deep_copy())


def _compile_error(message: str) -> GrammarCompileError:
    message = message.strip().splitlines()[0] if message.strip() else "the grammar is invalid"
    found = _UNIMPLEMENTED.search(message)
    if found:
        keys = [k.strip().strip('"') for k in found.group(1).split(",") if k.strip()]
        keyword = keys[0] if keys else None
        return GrammarCompileError(
            f"the JSON schema uses {', '.join(keys)}, which constrained decoding cannot enforce",
            keyword=keyword,
        )
    return GrammarCompileError(message)


class GrammarMatcher:
    """Where one sequence stands in its grammar; advanced with every token it generates."""

    __slots__ = ("ll",)

    def __init__(self, ll: llguidance.LLMatcher) -> None:
        self.ll = ll

    def advance(self, token: int) -> str | None:
        """Consume one token: None while the grammar goes on, "stop" once it is complete (only
        EOS could follow, so the sequence ends now), "length" if it broke (the vocabulary cannot
        spell what the grammar needs next): the output is then incomplete, as if cut short."""
        self.ll.consume_token(token)
        if self.ll.is_error():
            log.warning("a grammar matcher failed; ending its sequence: %s", self.ll.get_error()[:200])
            return "length"
        return "stop" if self.ll.is_stopped() else None

    @property
    def error(self) -> str:
        return str(self.ll.get_error())
