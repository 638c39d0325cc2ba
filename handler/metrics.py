"""Prometheus metrics: requests by route and status, token latencies and counts, and the engine's load."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

if TYPE_CHECKING:
    from backends.engine.async_engine import AsyncEngine, RequestStream
    from backends.engine.contract import ModelInfo
    from backends.engine.outputs import RequestOutput
    from backends.engine.params import SamplingParams
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
        self.running = Gauge("ladle_running_sequences", "Sequences in the running batch", registry=r)
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
        self.kv_tokens = 0
        # Estimated from the outputs, until watch() finds an engine that reports its real caches.
        self.read_kv_tokens: Callable[[], float] = lambda: self.kv_tokens
        self.kv_cache_tokens.set_function(lambda: self.read_kv_tokens())

    def watch(self, model: ServedModel, max_batch_size: int) -> ServedModel:
        """Read the engine's load at scrape time; returns the model as the service should see it."""
        engine, info = model.engine, model.info
        self.queue_depth.set_function(lambda: engine.num_queued)
        self.running.set_function(lambda: engine.num_running)
        capacity = max(1, max_batch_size * info.context_length)
        self.kv_cache_usage.set_function(lambda: self.read_kv_tokens() / capacity)
        self.step_age.set_function(lambda: float(getattr(engine, "step_age", 0.0)))
        self._watch_cache(getattr(engine, "core", None))
        self.model.info(_model_labels(info))
        observe_steps(engine, self.batch_size.observe)
        return MeteredModel(model, self)

    def _watch_cache(self, core: Any) -> None:
        """Read the engine's real cache sizes where it has them (the tests' fakes have not)."""
        if core is None or not getattr(core.prefiller, "staging", False):
            return
        self.read_kv_tokens = lambda: core.kv_tokens
        stats = core.prefix_cache
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

    def begin(self) -> None:
        self.active += 1
        self.in_flight.inc()

    def end(self) -> None:
        self.active -= 1
        self.in_flight.dec()


def _model_labels(info: ModelInfo) -> dict[str, str]:
    devices = ",".join(info.devices) or info.device
    return {"name": info.name, "backend": info.backend, "devices": devices, "dtype": info.dtype}


def observe_steps(engine: Any, observe: Callable[[float], None]) -> None:
    """Report the batch size of every engine step.

    The engine has no step hook yet, so this wraps its core's public step() in place; engines
    without a core (the tests' fake) simply report no batch sizes.
    """
    core = getattr(engine, "core", None)
    step = getattr(core, "step", None)
    if step is None or getattr(step, "metered", False):
        return

    def metered_step() -> Any:
        result = step()
        size = sum(len(output.choices) for output in result.outputs)
        if size:
            observe(size)
        return result

    metered_step.metered = True  # type: ignore[attr-defined]
    setattr(core, "step", metered_step)  # noqa: B010  (mypy refuses assigning to a method)


class MeteredModel:
    """A served model whose engine reports what each request's stream produces."""

    def __init__(self, model: ServedModel, metrics: Metrics) -> None:
        self.wrapped = model
        # The service only calls submit(); everything else is read from the real engine.
        self._engine = cast("AsyncEngine", MeteredEngine(model.engine, metrics))

    @property
    def tokenizer(self) -> Any:
        return self.wrapped.tokenizer

    @property
    def info(self) -> ModelInfo:
        return self.wrapped.info

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    def close(self) -> None:
        self.wrapped.close()


class MeteredEngine:
    """submit() of the real engine, returning streams that time their outputs."""

    def __init__(self, engine: AsyncEngine, metrics: Metrics) -> None:
        self.engine = engine
        self.metrics = metrics

    @property
    def grammars(self) -> Any:  # backends.grammar.GrammarCompiler: structured outputs compile there
        return self.engine.grammars

    def submit(
        self, prompt_ids: Sequence[int], params: SamplingParams, request_id: str | None = None
    ) -> MeteredStream:
        stream = self.engine.submit(prompt_ids, params, request_id)
        return MeteredStream(stream, self.metrics)


class MeteredStream:
    """One request's outputs: time to first token, gaps between outputs, tokens, KV cache held."""

    def __init__(self, stream: RequestStream, metrics: Metrics) -> None:
        self.request_id = stream.request_id
        self.stream = stream
        self.metrics = metrics
        self.submitted = time.perf_counter()
        self.last_output: float | None = None
        self.held: dict[int, int] = {}  # choice index -> its tokens in the KV cache

    async def __aiter__(self) -> AsyncIterator[RequestOutput]:
        try:
            async for output in self.stream:
                self._observe(output)
                yield output
        finally:
            self._release()

    def abort(self) -> None:
        self._release()
        self.stream.abort()

    def _observe(self, output: RequestOutput) -> None:
        now = time.perf_counter()
        tokens = sum(len(choice.token_ids) for choice in output.choices)
        if tokens:
            if self.last_output is None:
                self.metrics.ttft.observe(now - self.submitted)
                self.metrics.prompt_tokens.inc(output.prompt_tokens)
            else:
                self.metrics.itl.observe(now - self.last_output)
            self.last_output = now
            self.metrics.generation_tokens.inc(tokens)
        for choice in output.choices:
            # A finished choice has left the batch and freed its cache rows.
            held = 0 if choice.finish_reason else output.prompt_tokens + choice.completion_tokens
            self.metrics.kv_tokens += held - self.held.get(choice.index, 0)
            self.held[choice.index] = held

    def _release(self) -> None:
        self.metrics.kv_tokens -= sum(self.held.values())
        self.held.clear()
