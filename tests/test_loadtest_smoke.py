"""The Locust load test: stream parsing and summaries, then a few seconds against a real tiny server.

Locust is only ever run in a subprocess: importing it patches the standard library with gevent.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtest.matrix import free_port, healthy, stop_server
from loadtest.run import is_loopback, main, parse_duration, parse_users
from loadtest.stream import (
    DEFAULT_REQUEST_OPTIONS,
    SSEReader,
    StreamRecord,
    body_from_options,
    request_body,
)
from loadtest.summary import from_samples, from_stats_csv, markdown, percentile
from tests.tiny_models import tiny_model_dir

ROOT = Path(__file__).resolve().parents[1]


def _sse(*events: object) -> bytes:
    return b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events) + b"data: [DONE]\n\n"


def test_sse_reader_times_content_chunks_split_anywhere() -> None:
    body = _sse(
        {"choices": [{"text": "", "index": 0}]},
        {"choices": [{"text": "Hel", "index": 0}]},
        {"choices": [{"text": "lo", "index": 0, "finish_reason": "length"}]},
        {"choices": [], "usage": {"completion_tokens": 3}},
    )
    record = StreamRecord(sent_at=10.0, chat=False)
    reader = SSEReader(record)
    for i in range(0, len(body), 7):  # pieces that cut lines and even UTF-8 anywhere
        reader.feed(body[i : i + 7], now=11.0 + i / 1000)
    reader.close(now=12.0)
    assert record.text == "Hello" and record.done and record.finish_reason == "length"
    assert record.tokens == 3  # usage wins over the chunk count
    assert record.ttft_s is not None and record.ttft_s > 1.0
    assert record.itl_s is not None and record.itl_s > 0
    assert record.problem() is None


def test_sse_reader_chat_deltas_and_failures() -> None:
    record = StreamRecord(sent_at=0.0, chat=True)
    SSEReader(record).feed(_sse({"choices": [{"delta": {"role": "assistant", "content": "Hi"}}]}), now=1.0)
    assert record.text == "Hi" and record.tokens == 1 and record.itl_s is None
    errored = StreamRecord(sent_at=0.0, chat=True)
    SSEReader(errored).feed(b'data: {"error": {"message": "boom"}}\n\n', now=1.0)
    assert errored.problem() is not None and "boom" in str(errored.problem())
    cut = StreamRecord(sent_at=0.0, chat=False)
    SSEReader(cut).feed(b'data: {"choices": [{"text": "a"}]}\n\n', now=1.0)
    assert cut.problem() == "the stream ended without a finish_reason or data: [DONE]"
    # transformers serve ends a whole answer without [DONE]: timed, and noted.
    peer = StreamRecord(sent_at=0.0, chat=False)
    SSEReader(peer).feed(b'data: {"choices": [{"text": "a", "finish_reason": "length"}]}\n\n', now=1.0)
    assert peer.problem() is None and peer.note == "no data: [DONE]"


def test_request_body_forces_length_only_when_asked() -> None:
    body = request_body(
        "p", chat=True, stream=True, model="m", max_tokens=9, temperature=0.0, ignore_eos=True
    )
    assert body["messages"] == [{"role": "user", "content": "p"}]
    assert body["stream_options"] == {"include_usage": True}
    assert body["min_tokens"] == 9 and body["ignore_eos"] is True
    plain = request_body(
        "p", chat=False, stream=False, model="m", max_tokens=9, temperature=0.0, ignore_eos=False
    )
    assert "stream" not in plain and "ignore_eos" not in plain and plain["prompt"] == "p"
    defaults = body_from_options(DEFAULT_REQUEST_OPTIONS, "p", chat=False, stream=False, model="m")
    assert defaults == {**plain, "max_tokens": 64}
    peer = request_body(
        "p",
        chat=False,
        stream=True,
        model="m",
        max_tokens=9,
        temperature=0.0,
        ignore_eos=True,
        ignore_eos_mode="hf-generation-config",
    )
    assert "min_tokens" not in peer and "ignore_eos" not in peer
    assert json.loads(peer["generation_config"]) == {
        "min_new_tokens": 9,
        "max_new_tokens": 9,
        "do_sample": False,
    }


def test_summary_from_samples() -> None:
    samples: list[dict[str, Any]] = [
        {"start": 100.0, "latency_s": 2.0, "error": None, "tokens": 10, "ttft_s": 0.1, "itl_s": 0.02},
        {"start": 101.0, "latency_s": 3.0, "error": None, "tokens": 10, "ttft_s": 0.3, "itl_s": 0.04},
        {"start": 101.5, "latency_s": 0.5, "error": "HTTP 500", "tokens": 0},
        {"start": 102.0, "latency_s": 1.0, "error": "unfinished: the run ended first", "tokens": 0},
    ]
    samples[1]["note"] = "no data: [DONE]"
    level = from_samples(4, samples)
    assert (level.requests, level.failures, level.unfinished, level.output_tokens) == (4, 2, 1, 20)
    assert level.without_done == 1
    assert "without `data: [DONE]`, timed as complete: 1 of 4 at 4 users" in markdown("t", [], [level])
    assert level.ttft_p50_ms == pytest.approx(200.0) and level.itl_p50_ms == pytest.approx(30.0)
    assert level.output_tokens_per_s == pytest.approx(20 / 4.0)  # first start 100, last end 104
    assert percentile([1.0, 2.0, 3.0, 4.0], 95) == pytest.approx(3.85)


def test_summary_from_locust_csv(tmp_path: Path) -> None:
    path = tmp_path / "u1_stats.csv"
    head = ["Type", "Name", "Request Count", "Failure Count", "Average Content Size", "50%", "95%"]
    rows = [
        ["POST", "/v1/completions (stream)", "5", "1", "8", "900", "1000"],
        ["METRIC", "ttft_ms", "4", "0", "0", "120", "300"],
        ["METRIC", "itl_ms", "4", "0", "0", "25", "30"],
        ["METRIC", "output_tokens", "4", "0", "8", "8", "8"],
        ["", "Aggregated", "17", "1", "4", "30", "900"],
    ]
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows([head, *rows])
    level = from_stats_csv(1, path, duration_s=4.0)
    assert (level.requests, level.failures, level.output_tokens) == (5, 1, 32)
    assert (level.ttft_p50_ms, level.ttft_p95_ms, level.itl_p50_ms) == (120.0, 300.0, 25.0)
    assert level.output_tokens_per_s == pytest.approx(8.0)


def test_runner_arguments_and_remote_guard(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_duration("30s") == 30 and parse_duration("1m30s") == 90 and parse_duration("5") == 5
    assert parse_users("1,4,16") == [1, 4, 16]
    assert is_loopback("http://127.0.0.1:8000") and is_loopback("http://localhost:1")
    assert is_loopback("http://[::1]:8000") and not is_loopback("http://server.example:8000")
    assert main(["--url", "http://server.example:8000"]) == 2  # refused before any request is sent
    assert "--allow-remote" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_server() -> Iterator[str]:
    """`python -m handler` serving the tiny Llama on a free loopback port."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "handler", "--model", str(tiny_model_dir("llama"))]
    command += [
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        "tiny",
        "--log-level",
        "warning",
    ]
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120  # a bound on start-up, not a measurement
        while not healthy(url):
            if server.poll() is not None or time.monotonic() > deadline:
                output = server.stdout.read().decode(errors="replace") if server.stdout else ""
                pytest.fail(f"the server did not become healthy:\n{output[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        stop_server(server)


@pytest.mark.timeout(300)
def test_headless_run_against_tiny_server(tiny_server: str, tmp_path: Path) -> None:
    if importlib.util.find_spec("locust") is None:
        pytest.skip("locust not installed: pip install -e '.[loadtest]'")
    out = tmp_path / "loadtest"
    classes = "StreamingCompletionUser,StreamingChatUser,CompletionUser"  # three users: one of each
    args = ["--url", tiny_server, "--users", "3", "--duration", "3s", "--max-tokens", "6", "--ignore-eos"]
    args += ["--user-class", classes, "--out", str(out), "--label", "tiny"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "loadtest", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    with (out / "u3_stats.csv").open(newline="") as handle:
        rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(handle)}
    for name in ("ttft_ms", "itl_ms", "output_tokens"):
        assert int(rows[("METRIC", name)]["Request Count"]) > 0, name
    assert float(rows[("METRIC", "output_tokens")]["Average Content Size"]) == 6.0  # forced full length
    for name in ("/v1/completions (stream)", "/v1/chat/completions (stream)", "/v1/completions (whole)"):
        assert int(rows[("POST", name)]["Request Count"]) > 0 and rows[("POST", name)]["Failure Count"] == "0"
    assert (out / "u3_stats_history.csv").is_file() and (out / "u3.html").is_file()

    summary = json.loads((out / "summary.json").read_text())
    (level,) = summary["levels"]
    assert level["users"] == 3 and level["failures"] == 0 and level["source"] == "samples"
    assert level["without_done"] == 0  # ladle ends every stream with data: [DONE]
    assert level["ttft_p50_ms"] > 0 and level["itl_p50_ms"] > 0 and level["output_tokens_per_s"] > 0
    total = sum(int(r["Request Count"]) for (kind, _), r in rows.items() if kind == "POST")
    assert total == level["requests"]  # the CSV holds the requests that finished in the last second too
    text = (out / "summary.md").read_text()
    assert "TTFT p50 (ms)" in text and "| 3 |" in text


def test_a_refused_warm_up_request_is_one_line(tiny_server: str, tmp_path: Path) -> None:
    args = ["--url", tiny_server, "--users", "1", "--duration", "1s", "--out", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-m", "loadtest", *args, "--extra-body", '{"temperature": "hot"}'],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "warm-up request" in done.stderr and "400" in done.stderr and "temperature" in done.stderr


def test_every_gap_is_a_sample_and_the_worst_gap_shows() -> None:
    record = StreamRecord(sent_at=0.0, chat=False, content_times=[1.0, 1.1, 1.2, 3.2, 3.3])
    assert record.gaps_s == pytest.approx([0.1, 0.1, 2.0, 0.1])
    steady = {"start": 0.0, "latency_s": 1.0, "error": None, "tokens": 9, "gaps_s": [0.1] * 8}
    stalled = {"start": 0.0, "latency_s": 4.0, "error": None, "tokens": 5, "gaps_s": record.gaps_s}
    level = from_samples(2, [steady, stalled])
    assert level.itl_p50_ms == pytest.approx(100.0) and level.itl_max_ms == pytest.approx(2000.0)
    assert level.itl_p99_ms is not None and level.itl_p99_ms > 1000.0  # one stall in twelve gaps
    assert "| 2000 |" in markdown("t", [], [level])
