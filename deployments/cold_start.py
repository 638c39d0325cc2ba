"""Cold start: seconds from starting `python -m handler` to the first streamed token, cold and warm.

Cold is an empty LADLE_CACHE (the default model's GGUF is converted to safetensors first); warm
reuses the cache the cold run filled. Each run is a fresh process, stopped with SIGTERM after its
first token (the drain must end it with status 0).

    python deployments/cold_start.py              # the default model, 1 cold and 3 warm runs
    python deployments/cold_start.py --model DIR --warm-runs 5 --json results.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


# The server's own log lines that mark the phases of a start (imports end where the load begins).
PHASES = {"load_began_s": "loading model", "loaded_s": "model loaded in"}
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO ladle: (.*)$")


@dataclass(frozen=True, slots=True)
class Run:
    """One start, in seconds since the process started: load began and ended, ready, first token."""

    cache: str
    load_began_s: float
    loaded_s: float
    ready_s: float
    first_token_s: float
    exit_status: int


def phases(log: str, started: float) -> dict[str, float]:
    """When each phase's log line was written, from the timestamps of ladle's log format."""
    found: dict[str, float] = {}
    for line in log.splitlines():
        match = LOG_LINE.match(line)
        if not match:
            continue
        when = datetime.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        for name, text in PHASES.items():
            if match[2].startswith(text) and name not in found:
                found[name] = round(when - started, 2)
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}")
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"the server was not ready within {timeout:.0f} s")


def first_token(url: str) -> None:
    """Stream a chat completion until the first chunk carrying text."""
    body = {"model": "any", "messages": PROMPT, "max_tokens": 16, "temperature": 0, "stream": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                return
    raise RuntimeError("the stream ended without text")


def measure(model: str | None, cache: Path, label: str, timeout: float) -> Run:
    """Start a server, time readiness and the first token, then SIGTERM it."""
    port = free_port()
    env = {**os.environ, "LADLE_CACHE": str(cache), "LOG_LEVEL": "info", "NO_PLAYGROUND": "1"}
    env.pop("MODEL", None)
    if model:
        env["MODEL"] = model
    command = [sys.executable, "-m", "handler", "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    # A file, not a pipe: progress bars could fill a pipe nobody reads and stall the server.
    with tempfile.TemporaryFile() as log:
        started, wall = time.perf_counter(), time.time()
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            wait_ready(url, process, timeout)
            ready = time.perf_counter() - started
            first_token(url)
            token = time.perf_counter() - started
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)
        log.seek(0)
        stderr = log.read().decode(errors="replace")
    if process.returncode != 0:
        print(stderr[-2000:], file=sys.stderr)
    marks = phases(stderr, wall)
    return Run(
        label,
        marks.get("load_began_s", -1),
        marks.get("loaded_s", -1),
        round(ready, 2),
        round(token, 2),
        process.returncode,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="MODEL to serve; unset serves the default model")
    parser.add_argument("--warm-runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds a start may take")
    parser.add_argument("--json", type=Path, help="also write the runs here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ladle-cache-") as cache:
        runs = [measure(args.model, Path(cache), "cold", args.timeout)]
        runs += [measure(args.model, Path(cache), "warm", args.timeout) for _ in range(args.warm_runs)]
    print("| cache | load began (s) | model loaded (s) | ready (s) | first token (s) | exit status |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in runs:
        print(
            f"| {r.cache} | {r.load_began_s} | {r.loaded_s} | {r.ready_s} | {r.first_token_s} | {r.exit_status} |"
        )
    if args.json:
        args.json.write_text(json.dumps([asdict(run) for run in runs], indent=2) + "\n")
    return 0 if all(run.exit_status == 0 for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
