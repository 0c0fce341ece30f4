"""parse_request: Triton-shaped numpy inputs to GenerationRequest, or a ValidationError naming the input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from backend.config import ServingConfig
from backend.errors import ValidationError
from backend.prompt import PromptBuilder
from backend.request import parse_request

PH = "<|prompt_embeds|>"
CONFIG = ServingConfig(max_embedding_parts=4, max_request_json_bytes=4096)
MAX_LEN = 64


@pytest.fixture(scope="module")
def builder(tiny) -> PromptBuilder:
    return PromptBuilder(tiny.tokenizer, PH, tiny.hidden_size, torch.float32)


def s(value: str) -> np.ndarray:
    return np.array([value.encode()], dtype=np.object_)


def b(value: bool) -> np.ndarray:
    return np.array([value])


def parse(builder, **inputs):
    return parse_request(inputs, builder, CONFIG, MAX_LEN)


def test_defaults_follow_vllm_backend(builder):
    request = parse(builder, text_input=s("hi"))
    assert not request.stream and not request.exclude_input_in_output
    assert request.sampling.max_tokens == 16
    streaming = parse(builder, text_input=s("hi"), stream=b(True))
    assert streaming.exclude_input_in_output


def test_sampling_values_as_strings_are_accepted(builder):
    request = parse(builder, text_input=s("hi"),
                    sampling_parameters=s(json.dumps({"temperature": "0.5", "max_tokens": "7", "ignore_eos": "true"})))
    assert request.sampling.temperature == 0.5 and request.sampling.max_tokens == 7 and request.sampling.ignore_eos


def test_messages_with_parts(builder):
    embeds = np.zeros((5, 128), np.float32)
    messages = [{"role": "user", "content": [{"type": "prompt_embeds"}, {"type": "text", "text": "x"},
                                             {"type": "prompt_embeds"}]}]
    request = parse(builder, messages=s(json.dumps(messages)), prompt_embeds=embeds,
                    prompt_embeds_lengths=np.array([2, 3], np.int32))
    assert request.prompt.num_embedding_tokens == 5


def test_bf16_arrives_as_a_torch_tensor(builder):
    request = parse(builder, prompt_embeds_bf16=torch.zeros(3, 128, dtype=torch.bfloat16))
    assert request.prompt.num_tokens == 3 and request.prompt.embeds.dtype == torch.float32


E = np.zeros((3, 128), np.float32)
BAD = {
    "nothing": ({}, "text_input", "required"),
    "both-text-and-messages": ({"text_input": s("a"), "messages": s("[]")}, "messages", "not both"),
    "malformed-json": ({"messages": s("[{")}, "messages", "not valid JSON"),
    "json-too-big": ({"messages": s("[" + " " * 5000 + "]")}, "messages", "over the limit"),
    "not-utf8": ({"text_input": np.array([b"\xff\xfe"], dtype=np.object_)}, "text_input", "UTF-8"),
    "two-strings": ({"text_input": np.array([b"a", b"b"], dtype=np.object_)}, "text_input", "one string"),
    "unknown-sampling": ({"text_input": s("a"), "sampling_parameters": s('{"nope": 1}')}, "sampling_parameters", "nope"),
    "unsupported-sampling": ({"text_input": s("a"), "sampling_parameters": s('{"best_of": 2}')}, "sampling_parameters", "unsupported"),
    "sampling-not-object": ({"text_input": s("a"), "sampling_parameters": s("[1]")}, "sampling_parameters", "object"),
    "bad-temperature": ({"text_input": s("a"), "sampling_parameters": s('{"temperature": -1}')}, "sampling_parameters", "temperature"),
    "bad-number": ({"text_input": s("a"), "sampling_parameters": s('{"max_tokens": "many"}')}, "sampling_parameters", "max_tokens"),
    "context-overflow": ({"text_input": s("a"), "sampling_parameters": s('{"max_tokens": 63}')}, "text_input", "exceeds the context"),
    "embeds-fill-context": ({"prompt_embeds": np.zeros((64, 128), np.float32)}, "prompt_embeds", "exceed the limit"),
    "two-embedding-inputs": ({"prompt_embeds": E, "prompt_embeds_fp16": E.astype(np.float16)}, "prompt_embeds_fp16", "only one"),
    "lengths-without-embeds": ({"text_input": s("a"), "prompt_embeds_lengths": np.array([1], np.int32)}, "prompt_embeds_lengths", "without"),
    "lengths-float": ({"prompt_embeds": E, "prompt_embeds_lengths": np.array([3.0], np.float32)}, "prompt_embeds_lengths", "integer"),
    "too-many-parts": ({"prompt_embeds": np.zeros((5, 128), np.float32), "prompt_embeds_lengths": np.ones(5, np.int32)}, "prompt_embeds_lengths", "limit"),
    "parts-without-text": ({"prompt_embeds": E, "prompt_embeds_lengths": np.array([1, 2], np.int32)}, "prompt_embeds_lengths", "several parts"),
    "stream-with-echo": ({"text_input": s("a"), "stream": b(True), "exclude_input_in_output": b(False)}, "exclude_input_in_output", "streaming"),
    "stream-not-bool": ({"text_input": s("a"), "stream": np.array([1], np.int32)}, "stream", "BOOL"),
    # Issue 10 item 5: these were internal errors.
    "sampling-400-digit-int": ({"text_input": s("a"), "sampling_parameters": s('{"top_k": ' + "9" * 400 + "}")},
                               "sampling_parameters", "top_k"),
    "messages-400-digit-int": ({"messages": s('[{"role": "user", "content": ' + "9" * 400 + "}]")},
                               "messages", "content"),
    "messages-name-400-digit-int": ({"messages": s('[{"role": "user", "content": "a", "name": ' + "9" * 400 + "}]")},
                                    "messages", "name must be a string"),
    "messages-lone-surrogate": ({"messages": s('[{"role": "user", "content": "a\\ud800"}]')}, "messages",
                                "messages[0] is not valid Unicode"),
    "messages-part-lone-surrogate": (
        {"messages": s('[{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]')}, "messages",
        "messages[0].content[0] is not valid Unicode"),
    "text-lone-surrogate-str": ({"text_input": np.array(["\ud800"], dtype=np.object_)}, "text_input", "UTF-8"),
    "text-surrogate-bytes": ({"text_input": np.array([b"\xed\xa0\x80"], dtype=np.object_)}, "text_input", "UTF-8"),
    "stop-lone-surrogate": ({"text_input": s("a"), "sampling_parameters": s('{"stop": ["\\ud800"]}')},
                            "sampling_parameters", "stop[0] is not valid Unicode"),
}


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_bad_input_names_the_parameter(builder, case):
    inputs, parameter, fragment = case
    with pytest.raises(ValidationError) as info:
        parse(builder, **inputs)
    assert info.value.parameter == parameter
    assert fragment in info.value.message
    assert len(str(info.value)) < 300


@pytest.mark.parametrize("name,text", [
    ("sampling_parameters", '{"seed": ' + "9" * 5000 + "}"),
    ("messages", '[{"role": "user", "content": "a", "name": ' + "9" * 5000 + "}]"),
], ids=["sampling_parameters", "messages"])
def test_integers_past_pythons_digit_limit_are_invalid_arguments(builder, name, text):
    """json.loads raises a plain ValueError past 4300 digits (it was an internal error)."""
    inputs = {"text_input": s("a"), name: s(text)}
    if name == "messages":
        del inputs["text_input"]
    with pytest.raises(ValidationError) as info:
        parse_request(inputs, builder, ServingConfig(max_request_json_bytes=16384), MAX_LEN)
    assert info.value.parameter == name and "too long" in info.value.message
