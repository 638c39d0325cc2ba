"""Soak: a real server under the Locust suite for a long while; failures, memory, sequences left.

    python -m reliability.soak --duration 600 --users 32 --max-tokens 64

Starts `python -m handler` on 127.0.0.1 (the default model unless --model), runs the headless Locust
suite (`python -m loadtest`) against it, samples the server's resident memory (/proc) and its
/metrics every few seconds, and writes samples.jsonl, summary.json and summary.md into --out.
Passes when no request failed except 429s (refusals by design), resident memory grew less than
--max-growth after the warm-up, and no sequence was left running at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from loadtest.matrix import free_port

ROOT = Path(__file__).resolve().parents[1]
GAUGES = ("ladle_running_sequences", "ladle_queue_depth", "ladle_requests_in_flight")


@dataclass(slots=True)
class Sample:
    """One look at the server: seconds since the load began, resident memory, its gauges."""

    t: float
    rss_mb: float
    gauges: dict[str, float]


@dataclass(slots=True)
class SoakResult:
    """The figures a soak reports."""

    duration_s: float
    users: int
    requests: int
    failures: dict[str, int]
    rss_warm_mb: float
    rss_end_mb: float
    rss_max_mb: float
    growth: float
    slope_mb_per_min: float
    running_end: float | None
    queued_end: float | None
    exit_status: int | None
    passed: bool = False
    notes: list[str] = field(default_factory=list)


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def scrape(url: str) -> dict[str, float]:
    """The GAUGES that /metrics shows (none if it has no /metrics)."""
    try:
        text = httpx.get(url + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return {}
    values: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in GAUGES:
            values[name] = float(value)
    return values


def failure_kinds(samples: list[dict[str, Any]]) -> Counter[str]:
    """Failed requests by kind: "HTTP 429", "HTTP 500", "ConnectionError", a stream's problem."""
    kinds: Counter[str] = Counter()
    for sample in samples:
        error = sample.get("error")
        if error:
            kinds[str(error).split(":", 1)[0][:60]] += 1
    return kinds


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) points, in MB per minute."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    cov = sum((t - mean_t) * (y - mean_y) for t, y in points)
    return 60.0 * cov / var if var else 0.0


