"""The API's conformance suite, run over every backend on the tiny Llama: one live server per backend.

Each backend must give the same shapes, streams that equal whole replies, `n`, stop strings,
logprobs, seeds and errors. Across backends, greedy output is compared with hf_eager's:
hf_bettertransformer exactly (same tokens, logprobs within float32 rounding); hf_int8 within a
stated tolerance (INT8_LOGPROB_TOLERANCE), since its weights are quantized.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from backends.hf_int8 import bitsandbytes_problem
from handler.config import Settings
from handler.model import load_served_model
from tests.conftest_http import LiveServer, live_server
from tests.tiny_models import tiny_model_dir

BACKENDS = ["hf_eager", "hf_bettertransformer", "hf_int8"]
PROMPTS = ["Once upon a time", "The capital of France", "Hello"]
GREEDY = {"temperature": 0, "max_tokens": 10, "extra_body": {"ignore_eos": True}}
# hf_int8 against hf_eager on the tiny Llama: the chosen tokens' logprobs differ by at most 0.004
# (measured); 0.05 leaves a margin of ten, while a wrong kernel or placement moves them by nats.
INT8_LOGPROB_TOLERANCE = 0.05
EXACT_LOGPROB_TOLERANCE = 1e-4  # hf_bettertransformer: SDPA against eager attention, in float32
CHAT = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module", params=BACKENDS)
def server(request: pytest.FixtureRequest) -> Iterator[LiveServer]:
    backend: str = request.param
    if backend == "hf_int8" and bitsandbytes_problem("cpu"):
        pytest.skip(bitsandbytes_problem("cpu") or "")
    settings = Settings(
        model=str(tiny_model_dir("llama")), backend=backend, served_model_name="tiny", max_batch_size=8
    )
    with live_server(settings, loader=load_served_model) as live:
        yield live


@pytest.fixture(scope="module")
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def eager_reference() -> dict[str, tuple[list[str], list[float]]]:
    """hf_eager's greedy tokens and their logprobs for each prompt, through the library."""
    from backends.library import load_model

    model = load_model(str(tiny_model_dir("llama")), backend="hf_eager")
    reference = {}
    for prompt in PROMPTS:
        choices = list(model(prompt, max_tokens=10, temperature=0, ignore_eos=True, logprobs=1))
        tokens = [t for c in choices for t in c["logprobs"]["tokens"]]
        logprobs = [lp for c in choices for lp in c["logprobs"]["token_logprobs"]]
        reference[prompt] = (tokens, logprobs)
    model.close()
    return reference


def backend_of(server: LiveServer) -> str:
    backend: str = server.model.info.backend
    return backend


def streamed_text(client: openai.OpenAI, **request: Any) -> dict[int, str]:
    texts: dict[int, str] = {}
    for chunk in client.completions.create(model="tiny", stream=True, **request):
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    return texts


# -- shapes ---------------------------------------------------------------------------------------


def test_completion_shape(client: openai.OpenAI, server: LiveServer) -> None:
    result = client.completions.create(model="tiny", prompt="Once upon a time", **GREEDY)  # type: ignore[arg-type]
    assert result.object == "text_completion" and result.model == "tiny" and result.id.startswith("cmpl-")
    [choice] = result.choices
    assert choice.index == 0 and choice.finish_reason == "length" and isinstance(choice.text, str)
    usage = result.usage
    assert usage is not None and usage.completion_tokens == 10
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["backend"] == backend_of(server)


def test_chat_shape_and_stream(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="tiny", messages=CHAT, **GREEDY)  # type: ignore[arg-type]
    assert whole.object == "chat.completion" and whole.model == "tiny"
    [choice] = whole.choices
    assert choice.message.role == "assistant" and choice.finish_reason == "length"
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=CHAT,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
            **GREEDY,  # type: ignore[arg-type]
        )
    )
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices)
    assert text == choice.message.content
    # The same counts; cached_tokens may differ, the stream repeating a prompt the cache holds.
    usage = chunks[-1].usage
    assert usage is not None and whole.usage is not None
    assert usage.model_dump(exclude={"prompt_tokens_details"}) == whole.usage.model_dump(
        exclude={"prompt_tokens_details"}
    )


# -- streaming, n, stop, seeds ----------------------------------------------------------------------


def test_streaming_equals_whole(client: openai.OpenAI) -> None:
    for prompt in PROMPTS:
        whole = client.completions.create(model="tiny", prompt=prompt, **GREEDY)  # type: ignore[arg-type]
        assert streamed_text(client, prompt=prompt, **GREEDY) == {0: whole.choices[0].text}


def test_n_choices_with_a_seed(client: openai.OpenAI) -> None:
    request: dict[str, Any] = {"prompt": "Hello", "n": 3, "seed": 5, "temperature": 1.0, "max_tokens": 8}
    whole = client.completions.create(model="tiny", **request)
    assert sorted(c.index for c in whole.choices) == [0, 1, 2]
    texts = {c.index: c.text for c in whole.choices}
    assert len(set(texts.values())) == 3  # each choice draws from its own generator
    assert streamed_text(client, **request) == texts


