"""One table of bounds: the HTTP API's pydantic models and SamplingParams.validate refuse the same values,
each error names its parameter as data, and the server's bounds default to Settings' defaults."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from backends.engine.params import BOUNDS, Bound, SamplingParams
from backends.errors import InvalidRequestError
from backends.library import make_params
from handler.api.bounds import Limits, RequestBounds
from handler.api.errors import from_validation_error
from handler.api.requests import ChatCompletionRequest, CompletionRequest
from handler.config import Settings

# Where each bounded parameter is a request field (logprobs' upper bound: chat's top_logprobs; completions'
# is COMPLETION_MAX_LOGPROBS, a setting). logit_bias and stop_token_ids bound each item of a collection.
FIELDS = {name: (CompletionRequest, name) for name in BOUNDS if name not in ("logit_bias", "stop_token_ids")}
FIELDS["logprobs"] = (ChatCompletionRequest, "top_logprobs")
BASE: dict[type[BaseModel], dict[str, Any]] = {
    CompletionRequest: {"prompt": "hi"},
    ChatCompletionRequest: {"messages": [{"role": "user", "content": "hi"}], "logprobs": True},
}


def beyond(bound: Bound) -> list[int | float]:
    """Values just outside each end of `bound`."""
    step = 1 if bound.integer else 1e-6
    values: list[int | float] = []
    if bound.low is not None:
        values.append(bound.low if bound.low_open else bound.low - step)
    if bound.high is not None:
        values.append(bound.high + step)
    return values


def within(bound: Bound) -> list[int | float]:
    """Values at (or, for an open end, just inside) each end of `bound`."""
    step = 1 if bound.integer else 1e-6
    values: list[int | float] = []
    if bound.low is not None:
        values.append(bound.low + step if bound.low_open else bound.low)
    if bound.high is not None:
        values.append(bound.high)
    return values


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_the_api_and_the_engine_refuse_the_same_values(name: str) -> None:
    model, field = FIELDS[name]
    bound = BOUNDS[name]
    assert beyond(bound), name
    for value in beyond(bound):
        with pytest.raises(InvalidRequestError) as info:
            SamplingParams(**{name: value}).validate()  # type: ignore[arg-type]
        assert info.value.param == name
        with pytest.raises(ValidationError) as refused:
            model.model_validate({**BASE[model], field: value})
        assert from_validation_error(refused.value).param == field
    for value in within(bound):
        params = SamplingParams(**{name: value, "max_tokens": None})  # type: ignore[arg-type]
        params.validate()
        model.model_validate({**BASE[model], field: value})


def test_each_logit_bias_is_bounded_alike() -> None:
    high = BOUNDS["logit_bias"].high
    assert high is not None
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(logit_bias={3: high + 1}).validate()
    assert info.value.param == "logit_bias"
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate({"prompt": "hi", "logit_bias": {"3": high + 1}})


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"top_p": 0.0}, "top_p"),
        ({"n": 2, "best_of": 1}, "best_of"),
        ({"max_tokens": 2, "min_tokens": 3}, "min_tokens"),
        ({"stop": [""]}, "stop"),
        ({"logit_bias": {"x": 1.0}}, "logit_bias"),
        ({"nonsense": 1}, "nonsense"),
        ({"response_format": {"type": "json_object"}, "grammar": "x"}, "response_format"),
    ],
)
def test_library_errors_carry_their_parameter_as_data(kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        make_params(**kwargs)
    assert info.value.param == param and isinstance(info.value, ValueError)


def test_the_server_bounds_default_to_the_settings_defaults() -> None:
    assert Limits.from_settings(Settings()) == Limits()
    assert RequestBounds.from_settings(Settings()) == RequestBounds()
