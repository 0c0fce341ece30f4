"""Property test of parse_request: any input either parses or raises a short ValidationError; nothing else escapes."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from backend.config import ServingConfig
from backend.errors import ValidationError
from backend.prompt import PromptBuilder
from backend.request import GenerationRequest, SAMPLING_FIELDS, parse_request

PH = "<|prompt_embeds|>"
CONFIG = ServingConfig(max_embedding_parts=4, max_request_json_bytes=4096)
MAX_LEN = 64
HIDDEN = 128


@pytest.fixture(scope="module")
def builder(tiny) -> PromptBuilder:
    return PromptBuilder(tiny.tokenizer, PH, tiny.hidden_size, torch.float32)


def _string_array(value: Any) -> np.ndarray:
    return np.array([value], dtype=np.object_)


# JSON-ish values: scalars (incl. huge ints, NaN/inf floats) nested in lists and string-keyed dicts.
_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_keys = st.sampled_from(sorted(SAMPLING_FIELDS) + ["role", "content", "type", "text", "name", "n"]) | st.text(max_size=8)
json_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(_keys, inner, max_size=4), max_leaves=12)

# Message-shaped structures, so parsing gets past the top-level shape checks often.
_parts = st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=20)}) \
    | st.just({"type": "prompt_embeds"}) | json_values
_messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", "bad"]),
     "content": st.text(max_size=20) | st.just(PH) | st.lists(_parts, max_size=4)}) | json_values, max_size=3)

# Sampling parameters: known fields with arbitrary values (and numbers as strings), sometimes unknown keys.
_sampling_values = json_values | st.integers(-5, 100).map(str) | st.floats(-2, 3).map(str)
_sampling = st.dictionaries(st.sampled_from(sorted(SAMPLING_FIELDS)), _sampling_values, max_size=4) | json_values


def _as_json(value: Any) -> str:
    return json.dumps(value, allow_nan=True)


def _string_input(structured: st.SearchStrategy) -> st.SearchStrategy:
    """A STRING tensor: valid JSON of `structured`, random text, random bytes, or a wrong shape/type."""
    return st.one_of(
        structured.map(_as_json).map(lambda t: _string_array(t.encode())),
        st.text(max_size=60).map(lambda t: _string_array(t.encode())),
        st.binary(max_size=60).map(_string_array),
        st.lists(st.binary(max_size=8), min_size=0, max_size=3).map(lambda xs: np.array(xs, dtype=np.object_)),
        st.integers().map(lambda n: np.array([n], dtype=np.object_)),
    )


_float_dtypes = st.sampled_from([np.float32, np.float16, np.float64, np.int32, np.int64, np.bool_, np.complex64])
_shapes = st.one_of(
    st.tuples(st.integers(0, 70), st.sampled_from([HIDDEN, HIDDEN + 1, 1, 0])),
    hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6),
    st.tuples(st.integers(1, 2), st.integers(1, 8), st.just(HIDDEN)),
)


@st.composite
def embeddings(draw: st.DrawFn) -> Any:
    dtype = draw(_float_dtypes)
    shape = draw(_shapes)
    fill = draw(st.sampled_from(["zeros", "random"]))
    if fill == "zeros" or np.prod(shape) > 4096:
        array = np.zeros(shape, dtype=dtype)
    else:
        array = draw(hnp.arrays(dtype, shape, elements=None if dtype is np.bool_ else hnp.from_dtype(
            np.dtype(dtype), allow_nan=True, allow_infinity=True) if np.dtype(dtype).kind in "fc" else None))
    if array.size and np.dtype(dtype).kind == "f" and draw(st.booleans()):
        array.reshape(-1)[draw(st.integers(0, array.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    if draw(st.integers(0, 5)) == 0 and np.dtype(dtype).kind == "f":
        return torch.from_numpy(array.astype(np.float32)).to(torch.bfloat16)
    return array


_lengths = st.one_of(
    hnp.arrays(st.sampled_from([np.int32, np.int64, np.uint8, np.float32]), hnp.array_shapes(min_dims=0, max_dims=2,
                                                                                              max_side=6)),
    st.lists(st.integers(-3, 70), max_size=6).map(lambda xs: np.array(xs, dtype=np.int32)),
)
_flag = st.one_of(st.booleans().map(lambda v: np.array([v])), st.integers(-2, 2).map(lambda v: np.array([v])),
                  st.lists(st.booleans(), max_size=3).map(np.array))

INPUTS = st.fixed_dictionaries({}, optional={
    "text_input": _string_input(st.text(max_size=40) | st.just(f"a {PH} b")),
    "messages": _string_input(_messages),
    "sampling_parameters": _string_input(_sampling),
    "prompt_embeds": embeddings(),
    "prompt_embeds_fp16": embeddings(),
    "prompt_embeds_lengths": _lengths,
    "stream": _flag,
    "exclude_input_in_output": _flag,
    "return_finish_reason": _flag,
    "return_output_token_ids": _flag,
})


@settings(max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "200")), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                  HealthCheck.function_scoped_fixture])
@given(inputs=INPUTS)
@example(inputs={"text_input": _string_array(b"hi"), "sampling_parameters": _string_array(b'{"max_tokens": 1e400}')})
@example(inputs={"messages": _string_array(json.dumps([{"role": "user", "content": [{"type": "prompt_embeds"}]}])
                                           .encode()),
                 "prompt_embeds": np.zeros((2, HIDDEN), np.float32),
                 "prompt_embeds_lengths": np.array([[2]], np.int32)})
def test_parse_request_returns_a_request_or_a_validation_error(builder, inputs):
    try:
        request = parse_request(inputs, builder, CONFIG, MAX_LEN)
    except ValidationError as exc:
        assert len(str(exc)) < 400, str(exc)[:500]
        assert exc.parameter
        event(f"rejected {exc.parameter}")
        return
    event("parsed")
    assert isinstance(request, GenerationRequest)
    assert 0 < request.prompt.num_tokens < MAX_LEN


@settings(max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "200")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(sampling=st.dictionaries(st.sampled_from(sorted(SAMPLING_FIELDS)), _sampling_values, min_size=1, max_size=3))
@example(sampling={"stop": False})  # was an AssertionError from SamplingParams
@example(sampling={"bad_words": {"a": 1}})
@example(sampling={"stop_token_ids": [True, 2]})
@example(sampling={"logit_bias": {"x": 1}})  # parsed, then a TypeError in the engine
def test_any_sampling_values_on_a_valid_prompt(builder, sampling):
    """Valid prompt, arbitrary values for known sampling fields: deeper into SamplingParams than the test above."""
    inputs = {"text_input": _string_array(b"hello"), "sampling_parameters": _string_array(_as_json(sampling).encode())}
    try:
        request = parse_request(inputs, builder, CONFIG, MAX_LEN)
    except ValidationError as exc:
        assert len(str(exc)) < 400, str(exc)[:500]
        assert exc.parameter in ("sampling_parameters", "text_input")
        event(f"rejected {exc.parameter}")
        return
    event("parsed")
    assert isinstance(request, GenerationRequest)


def test_logit_bias_keys_become_token_ids(builder):
    inputs = {"text_input": _string_array(b"hello"), "sampling_parameters": _string_array(b'{"logit_bias": {"7": 2}}')}
    assert parse_request(inputs, builder, CONFIG, MAX_LEN).sampling.logit_bias == {7: 2.0}