def test_stop_strings_cut_the_text_before_the_first_match(client: openai.OpenAI) -> None:
    free = client.completions.create(model="tiny", prompt="Once upon a time", **GREEDY)  # type: ignore[arg-type]
    text = free.choices[0].text
    middle = len(text) // 2
    stop = next(text[i : i + 2] for i in range(middle, len(text) - 1) if "\ufffd" not in text[i : i + 2])
    expected = text[: text.find(stop)]
    stopped = client.completions.create(model="tiny", prompt="Once upon a time", stop=[stop], **GREEDY)  # type: ignore[arg-type]
    assert stopped.choices[0].text == expected and stopped.choices[0].finish_reason == "stop"
    assert streamed_text(client, prompt="Once upon a time", stop=[stop], **GREEDY) == {0: expected}


def test_a_seed_gives_the_same_text_whatever_shares_the_batch(server: LiveServer) -> None:
    # hf_int8 holds to this here because the tiny model's activations have no outliers; on real
    # models bitsandbytes computes outlier columns in 16-bit for the whole batch (see README).
    seeded: dict[str, Any] = {"prompt": "Hello", "seed": 42, "temperature": 1.0, "max_tokens": 8}

    async def scenario() -> tuple[str, str, str]:
        async with openai.AsyncOpenAI(
            base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120
        ) as client:
            alone = (await client.completions.create(model="tiny", **seeded)).choices[0].text
            other = await client.completions.create(model="tiny", **{**seeded, "seed": 43})
            neighbours = [
                await client.completions.create(
                    model="tiny", prompt=p, max_tokens=200, stream=True, extra_body={"ignore_eos": True}
                )
                for p in PROMPTS
            ]
            for stream in neighbours:  # each is running in the batch once its first chunk is out
                await anext(aiter(stream))
            crowded = (await client.completions.create(model="tiny", **seeded)).choices[0].text
            for stream in neighbours:
                await stream.close()
            return alone, crowded, other.choices[0].text

    alone, crowded, other = asyncio.run(scenario())
    assert crowded == alone and other != alone


# -- logprobs -------------------------------------------------------------------------------------


def test_completion_logprobs_shapes(client: openai.OpenAI) -> None:
    result = client.completions.create(model="tiny", prompt="Hello", logprobs=2, **GREEDY)  # type: ignore[arg-type]
    logprobs = result.choices[0].logprobs
    assert logprobs is not None and result.usage is not None
    count = result.usage.completion_tokens
    assert len(logprobs.tokens or []) == len(logprobs.token_logprobs or []) == count
    assert len(logprobs.top_logprobs or []) == len(logprobs.text_offset or []) == count
    # A dict keyed by token text: byte tokens that each render as "\ufffd" share one key.
    for token, top in zip(logprobs.tokens or [], logprobs.top_logprobs or [], strict=True):
        assert 1 <= len(top) <= 2 and token in top
    assert all(lp <= 0 for lp in logprobs.token_logprobs or [])
    offsets = logprobs.text_offset or []
    assert offsets == sorted(offsets)
    echoed = client.completions.create(
        model="tiny", prompt="Hello", logprobs=1, echo=True, max_tokens=2, temperature=0
    )
    echo_logprobs = echoed.choices[0].logprobs
    assert echoed.choices[0].text.startswith("Hello")
    assert echo_logprobs is not None and (echo_logprobs.token_logprobs or [0.0])[0] is None


def test_chat_logprobs_shapes(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model="tiny",
        messages=CHAT,  # type: ignore[arg-type]
        logprobs=True,
        top_logprobs=3,
        **GREEDY,  # type: ignore[arg-type]
    )
    content = result.choices[0].logprobs.content if result.choices[0].logprobs else None
    assert content is not None and result.usage is not None
    assert len(content) == result.usage.completion_tokens
    for entry in content:
        ranked = [top.logprob for top in entry.top_logprobs]
        assert len(ranked) == 3 and ranked == sorted(ranked, reverse=True)
        # Greedy: the chosen token is the most likely one.
        assert entry.logprob == pytest.approx(ranked[0]) and entry.bytes is not None


def test_greedy_output_agrees_with_hf_eager(
    client: openai.OpenAI, server: LiveServer, eager_reference: dict[str, tuple[list[str], list[float]]]
) -> None:
    backend = backend_of(server)
    tolerance = INT8_LOGPROB_TOLERANCE if backend == "hf_int8" else EXACT_LOGPROB_TOLERANCE
    for prompt, (tokens, logprobs) in eager_reference.items():
        result = client.completions.create(model="tiny", prompt=prompt, logprobs=1, **GREEDY)  # type: ignore[arg-type]
        got = result.choices[0].logprobs
        assert got is not None
        # hf_int8 included: no greedy choice on these prompts is a near-tie that quantization flips.
        assert got.tokens == tokens, backend
        worst = max(abs(a - b) for a, b in zip(got.token_logprobs or [], logprobs, strict=True))
        assert worst <= tolerance, (backend, worst)


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        ({"prompt": "Hi", "temperature": 9}, 400, "temperature", None),
        ({"prompt": "Hi", "max_tokens": 1023}, 400, None, "context_length_exceeded"),
        ({"prompt": [10**7], "max_tokens": 2}, 400, "prompt", None),
        ({"prompt": "Hi", "logprobs": 99}, 400, "logprobs", None),
        ({"prompt": "Hi", "n": 99}, 400, "n", None),
    ],
)
def test_errors_in_openais_shape(
    server: LiveServer, body: dict[str, Any], status: int, param: str | None, code: str | None
) -> None:
    response = httpx.post(server.url + "/v1/completions", json={"model": "tiny", **body}, timeout=60)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
