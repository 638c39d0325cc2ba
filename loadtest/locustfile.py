"""Locust users for an OpenAI-compatible server: streaming completions, streaming chat, and
non-streaming completions. Works against ladle or any other such server.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 --max-tokens 64 --ignore-eos \
        StreamingCompletionUser

Besides one row per request (its full latency, stream included), every successful request
reports custom metrics as request_type "METRIC" rows, shown in the web UI and written to the
CSV like any request. In those rows the "response time" columns hold the metric's value:
  ttft_ms        time to first token (first non-empty content chunk), streaming users only
  itl_ms         one row per gap between consecutive content chunks (every gap its own sample,
                 so a stall shows in the percentiles and the max), streaming users only
  output_tokens  completion tokens (usage, else content chunks); also its "content size"
The "Aggregated" row mixes requests and metrics: read the rows by name.
Users wait for nothing between requests (a closed loop, like shared/tools/loadgen.py).
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import gevent
import locust.stats
import requests
from locust import User, constant, events, task
from locust.env import Environment

# Locust puts this file's folder on sys.path, not the repository root that holds the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from loadtest.stream import (
    DEFAULT_REQUEST_OPTIONS,
    PROMPTS,
    SSEReader,
    StreamRecord,
    add_request_options,
    body_from_options,
)

METRIC = "METRIC"
UNFINISHED = "unfinished: the run ended before the response did"
_prompt_index = itertools.count()
_samples: list[dict[str, Any]] = []
_model_id: dict[str, str] = {}


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = parser.add_argument_group("ladle load test")
    add_request_options(group)
    group.add_argument(
        "--api-key", default="", env_var="LOADTEST_API_KEY", help="bearer key, if the server wants one"
    )
    group.add_argument(
        "--request-timeout", type=float, default=600.0, help="seconds one request may take in all"
    )
    group.add_argument(
        "--ladle-samples", default="", help="write every request's timings here (JSON lines) at the end"
    )


@events.test_stop.add_listener
def _finish(environment: Environment, **_: Any) -> None:
    """Write the samples; let Locust's CSV writer take its last look before the process exits."""
    options = environment.parsed_options
    path = getattr(options, "ladle_samples", "")
    if path:
        Path(path).write_text("".join(json.dumps(s) + "\n" for s in _samples))
    if getattr(options, "csv_prefix", None):
        # The CSV greenlet rewrites the files once a second and gets no final pass at shutdown,
        # so requests that ended in the last second would be missing from them.
        gevent.sleep(locust.stats.CSV_STATS_INTERVAL_SEC + 0.5)


class OpenAIUser(User):
    """One client in a closed loop: sends a request, reads all of it, sends the next."""

    abstract = True
    host = "http://127.0.0.1:8000"
    wait_time = constant(0)
    path = "/v1/completions"
    chat = False
    stream = True

    def on_start(self) -> None:
        self.session = requests.Session()
        self.session.trust_env = False  # no proxy between the load and the server under test
        options = self.environment.parsed_options
        if options is not None and options.api_key:
            self.session.headers["Authorization"] = f"Bearer {options.api_key}"

    def on_stop(self) -> None:
        self.session.close()

    @property
    def request_name(self) -> str:
        return f"{self.path} ({'stream' if self.stream else 'whole'})"

    @task
    def generate(self) -> None:
        body = self._body()
        started_wall, started = time.time(), time.perf_counter()
        try:
            tokens, record = self._send(body, started)
            problem = record.problem() if record is not None else None
        except Exception as exc:  # transport errors, HTTP errors, bad JSON: a failed request
            tokens, record, problem = 0, None, f"{type(exc).__name__}: {exc}"[:300]
        except gevent.GreenletExit:  # the run ended (past --stop-timeout) with this request in flight
            latency = time.perf_counter() - started
            _samples.append({"name": self.request_name, "start": started_wall, "latency_s": latency})
            _samples[-1].update(error=UNFINISHED, tokens=0)
            raise
        ended = time.perf_counter()
        self._report(self.request_name, (ended - started) * 1000, tokens, problem, started_wall)
        sample: dict[str, Any] = {
            "name": self.request_name,
            "start": started_wall,
            "latency_s": ended - started,
        }
        sample.update(error=problem, tokens=tokens if problem is None else 0)
        if problem is None:
            if record is not None and record.note:
                sample["note"] = record.note
            self._report("output_tokens", tokens, tokens, None, started_wall, METRIC)
            if record is not None and record.ttft_s is not None:
                sample["ttft_s"] = record.ttft_s
                self._report("ttft_ms", record.ttft_s * 1000, 0, None, started_wall, METRIC)
            if record is not None and record.itl_s is not None:
                sample["itl_s"] = record.itl_s
                sample["gaps_s"] = record.gaps_s
                for gap in record.gaps_s:
                    self._report("itl_ms", gap * 1000, 0, None, started_wall, METRIC)
        _samples.append(sample)

    def _send(self, body: dict[str, Any], started: float) -> tuple[int, StreamRecord | None]:
        """POST the request and read the whole answer: (completion tokens, stream record)."""
        timeout = (
            self.environment.parsed_options.request_timeout if self.environment.parsed_options else 600.0
        )
        url = self.host.rstrip("/") + self.path
        with self.session.post(url, json=body, stream=self.stream, timeout=(10.0, timeout)) as response:
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
            if not self.stream:
                usage = response.json().get("usage") or {}
                return int(usage.get("completion_tokens", 0)), None
            record = StreamRecord(sent_at=started, chat=self.chat)
            reader = SSEReader(record)
            for data in response.iter_content(chunk_size=None):  # each piece as it arrives
                reader.feed(data, time.perf_counter())
            reader.close(time.perf_counter())
            return record.tokens, record

    def _body(self) -> dict[str, Any]:
        options = self.environment.parsed_options
        prompt = PROMPTS[next(_prompt_index) % len(PROMPTS)]
        return body_from_options(
            options or DEFAULT_REQUEST_OPTIONS,
            prompt,
            chat=self.chat,
            stream=self.stream,
            model=self._model(),
        )

    def _model(self) -> str:
        options = self.environment.parsed_options
        if options is not None and options.model:
            return str(options.model)
        if "id" not in _model_id:
            models = self.session.get(self.host.rstrip("/") + "/v1/models", timeout=30).json()
            _model_id["id"] = models["data"][0]["id"]
        return _model_id["id"]

    def _report(
        self, name: str, value: float, length: int, problem: str | None, start: float, kind: str = "POST"
    ) -> None:
        self.environment.events.request.fire(
            request_type=kind,
            name=name,
            response_time=value,
            response_length=length,
            exception=RuntimeError(problem) if problem else None,
            context={},
            start_time=start,
            url=self.host,
        )


class StreamingCompletionUser(OpenAIUser):
    """Streams /v1/completions."""

    path = "/v1/completions"


class StreamingChatUser(OpenAIUser):
    """Streams /v1/chat/completions."""

    path = "/v1/chat/completions"
    chat = True


class CompletionUser(OpenAIUser):
    """Asks /v1/completions for whole (non-streamed) responses."""

    path = "/v1/completions"
    stream = False
