"""Property tests of parse_request: any input either raises a short ValidationError, or gives a request
that vLLM's engine accepts as its engine-core process would (params checked, msgpack round trip).

The second half is what keeps the engine-wedging class away: `{"max_tokens": 5.0}` used to pass
parsing and `SamplingParams`, and then killed the engine core's input thread, whose msgspec decoder
wants an int; `{"seed": 2**70}` failed to encode after vLLM had registered the request.
"""

from __future__ import annotations

import json
import os
import time
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
from backend.request import GenerationRequest, parse_request
from tests.servers import TINY_MODEL

PH = "<|prompt_embeds|>"
CONFIG = ServingConfig(max_embedding_parts=4, max_request_json_bytes=4096)
MAX_LEN = 64
HIDDEN = 128
EXAMPLES = int(os.environ.get("PROPERTY_EXAMPLES", "200"))
# Written out here rather than imported, so the test is an independent statement of the interface.
BOOL_FIELDS = ["ignore_eos", "include_stop_str_in_output", "skip_special_tokens", "spaces_between_special_tokens"]
INT_FIELDS = ["top_k", "seed", "max_tokens", "min_tokens", "n", "logprobs", "prompt_logprobs"]
FLOAT_FIELDS = ["temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty"]
LIST_FIELDS = ["stop", "stop_token_ids", "bad_words", "logit_bias", "structured_outputs"]
SAMPLING_FIELDS = BOOL_FIELDS + INT_FIELDS + FLOAT_FIELDS + LIST_FIELDS


@pytest.fixture(scope="module")
def builder(tiny) -> PromptBuilder:
    return PromptBuilder(tiny.tokenizer, PH, tiny.hidden_size, torch.float32)


class Engine:
    """What vLLM's InputProcessor and engine-core process do with a request's SamplingParams."""

    def __init__(self) -> None:
        from vllm.config import ModelConfig, StructuredOutputsConfig
        from vllm.tokenizers import get_tokenizer
        from vllm.v1.engine import EngineCoreRequest
        from vllm.v1.serial_utils import MsgpackDecoder, MsgpackEncoder

        self.model_config = ModelConfig(model=str(TINY_MODEL))
        self.structured_config = StructuredOutputsConfig()
        self.tokenizer = get_tokenizer(str(TINY_MODEL))  # the engine's tokenizer wrapper
        self.request_type = EngineCoreRequest
        self.encoder, self.decoder = MsgpackEncoder(), MsgpackDecoder(EngineCoreRequest)

    def accept(self, request: GenerationRequest) -> None:
        """Raises whatever the engine would raise for this request."""
        params = request.sampling.clone()
        # InputProcessor._validate_params / process_inputs, in order.
        params.verify(self.model_config, None, self.structured_config, self.tokenizer)
        if params.max_tokens is None:
            params.max_tokens = MAX_LEN - request.prompt.num_tokens
            assert params.min_tokens <= params.max_tokens, "vLLM refuses min_tokens over the room left"
        params.update_from_generation_config(self.model_config.try_get_generation_config(),
                                             self.tokenizer.eos_token_id)
        params.update_from_tokenizer(self.tokenizer)
        # NaN or inf biases pass vLLM's checks but poison the logits; its OpenAI server clamps to ±100.
        assert all(-100 <= bias <= 100 for bias in (params.logit_bias or {}).values()), "logit_bias"
        prompt = request.prompt.to_vllm()
        core_request = self.request_type(
            request_id="r", prompt_token_ids=prompt.get("prompt_token_ids"), mm_features=None,
            sampling_params=params, pooling_params=None, arrival_time=time.time(), lora_request=None,
            cache_salt=None, data_parallel_rank=None, prompt_embeds=prompt.get("prompt_embeds"),
            prompt_is_token_ids=prompt.get("prompt_is_token_ids"))
        # The client encodes (OverflowError past 64-bit ints, UnicodeEncodeError on surrogates);
        # the engine core's input thread decodes with exact types (msgspec ValidationError).
        decoded = self.decoder.decode(self.encoder.encode(core_request)).sampling_params
        for name in SAMPLING_FIELDS:
            assert getattr(decoded, name) == getattr(params, name), name
        if params.n > 1 and params.seed is not None:  # vLLM's n: child i is sent with seed + i
            self.encoder.encode(params.seed + params.n - 1)

    def verify(self, params: Any) -> None:
        """What the model runs before the engine (backend.lifecycle.model_info's verify)."""
        params.clone().verify(self.model_config, None, self.structured_config, self.tokenizer)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine()


def _string_array(value: Any) -> np.ndarray:
    return np.array([value], dtype=np.object_)


def _as_json(value: Any) -> str:
    return json.dumps(value, allow_nan=True)


def _sampling_input(sampling: dict[str, Any]) -> dict[str, np.ndarray]:
    return {"text_input": _string_array(b"hello"), "sampling_parameters": _string_array(_as_json(sampling).encode())}


# -- strategies -----------------------------------------------------------------------------------

