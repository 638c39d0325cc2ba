"""A ladle server on 127.0.0.1 with the tiny test model, as the fuzz run and the mini soak use it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import torch

from handler.config import Settings
from handler.model import load_served_model
from tests.conftest_http import LiveServer, live_server, wait_until
from tests.tiny_models import tiny_model_dir

# Bounds that keep one fuzzed request cheap on a CPU: short generations, short prompts.
FUZZ_SETTINGS = {"completion_max_tokens": 16, "completion_max_prompt": 256, "served_model_name": "tiny"}


@dataclass(slots=True)
class Checked:
    """A live server plus the checks every reliability run ends with."""

    live: LiveServer

    @property
    def url(self) -> str:
        return self.live.url

    def running(self) -> int:
        """Sequences the engine still runs or holds in its queue."""
        engine = self.live.model.engine
        return int(engine.num_running + engine.num_queued)

    def assert_healthy(self) -> None:
        """Healthy, drained, and still answering a plain request."""
        wait_until(lambda: self.running() == 0, 60, "sequences were left running")
        assert httpx.get(self.url + "/health", timeout=30).status_code == 200
        body = {"prompt": "Hello", "max_tokens": 4, "temperature": 0}
        response = httpx.post(self.url + "/v1/completions", json=body, timeout=60)
        assert response.status_code == 200, response.text
        assert self.running() == 0


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One torch thread: on a shared 2-core machine, more threads spin against each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def fuzz_server(**overrides: object) -> Iterator[Checked]:
    """The tiny Llama behind a real uvicorn, with FUZZ_SETTINGS and any overrides."""
    settings = Settings(model=str(tiny_model_dir("llama")), **{**FUZZ_SETTINGS, **overrides})  # type: ignore[arg-type]
    with single_thread(), live_server(settings, loader=load_served_model) as live:
        yield Checked(live)
