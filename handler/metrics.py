"""Prometheus metrics: requests by route and status, token latencies and counts, and the engine's load."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

if TYPE_CHECKING:
    from backends.engine.contract import ModelInfo
    from backends.engine.prefix_cache import PrefixCacheStats
    from backends.engine.steps import StepResult
    from handler.model import ServedModel

# Probes and scrapes are not work: they never hold a drain open and never count as in flight.
UNTRACKED_PATHS = frozenset({"/health", "/ping", "/livez", "/metrics"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Every metric of one server, in a registry of its own (several apps may share a process)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "ladle_requests", "HTTP requests by route and status", ("route", "status"), registry=r
        )
        self.in_flight = Gauge("ladle_requests_in_flight", "HTTP requests being answered", registry=r)
        self.ttft = Histogram(
            "ladle_time_to_first_token_seconds",
            "Time from admission to a request's first token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "ladle_inter_token_latency_seconds",
            "Time between two outputs of one request (a token per choice)",
            buckets=TOKEN_GAP_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("ladle_prompt_tokens", "Prompt tokens prefilled", registry=r)
        self.generation_tokens = Counter("ladle_generation_tokens", "Tokens generated", registry=r)
        self.batch_size = Histogram(
            "ladle_batch_size",
            "Sequences that gained a token in one engine step",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("ladle_queue_depth", "Requests waiting for room in the batch", registry=r)
        self.running = Gauge(
            "ladle_running_sequences",
            "Sequences in the running batch, those whose prompt is being prefilled included",
            registry=r,
        )
        self.kv_cache_tokens = Gauge(
            "ladle_kv_cache_tokens",
            "KV cache positions held by live sequences (padding excluded)",
            registry=r,
        )
        self.kv_cache_usage = Gauge(
            "ladle_kv_cache_usage_ratio", "KV cache tokens over MAX_BATCH_SIZE x context", registry=r
        )
        self.prefix_pool = Gauge(
            "ladle_prefix_cache_tokens", "Tokens whose KV the prefix cache holds", ("kind",), registry=r
        )
        self.prefix_hit_rate = Gauge(
            "ladle_prefix_cache_hit_rate",
            "Prompt tokens served from the prefix cache over those looked up",
            registry=r,
        )
        self.step_age = Gauge(
            "ladle_engine_step_age_seconds",
            "Seconds since the engine last completed a step, while work is pending (0 when idle);"
            " past ENGINE_STALL_TIMEOUT the replica reports itself stalled",
            registry=r,
        )
        self.model = Info("ladle_model", "The model served, its backend and devices", registry=r)
        self.active = 0  # what in_flight shows, as a number the drain can read

    def watch(self, model: ServedModel, max_batch_size: int) -> None:
        """Read the engine's load at scrape time, and hear of every step it takes."""
        engine, info = model.engine, model.info
        self.queue_depth.set_function(lambda: engine.num_queued)
        self.running.set_function(lambda: engine.num_running)
        self.kv_cache_tokens.set_function(lambda: engine.kv_tokens)
        capacity = max(1, max_batch_size * info.context_length)
        self.kv_cache_usage.set_function(lambda: engine.kv_tokens / capacity)
        self.step_age.set_function(lambda: engine.step_age)
        self._watch_prefix_cache(engine.prefix_cache)
        self.model.info(_model_labels(info))
        engine.subscribe(self.observe_step)

    def _watch_prefix_cache(self, stats: PrefixCacheStats | None) -> None:
        if stats is None:
            return
        for kind, read in (
            ("held", lambda: stats.pool_tokens),
            ("capacity", lambda: stats.capacity_tokens),
            ("looked_up", lambda: stats.queried_tokens),
            ("hit", lambda: stats.hit_tokens),
            ("bytes", lambda: stats.pool_bytes),
        ):
            self.prefix_pool.labels(kind).set_function(read)
        self.prefix_hit_rate.set_function(lambda: stats.hit_rate)

    def observe_step(self, result: StepResult) -> None:
        """Count what one engine step did (called on the engine's step thread)."""
        stats = result.stats
        if stats.batch_size:
            self.batch_size.observe(stats.batch_size)
        for seconds in stats.time_to_first_token:
            self.ttft.observe(seconds)
        for seconds in stats.inter_token_latency:
            self.itl.observe(seconds)
        if stats.prompt_tokens:
            self.prompt_tokens.inc(stats.prompt_tokens)
        if stats.generation_tokens:
            self.generation_tokens.inc(stats.generation_tokens)

    def begin(self) -> None:
        self.active += 1
        self.in_flight.inc()

    def end(self) -> None:
        self.active -= 1
        self.in_flight.dec()


def _model_labels(info: ModelInfo) -> dict[str, str]:
    devices = ",".join(info.devices) or info.device
    return {"name": info.name, "backend": info.backend, "devices": devices, "dtype": info.dtype}
