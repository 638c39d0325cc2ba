"""Server settings: one table of options read from environment variables and command-line flags."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """A setting has a value ladle cannot use; the message names the variable."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the server is configured with; defaults apply when nothing is set."""

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
    max_batch_size: int = 16
    max_queued_requests: int = 256
    dtype: str | None = None
    ladle_cache: str | None = None
    trust_remote_code: bool = False
    log_level: str = "info"
    completion_max_total_tokens: int = 20480
    max_concurrent_requests: int = 512
    client_timeout: int = 30
    log_prompts: bool = False
    drain_timeout: int = 25
    health_loading_status: int = 503
    threads: int = 0

    def __repr__(self) -> str:
        # The API key must never reach a log line.
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if fields["api_key"] is not None:
            fields["api_key"] = "***"
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in fields.items()) + ")"


@dataclass(frozen=True, slots=True)
class Option:
    """One setting: its field in Settings, its environment variable and what it means."""

    field: str
    env: str
    help: str
    minimum: int | None = None
    choices: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")

    @property
    def default(self) -> Any:
        return _FIELDS[self.field].default

    @property
    def kind(self) -> str:
        """One of "str", "int", "bool", "list"."""
        return _KINDS[self.field]


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_KINDS = {
    **{name: "str" for name in _FIELDS},
    **{name: "int" for name in _FIELDS if isinstance(_FIELDS[name].default, int)},
    "trust_remote_code": "bool",
    "log_prompts": "bool",
    "cors_origins": "list",
}

OPTIONS: tuple[Option, ...] = (
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
    Option("api_key", "API_KEY", "require this bearer key on every route but /health and /ping"),
    Option("max_body_size", "MAX_BODY_SIZE", "largest request body accepted, in bytes", 1),
    Option("max_batch_size", "MAX_BATCH_SIZE", "sequences the engine runs in one batch", 1),
    Option("max_queued_requests", "MAX_QUEUED_REQUESTS", "requests waiting for the engine before 429", 1),
    Option("dtype", "DTYPE", "weight dtype (float32, float16, bfloat16); unset picks one for the device"),
    Option("ladle_cache", "LADLE_CACHE", "folder for converted models; unset uses the user cache"),
    Option("trust_remote_code", "TRUST_REMOTE_CODE", "allow model code from the model's repository"),
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
        "requests answered at once; past it 429 (/health, /ping, /metrics never refused)",
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
        "CPU threads for the forward (torch.set_num_threads); 0 keeps torch's default, one per core."
        " On a shared or CPU-limited host, set the cores this process really gets",
        0,
    ),
)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def parse_value(option: Option, raw: str, source: str) -> Any:
    """Turn the text of one setting into its typed value; `source` names it in errors."""
    kind = option.kind
    text = raw.strip()
    if kind == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ConfigError(f"{source} must be true or false, got {raw!r}")
    if kind == "list":
        return tuple(item.strip() for item in text.split(",") if item.strip())
    if kind == "int":
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(f"{source} must be an integer, got {raw!r}") from None
        if option.minimum is not None and value < option.minimum:
            raise ConfigError(f"{source} must be >= {option.minimum}, got {value}")
        return value
    if option.choices and text.lower() not in option.choices:
        raise ConfigError(f"{source} must be one of {', '.join(option.choices)}, got {raw!r}")
    if option.default is None:
        return text or None
    return text.lower() if option.choices else text


def settings_from_env(
    environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Build Settings from environment variables, then apply already-typed overrides (flags)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for option in OPTIONS:
        if option.env in environ:
            values[option.field] = parse_value(option, environ[option.env], option.env)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return Settings(**values)
