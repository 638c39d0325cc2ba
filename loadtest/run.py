"""Headless load test: run the locustfile once per user count, bounded in time, and summarize.

    python -m loadtest --url http://127.0.0.1:8000 --users 1,4,16 --duration 30s \
        --max-tokens 64 --ignore-eos --label "ladle hf_eager"

For each user count N it writes, into --out: Locust's CSV (uN_stats.csv, uN_stats_history.csv,
uN_failures.csv, uN_exceptions.csv), its HTML report (uN.html) and per-request samples
(uN_samples.jsonl); then summary.md and summary.json for all counts. It sends load only to
this machine (loopback addresses) unless --allow-remote is given with another URL.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from loadtest.stream import PROMPTS, add_request_options, body_from_options
from loadtest.summary import LevelSummary, from_samples, from_stats_csv, markdown, read_samples

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
ROOT = Path(__file__).resolve().parents[1]
USER_CLASSES = ("StreamingCompletionUser", "StreamingChatUser", "CompletionUser")


def parse_duration(text: str) -> int:
    """Seconds from '30', '30s', '2m' or '1m30s'."""
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?", text.strip())
    if not text.strip() or match is None:
        raise argparse.ArgumentTypeError(f"expected a duration like 30s or 2m, got {text!r}")
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total < 1:
        raise argparse.ArgumentTypeError("the duration must be at least 1 s")
    return total


def parse_users(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        counts = []
    if not counts or any(n < 1 for n in counts):
        raise argparse.ArgumentTypeError(f"expected positive user counts like 1,4,16, got {text!r}")
    return counts


def is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server's base URL")
    parser.add_argument("--allow-remote", action="store_true", help="allow a URL that is not loopback")
    parser.add_argument("--users", type=parse_users, default=[1, 4, 16], help="user counts, one run each")
    parser.add_argument(
        "--spawn-rate", type=float, default=None, help="users started per second (all at once)"
    )
    parser.add_argument("--duration", type=parse_duration, default=30, help="run time per user count (30s)")
    parser.add_argument(
        "--stop-timeout",
        type=parse_duration,
        default=120,
        help="time in-flight requests get to finish (120s)",
    )
    parser.add_argument(
        "--user-class",
        default=USER_CLASSES[0],
        help=f"comma-separated Locust user classes: {', '.join(USER_CLASSES)}",
    )
    add_request_options(parser)
    parser.add_argument("--api-key", default=os.environ.get("LOADTEST_API_KEY", ""), help="bearer key")
    parser.add_argument(
        "--warmup", type=int, default=2, help="unmeasured requests sent one by one before the first run (2)"
    )
    parser.add_argument("--label", default="", help="what is under test, for the summary title")
    parser.add_argument("--out", default=None, help="output folder; default artifacts/loadtest/<time>")
    return parser


def wait_for_server(url: str, api_key: str, timeout: float = 30.0) -> list[str]:
    """The model ids the server lists; fails with one line if it does not answer in time."""
    request = urllib.request.Request(url.rstrip("/") + "/v1/models")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while True:
        try:
            with opener.open(request, timeout=10) as response:
                return [m["id"] for m in json.load(response).get("data", [])]
        except (urllib.error.URLError, OSError, ValueError) as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"loadtest: {url} does not answer /v1/models: {exc}") from exc
            time.sleep(1.0)


def warm_up(args: argparse.Namespace) -> None:
    """Unmeasured requests first, so lazy start-up work (first forward, allocations) is not in
    the numbers; the yardstick does the same."""
    chat = args.user_class.split(",")[0].strip() == "StreamingChatUser"
    body = body_from_options(args, PROMPTS[0], chat=chat, stream=False, model=args.model)
    url = args.url.rstrip("/") + ("/v1/chat/completions" if chat else "/v1/completions")
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    if args.api_key:
        request.add_header("Authorization", f"Bearer {args.api_key}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for _ in range(args.warmup):
        try:
            with opener.open(request, timeout=600) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            raise SystemExit(f"loadtest: the warm-up request to {url} got {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise SystemExit(f"loadtest: the warm-up request to {url} failed: {exc}") from None


def locust_command(args: argparse.Namespace, users: int, prefix: Path) -> list[str]:
    spawn_rate = args.spawn_rate or users
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", args.url,
        "--users", str(users), "--spawn-rate", str(spawn_rate), "--run-time", f"{args.duration}s",
        "--stop-timeout", str(args.stop_timeout), "--csv", str(prefix), "--html", f"{prefix}.html",
        "--only-summary", "--loglevel", "WARNING", "--exit-code-on-error", "0",
        "--model", args.model, "--max-tokens", str(args.max_tokens), "--temperature", str(args.temperature),
        "--ladle-samples", f"{prefix}_samples.jsonl",
    ]  # fmt: skip
    if args.ignore_eos:
        command += ["--ignore-eos", "--ignore-eos-mode", args.ignore_eos_mode]
    if args.extra_body:
        command += ["--extra-body", args.extra_body]
    return command + [c.strip() for c in args.user_class.split(",") if c.strip()]


def run_level(args: argparse.Namespace, users: int, out: Path) -> LevelSummary:
    """One headless Locust run; killed if it outlives its run time, stop timeout and start-up."""
    prefix = out / f"u{users}"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    if args.api_key:
        env["LOADTEST_API_KEY"] = args.api_key
    started = time.monotonic()
    limit = args.duration + args.stop_timeout + 60
    try:
        subprocess.run(locust_command(args, users, prefix), env=env, timeout=limit, check=True)
    except subprocess.TimeoutExpired:
        print(f"loadtest: the {users}-user run passed its {limit} s bound and was stopped", file=sys.stderr)
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"loadtest: locust exited with status {exc.returncode}") from exc
    samples = read_samples(Path(f"{prefix}_samples.jsonl"))
    if samples:
        return from_samples(users, samples)
    return from_stats_csv(users, Path(f"{prefix}_stats.csv"), time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not is_loopback(args.url) and not args.allow_remote:
        print(f"loadtest: {args.url} is not on this machine; pass --allow-remote to load it", file=sys.stderr)
        return 2
    unknown = [c for c in args.user_class.split(",") if c.strip() and c.strip() not in USER_CLASSES]
    if unknown:
        print(f"loadtest: unknown user class {unknown[0]}; use {', '.join(USER_CLASSES)}", file=sys.stderr)
        return 2
    models = wait_for_server(args.url, args.api_key)
    args.model = args.model or (models[0] if models else "")
    out = Path(args.out or f"artifacts/loadtest/{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    warm_up(args)
    load_before = _load_average()
    levels = [run_level(args, users, out) for users in args.users]
    facts = _facts(args, load_before)
    title = f"Load test: {args.label or args.url}"
    (out / "summary.md").write_text(markdown(title, facts, levels))
    summary: dict[str, Any] = {
        "title": title,
        "facts": facts,
        "model": args.model,
        "machine": machine(),
        "when": facts[3],
        "levels": [lv.as_dict() for lv in levels],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(markdown(title, facts, levels))
    print(f"results in {out}/")
    return 0


def _facts(args: argparse.Namespace, load_before: str) -> list[str]:
    return [
        f"{args.url}, model `{args.model}`, users: {args.user_class}, {args.warmup} warm-up requests first",
        f"load generated on {machine()}",
        f"max_tokens {args.max_tokens}{' forced (ignore_eos)' if args.ignore_eos else ''}, "
        f"temperature {args.temperature}, {args.duration} s per user count, spawn rate "
        f"{args.spawn_rate or 'all at once'}",
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}; load average {load_before} before, {_load_average()} after",
        "TTFT and ITL percentiles over successful requests; output tok/s = their completion tokens / "
        "(last end - first start)",
    ]


def machine() -> str:
    """The processor and core count of this machine (the client's; the same as the server's on loopback)."""
    name = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def _load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"