# Lone UTF-16 surrogates (hypothesis' text() leaves them out), and JSON-ish junk with huge ints and NaN/inf.
_surrogates = st.sampled_from(["\ud800", "a\udfffb", "\udc00\ud800"])
_texts = st.text(max_size=12) | _surrogates
_huge_ints = st.sampled_from([2**63, 2**64, 2**70, -(2**63) - 1, 10**400, -(10**400)])
_scalars = st.none() | st.booleans() | st.integers() | _huge_ints | st.floats() | _texts
_keys = st.sampled_from(SAMPLING_FIELDS + ["role", "content", "type", "text", "name", "n"]) | st.text(max_size=8)
json_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(_keys, inner, max_size=4), max_leaves=12)

_number_strings = st.one_of(
    st.integers(-5, 300).map(str), st.floats(-3, 3).map(str), st.floats().map(repr),
    st.sampled_from(["5.0", "1e3", "0x10", " 5", "1_0", "٣", "nan", "inf", "-inf", "true", "1", "yes", "9" * 40, ""]),
)
_ints = st.integers(-3, 300) | st.integers(-(2**64), 2**64) | _huge_ints | st.integers(0, 20).map(float)
_floats = st.floats(-3, 3) | st.floats() | st.integers(-3, 3) | _huge_ints
_token_ids = (st.integers(-2, 300) | _huge_ints | st.booleans() | st.integers(0, 5).map(float)
              | st.integers(0, 300).map(str))


def _values(name: str) -> st.SearchStrategy:
    """Right and wrong values for one field: the right type in and out of range, and every wrong type."""
    if name in BOOL_FIELDS:
        right = st.booleans() | st.sampled_from(["true", "false", "TRUE"])
    elif name in INT_FIELDS:
        right = _ints | _number_strings
    elif name in FLOAT_FIELDS:
        right = _floats | _number_strings
    elif name in ("stop", "bad_words"):
        right = _texts | st.lists(_texts | st.integers(), max_size=5) | st.just(["x"] * 70) | st.just(["y" * 2000])
    elif name == "structured_outputs":
        spec = st.sampled_from(["json", "json_object", "regex", "choice", "grammar", "other"])
        right = st.dictionaries(spec, st.sampled_from(
            ["[a-z]+", "(", "a{3,2}", "", " ", "\x00", 'root ::= "a"', "root ::= ", '{"type": "object"}', "{",
             '{"type": "nope"}']) | st.lists(_texts, max_size=3) | st.just({"type": "integer"})
            | st.just({"type": "object", "properties": {"a": {"type": "string"}}}) | st.booleans() | json_values,
            min_size=1, max_size=2)
    elif name == "stop_token_ids":
        right = st.lists(_token_ids, max_size=5) | st.just(list(range(2000)))
    else:
        right = st.dictionaries(_token_ids.map(str) | st.text(max_size=3),
                                st.floats() | st.integers(-300, 300) | _huge_ints | _number_strings | json_values,
                                max_size=4)
    return right | st.none() | st.booleans() | json_values


SAMPLING = st.fixed_dictionaries({}, optional={name: _values(name) for name in SAMPLING_FIELDS})

# Message-shaped structures, so parsing gets past the top-level shape checks often.
_parts = st.fixed_dictionaries({"type": st.just("text"), "text": _texts}) \
    | st.just({"type": "prompt_embeds"}) | json_values
_messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", "bad"]),
     "content": _texts | st.just(PH) | st.lists(_parts, max_size=4)}) | json_values, max_size=3)


def _string_input(structured: st.SearchStrategy) -> st.SearchStrategy:
    """A STRING tensor: valid JSON of `structured`, random text, random bytes, or a wrong shape/type."""
    return st.one_of(
        structured.map(_as_json).map(lambda t: _string_array(t.encode())),
        st.text(max_size=60).map(lambda t: _string_array(t.encode())),
        st.binary(max_size=60).map(_string_array),
        _surrogates.map(_string_array),  # a str, as an in-process caller could pass
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
    "text_input": _string_input(_texts | st.just(f"a {PH} b")),
    "messages": _string_input(_messages),
    "sampling_parameters": _string_input(SAMPLING | json_values),
    "prompt_embeds": embeddings(),
    "prompt_embeds_fp16": embeddings(),
    "prompt_embeds_lengths": _lengths,
    "stream": _flag,
    "exclude_input_in_output": _flag,
    "return_finish_reason": _flag,
    "return_output_token_ids": _flag,
})

_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])


def _refused(exc: ValidationError, allowed: tuple[str, ...] | None = None) -> None:
    assert len(str(exc)) < 400, str(exc)[:500]
    assert exc.parameter
    if allowed is not None:
        assert exc.parameter in allowed, str(exc)
    event(f"rejected {exc.parameter}")


# -- properties -----------------------------------------------------------------------------------


