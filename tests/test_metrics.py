"""/metrics scraped around real requests: the counters, histograms and gauges move by what was served."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from backends.engine.steps import StepResult, StepStats
from handler.config import Settings
from handler.metrics import Metrics
from handler.model import load_served_model
from tests.conftest_http import LiveServer, live_server, wait_until
from tests.fake_engine import fake_loader
from tests.tiny_models import tiny_model_dir

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: LiveServer) -> Samples:
    response = httpx.get(server.url + "/metrics", timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    settings = Settings(model=str(tiny_model_dir("llama")), served_model_name="tiny")
    with live_server(settings, loader=load_served_model) as live:
        yield live


def test_requests_tokens_and_latencies_are_counted(server: LiveServer) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=60)
    before = scrape(server)
    whole = client.completions.create(
        model="tiny", prompt="Once upon", max_tokens=5, extra_body={"ignore_eos": True}
    )
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    assert httpx.get(server.url + "/v1/nothing-here").status_code == 404
    bad = httpx.post(server.url + "/v1/completions", json={"prompt": "Hi", "temperature": 9})
    assert bad.status_code == 400
    after = scrape(server)

    assert moved(before, after, "ladle_requests_total", route="/v1/completions", status="200") == 1
    assert moved(before, after, "ladle_requests_total", route="/v1/chat/completions", status="200") == 1
    assert moved(before, after, "ladle_requests_total", route="/v1/completions", status="400") == 1
    assert moved(before, after, "ladle_requests_total", route="other", status="404") == 1
    usage, streamed = whole.usage, chunks[-1].usage
    assert usage is not None and streamed is not None
    prompt_tokens = usage.prompt_tokens + streamed.prompt_tokens
    assert moved(before, after, "ladle_prompt_tokens_total") == prompt_tokens
    assert moved(before, after, "ladle_generation_tokens_total") == 5 + 4
    assert moved(before, after, "ladle_time_to_first_token_seconds_count") == 2
    # One output per step after the first token: 4 gaps, then 3.
    assert moved(before, after, "ladle_inter_token_latency_seconds_count") == 4 + 3
    assert moved(before, after, "ladle_batch_size_sum") == 5 + 4
    assert moved(before, after, "ladle_time_to_first_token_seconds_sum") > 0
    for gauge in ("ladle_queue_depth", "ladle_running_sequences", "ladle_kv_cache_usage_ratio"):
        assert value(after, gauge) == 0, gauge
    assert value(after, "ladle_requests_in_flight") == 0
    [model_info] = [dict(labels) for name, labels in after if name == "ladle_model_info"]
    assert model_info["backend"] == "hf_eager" and model_info["devices"] == "cpu"


def test_queue_depth_and_cache_use_while_requests_wait() -> None:
    loader = fake_loader(step_delay=0.05)
    with live_server(Settings(max_batch_size=1), loader=loader) as live, httpx.Client(timeout=60) as client:
        body = {"prompt": "Hi", "max_tokens": 200, "ignore_eos": True, "stream": True}
        with contextlib.ExitStack() as streams:
            # Kept referenced: a dropped line iterator closes its connection, which aborts the request.
            readers = []
            for _ in range(2):
                response = streams.enter_context(
                    client.stream("POST", live.url + "/v1/completions", json=body)
                )
                readers.append(response.iter_lines())
                assert next(readers[-1]).startswith("data: {")
            during = scrape(live)
        assert value(during, "ladle_queue_depth") == 1
        assert value(during, "ladle_running_sequences") == 1
        assert value(during, "ladle_requests_in_flight") == 2
        assert value(during, "ladle_kv_cache_tokens") > 0
        assert value(during, "ladle_time_to_first_token_seconds_count") == 2  # the fake's outputs count too
        assert 0 < value(during, "ladle_kv_cache_usage_ratio") <= 1

        def settled() -> bool:
            samples = scrape(live)
            names = ("ladle_queue_depth", "ladle_requests_in_flight", "ladle_kv_cache_tokens")
            return all(value(samples, name) == 0 for name in names)

        wait_until(settled, 60, "the gauges did not return to 0 after the clients left")


def test_each_engine_step_is_counted_from_its_stats() -> None:
    """Metrics subscribe to the engine's steps (no wrapper around the engine): a step's stats move them."""
    metrics = Metrics()
    stats = StepStats(
        batch_size=3,
        prompt_tokens=7,
        generation_tokens=3,
        time_to_first_token=[0.5, 0.25],
        inter_token_latency=[0.02],
    )
    metrics.observe_step(StepResult(stats=stats))
    metrics.observe_step(StepResult())  # a step that produced nothing counts nothing
    sample = metrics.registry.get_sample_value
    assert sample("ladle_batch_size_count") == 1 and sample("ladle_batch_size_sum") == 3
    assert sample("ladle_prompt_tokens_total") == 7
    assert sample("ladle_generation_tokens_total") == 3
    assert sample("ladle_time_to_first_token_seconds_count") == 2
    assert sample("ladle_time_to_first_token_seconds_sum") == 0.75
    assert sample("ladle_inter_token_latency_seconds_count") == 1
