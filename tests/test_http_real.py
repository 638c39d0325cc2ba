"""The real engine behind a live server: a tiny random Llama, the CLI, and (slow) the default model."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from handler.config import Settings
from handler.model import load_served_model
from loadtest.matrix import free_port
from tests.conftest_http import (
    LiveServer,
    live_server,
    tiny_llama_fixtures,
    wait_until,
)
from tests.tiny_models import tiny_model_dir

ROOT = Path(__file__).resolve().parents[1]


server, client = tiny_llama_fixtures()


def test_models(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list().data] == ["tiny"]


def test_greedy_stream_matches_whole(client: openai.OpenAI) -> None:
    whole = client.completions.create(
        model="tiny", prompt="The capital of France", max_tokens=12, temperature=0
    )
    stream = client.completions.create(
        model="tiny", prompt="The capital of France", max_tokens=12, temperature=0, stream=True
    )
    assert "".join(c.text for chunk in stream for c in chunk.choices) == whole.choices[0].text
    assert whole.usage is not None and whole.usage.completion_tokens <= 12


def test_completion_parameters(client: openai.OpenAI) -> None:
    result = client.completions.create(
        model="tiny",
        prompt=["Hello", "World"],
        n=2,
        max_tokens=4,
        logprobs=2,
        echo=True,
        seed=7,
        stop=["\n\n"],
    )
    assert [c.index for c in result.choices] == [0, 1, 2, 3]
    for choice in result.choices:
        assert choice.text.lstrip().startswith("Hello" if choice.index < 2 else "World")
        assert choice.logprobs is not None and (choice.logprobs.token_logprobs or [None])[0] is None
    best = client.completions.create(model="tiny", prompt="Hi", n=1, best_of=3, max_tokens=4, seed=1)
    assert len(best.choices) == 1 and best.usage is not None


def test_chat(client: openai.OpenAI) -> None:
    messages: list[dict[str, str]] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    whole = client.chat.completions.create(
        model="tiny",
        messages=messages,  # type: ignore[arg-type]
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    logprobs = whole.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert all(len(entry.top_logprobs) == 3 for entry in logprobs.content)
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=messages,  # type: ignore[arg-type]
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices)
    assert text == whole.choices[0].message.content
    usage = chunks[-1].usage
    assert usage is not None and whole.usage is not None
    # The same prompt again: only the share served from the prefix cache may differ.
    assert usage.model_dump(exclude={"prompt_tokens_details"}) == whole.usage.model_dump(
        exclude={"prompt_tokens_details"}
    )


def test_context_length_exceeded(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="tiny", prompt="Hi", max_tokens=2000)
    assert info.value.code == "context_length_exceeded"


async def test_sixteen_concurrent_greedy_streams(server: LiveServer) -> None:
    async with openai.AsyncOpenAI(
        base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120
    ) as client:
        alone = await client.completions.create(
            model="tiny", prompt="Once upon", max_tokens=10, temperature=0
        )

        async def streamed() -> str:
            stream = await client.completions.create(
                model="tiny", prompt="Once upon", max_tokens=10, temperature=0, stream=True
            )
            return "".join([c.text async for chunk in stream for c in chunk.choices])

        texts = await asyncio.gather(*(streamed() for _ in range(16)))
    assert texts == [alone.choices[0].text] * 16


def test_disconnect_frees_the_engine(server: LiveServer) -> None:
    engine = server.model.engine
    wait_until(lambda: engine.num_running + engine.num_queued == 0, 60, "the engine did not drain")
    steps_before = engine.steps
    body = {"prompt": "Hi", "max_tokens": 1000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        assert engine.num_running + engine.num_queued == 1
    wait_until(lambda: engine.num_running + engine.num_queued == 0, 60, "the cancelled request kept running")
    # It left long before its 1000 tokens.
    assert engine.steps - steps_before < 1000


def test_cli_serves_with_env_and_flags() -> None:
    port = free_port()
    env = {**os.environ, "MODEL": str(tiny_model_dir("llama")), "API_KEY": "k-123", "LOG_LEVEL": "warning"}
    command = [
        sys.executable,
        "-m",
        "handler",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        "cli",
    ]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return httpx.get(url + "/health", timeout=5).status_code == 200
            except httpx.TransportError:
                return process.poll() is not None

        wait_until(healthy, 120, "the CLI server did not become healthy")
        assert process.poll() is None
        client = openai.OpenAI(base_url=url + "/v1", api_key="k-123", max_retries=0, timeout=60)
        assert client.completions.create(model="cli", prompt="Hi", max_tokens=2).model == "cli"
        assert httpx.get(url + "/v1/models").status_code == 401
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=60)[0].decode()
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "k-123" not in output


def test_cli_exits_when_the_model_cannot_load(tmp_path: Path) -> None:
    env = {**os.environ, "MODEL": str(tmp_path / "missing-model")}
    command = [sys.executable, "-m", "handler", "--host", "127.0.0.1", "--port", str(free_port())]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=120)
    assert result.returncode == 1
    assert b"Traceback" not in result.stderr


@pytest.mark.slow
def test_default_model_knows_the_capital_of_france() -> None:
    with live_server(Settings(), loader=load_served_model) as live:
        client = openai.OpenAI(base_url=live.url + "/v1", api_key="x", max_retries=0, timeout=300)
        result = client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=32,
            temperature=0,
        )
    assert "Paris" in (result.choices[0].message.content or "")


def test_threads_setting_sets_torch_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import backends
    from backends.cpus import usable_cpus

    seen: list[int] = []
    monkeypatch.setattr(backends, "load_model", lambda *a, **k: seen.append(torch.get_num_threads()))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        load_served_model(Settings(threads=1))
        load_served_model(Settings())  # 0 counts the CPUs this process may use (tests/test_cpus.py)
    finally:
        torch.set_num_threads(before)
    assert seen == [1, usable_cpus().count]
