"""ladle's own load-test table: serve each backend in turn on loopback and load it at each user count.

    python -m loadtest.matrix --backends hf_eager,hf_bettertransformer,hf_int8 --users 1,4,16 \
        --duration 30s --max-tokens 64

One server at a time (`python -m handler`, the default model unless --model), so each has
the machine to itself. Every backend's run is a normal `python -m loadtest` run in
<out>/<backend>/; <out>/table.md holds one row per backend and user count.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from loadtest import run

BACKENDS = ("hf_eager", "hf_bettertransformer", "hf_int8")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def healthy(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url + "/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def start_server(backend: str, model: str | None, port: int, log: Path) -> subprocess.Popen[bytes]:
    """`python -m handler` on 127.0.0.1:port; returns once /health answers 200."""
    command = [sys.executable, "-m", "handler", "--backend", backend, "--host", "127.0.0.1"]
    command += ["--port", str(port), "--log-level", "warning"] + (["--model", model] if model else [])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(run.ROOT), os.environ.get("PYTHONPATH")])),
    }
    with log.open("wb") as sink:
        server = subprocess.Popen(command, cwd=run.ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600  # a bound on loading the model, not a measurement
    while not healthy(f"http://127.0.0.1:{port}"):
        if server.poll() is not None or time.monotonic() > deadline:
            stop_server(server)
            raise SystemExit(f"loadtest.matrix: the {backend} server did not start; see {log}")
        time.sleep(0.5)
    return server


def stop_server(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def table(rows: list[tuple[str, dict[str, Any]]], facts: list[str]) -> str:
    lines = [f"- {fact}" for fact in facts] + [""]
    lines.append(
        "| backend | users | requests | failures | TTFT p50 (ms) | TTFT p95 (ms) | ITL p50 (ms) | output tok/s |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for backend, level in rows:
        failures = level["failures"]
        if level.get("unfinished"):
            failures = f"{failures} ({level['unfinished']} unfinished)"
        cells = [level["users"], level["requests"], failures, level["ttft_p50_ms"]]
        cells += [level["ttft_p95_ms"], level["itl_p50_ms"], level["output_tokens_per_s"]]
        lines.append(f"| {backend} | " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if value >= 100 else f"{value:.1f}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.matrix", description=__doc__)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--model", default=None, help="MODEL for the server (default: the default model)")
    parser.add_argument("--users", default="1,4,16")
    parser.add_argument("--duration", default="30s")
    parser.add_argument("--max-tokens", default="64")
    parser.add_argument("--user-class", default=run.USER_CLASSES[0])
    parser.add_argument("--out", default=f"artifacts/loadtest/matrix-{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, dict[str, Any]]] = []
    facts: list[str] = []
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        port = free_port()
        server = start_server(backend, args.model, port, out / f"{backend}.log")
        try:
            url = f"http://127.0.0.1:{port}"
            status = run.main(
                [
                    *("--url", url, "--users", args.users, "--duration", args.duration),
                    *("--max-tokens", args.max_tokens, "--ignore-eos", "--user-class", args.user_class),
                    *("--label", f"ladle {backend}", "--out", str(out / backend)),
                ]
            )
        finally:
            stop_server(server)
        if status != 0:
            return status
        summary = json.loads((out / backend / "summary.json").read_text())
        if not facts:  # what all runs share: model, machine, request settings, definitions
            facts = [f"model `{summary['model']}`", *summary["facts"][1:3], summary["facts"][4]]
        rows += [(backend, level) for level in summary["levels"]]
        facts.append(f"{backend}: {summary['when']}")
    text = table(rows, facts)
    (out / "table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