def start_server(args: argparse.Namespace, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`python -m handler` on a free loopback port, once /health says it serves."""
    port = free_port()
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "LOG_LEVEL": "warning"}
    if args.model:
        env["MODEL"] = args.model
    env.update(dict(item.split("=", 1) for item in args.server_env))
    if args.threads:
        # torch sizes its pool by the machine's cores, not by what this process gets of them; on a
        # shared machine its spinning threads then slow every step many times over.
        env["OMP_NUM_THREADS"] = str(args.threads)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*pinned(args.server_cpus), sys.executable, "-m", "handler"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=out,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + args.load_timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(1.0)
    process.kill()
    raise SystemExit(f"soak: the server did not become healthy; see {log}")


def pinned(cpus: str | None) -> list[str]:
    """The `taskset` prefix that confines a command to a CPU list ("0", "1-3"), or none."""
    return ["taskset", "-c", cpus] if cpus else []


def start_load(args: argparse.Namespace, url: str, out: Path) -> subprocess.Popen[bytes]:
    """The headless Locust suite, bounded by its own run time and stop timeout."""
    command = [
        *pinned(args.load_cpus), sys.executable, "-m", "loadtest", "--url", url, "--users", str(args.users),
        "--duration", f"{args.duration}s", "--max-tokens", str(args.max_tokens),
        "--user-class", args.user_class, "--out", str(out), "--label", "soak", "--stop-timeout", "60s",
    ]  # fmt: skip
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)


def watch(
    process: subprocess.Popen[bytes], server_pid: int, url: str, args: argparse.Namespace, out: Path
) -> list[Sample]:
    """Sample the server every --interval seconds until the load ends (or outlives its bound)."""
    samples: list[Sample] = []
    started = time.monotonic()
    bound = args.duration + 300
    with (out / "samples.jsonl").open("w") as sink:
        while process.poll() is None:
            elapsed = time.monotonic() - started
            if elapsed > bound:
                process.kill()
                break
            sample = Sample(elapsed, rss_mb(server_pid), scrape(url))
            samples.append(sample)
            sink.write(json.dumps(asdict(sample)) + "\n")
            sink.flush()
            time.sleep(args.interval)
    return samples


def settle(url: str, timeout: float = 60.0) -> dict[str, float]:
    """The gauges once nothing runs or waits (or what they show after `timeout`)."""
    deadline = time.monotonic() + timeout
    gauges = scrape(url)
    while time.monotonic() < deadline and any(gauges.get(name, 0) for name in GAUGES[:2]):
        time.sleep(1.0)
        gauges = scrape(url)
    return gauges


def stop(process: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM, as a container runtime sends it; the exit status (None if it had to be killed)."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        return None


def summarize(
    args: argparse.Namespace, samples: list[Sample], end: Sample, load_out: Path, status: int | None
) -> SoakResult:
    """The result, from the memory samples and the load test's per-request samples."""
    from loadtest.summary import read_samples

    requests = read_samples(load_out / f"u{args.users}_samples.jsonl")
    failures = failure_kinds(requests)
    after_warmup = [s for s in samples if s.t >= args.warmup] or samples[-1:]
    warm, last = after_warmup[0].rss_mb, end.rss_mb
    result = SoakResult(
        duration_s=samples[-1].t if samples else 0.0,
        users=args.users,
        requests=len(requests),
        failures=dict(failures),
        rss_warm_mb=round(warm, 1),
        rss_end_mb=round(last, 1),
        rss_max_mb=round(max(s.rss_mb for s in [*samples, end]), 1),
        growth=round((last - warm) / warm, 4),
        slope_mb_per_min=round(slope_per_min([(s.t, s.rss_mb) for s in after_warmup]), 3),
        running_end=end.gauges.get("ladle_running_sequences"),
        queued_end=end.gauges.get("ladle_queue_depth"),
        exit_status=status,
    )
    unexpected = sum(n for kind, n in failures.items() if kind != "HTTP 429")
    result.passed = unexpected == 0 and result.growth < args.max_growth and result.running_end == 0
    if result.running_end is None:
        result.notes.append("the server has no /metrics: running sequences unknown")
    return result


def markdown(result: SoakResult, args: argparse.Namespace) -> str:
    model = args.model or "the default model (SmolLM2-135M-Instruct)"
    threads = f", {args.threads} torch thread(s)" if args.threads else ""
    lines = [
        f"# Soak: {args.users} users, {result.duration_s / 60:.1f} min, {model}{threads}",
        "",
        f"- requests completed: {result.requests - sum(result.failures.values())} of {result.requests}",
        f"- failures by kind: {result.failures or 'none'}",
        f"- resident memory: {result.rss_warm_mb} MB after {args.warmup} s warm-up, {result.rss_end_mb} MB "
        f"at the end ({result.growth:+.1%}), {result.rss_max_mb} MB at most; trend "
        f"{result.slope_mb_per_min:+.2f} MB/min",
        f"- sequences running at the end: {result.running_end}, queued: {result.queued_end}",
        f"- exit status after SIGTERM: {result.exit_status}",
        f"- verdict: {'PASS' if result.passed else 'FAIL'}",
    ]
    return "\n".join(lines + [f"- note: {note}" for note in result.notes]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="", help="MODEL for the server; default: the default model")
    parser.add_argument("--duration", type=int, default=600, help="seconds of load (600)")
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--user-class", default="StreamingCompletionUser,StreamingChatUser,CompletionUser")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before memory is baselined")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--max-growth", type=float, default=0.10, help="allowed RSS growth after warm-up")
    parser.add_argument(
        "--threads", type=int, default=0, help="OMP_NUM_THREADS of the server (0: the server counts its CPUs)"
    )
    parser.add_argument("--server-cpus", help="confine the server to these CPUs (taskset -c), e.g. 0")
    parser.add_argument("--load-cpus", help="confine the load generator to these CPUs, e.g. 1")
    parser.add_argument(
        "--server-env", action="append", default=[], metavar="KEY=VALUE", help="more server environment"
    )
    parser.add_argument(
        "--load-timeout", type=float, default=900.0, help="seconds the model may take to load"
    )
    parser.add_argument("--out", default=None, help="output folder; default artifacts/soak/<time>")
    args = parser.parse_args(argv)
    out = Path(args.out or f"artifacts/soak/{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    server, url = start_server(args, out / "server.log")
    try:
        samples = watch(start_load(args, url, out / "load"), server.pid, url, args, out)
        gauges = settle(url)
        end = Sample(samples[-1].t if samples else 0.0, rss_mb(server.pid), gauges)
    finally:
        status = stop(server)
    result = summarize(args, samples, end, out / "load", status)
    (out / "summary.json").write_text(json.dumps(asdict(result), indent=1))
    (out / "summary.md").write_text(markdown(result, args))
    print(markdown(result, args) + f"results in {out}/")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
