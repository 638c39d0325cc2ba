"""The GPU check's HTTP line: ladle's server on the built model, loaded at 1 and 16 streams.

The server is `python -m handler` in its own process, as deployed. Locust, gevent and their
dozen dependencies do not fit beside the wheels a GPU machine needs in its 64 MiB upload,
so the closed loop here is plain threads; what each stream sends, how its SSE body is read
and timed, and how the samples are summarized are loadtest's own (`request_body`,
`SSEReader`, `from_samples`), so the numbers mean what `python -m loadtest`'s do.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.gpu_client import Client
from bench.gpu_features import PROBES
from loadtest.matrix import free_port, healthy, stop_server
from loadtest.run import ROOT
from loadtest.stream import PROMPTS
from loadtest.summary import LevelSummary, from_samples, markdown

# The yardstick's prompts, word for word, in the words of bench.shapes' tokenizer (w3, w4, ...;
# every shape has at least 512 ids): English words would all be <unk>, and a random model fed
# only <unk> tends to answer with specials, whose text is empty.
WORD_PROMPTS = tuple(
    " ".join(f"w{100 + (7 * i + 13 * j) % 400}" for j in range(len(prompt.split())))
    for i, prompt in enumerate(PROMPTS)
)


@dataclass(slots=True)
class HttpPlan:
    """What the HTTP line serves and how hard it loads it."""

    backend: str = "hf_bettertransformer"
    streams: tuple[int, ...] = (1, 16)
    seconds: float = 10.0
    max_tokens: int = 64
    start_timeout_s: float = 150.0
    env: dict[str, str] = field(default_factory=dict)  # MAX_CONTEXT, COMPILE, ... for the server


@dataclass(slots=True)
class HttpResult:
    """Per stream count, loadtest's summary; and the metrics the targets read."""

    backend: str = ""
    facts: list[str] = field(default_factory=list)
    levels: list[LevelSummary] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # metric -> what a probe saw, or why it was skipped
    start_s: float = 0.0

    def table(self, title: str) -> str:
        facts = [*self.facts, f"server start (load, compile, two warm-up requests) {self.start_s:.0f} s"]
        return markdown(title, facts, self.levels)


def closed_loop(client: Client, streams: int, seconds: float, max_tokens: int) -> LevelSummary:
    """`streams` clients, each sending its next request as soon as the last one ends, for
    `seconds`; requests in flight at the end run to completion and count."""
    samples: list[dict[str, Any]] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def user(index: int) -> None:
        sent = 0
        while time.monotonic() < deadline:
            sample = client.sample(WORD_PROMPTS[(index + sent * streams) % len(WORD_PROMPTS)], max_tokens)
            sent += 1
            with lock:
                samples.append(sample)

    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return from_samples(streams, samples)


@contextmanager
def served(model_dir: str, plan: HttpPlan, log: Path) -> Iterator[Client]:
    """`python -m handler` on a free loopback port, healthy within the plan's start timeout."""
    port = free_port()
    command = [sys.executable, "-m", "handler", "--backend", plan.backend, "--model", model_dir]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    command += ["--max-batch-size", str(max(plan.streams))]
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, **plan.env, "PYTHONPATH": path}
    with log.open("wb") as sink:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + plan.start_timeout_s
        while not healthy(f"http://127.0.0.1:{port}"):
            if server.poll() is not None:
                raise RuntimeError(f"the {plan.backend} server exited with {server.returncode}; see {log}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the {plan.backend} server was not healthy in {plan.start_timeout_s:.0f} s"
                )
            time.sleep(0.5)
        client = Client(port)
        client.model = client.json("GET", "/v1/models")["data"][0]["id"]
        yield client
    finally:
        stop_server(server)


def run_http(model_dir: str, plan: HttpPlan, log: Path) -> HttpResult:
    """Serve, warm up with two requests, then one closed-loop level per stream count."""
    result = HttpResult(backend=plan.backend)
    settings = " ".join(f"{k}={v}" for k, v in sorted(plan.env.items()))
    result.facts = [
        f"`python -m handler --backend {plan.backend}` {settings}, streamed /v1/completions",
        f"closed loop, {plan.seconds:g} s per level, {plan.max_tokens} forced tokens (ignore_eos), "
        "temperature 0, the yardstick's 20 prompts in the model's words",
        "TTFT and ITL percentiles over successful requests; output tok/s = their completion tokens / "
        "(last end - first start)",
    ]
    started = time.perf_counter()
    with served(model_dir, plan, log) as client:
        for _ in range(2):  # the first forward and allocations stay out of the numbers
            warm = client.sample(WORD_PROMPTS[0], plan.max_tokens)
            if warm["error"]:
                raise RuntimeError(f"warm-up request failed: {warm['error']}")
        result.start_s = time.perf_counter() - started
        for streams in plan.streams:
            level = closed_loop(client, streams, plan.seconds, plan.max_tokens)
            print(
                f"[gpu_check] HTTP {streams} streams: {level.output_tokens_per_s or 0:.1f} tok/s", flush=True
            )
            result.levels.append(level)
            if level.output_tokens_per_s is not None:
                result.metrics[f"http.tokens_per_s.x{streams}"] = level.output_tokens_per_s
        result.metrics["http.failures"] = float(sum(level.failures for level in result.levels))
        for probe in PROBES:
            outcome = probe.attempt(client)
            if outcome.value is not None:
                result.metrics[probe.metric] = outcome.value
            result.notes[probe.metric] = outcome.note
    return result
