"""HTTP overhead at one request at a time: TTFT and non-streaming latency, engine vs server.

    python -m bench.http_overhead [--model PATH] [--rounds 10]

Starts the real server (`python -m handler`) on 127.0.0.1, measures it with httpx, stops
it, then measures the engine alone on the same model in this process. Medians of
`--rounds` runs after a warm-up; same prompts, greedy, forced length.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import httpx

from backends.engine.params import SamplingParams
from backends.library import load_model
from loadtest.matrix import free_port, healthy

# A prompt whose first greedy token is text: with one whose first token is special (EOS under
# ignore_eos), the first visible text only comes a step later on both sides.
PROMPT = "The three primary colours are"


def server_figures(base: str, tokens: int, rounds: int) -> dict[str, float]:
    body: dict[str, Any] = {
        "model": "m",
        "prompt": PROMPT,
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    ttft, latency = [], []
    with httpx.Client(base_url=base, timeout=300) as client:
        for i in range(rounds + 1):
            start = time.perf_counter()
            with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
                first = 0.0
                for line in r.iter_lines():
                    if not first and line.startswith("data: {") and '"text":""' not in line.replace(" ", ""):
                        first = time.perf_counter() - start
            start = time.perf_counter()
            client.post("/v1/completions", json=body).raise_for_status()
            if i:  # the first round warms up
                ttft.append(first)
                latency.append(time.perf_counter() - start)
    return {"ttft_ms": statistics.median(ttft) * 1e3, "latency_ms": statistics.median(latency) * 1e3}


def engine_figures(model_path: str | None, tokens: int, rounds: int) -> dict[str, float]:
    model = load_model(model_path)
    params = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
    ttft, latency = [], []
    for i in range(rounds + 1):
        start = time.perf_counter()
        model.core.add_request(model.encode(PROMPT), params)  # the server tokenizes per request too
        first = None
        while model.core.has_work():
            outputs = model.core.step().outputs
            if first is None and any(c.text for o in outputs for c in o.choices):
                first = time.perf_counter() - start  # the first visible text, as the client sees it
        if i:
            ttft.append(first or 0.0)
            latency.append(time.perf_counter() - start)
    return {"ttft_ms": statistics.median(ttft) * 1e3, "latency_ms": statistics.median(latency) * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    port = free_port()
    env = {**os.environ, "NO_PLAYGROUND": "1", "LOG_LEVEL": "warning"}
    if args.model:
        env["MODEL"] = args.model
    proc = subprocess.Popen(
        [sys.executable, "-m", "handler", "--host", "127.0.0.1", "--port", str(port)], env=env
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if healthy(base):
                break
            time.sleep(0.5)
        server = server_figures(base, args.tokens, args.rounds)
    finally:
        proc.terminate()
        proc.wait(60)
    engine = engine_figures(args.model, args.tokens, args.rounds)
    result = {
        "server": server,
        "engine": engine,
        "ttft_overhead_ms": server["ttft_ms"] - engine["ttft_ms"],
        "latency_ratio": server["latency_ms"] / engine["latency_ms"],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