@_SETTINGS
@given(inputs=INPUTS)
@example(inputs={"text_input": _string_array(b"hi"), "sampling_parameters": _string_array(b'{"max_tokens": 1e400}')})
@example(inputs={"messages": _string_array(json.dumps([{"role": "user", "content": [{"type": "prompt_embeds"}]}])
                                           .encode()),
                 "prompt_embeds": np.zeros((2, HIDDEN), np.float32),
                 "prompt_embeds_lengths": np.array([[2]], np.int32)})
@example(inputs={"messages": _string_array(b'[{"role": "user", "content": "\\ud800"}]')})
@example(inputs={"text_input": _string_array("\ud800")})
def test_any_input_is_refused_or_accepted_by_the_engine(builder, engine, inputs):
    try:
        request = parse_request(inputs, builder, CONFIG, MAX_LEN, verify_sampling=engine.verify)
    except ValidationError as exc:
        _refused(exc)
        return
    event("parsed")
    assert isinstance(request, GenerationRequest)
    assert 0 < request.prompt.num_tokens < MAX_LEN
    engine.accept(request)


@_SETTINGS
@given(sampling=SAMPLING)
@example(sampling={"max_tokens": 5.0})  # wedged the engine: msgspec wants an int
@example(sampling={"ignore_eos": "1"})
@example(sampling={"temperature": True})
@example(sampling={"seed": 1.5})
@example(sampling={"top_k": True})
@example(sampling={"min_tokens": 1.0})
@example(sampling={"skip_special_tokens": "yes"})
@example(sampling={"seed": 2**70})  # leaked the request: cannot be encoded
@example(sampling={"top_k": 2**70})
@example(sampling={"seed": 10**400})
@example(sampling={"logit_bias": {"5": float("nan")}})
@example(sampling={"stop": ["\ud800"]})
@example(sampling={"bad_words": ["a\udfff"]})
@example(sampling={"stop": False})  # was an AssertionError from SamplingParams
@example(sampling={"bad_words": {"a": 1}})
@example(sampling={"stop_token_ids": [True, 2]})
@example(sampling={"logit_bias": {"x": 1}})  # parsed, then a TypeError in the engine
@example(sampling={"max_tokens": None, "min_tokens": 100})  # vLLM checks min_tokens against the room left
@example(sampling={"n": 16, "seed": 2**63 - 2, "temperature": 1})  # child seeds past 64 bits
@example(sampling={"structured_outputs": {"regex": "("}})  # must never reach the engine
@example(sampling={"structured_outputs": {"json": '{"type": "nope"}'}})
@example(sampling={"structured_outputs": {"grammar": "root ::= "}})
def test_any_sampling_values_are_refused_or_accepted_by_the_engine(builder, engine, sampling):
    """Valid prompt, right and wrong values for every sampling field: parsed means the engine takes it."""
    try:
        request = parse_request(_sampling_input(sampling), builder, CONFIG, MAX_LEN, verify_sampling=engine.verify)
    except ValidationError as exc:
        _refused(exc, ("sampling_parameters", "text_input"))
        return
    event("parsed")
    engine.accept(request)


@_SETTINGS
@given(sampling=st.fixed_dictionaries({}, optional={
    "temperature": st.floats(0, 2) | st.floats(0, 2).map(str),
    "top_p": st.floats(0.01, 1),
    "top_k": st.integers(-1, 262) | st.integers(1, 262).map(str),
    "min_p": st.floats(0, 1),
    "seed": st.integers(-(2**63), 2**63 - 1),
    "max_tokens": st.integers(1, 50) | st.none(),
    "presence_penalty": st.floats(-2, 2),
    "repetition_penalty": st.floats(0.01, 10),
    "stop": st.lists(st.text(min_size=1, max_size=10).filter(str.strip), max_size=64),
    "stop_token_ids": st.lists(st.integers(0, 261), max_size=20),
    "bad_words": st.lists(st.text(min_size=1, max_size=10).filter(str.strip), max_size=8),
    "logit_bias": st.dictionaries(st.integers(0, 261).map(str), st.floats(-1000, 1000), max_size=20),
    "ignore_eos": st.booleans() | st.sampled_from(["true", "False"]),
    "logprobs": st.integers(0, 20),
    "prompt_logprobs": st.integers(0, 20),
    "structured_outputs": st.sampled_from([{"choice": ["yes", "no"]}, {"regex": "[a-z]{1,5}"}, {"json_object": True},
                                           {"json": {"type": "object", "properties": {"a": {"type": "integer"}}}}]),
}))
def test_values_in_range_are_accepted(builder, engine, sampling):
    """The checks are not simply refusing everything: in-range values pass and reach the engine intact."""
    request = parse_request(_sampling_input(sampling), builder, CONFIG, MAX_LEN, verify_sampling=engine.verify)
    engine.accept(request)
    for bias in (request.sampling.logit_bias or {}).values():
        assert -100 <= bias <= 100


def test_logit_bias_keys_become_token_ids(builder):
    inputs = {"text_input": _string_array(b"hello"), "sampling_parameters": _string_array(b'{"logit_bias": {"7": 2}}')}
    assert parse_request(inputs, builder, CONFIG, MAX_LEN).sampling.logit_bias == {7: 2.0}
