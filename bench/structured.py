"""Structured outputs: what a JSON-schema constraint costs on the engine, in one run.

    python -m bench.structured [--model PATH] [--streams 16] [--tokens 64] [--rounds 3]

1. Throughput: `--streams` requests at once, `--tokens` tokens each, every request under a
   JSON schema whose valid outputs run past `--tokens` (so each ends with `length`, as the
   unconstrained ones forced with ignore_eos do); completion tokens/s over `--rounds`
   alternating rounds, and the ratio constrained / unconstrained (of the best rounds, and
   the median of each round's pair: on a shared machine the pairs are the fairer figure).
2. Time to first token of one request alone: unconstrained, with a schema never seen before
   (a pydantic model of 8 fields, renamed each time, so the compile is paid), and with a
   schema already compiled (cache hit). Medians of `--ttft-runs`; and the compile alone
   (what a new schema adds to TTFT, without the forward's noise), for misses and hits.
3. The mask stage alone per step (fill the bitmasks + apply them to [B, V] logits) at batch
   sizes 1..64, for the model's vocabulary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import torch

from backends.engine.params import SamplingParams
from backends.grammar import GrammarSpec
from backends.grammar.mask import apply_grammar
from backends.library import Model, load_model

PROMPT = "List the items of an order as JSON."

# Valid outputs are long: 12 items, each with an 8-24 character name.
LONG = {
    "type": "object",
    "properties": {
        "order": {"type": "integer", "minimum": 0},
        "items": {
            "type": "array",
            "minItems": 12,
            "maxItems": 12,
            "items": {
                "type": "object",
                "properties": {
                    "sku": {"type": "string", "minLength": 8, "maxLength": 24},
                    "quantity": {"type": "integer", "minimum": 1, "maximum": 99},
                },
                "required": ["sku", "quantity"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["order", "items"],
    "additionalProperties": False,
}


def typical_schema(tag: str) -> dict[str, Any]:
    """What `pydantic.BaseModel.model_json_schema()` gives for an 8-field model (fields renamed by tag)."""
    from pydantic import BaseModel, Field, create_model

    fields: dict[str, Any] = {
        f"name_{tag}": (str, Field(max_length=40)),
        f"age_{tag}": (int, Field(ge=0, le=150)),
        f"email_{tag}": (str | None, None),
        f"active_{tag}": (bool, ...),
        f"score_{tag}": (float, ...),
        f"tags_{tag}": (list[str], Field(max_length=5)),
        f"city_{tag}": (str, ...),
        f"kind_{tag}": (str, Field(pattern="^(a|b|c)$")),
    }
    model: type[BaseModel] = create_model(f"Person{tag}", **fields)
    return model.model_json_schema()


def throughput(model: Model, streams: int, tokens: int, spec: GrammarSpec | None) -> float:
    """Completion tokens/s of `streams` concurrent requests of `tokens` tokens (submit to last token)."""
    core = model.core
    prompt = list(model.tokenizer(PROMPT).input_ids)
    if spec is None:
        params = SamplingParams(temperature=1.0, max_tokens=tokens, ignore_eos=True, seed=0)
    else:
        params = SamplingParams(temperature=1.0, max_tokens=tokens, seed=0, grammar=spec)
    start, produced = time.perf_counter(), 0
    for _ in range(streams):
        core.add_request(prompt, params)
    while core.has_work():
        produced += sum(len(c.token_ids) for o in core.step().outputs for c in o.choices)
    return produced / (time.perf_counter() - start)


def ttft(model: Model, spec: GrammarSpec | None) -> float:
    """Seconds from a lone request's arrival (compile included) to its first token."""
    core = model.core
    prompt = list(model.tokenizer(PROMPT).input_ids)
    start = time.perf_counter()
    if spec is not None:
        core.grammars.compile(spec, "response_format")
    request_id = core.add_request(prompt, SamplingParams(max_tokens=1, grammar=spec))
    while not any(o.request_id == request_id and o.choices for o in core.step().outputs):
        pass
    elapsed = time.perf_counter() - start
    while core.has_work():
        core.step()
    return elapsed


def compile_ms(model: Model, specs: list[GrammarSpec]) -> list[float]:
    """Milliseconds to compile each spec (cache misses and hits alike), as the API layer does."""
    times = []
    for spec in specs:
        start = time.perf_counter()
        model.core.grammars.compile(spec, "response_format")
        times.append(1000 * (time.perf_counter() - start))
    return times


