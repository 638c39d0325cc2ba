"""Constrained decoding: JSON schema, JSON object, regex, choice and Lark/GBNF grammars.

- `spec`: `GrammarSpec`, the hashable description of a constraint (the cache key);
- `requests`: OpenAI `response_format` / vLLM `structured_outputs` dicts -> `GrammarSpec`;
- `compiler`: `GrammarCompiler`, compile with limits into a bounded LRU cache (sync or async);
- `mask`: the sampler stage that masks the logits of constrained rows;
- `llg`: the grammar engine (llguidance), the one module that imports it.
"""

from __future__ import annotations

from backends.grammar.compiler import GrammarCompiler
from backends.grammar.llg import CompiledGrammar, GrammarCompileError, GrammarMatcher, GrammarTokenizer
from backends.grammar.requests import from_response_format, from_structured_outputs
from backends.grammar.spec import GrammarSpec

__all__ = [
    "CompiledGrammar",
    "GrammarCompileError",
    "GrammarCompiler",
    "GrammarMatcher",
    "GrammarSpec",
    "GrammarTokenizer",
    "from_response_format",
    "from_structured_outputs",
]
