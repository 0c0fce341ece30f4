"""backend.sampling: each field's type and range, the list caps, and what a refusal says (no server)."""

from __future__ import annotations

import math

import pytest

from backend.errors import ValidationError
from backend.sampling import (
    DEFAULT_MAX_TOKENS,
    FIELDS,
    INT64_MAX,
    MAX_BAD_WORDS,
    MAX_LOGIT_BIAS_ENTRIES,
    MAX_STOP_STRING_CHARS,
    MAX_STOP_STRINGS,
    MAX_STOP_TOKEN_IDS,
    parse_sampling_params,
)

VOCAB = 262
MAX_LEN = 64


def parse(raw, prompt_tokens: int = 3):
    return parse_sampling_params(raw, vocab_size=VOCAB, prompt_tokens=prompt_tokens, max_model_len=MAX_LEN,
                                 prompt_input="text_input")


def test_the_table_covers_what_vllm_calls_these_fields() -> None:
    from vllm import SamplingParams

    assert set(FIELDS) <= set(SamplingParams.__struct_fields__)
    assert SamplingParams().max_tokens == DEFAULT_MAX_TOKENS


# Every hostile value of issue 10 (items 1, 2, 5), and the rest of each rule. The field name must
# appear in the message; the value itself must not be echoed (it may be kilobytes).
REFUSED = {
    "max_tokens-float": ({"max_tokens": 5.0}, "max_tokens", "not a float"),
    "ignore_eos-string-1": ({"ignore_eos": "1"}, "ignore_eos", "true or false"),
    "temperature-bool": ({"temperature": True}, "temperature", "not a boolean"),
    "seed-float": ({"seed": 1.5}, "seed", "integer"),
    "top_k-bool": ({"top_k": True}, "top_k", "not a boolean"),
    "min_tokens-float": ({"min_tokens": 1.0}, "min_tokens", "integer"),
    "skip_special_tokens-yes": ({"skip_special_tokens": "yes"}, "skip_special_tokens", "true or false"),
    "seed-2^70": ({"seed": 2**70}, "seed", "2^63-1"),
    "seed-2^63": ({"seed": 2**63}, "seed", "2^63-1"),
    "seed-below-int64": ({"seed": -(2**63) - 1}, "seed", "-2^63"),
    "top_k-2^70": ({"top_k": 2**70}, "top_k", "262"),
    "top_k-over-vocab": ({"top_k": VOCAB + 1}, "top_k", "262"),
    "top_k-minus-2": ({"top_k": -2}, "top_k", "-1 or 0"),
    "seed-400-digits": ({"seed": 10**400}, "seed", "2^63-1"),
    "max_tokens-400-digits": ({"max_tokens": 10**400}, "max_tokens", "2^63-1"),
    "temperature-400-digits": ({"temperature": 10**400}, "temperature", "finite"),
    "temperature-nan": ({"temperature": math.nan}, "temperature", "finite"),
    "temperature-inf": ({"temperature": math.inf}, "temperature", "finite"),
    "temperature-over-2": ({"temperature": 2.5}, "temperature", "[0, 2]"),
    "temperature-negative": ({"temperature": -0.1}, "temperature", "[0, 2]"),
    "top_p-zero": ({"top_p": 0}, "top_p", "(0, 1]"),
    "min_p-over-1": ({"min_p": 1.5}, "min_p", "[0, 1]"),
    "presence_penalty": ({"presence_penalty": 3}, "presence_penalty", "[-2, 2]"),
    "frequency_penalty": ({"frequency_penalty": -2.5}, "frequency_penalty", "[-2, 2]"),
    "repetition_penalty-zero": ({"repetition_penalty": 0}, "repetition_penalty", "(0, 10]"),
    "repetition_penalty-huge": ({"repetition_penalty": 1e30}, "repetition_penalty", "(0, 10]"),
    "max_tokens-zero": ({"max_tokens": 0}, "max_tokens", "[1,"),
    "min_tokens-negative": ({"min_tokens": -1}, "min_tokens", "[0,"),
    "min_tokens-over-max_tokens": ({"min_tokens": 9, "max_tokens": 8}, "min_tokens", "at most max_tokens (8)"),
    "min_tokens-over-default": ({"min_tokens": 17}, "min_tokens", "at most max_tokens (16)"),
    "min_tokens-over-context": ({"min_tokens": 62, "max_tokens": None}, "min_tokens", "(61)"),
    # numbers written as strings: only plain literals
    "int-string-float": ({"max_tokens": "5.0"}, "max_tokens", "integer"),
    "int-string-exponent": ({"max_tokens": "1e3"}, "max_tokens", "integer"),
    "int-string-underscore": ({"seed": "1_000"}, "seed", "integer"),
    "int-string-arabic-digit": ({"seed": "\u0663"}, "seed", "integer"),
    "int-string-spaces": ({"seed": " 5"}, "seed", "integer"),
    "int-string-long": ({"seed": "9" * 400}, "seed", "integer"),
    "float-string-nan": ({"temperature": "nan"}, "temperature", "number"),
    "float-string-inf": ({"temperature": "inf"}, "temperature", "number"),
    "float-string-overflow": ({"temperature": "1e999"}, "temperature", "finite"),
    "float-string-word": ({"top_p": "high"}, "top_p", "number"),
    "bool-number": ({"ignore_eos": 1}, "ignore_eos", "true or false"),
    "float-list": ({"temperature": [1]}, "temperature", "not a list"),
    # lists
    "stop-not-strings": ({"stop": [1]}, "stop", "entry 0"),
    "stop-bool": ({"stop": False}, "stop", "list of strings"),
    "stop-empty-string": ({"stop": [""]}, "stop", "empty"),
    "stop-too-many": ({"stop": ["x"] * (MAX_STOP_STRINGS + 1)}, "stop", f"limit of {MAX_STOP_STRINGS}"),
    "stop-100k": ({"stop": ["x"] * 100_000}, "stop", "limit"),
    "stop-too-long": ({"stop": ["x" * (MAX_STOP_STRING_CHARS + 1)]}, "stop", "characters"),
    "stop-lone-surrogate": ({"stop": ["\ud800"]}, "stop[0]", "surrogate"),
    "bad_words-lone-surrogate": ({"bad_words": ["ok", "a\udfff"]}, "bad_words[1]", "surrogate"),
    "bad_words-blank": ({"bad_words": ["  "]}, "bad_words", "blank"),
    "bad_words-too-many": ({"bad_words": ["w"] * (MAX_BAD_WORDS + 1)}, "bad_words", "limit"),
    "bad_words-object": ({"bad_words": {"a": 1}}, "bad_words", "not an object"),
    "stop_token_ids-bool": ({"stop_token_ids": [True, 2]}, "stop_token_ids", "not a boolean"),
    "stop_token_ids-float": ({"stop_token_ids": [2.0]}, "stop_token_ids", "not a float"),
    "stop_token_ids-out-of-vocab": ({"stop_token_ids": [VOCAB]}, "stop_token_ids", "[0, 262)"),
    "stop_token_ids-negative": ({"stop_token_ids": [-1]}, "stop_token_ids", "vocabulary"),
    "stop_token_ids-too-many": ({"stop_token_ids": [1] * (MAX_STOP_TOKEN_IDS + 1)}, "stop_token_ids", "limit"),
    "logit_bias-nan": ({"logit_bias": {"5": math.nan}}, "logit_bias", "finite"),
    "logit_bias-inf": ({"logit_bias": {"5": -math.inf}}, "logit_bias", "finite"),
    "logit_bias-bool": ({"logit_bias": {"5": True}}, "logit_bias", "not a boolean"),
    "logit_bias-key-word": ({"logit_bias": {"x": 1}}, "logit_bias", "integer"),
    "logit_bias-key-out-of-vocab": ({"logit_bias": {"100000": 1}}, "logit_bias", "vocabulary"),
    "logit_bias-too-many": ({"logit_bias": {str(i): 1 for i in range(MAX_LOGIT_BIAS_ENTRIES + 1)}},
                            "logit_bias", "limit"),
    "logit_bias-list": ({"logit_bias": [1]}, "logit_bias", "object"),
    # the object itself
    "unknown-field": ({"best_of": 2}, "unsupported", "unsupported"),
    "not-an-object": ([1], "sampling_parameters", "JSON object"),
}


