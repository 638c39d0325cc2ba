"""The GPU check's HTTP client: plain and streamed requests to one server on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

from loadtest.stream import SSEReader, StreamRecord, request_body


class Client:
    """Requests to one server on 127.0.0.1, one connection each (no proxy, no pooling)."""

    def __init__(self, port: int, model: str = "") -> None:
        self.port = port
        self.model = model

    def json(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        try:
            payload = None if body is None else json.dumps(body)
            connection.request(method, path, payload, {"Content-Type": "application/json"})
            response = connection.getresponse()
            data = response.read()
            if response.status != 200:
                raise RuntimeError(f"{path}: HTTP {response.status}: {data[:300]!r}")
            answer: dict[str, Any] = json.loads(data)
            return answer
        finally:
            connection.close()

    def stream(self, body: dict[str, Any], started: float) -> StreamRecord:
        """POST a streamed completion and read its SSE body as it arrives."""
        record = StreamRecord(sent_at=started, chat=False)
        reader = SSEReader(record)
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        try:
            connection.request(
                "POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            if response.status != 200:
                record.error = f"HTTP {response.status}: {response.read()[:200]!r}"
                return record
            while data := response.read1(65536):
                reader.feed(data, time.perf_counter())
            reader.close(time.perf_counter())
        finally:
            connection.close()
        return record

    def sample(self, prompt: str, max_tokens: int) -> dict[str, Any]:
        """One forced-length streamed request, as the locustfile records it."""
        body = request_body(
            prompt,
            chat=False,
            stream=True,
            model=self.model,
            max_tokens=max_tokens,
            temperature=0.0,
            ignore_eos=True,
        )
        started_wall, started = time.time(), time.perf_counter()
        try:
            record = self.stream(body, started)
            problem = record.problem()
        except (OSError, http.client.HTTPException) as exc:
            record, problem = StreamRecord(sent_at=started, chat=False), f"{type(exc).__name__}: {exc}"
        sample: dict[str, Any] = {"start": started_wall, "latency_s": time.perf_counter() - started}
        sample.update(error=problem, tokens=record.tokens if problem is None else 0)
        if problem is None and record.ttft_s is not None:
            sample["ttft_s"] = record.ttft_s
        if problem is None and record.itl_s is not None:
            sample["itl_s"] = record.itl_s
        return sample
