"""POST /v1/completions against a live server over the fake engine, with the official openai client."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from handler.config import Settings
from tests.conftest_http import LiveServer, live_server
from tests.fake_engine import fake_loader


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with live_server(Settings(served_model_name="served", completion_max_prompt=200)) as live:
        yield live


@pytest.fixture(scope="module")
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def last_params(server: LiveServer) -> object:
    return server.model.engine.submitted[-1][1]


def test_string_prompt(client: openai.OpenAI, server: LiveServer) -> None:
    result = client.completions.create(model="anything", prompt="Hello", max_tokens=5)
    assert result.id.startswith("cmpl-") and result.object == "text_completion"
    assert result.model == "anything"
    [choice] = result.choices
    assert (choice.index, choice.finish_reason, choice.text) == (0, "length", "The quick brow")
    assert result.usage is not None
    prompt_tokens = len(server.model.tokenizer("Hello").input_ids)
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (prompt_tokens, 5)
    assert result.usage.total_tokens == prompt_tokens + 5


def test_model_defaults_to_served_name(server: LiveServer) -> None:
    body = httpx.post(server.url + "/v1/completions", json={"prompt": "Hi"}).json()
    assert body["model"] == "served" and body["usage"]["completion_tokens"] == 16


def test_prompt_forms_and_choice_indices(client: openai.OpenAI, server: LiveServer) -> None:
    ids = server.model.tokenizer("Hello").input_ids
    for prompt in (["Hello", "World"], [ids, server.model.tokenizer("World").input_ids]):
        result = client.completions.create(model="m", prompt=prompt, n=2, max_tokens=3, echo=True)
        assert [c.index for c in result.choices] == [0, 1, 2, 3]
        assert [c.text[:5] for c in result.choices] == ["Hello", "Hello", "World", "World"]
        assert result.usage is not None and result.usage.completion_tokens == 12
    single = client.completions.create(model="m", prompt=ids, max_tokens=3, echo=True)
    assert single.choices[0].text.startswith("Hello")


def test_sampling_fields_reach_the_engine(client: openai.OpenAI, server: LiveServer) -> None:
    client.completions.create(
        model="m",
        prompt="x",
        temperature=0.3,
        top_p=0.5,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        logit_bias={"7": 5},
        seed=11,
        user="someone",
        extra_body={
            "top_k": 4,
            "min_p": 0.05,
            "repetition_penalty": 1.1,
            "min_tokens": 2,
            "ignore_eos": True,
        },
    )
    params = last_params(server)
    assert (params.temperature, params.top_p, params.top_k, params.min_p) == (0.3, 0.5, 4, 0.05)  # type: ignore[attr-defined]
    assert (params.presence_penalty, params.frequency_penalty) == (0.5, -0.5)  # type: ignore[attr-defined]
    assert (params.repetition_penalty, params.logit_bias, params.seed) == (1.1, {7: 5.0}, 11)  # type: ignore[attr-defined]
    assert (params.min_tokens, params.ignore_eos) == (2, True)  # type: ignore[attr-defined]


def test_greedy_choices_agree_and_seeds_repeat(client: openai.OpenAI) -> None:
    greedy = client.completions.create(model="m", prompt="x", n=2, temperature=0, max_tokens=6)
    assert greedy.choices[0].text == greedy.choices[1].text
    first = client.completions.create(model="m", prompt="x", seed=3, max_tokens=6)
    again = client.completions.create(model="m", prompt="x", seed=3, max_tokens=6)
    assert first.choices[0].text == again.choices[0].text


def test_max_tokens_null_runs_to_the_context(server: LiveServer) -> None:
    body = {"prompt": "Hi", "max_tokens": None, "ignore_eos": True}
    result = httpx.post(server.url + "/v1/completions", json=body, timeout=60).json()
    prompt_tokens = result["usage"]["prompt_tokens"]
    assert result["usage"]["completion_tokens"] == server.model.info.context_length - prompt_tokens
    assert result["choices"][0]["finish_reason"] == "length"


def test_max_tokens_null_on_an_encoder_decoder_runs_to_the_decoder_context() -> None:
    # The prompt goes to the encoder: it takes nothing from the decoder's context.
    with live_server(loader=fake_loader(is_encoder_decoder=True, eos_after=10_000)) as live:
        body = {"prompt": "Hi there, a prompt of a few tokens", "max_tokens": None, "ignore_eos": True}
        result = httpx.post(live.url + "/v1/completions", json=body, timeout=60).json()
        context = live.model.info.context_length
    assert result["usage"]["prompt_tokens"] > 1
    assert result["usage"]["completion_tokens"] == context - 1


def test_eos_min_tokens_and_ignore_eos(client: openai.OpenAI) -> None:
    stopped = client.completions.create(model="m", prompt="x", max_tokens=50)
    assert stopped.choices[0].finish_reason == "stop" and stopped.usage.completion_tokens == 40  # type: ignore[union-attr]
    ignored = client.completions.create(model="m", prompt="x", max_tokens=50, extra_body={"ignore_eos": True})
    assert ignored.choices[0].finish_reason == "length" and ignored.usage.completion_tokens == 50  # type: ignore[union-attr]


def test_best_of_returns_the_best_n(client: openai.OpenAI) -> None:
    every = client.completions.create(model="m", prompt="x", n=3, max_tokens=6)
    best = client.completions.create(model="m", prompt="x", n=1, best_of=3, max_tokens=6)
    # The fake ranks later sequences higher: the best of three is the third.
    assert [c.text for c in best.choices] == [every.choices[2].text]
    assert best.usage is not None and best.usage.completion_tokens == 18
    two = client.completions.create(model="m", prompt=["x", "y"], n=2, best_of=3, max_tokens=6)
    assert [c.index for c in two.choices] == [0, 1, 2, 3]
    assert [c.text for c in two.choices[:2]] == [every.choices[2].text, every.choices[1].text]


def test_logprobs_and_echo(client: openai.OpenAI, server: LiveServer) -> None:
    result = client.completions.create(model="m", prompt="Hello", max_tokens=3, logprobs=2)
    logprobs = result.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens == ["The", " qu", "ick"]
    assert logprobs.text_offset == [0, 3, 6] and len(logprobs.top_logprobs or []) == 3
    assert all(len(top) == 2 for top in logprobs.top_logprobs or [])
    echoed = client.completions.create(model="m", prompt="Hello", max_tokens=3, logprobs=1, echo=True)
    choice = echoed.choices[0]
    assert choice.text == "HelloThe quick"
    tokenizer = server.model.tokenizer
    prompt_tokens = [tokenizer.decode([t]) for t in tokenizer("Hello").input_ids]
    assert choice.logprobs is not None and choice.logprobs.tokens == [*prompt_tokens, "The", " qu", "ick"]
    assert (choice.logprobs.token_logprobs or [])[0] is None
    assert (choice.logprobs.text_offset or [])[-3:] == [5, 8, 11]
    assert echoed.usage is not None and echoed.usage.completion_tokens == 3


def test_stop_strings(client: openai.OpenAI) -> None:
    result = client.completions.create(model="m", prompt="x", stop="fox", max_tokens=30, temperature=0)
    assert (result.choices[0].text, result.choices[0].finish_reason) == ("The quick brown ", "stop")
    several = client.completions.create(
        model="m", prompt="x", stop=["zzz", "ick"], max_tokens=30, temperature=0
    )
    assert several.choices[0].text == "The qu"


def test_suffix_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="suffix is not supported"):
        client.completions.create(model="m", prompt="x", suffix="y")


def test_streaming_matches_the_whole_response(client: openai.OpenAI) -> None:
    whole = client.completions.create(model="m", prompt=["a", "b"], n=2, max_tokens=8, seed=2, echo=True)
    stream = client.completions.create(
        model="m",
        prompt=["a", "b"],
        n=2,
        max_tokens=8,
        seed=2,
        echo=True,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts = {index: "" for index in range(4)}
    finish = {}
    chunks = list(stream)
    for chunk in chunks[:-1]:
        assert chunk.id == chunks[0].id and chunk.usage is None
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    assert texts == {c.index: c.text for c in whole.choices}
    assert finish == {index: "length" for index in range(4)}
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_streaming_logprobs_offsets(client: openai.OpenAI) -> None:
    whole = client.completions.create(model="m", prompt="Hi", max_tokens=5, logprobs=1, echo=True, seed=1)
    stream = client.completions.create(
        model="m", prompt="Hi", max_tokens=5, logprobs=1, echo=True, seed=1, stream=True
    )
    tokens, offsets = [], []
    for chunk in stream:
        for choice in chunk.choices:
            assert choice.logprobs is not None
            tokens += choice.logprobs.tokens or []
            offsets += choice.logprobs.text_offset or []
    assert whole.choices[0].logprobs is not None
    assert (tokens, offsets) == (whole.choices[0].logprobs.tokens, whole.choices[0].logprobs.text_offset)


async def test_async_client(server: LiveServer) -> None:
    async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as client:
        result = await client.completions.create(model="m", prompt="Hello", max_tokens=4, temperature=0)
        stream = await client.completions.create(
            model="m", prompt="Hello", max_tokens=4, temperature=0, stream=True
        )
        text = "".join([choice.text async for chunk in stream for choice in chunk.choices])
    assert text == result.choices[0].text == "The quick b"