@pytest.mark.parametrize("raw,field,fragment", REFUSED.values(), ids=REFUSED.keys())
def test_refusals_name_the_field(raw, field, fragment) -> None:
    with pytest.raises(ValidationError) as info:
        parse(raw)
    assert info.value.parameter == "sampling_parameters"
    assert field in str(info.value) and fragment in info.value.message, info.value.message
    assert len(str(info.value)) < 200
    assert "1180591620717411303424" not in str(info.value) and "9" * 30 not in str(info.value)


ACCEPTED = {
    "strings-as-numbers": ({"temperature": "0.5", "max_tokens": "7", "seed": "-3", "top_k": "+5"},
                           {"temperature": 0.5, "max_tokens": 7, "seed": -3, "top_k": 5}),
    "strings-as-bools": ({"ignore_eos": "true", "skip_special_tokens": "False"},
                         {"ignore_eos": True, "skip_special_tokens": False}),
    "ints-for-floats": ({"temperature": 0, "top_p": 1}, {"temperature": 0.0, "top_p": 1.0}),
    "float-exponent-string": ({"min_p": "5e-2"}, {"min_p": 0.05}),
    "int64-seed-bounds": ({"seed": INT64_MAX}, {"seed": INT64_MAX}),
    "top_k-disabled": ({"top_k": -1}, {"top_k": -1}),
    "top_k-vocab": ({"top_k": VOCAB}, {"top_k": VOCAB}),
    "stop-one-string": ({"stop": "\n"}, {"stop": ["\n"]}),
    "stop-blank-is-fine": ({"stop": [" ", "\n\n"]}, {"stop": [" ", "\n\n"]}),
    "logit_bias-clamped": ({"logit_bias": {"1": 500, "2": -1e9, "3": "0.5"}},
                           {"logit_bias": {1: 100.0, 2: -100.0, 3: 0.5}}),
    "nulls-are-defaults": ({"temperature": None, "seed": None, "stop": None}, {"temperature": 1.0, "seed": None}),
    "null-max_tokens-is-the-context": ({"max_tokens": None}, {"max_tokens": None}),
    "min_tokens-up-to-max": ({"min_tokens": 8, "max_tokens": 8}, {"min_tokens": 8}),
}


@pytest.mark.parametrize("raw,expected", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_accepted_values_are_typed(raw, expected) -> None:
    params = parse(raw)
    for name, value in expected.items():
        got = getattr(params, name)
        assert got == value and type(got) is type(value), (name, got)


def test_context_check_names_the_prompt() -> None:
    with pytest.raises(ValidationError) as info:
        parse({"max_tokens": 62})
    assert info.value.parameter == "text_input" and "exceeds the context" in info.value.message
    with pytest.raises(ValidationError) as info:
        parse({}, prompt_tokens=MAX_LEN)
    assert info.value.parameter == "text_input" and "no room" in info.value.message
