"""Issue 11 on the model side without a server: input_ids, n, logprobs, structured outputs, defaults, facts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from backend.config import ServingConfig
from backend.errors import ValidationError
from backend.interface import MAX_N, MODEL_INFO_KEYS
from backend.prompt import PromptBuilder
from backend.request import parse_request
from backend.sampling import check_sampling_defaults, parse_sampling_params
from backend.service import model_facts, wants_model_info
from backend.types import ModelInfo

PH = "<|prompt_embeds|>"
CONFIG = ServingConfig(max_embedding_parts=4, max_request_json_bytes=4096)
MAX_LEN = 64
VOCAB = 262


@pytest.fixture(scope="module")
def builder(tiny) -> PromptBuilder:
    return PromptBuilder(tiny.tokenizer, PH, tiny.hidden_size, torch.float32)


def s(value: str) -> np.ndarray:
    return np.array([value.encode()], dtype=np.object_)


def ids(*values: int, dtype=np.int64) -> np.ndarray:
    return np.array(values, dtype=dtype)


def sampling(raw, **kwargs):
    return parse_sampling_params(raw, vocab_size=VOCAB, prompt_tokens=3, max_model_len=MAX_LEN,
                                 prompt_input="text_input", **kwargs)


# -- input_ids --------------------------------------------------------------------------------------

def test_input_ids_reach_the_engine_as_they_are(builder):
    request = parse_request({"input_ids": ids(1, 5, 8, 11, 260)}, builder, CONFIG, MAX_LEN)
    assert request.prompt.to_vllm() == {"prompt_token_ids": [1, 5, 8, 11, 260]}  # no BOS added, no text
    assert request.prompt.num_tokens == 5


def test_input_ids_echo_is_their_decoded_text(builder, tiny):
    request = parse_request({"input_ids": ids(*tiny.ids("hi")), "exclude_input_in_output": np.array([False])},
                            builder, CONFIG, MAX_LEN)
    assert request.prompt.echo_text == "hi"


@pytest.mark.parametrize("inputs, fragment", [
    ({"input_ids": ids(1, 2), "text_input": s("a")}, "not with text_input"),
    ({"input_ids": ids(1, 2), "messages": s("[]")}, "not with messages"),
    ({"input_ids": ids(1, 2), "prompt_embeds": np.zeros((1, 128), np.float32)}, "not with prompt_embeds"),
    ({"input_ids": ids(1, VOCAB)}, "outside the vocabulary"),
    ({"input_ids": ids(-1, 2)}, "outside the vocabulary"),
    ({"input_ids": ids(1, 2, dtype=np.float32)}, "INT64"),
    ({"input_ids": np.zeros((1, 2), np.int64)}, "1-D"),
    ({"input_ids": ids()}, "empty"),
    ({"input_ids": ids(*([1] * MAX_LEN))}, "context"),
], ids=["with-text", "with-messages", "with-embeds", "vocab", "negative", "float", "2d", "empty", "too-long"])
def test_bad_input_ids_are_refused_by_name(builder, inputs, fragment):
    with pytest.raises(ValidationError) as info:
        parse_request(inputs, builder, CONFIG, MAX_LEN)
    assert info.value.parameter == "input_ids" and fragment in info.value.message


def test_input_ids_plus_max_tokens_must_fit(builder):
    with pytest.raises(ValidationError, match="exceeds the context"):
        parse_request({"input_ids": ids(*([1] * 60)), "sampling_parameters": s('{"max_tokens": 10}')},
                      builder, CONFIG, MAX_LEN)


# -- n, logprobs --------------------------------------------------------------------------------------

def test_n_and_logprobs_are_read_and_carried_on_the_request(builder):
    request = parse_request({"text_input": s("a"), "sampling_parameters": s('{"n": 3, "logprobs": 2, "seed": 1}')},
                            builder, CONFIG, MAX_LEN)
    assert (request.sampling.n, request.n, request.sampling.logprobs, request.logprobs) == (3, 3, 2, 2)


@pytest.mark.parametrize("raw, fragment", [
    ({"n": 0}, "n must be in [1, 16]"),
    ({"n": MAX_N + 1}, "n must be in [1, 16]"),
    ({"n": 2.0}, "n must be an integer"),
    ({"n": True}, "n must be an integer"),
    ({"logprobs": -1}, "logprobs must be in [0, 20]"),
    ({"logprobs": 21}, "logprobs must be in [0, 20]"),
    ({"logprobs": "x"}, "logprobs must be an integer"),
    ({"n": 2, "seed": 2**63 - 1}, "seed must be at most"),
    ({"n": 2, "temperature": 0}, "greedy"),
], ids=["n-0", "n-17", "n-float", "n-bool", "logprobs-neg", "logprobs-21", "logprobs-str", "seed-plus-n", "greedy-n"])
def test_bad_n_and_logprobs_are_refused(raw, fragment):
    with pytest.raises(ValidationError) as info:
        sampling(raw)
    assert info.value.parameter == "sampling_parameters" and fragment in info.value.message


def test_the_engine_bound_on_logprobs_is_used():
    assert sampling({"logprobs": 5}, max_logprobs=5).logprobs == 5
    with pytest.raises(ValidationError, match=r"logprobs must be in \[0, 5\]"):
        sampling({"logprobs": 6}, max_logprobs=5)


# -- structured outputs -------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [
    {"choice": ["yes", "no"]}, {"regex": "[a-z]+"}, {"json": {"type": "object"}}, {"json": '{"type": "string"}'},
    {"json_object": True}, {"grammar": 'root ::= "a"'},
], ids=["choice", "regex", "json-object", "json-text", "json_object", "grammar"])
def test_structured_outputs_become_vllm_params(spec):
    params = sampling({"structured_outputs": spec})
    kind, value = next(iter(spec.items()))
    assert getattr(params.structured_outputs, kind) == value


@pytest.mark.parametrize("spec, fragment", [
    ("regex", "must be an object"),
    ({}, "exactly one of"),
    ({"regex": "a", "choice": ["a"]}, "exactly one of"),
    ({"regex": "a", "backend": "x"}, "unknown fields"),
    ({"choice": []}, "non-empty list"),
    ({"choice": ["a", 1]}, "entry 1"),
    ({"json_object": False}, "must be true"),
    ({"regex": 5}, "must be a string"),
    ({"grammar": " "}, "is empty"),
    ({"regex": "a\x00"}, "NUL"),
    ({"regex": "x" * 70000}, "over the limit"),
    ({"choice": ["\ud800"]}, "not valid Unicode"),
], ids=["not-object", "none", "two", "unknown", "empty-choice", "choice-int", "json_object-false", "regex-int",
        "blank-grammar", "nul", "long", "surrogate"])
def test_malformed_structured_outputs_are_refused(spec, fragment):
    with pytest.raises(ValidationError) as info:
        sampling({"structured_outputs": spec})
    assert "structured_outputs" in info.value.message and fragment in info.value.message


def test_vllm_verification_failures_name_structured_outputs():
    def verify(params):
        raise ValueError("regex does not compile")

    with pytest.raises(ValidationError, match="structured_outputs is not valid: regex does not compile"):
        sampling({"structured_outputs": {"regex": "("}}, verify=verify)
    calls = []
    sampling({"temperature": 1}, verify=calls.append)
    assert calls == []  # only structured outputs need vLLM's own check


# -- generation-config defaults ------------------------------------------------------------------------

def test_defaults_fill_unset_fields_only():
    defaults = check_sampling_defaults({"temperature": 0.6, "top_p": 0.9, "top_k": 50, "max_tokens": 20}, VOCAB)
    params = sampling({"top_p": 0.5, "temperature": None}, defaults=defaults)
    assert (params.temperature, params.top_p, params.top_k) == (0.6, 0.5, 50)
    assert sampling({}, defaults=defaults).max_tokens == 16  # absent: vLLM's SamplingParams default
    assert sampling({"max_tokens": None}, defaults=defaults).max_tokens == 20  # null: the model's, within the room
    assert sampling({"max_tokens": None}).max_tokens is None  # no model default: the room left


def test_bad_defaults_fail_the_load_check():
    with pytest.raises(ValidationError):
        check_sampling_defaults({"temperature": 7.0}, VOCAB)
    with pytest.raises(ValidationError):
        check_sampling_defaults({"typical_p": 0.5}, VOCAB)


# -- model facts -----------------------------------------------------------------------------------------

def test_model_facts_are_the_documented_keys():
    info = ModelInfo(hidden_size=128, max_model_len=8192, dtype=torch.float32, tokenizer=None, model="/m",
                     max_logprobs=20)
    facts = json.loads(model_facts(info, PH, VOCAB))
    assert tuple(facts) == MODEL_INFO_KEYS
    assert facts == {"hidden_size": 128, "max_model_len": 8192, "dtype": "float32", "placeholder": PH,
                     "vocab_size": VOCAB, "model": "/m", "max_logprobs": 20, "max_n": MAX_N}


def test_model_info_is_asked_alone():
    assert wants_model_info({"model_info": np.array([True])})
    assert not wants_model_info({"text_input": s("a")})
    assert not wants_model_info({"model_info": np.array([False]), "text_input": s("a")})
    with pytest.raises(ValidationError, match="not with text_input"):
        wants_model_info({"model_info": np.array([True]), "text_input": s("a")})
    with pytest.raises(ValidationError, match="one BOOL"):
        wants_model_info({"model_info": np.array([1])})
