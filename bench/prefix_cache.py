"""Prefix caching and chunked prefill on one model, in one process, in one run.

    python -m bench.prefix_cache [--model PATH] [--backend hf_eager] [--json out.json]

1. system prompt: two requests share a ~1,500-token system prompt; TTFT of the second over the first.
2. conversation: 8 chat turns of ~150 tokens, each resending the whole history; TTFT of turn 8
   over turn 1.
3. stall: 8 streams decode while a ~3,000-token prompt arrives; every gap between two tokens
   of a stream is a sample; the worst gap over the median gap (chunked prefill on and off).

TTFT is from add_request to the step that returns the first token, on the engine core (no HTTP).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from itertools import pairwise
from typing import Any

import torch

from backends.engine.params import SamplingParams
from backends.library import load_model

FILLER = (
    "You are a careful assistant for a hardware store. Answer questions about tools, paint, "
    "garden supplies and plumbing parts. Quote prices only from the catalogue. Policy {i}: when a "
    "customer asks about returns, explain the 30-day window and the need for a receipt. "
)


def text_of_tokens(tokenizer: Any, tokens: int, salt: str = "") -> list[int]:
    """Token ids of about `tokens` tokens of distinct filler text."""
    ids: list[int] = []
    i = 0
    while len(ids) < tokens:
        ids += tokenizer(salt + FILLER.format(i=i), add_special_tokens=False).input_ids
        i += 1
    return ids[:tokens]


def ttft(core: Any, prompt: list[int], max_tokens: int = 1) -> tuple[float, list[int], int]:
    """Seconds to the first token, the generated ids, and the cached prompt tokens."""
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    started = time.perf_counter()
    rid = core.add_request(prompt, params)
    first: float | None = None
    out: list[int] = []
    cached = 0
    while core.has_work():
        for o in core.step().outputs:
            if o.request_id == rid:
                cached = o.cached_tokens
                out += [t for c in o.choices for t in c.token_ids]
                if first is None and out:
                    first = time.perf_counter() - started
    assert first is not None
    return first, out, cached


def system_prompt(core: Any, tok: Any) -> dict[str, Any]:
    system = text_of_tokens(tok, 1500)
    first, _, _ = ttft(core, system + text_of_tokens(tok, 20, salt="Question 1: "))
    second, _, cached = ttft(core, system + text_of_tokens(tok, 20, salt="Question 2: "))
    return {"ttft_first_s": first, "ttft_repeat_s": second, "cached_tokens": cached, "ratio": second / first}


def conversation(core: Any, tok: Any, turns: int = 8) -> dict[str, Any]:
    messages: list[dict[str, str]] = []
    rows = []
    for turn in range(turns):
        user = tok.decode(text_of_tokens(tok, 150, salt=f"Turn {turn}. "))
        messages.append({"role": "user", "content": user})
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt = list(tok(text, add_special_tokens=False).input_ids)
        seconds, answer, cached = ttft(core, prompt, max_tokens=24)
        messages.append({"role": "assistant", "content": tok.decode(answer, skip_special_tokens=True)})
        rows.append(
            {"turn": turn + 1, "prompt_tokens": len(prompt), "cached_tokens": cached, "ttft_s": seconds}
        )
    return {"turns": rows, "ratio": rows[-1]["ttft_s"] / rows[0]["ttft_s"]}


def stall(core: Any, tok: Any, streams: int = 8, long_tokens: int = 3000) -> dict[str, Any]:
    params = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)
    ids = [core.add_request(text_of_tokens(tok, 30, salt=f"Stream {i}. "), params) for i in range(streams)]
    arrivals: dict[str, list[float]] = {i: [] for i in ids}
    long_id: str | None = None
    long_first: float | None = None
    long_sent = 0.0
    steps_after_first = 0
    while steps_after_first < 10:
        result = core.step()
        now = time.perf_counter()
        for o in result.outputs:
            if o.request_id in arrivals and any(c.token_ids for c in o.choices):
                arrivals[o.request_id].append(now)
            if o.request_id == long_id and long_first is None:
                long_first = now
        if long_id is None and all(len(a) >= 10 for a in arrivals.values()):
            long_id = core.add_request(text_of_tokens(tok, long_tokens, salt="Document. "), params)
            long_sent = time.perf_counter()
        if long_first is not None:
            steps_after_first += 1
    for rid in [*ids, long_id]:
        if rid is not None:
            core.abort(rid)
    while core.has_work():
        core.step()
    gaps = [b - a for times in arrivals.values() for a, b in pairwise(times)]
    median = statistics.median(gaps)
    assert long_first is not None
    return {
        "median_gap_s": median,
        "worst_gap_s": max(gaps),
        "ratio": max(gaps) / median,
        "long_prompt_ttft_s": long_first - long_sent,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None)
    parser.add_argument("--backend", default="hf_eager")
    parser.add_argument(
        "--chunk", type=int, default=None, help="PREFILL_CHUNK_TOKENS (default: the engine's)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--only", default="system_prompt,conversation,stall,stall_unchunked")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    only = set(args.only.split(","))
    extra = {"prefill_chunk_tokens": args.chunk} if args.chunk else {}
    model = load_model(args.model, backend=args.backend, dtype="float32", device="cpu", **extra)
    core, tok = model.core, model.tokenizer
    ttft(core, text_of_tokens(tok, 64, salt="Warm-up. "), max_tokens=2)
    report: dict[str, Any] = {}
    for name, run in (("system_prompt", system_prompt), ("conversation", conversation), ("stall", stall)):
        if name in only:
            report[name] = run(core, tok)
            print(name, json.dumps(report[name]), file=sys.stderr, flush=True)
    model.close()
    if "stall_unchunked" in only:
        whole = load_model(
            args.model, backend=args.backend, dtype="float32", device="cpu", prefill_chunk_tokens=10**6
        )
        report["stall_unchunked"] = stall(whole.core, tok)
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