def mask_cost(model: Model, batch: int, steps: int = 20) -> float:
    """Mean seconds of the mask stage for `batch` constrained rows (each at a different point)."""
    compiler = model.core.grammars
    grammar = compiler.compile(GrammarSpec.json_schema(LONG))
    matchers = [grammar.matcher() for _ in range(batch)]
    vocab = model.info.vocab_size
    rng = torch.Generator().manual_seed(0)
    total = 0.0
    for _ in range(steps):
        scores = torch.randn(batch, vocab, generator=rng)
        start = time.perf_counter()
        apply_grammar(scores, matchers, compiler.tokenizer)
        total += time.perf_counter() - start
        for row, m in enumerate(matchers):  # advance each by an allowed token
            allowed = (scores[row] > float("-inf")).nonzero().flatten()
            m.advance(int(allowed[torch.randint(len(allowed), (1,), generator=rng)].item()))
    return total / steps


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="MODEL (default: the default model)")
    ap.add_argument("--backend", default="hf_eager")
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--ttft-runs", type=int, default=7)
    ap.add_argument("--mask-steps", type=int, default=20, help="steps timed per batch size (mask stage)")
    ap.add_argument("--output", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    model = load_model(args.model, backend=args.backend, max_batch_size=max(args.streams, 64))
    started = time.perf_counter()
    model.core.grammars.prepare()
    tokenizer_s = time.perf_counter() - started
    long_spec = GrammarSpec.json_schema(LONG)
    _progress(f"grammar tokenizer built in {tokenizer_s:.2f} s")
    throughput(model, 2, 8, None)  # warm-up
    throughput(model, 2, 8, long_spec)
    _progress("warmed up")
    plain: list[float] = []
    constrained: list[float] = []
    for _ in range(args.rounds):  # alternate, so that a noisy neighbour hits both alike
        plain.append(throughput(model, args.streams, args.tokens, None))
        constrained.append(throughput(model, args.streams, args.tokens, long_spec))
        _progress(f"throughput: plain {plain[-1]:.1f}, constrained {constrained[-1]:.1f} tok/s")
    base = [ttft(model, None) for _ in range(args.ttft_runs)]
    new = [ttft(model, GrammarSpec.json_schema(typical_schema(f"n{i}"))) for i in range(args.ttft_runs)]
    repeated_spec = GrammarSpec.json_schema(typical_schema("same"))
    ttft(model, repeated_spec)
    repeated = [ttft(model, repeated_spec) for _ in range(args.ttft_runs)]
    _progress(
        f"ttft medians: plain {statistics.median(base):.3f}, new {statistics.median(new):.3f}, "
        f"repeated {statistics.median(repeated):.3f} s"
    )
    fresh = [GrammarSpec.json_schema(typical_schema(f"c{i}")) for i in range(args.ttft_runs)]
    misses = compile_ms(model, fresh)
    hits = compile_ms(model, fresh)
    ratios = [c / p for c, p in zip(constrained, plain, strict=True)]
    results = {
        "model": model.info.name,
        "vocab_size": model.info.vocab_size,
        "grammar_tokenizer_build_s": round(tokenizer_s, 3),
        "streams": args.streams,
        "tokens": args.tokens,
        "plain_tok_s": round(max(plain), 1),
        "constrained_tok_s": round(max(constrained), 1),
        "ratio_of_best": round(max(constrained) / max(plain), 3),
        "ratio_median_of_rounds": round(statistics.median(ratios), 3),
        "rounds": [[round(p, 1), round(c, 1)] for p, c in zip(plain, constrained, strict=True)],
        "ttft_plain_ms": round(1000 * statistics.median(base), 1),
        "ttft_new_schema_added_ms": round(1000 * (statistics.median(new) - statistics.median(base)), 1),
        "ttft_repeated_schema_added_ms": round(
            1000 * (statistics.median(repeated) - statistics.median(base)), 1
        ),
        "compile_new_schema_ms": round(statistics.median(misses), 2),
        "compile_repeated_schema_ms": round(statistics.median(hits), 3),
        "mask_ms_per_step": {
            b: round(1000 * mask_cost(model, b, args.mask_steps), 2) for b in (1, 4, 16, 64)
        },
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
