"""Resolving MODEL and loading it: clear one-line errors for every bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.errors import ModelLoadError
from backends.library import load_model, make_params
from backends.runner.loading import pick_dtype, resolve
from tests.tiny_models import tiny_model_dir


def test_missing_directory_and_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        resolve(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="not found"):
        resolve(str(tmp_path / "nope.gguf"))


def test_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        resolve(str(tmp_path))


def test_corrupt_gguf_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelLoadError) as err:
        resolve(str(bad), cache_dir=tmp_path / "cache")
    assert "\n" not in str(err.value) and "broken.gguf" in str(err.value)
    assert not list((tmp_path / "cache" / "gguf").glob("broken*"))  # no half-written conversion left


def test_model_that_cannot_generate_text(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(str(tmp_path))
    with pytest.raises(ModelLoadError, match="not a text-generation model"):
        load_model(str(tmp_path))


def test_bad_dtype() -> None:
    with pytest.raises(ModelLoadError, match="DTYPE"):
        pick_dtype("float64", "cpu")


def test_library_streams_openai_choices() -> None:
    model = load_model(str(tiny_model_dir("llama")))
    choices = list(model("once upon a time", max_tokens=8, temperature=0.7, seed=3))
    assert choices and set(choices[0]) == {"text", "index", "logprobs", "finish_reason"}
    assert choices[-1]["finish_reason"] in ("stop", "length")
    assert all(c["finish_reason"] is None for c in choices[:-1])
    again = list(model("once upon a time", max_tokens=8, temperature=0.7, seed=3))
    assert [c["text"] for c in again] == [c["text"] for c in choices]
    with_logprobs = list(model("once upon a time", max_tokens=3, temperature=0.0, logprobs=2, n=2))
    assert {c["index"] for c in with_logprobs} == {0, 1}
    tops = [top for c in with_logprobs for top in c["logprobs"]["top_logprobs"]]
    assert len(tops) == 6  # 3 tokens x 2 choices, each with its alternatives
    assert all(1 <= len(top) <= 2 for top in tops)  # keyed by text: two tokens may share one


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"temperature": 5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": "8"}, "max_tokens"),
        ({"n": 0}, "n"),
        ({"logit_bias": {1: 500}}, "logit_bias"),
        ({"best_of": 1, "n": 2}, "best_of"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_invalid_arguments_name_the_parameter(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        make_params(**kwargs)


async def test_async_generation() -> None:
    model = load_model(str(tiny_model_dir("gpt2")))
    try:
        texts = [c async for c in model.agenerate("hello", max_tokens=5, temperature=0.0, ignore_eos=True)]
        assert texts[-1]["finish_reason"] == "length"
    finally:
        await model.engine.shutdown()
