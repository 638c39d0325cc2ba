"""Server settings: the one table of options, read from environment variables and command-line flags.

The table is the server's rows (below) and the backend's (backends/options.py); `ladle --help`
and the README's configuration table are checked against it (tests/test_config_table.py).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from backends.options import BACKEND_OPTIONS, BackendOptions
from backends.settings_table import ConfigError, Option, parse_value, read_env, rows

__all__ = [
    "OPTIONS",
    "SERVER_OPTIONS",
    "ConfigError",
    "Option",
    "Settings",
    "parse_value",
    "settings_from_env",
]


@dataclass(frozen=True, slots=True)
class Settings(BackendOptions):
    """Everything the server is configured with; defaults apply when nothing is set.

    The backend's options (dtype, device, max_batch_size, ...) are inherited from BackendOptions,
    whose rows backends/options.py declares; the fields below are the server's own.
    """

    model: str | None = None
    backend: str = "hf_eager"
    host: str = "0.0.0.0"
    port: int = 8000
    served_model_name: str | None = None
    completion_max_prompt: int = 4096
    completion_max_tokens: int = 4096
    completion_max_n: int = 5
    completion_max_logprobs: int = 5
    completion_max_interval: int = 0
    chat_template: str | None = None
    tool_max_schema_size: int = 32 * 1024
    cors_origins: tuple[str, ...] = ()
    api_key: str | None = None
    max_body_size: int = 4 * 1024 * 1024
    max_queued_requests: int = 256
    ladle_cache: str | None = None
    log_level: str = "info"
    completion_max_total_tokens: int = 20480
    max_concurrent_requests: int = 512
    client_timeout: int = 30
    log_prompts: bool = False
    drain_timeout: int = 25
    health_loading_status: int = 503
    threads: int = 0
    engine_stall_timeout: float = 120.0
    completion_max_stop_length: int = 1024
    completion_max_logit_bias: int = 1024
    completion_max_prompts: int = 32
    chat_max_messages: int = 1024
    chat_max_chars: int = 262_144
    sse_keepalive: float = 15.0
    prefix_cache: bool = True
    prefix_cache_tokens: int = 16384
    prefill_chunk_tokens: int = 128
    no_playground: bool = False
    cgroup_root: str = "/sys/fs/cgroup"

    def __repr__(self) -> str:
        # The API key must never reach a log line.
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if fields["api_key"] is not None:
            fields["api_key"] = "***"
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in fields.items()) + ")"


SERVER_OPTIONS: tuple[Option, ...] = rows(
    Settings,
    Option("model", "MODEL", "local directory, .gguf file or hub id; unset serves the default model"),
    Option("backend", "BACKEND", "model runner: hf_eager, hf_bettertransformer or hf_int8"),
    Option("host", "HOST", "address to listen on"),
    Option("port", "PORT", "port to listen on", minimum=0),
    Option(
        "served_model_name", "SERVED_MODEL_NAME", "model id the API reports; defaults to the model's name"
    ),
    Option("completion_max_prompt", "COMPLETION_MAX_PROMPT", "longest prompt accepted, in tokens", 1),
    Option("completion_max_tokens", "COMPLETION_MAX_TOKENS", "largest max_tokens accepted", 1),
    Option("completion_max_n", "COMPLETION_MAX_N", "largest n (and best_of) accepted", 1),
    Option("completion_max_logprobs", "COMPLETION_MAX_LOGPROBS", "largest completions logprobs accepted", 0),
    Option(
        "completion_max_interval",
        "COMPLETION_MAX_INTERVAL",
        "coalesce streamed tokens into one chunk per this many milliseconds; 0 sends every token",
        0,
    ),
    Option(
        "chat_template", "CHAT_TEMPLATE", "Jinja file to render chat messages with, instead of the model's"
    ),
    Option(
        "tool_max_schema_size",
        "TOOL_MAX_SCHEMA_SIZE",
        "largest tool definitions (tools or functions, as JSON) one chat request may declare, in bytes",
        1,
    ),
    Option("cors_origins", "CORS_ORIGINS", "comma-separated origins allowed by CORS; empty allows none"),
    Option("api_key", "API_KEY", "require this bearer key on every route but /health, /ping and /livez"),
    Option("max_body_size", "MAX_BODY_SIZE", "largest request body accepted, in bytes", 1),
    Option("max_queued_requests", "MAX_QUEUED_REQUESTS", "requests waiting for the engine before 429", 1),
    Option("ladle_cache", "LADLE_CACHE", "folder for converted models; unset uses the user cache"),
    Option("log_level", "LOG_LEVEL", "how much to log", choices=("debug", "info", "warning", "error")),
    Option(
        "completion_max_total_tokens",
        "COMPLETION_MAX_TOTAL_TOKENS",
        "most tokens one request may generate: prompts x n (or best_of) x max_tokens",
        1,
    ),
    Option(
        "max_concurrent_requests",
        "MAX_CONCURRENT_REQUESTS",
        "requests answered at once; past it 429 (/health, /ping, /livez, /metrics never refused)",
        1,
    ),
    Option(
        "client_timeout",
        "CLIENT_TIMEOUT",
        "seconds a client may take to send its body, or leave its response unread, before it is dropped",
        1,
    ),
    Option("log_prompts", "LOG_PROMPTS", "log every prompt and output to the ladle.prompts logger"),
    Option(
        "drain_timeout",
        "DRAIN_TIMEOUT",
        "seconds that requests in flight may take to finish after SIGTERM before the server exits",
        0,
    ),
    Option(
        "health_loading_status",
        "HEALTH_LOADING_STATUS",
        "status of /health and /ping while the model loads: 503, or 204 for RunPod's load balancer",
        200,
    ),
    Option(
        "threads",
        "THREADS",
        "CPU threads for the forward (torch.set_num_threads); 0 counts the CPUs this process may use:"
        " its affinity mask and its cgroup CPU quota, whichever is smaller",
        0,
    ),
    Option(
        "completion_max_stop_length",
        "COMPLETION_MAX_STOP_LENGTH",
        "longest stop string accepted, in characters (at most this much text is held back while streaming)",
        1,
    ),
    Option("completion_max_logit_bias", "COMPLETION_MAX_LOGIT_BIAS", "most logit_bias entries accepted", 0),
    Option("completion_max_prompts", "COMPLETION_MAX_PROMPTS", "most prompts in one completions request", 1),
    Option("chat_max_messages", "CHAT_MAX_MESSAGES", "most messages in one chat request", 1),
    Option(
        "chat_max_chars", "CHAT_MAX_CHARS", "most characters of all a chat request's messages together", 1
    ),
    Option(
        "sse_keepalive",
        "SSE_KEEPALIVE",
        "seconds a stream may stay silent (queued, or in a long prefill) before an SSE comment keeps"
        " proxies from closing it; 0 sends none",
        0,
    ),
    Option(
        "engine_stall_timeout",
        "ENGINE_STALL_TIMEOUT",
        "seconds without a completed engine step, while work waits, before /health and /livez answer"
        " 503 (a wedged engine); a step running longer is logged. 0 turns the check off",
        0,
    ),
    Option(
        "prefix_cache",
        "PREFIX_CACHE",
        "keep the KV of processed tokens and reuse it for prompts that start the same (decoder-only models)",
    ),
    Option(
        "prefix_cache_tokens",
        "PREFIX_CACHE_TOKENS",
        "tokens the prefix cache holds at most, least recently used evicted first",
        32,
    ),
    Option(
        "prefill_chunk_tokens",
        "PREFILL_CHUNK_TOKENS",
        "prompt tokens prefilled per engine step while other streams decode (longer prompts go in chunks)",
        1,
    ),
    Option("no_playground", "NO_PLAYGROUND", "do not serve the playground at /", flagged=False),
    Option(
        "cgroup_root",
        "LADLE_CGROUP_ROOT",
        "where THREADS=0 reads the cgroup CPU quota",
        flagged=False,
    ),
)

# The one table: the environment, the flags, `ladle --help` and the README's table come from it.
OPTIONS: tuple[Option, ...] = SERVER_OPTIONS + BACKEND_OPTIONS


def settings_from_env(
    environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Build Settings from environment variables, then apply already-typed overrides (flags)."""
    values = read_env(OPTIONS, os.environ if environ is None else environ)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return Settings(**values)
