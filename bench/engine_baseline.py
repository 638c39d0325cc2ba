"""Engine vs raw `model.generate` on one model: decode tokens/s at batch 1 and 16, and peak RSS.

    python -m bench.engine_baseline [--model PATH] [--tokens 64] [--rss-length 512]

Generation is forced to full length (ignore_eos / min_new_tokens); each figure is the best
of a few rounds after a warm-up, so a noisy neighbour costs as little as possible.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from typing import Any

import torch

from backends.engine.params import SamplingParams
from backends.library import load_model

PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain what a hash table is in simple terms.",
    "List three benefits of regular exercise.",
]


def engine_tokens_per_s(model: Any, prompts: list[list[int]], tokens: int) -> float:
    """Aggregate decode tokens/s of the engine (first tokens excluded, as TTFT is separate)."""
    core = model.core
    for p in prompts:
        core.add_request(p, SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True))
    core.step()  # prefill: gives every sequence its first token
    start, produced = time.perf_counter(), 0
    while core.has_work():
        produced += sum(len(c.token_ids) for o in core.step().outputs for c in o.choices)
    return produced / (time.perf_counter() - start)


def generate_tokens_per_s(model: Any, prompts: list[list[int]], tokens: int) -> float:
    """The same with `model.generate` on a left-padded batch (prefill time subtracted)."""
    hf = model.backend.model
    pad = model.tokenizer.pad_token_id or 0
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    kwargs = {"input_ids": ids, "attention_mask": mask, "do_sample": False, "pad_token_id": pad}
    with torch.inference_mode():
        t0 = time.perf_counter()
        hf.generate(**kwargs, max_new_tokens=1, min_new_tokens=1)
        t1 = time.perf_counter()
        hf.generate(**kwargs, max_new_tokens=tokens, min_new_tokens=tokens)
        t2 = time.perf_counter()
    return len(prompts) * (tokens - 1) / ((t2 - t1) - (t1 - t0))


def best(fn: Any, rounds: int) -> float:
    return max(fn() for _ in range(rounds))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="MODEL (default: the default model)")
    ap.add_argument("--backend", default="hf_eager")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rss-length", type=int, default=512, help="tokens per sequence for the RSS figure")
    ap.add_argument("--output", default=None)
    args = ap.parse_args()

    model = load_model(args.model, backend=args.backend, max_batch_size=16)
    encoded = [list(model.tokenizer(p).input_ids) for p in PROMPTS]
    one, sixteen = encoded[:1], (encoded * 4)[:16]
    engine_tokens_per_s(model, one, 8)  # warm-up
    results = {
        "generate_b1": best(lambda: generate_tokens_per_s(model, one, args.tokens), args.rounds),
        "engine_b1": best(lambda: engine_tokens_per_s(model, one, args.tokens), args.rounds),
        "generate_b16": best(lambda: generate_tokens_per_s(model, sixteen, args.tokens), args.rounds),
        "engine_b16": best(lambda: engine_tokens_per_s(model, sixteen, args.tokens), args.rounds),
    }
    half = args.rss_length // 2
    long_prompts = [[(i * 7 + j) % 1000 + 100 for j in range(half)] for i in range(16)]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    engine_tokens_per_s(model, long_prompts, args.rss_length - half)
    results[f"peak_rss_mib_16x{args.rss_length}"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["rss_mib_before_long_run"] = rss_before
    results["engine_b1_over_generate_b1"] = results["engine_b1"] / results["generate_b1"]
    results["engine_b16_over_engine_b1"] = results["engine_b16"] / results["engine_b1"]
    for key, value in results.items():
        print(f"{key:32s} {value:10.2f}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
