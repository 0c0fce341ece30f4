"""Frontend schemas and the error mapping, without any server."""

from __future__ import annotations

import pytest
from pydantic import ValidationError as PydanticError

from backend.errors import EngineUnavailableError, OverloadedError, ValidationError
from client.frontend.errors import from_triton_message, to_api_error
from client.frontend.schemas import ChatCompletionRequest, CompletionRequest


def test_completion_sampling_params_carry_only_what_was_set() -> None:
    request = CompletionRequest(prompt="Hi", temperature=0, stop="\n", top_k=5)
    assert request.to_sampling_params() == {"temperature": 0, "stop": ["\n"], "top_k": 5, "max_tokens": 16}


def test_chat_without_max_tokens_runs_to_the_context() -> None:
    request = ChatCompletionRequest(messages=[{"role": "user", "content": "Hi"}])
    assert request.to_sampling_params() == {"max_tokens": None}
    request = ChatCompletionRequest(messages=[{"role": "user", "content": "Hi"}], max_tokens=3,
                                    max_completion_tokens=5)
    assert request.to_sampling_params()["max_tokens"] == 5


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "Hi", "best_of": 2},
        {"prompt": "Hi", "n": 17},
        {"prompt": "Hi", "n": 0},
        {"prompt": "Hi", "n": 2.0},
        {"prompt": "Hi", "n": 2, "temperature": 0},
        {"prompt": "Hi", "logprobs": 21},
        {"prompt": "Hi", "logprobs": True},
        {"prompt": "Hi", "structured_outputs": {"regex": "a+", "choice": ["a"]}},
        {"prompt": "Hi", "structured_outputs": {}},
        {"prompt": "Hi", "structured_outputs": {"choice": []}},
        {"prompt": "Hi", "structured_outputs": {"regex": "a", "whitespace_pattern": " "}},
        {"prompt": "Hi", "response_format": {"type": "json_schema"}},
        {"prompt": "Hi", "response_format": {"type": "structural_tag"}},
        {"prompt": "Hi", "response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}},
        {"prompt": "Hi", "stream_options": {"include_usage": True}},
        {"prompt": "Hi", "stream": True, "stream_options": {"include_usage": True, "extra": 1}},
        {"prompt": ""},
        {"prompt_embeds": []},
        {"prompt": "Hi", "prompt_embeds_format": "numpy"},
        {"prompt": [-1, 2]},
    ],
    ids=["unknown_field", "n_over_cap", "n_zero", "n_float", "n_greedy", "logprobs_over_20", "logprobs_bool", "two_structures",
         "no_structure", "empty_choice", "unsupported_structure_field", "json_schema_without_schema",
         "structural_tag", "response_format_and_structured_outputs", "stream_options_without_stream", "unknown_stream_option", "empty_prompt",
         "empty_embeds", "unknown_format", "negative_token_id"],
)
def test_completion_request_refusals(body: dict) -> None:
    with pytest.raises(PydanticError):
        CompletionRequest(**body)


@pytest.mark.parametrize("body, expected", [
    ({"n": 3, "seed": 7}, {"n": 3, "seed": 7}),
    ({"logprobs": 0}, {"logprobs": 0}),
    ({"structured_outputs": {"choice": ["yes", "no"]}}, {"structured_outputs": {"choice": ["yes", "no"]}}),
    ({"structured_outputs": {"json": {"type": "object"}}}, {"structured_outputs": {"json": {"type": "object"}}}),
    ({"structured_outputs": {"json": "{}"}}, {"structured_outputs": {"json": "{}"}}),
    ({"structured_outputs": {"grammar": "root ::= \"a\""}}, {"structured_outputs": {"grammar": "root ::= \"a\""}}),
    ({"structured_outputs": {"json_object": True}}, {"structured_outputs": {"json_object": True}}),
    ({"response_format": {"type": "json_object"}}, {"structured_outputs": {"json_object": True}}),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer"}}}},
     {"structured_outputs": {"json": {"type": "integer"}}}),
    ({"response_format": {"type": "text"}}, {}),
], ids=["n_seed", "logprobs", "choice", "json", "json_text", "grammar", "json_object", "rf_json_object",
        "rf_json_schema", "rf_text"])
def test_parity_fields_reach_sampling_parameters(body: dict, expected: dict) -> None:
    assert CompletionRequest(prompt="Hi", **body).to_sampling_params() == {**expected, "max_tokens": 16}


def test_chat_logprobs_map_to_top_logprobs() -> None:
    message = [{"role": "user", "content": "Hi"}]
    assert ChatCompletionRequest(messages=message, logprobs=True).to_sampling_params()["logprobs"] == 0
    assert ChatCompletionRequest(messages=message, logprobs=True, top_logprobs=5).to_sampling_params()["logprobs"] == 5
    assert "logprobs" not in ChatCompletionRequest(messages=message, top_logprobs=0).to_sampling_params()
    with pytest.raises(PydanticError, match="logprobs` must be set to true"):
        ChatCompletionRequest(messages=message, top_logprobs=2)


def test_completion_choices_order_embeddings_then_text() -> None:
    request = CompletionRequest(prompt=["a", "b"], prompt_embeds=["E1", "E2"])
    assert request.embeds_payloads() == ["E1", "E2"]
    assert request.text_prompts() == ["a", "b"]
    assert CompletionRequest(prompt=[1, 2, 3]).text_prompts() == [[1, 2, 3]]
    assert CompletionRequest(prompt=[[1], [2, 3]]).text_prompts() == [[1], [2, 3]]


@pytest.mark.parametrize(
    "message",
    [
        {"role": "user", "content": []},
        {"role": "wizard", "content": "hi"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
        {"role": "user", "content": [{"type": "prompt_embeds"}]},
        {"role": "user", "content": [{"type": "prompt_embeds", "data": "AAAA", "shape": [1, 2]}]},
        {"role": "user", "content": "hi", "tool_calls": []},
    ],
    ids=["empty_parts", "bad_role", "image", "embeds_without_data", "embeds_extra_field", "tool_calls"],
)
def test_chat_message_refusals(message: dict) -> None:
    with pytest.raises(PydanticError):
        ChatCompletionRequest(messages=[message])


@pytest.mark.parametrize(
    "text,status,param",
    [
        ("[INVALID_ARG] prompt_embeds: hidden size 129 does not match the model's 128", 400, "prompt_embeds"),
        ("[INVALID_ARG] prompt_embeds_fp16: contains NaN or infinite values", 400, "prompt_embeds"),
        ("[INVALID_ARG] text_input: prompt of 6 tokens plus max_tokens 9000 exceeds the context", 400, "prompt"),
        ("[INVALID_ARG] input_ids: holds a token id outside the vocabulary", 400, "prompt"),
        ("[INVALID_ARG] messages: messages[0].role must be one of [...]", 400, "messages"),
        ("[INVALID_ARG] sampling_parameters: temperature must be non-negative", 400, "temperature"),
        ("[INVALID_ARG] sampling_parameters: structured_outputs is not valid: bad regex", 400, "structured_outputs"),
        ("[INVALID_ARG] sampling_parameters: structured_outputs.choice must be a list", 400, "structured_outputs"),
        ("[INVALID_ARG] sampling_parameters: must be a JSON object", 400, "sampling_parameters"),
        ("[StatusCode.INVALID_ARGUMENT] [INVALID_ARG] request: engine check", 400, "request"),
        ("[UNAVAILABLE] overloaded: 256 requests already queued", 429, None),
        ("[UNAVAILABLE] the engine died; the model must be reloaded", 503, None),
        ("Request for unknown model: 'vllm_model' is not found", 503, None),
        ("[CANCELLED] request cancelled by the client", 499, None),
        ("[INTERNAL] internal error: KeyError: 'x'", 500, None),
        ("[INVALID_ARG] foo: not one of our inputs", 400, None),
        ("[UNAVAILABLE] shutting down", 503, None),
    ],
    ids=["embeds", "embeds_fp16", "text_input", "input_ids", "messages", "sampling_field", "structured_outputs",
         "structured_choice", "sampling_whole", "request", "overloaded", "engine_died", "untagged_triton",
         "cancelled", "internal", "unknown_input", "unavailable_any_wording"],
)
def test_triton_error_text_mapping(text: str, status: int, param: str | None) -> None:
    error = from_triton_message(text)
    assert (error.status, error.param) == (status, param)
    assert error.body()["error"]["code"] == status


def test_triton_error_names_the_openai_parameter() -> None:
    error = from_triton_message("[INVALID_ARG] text_input: prompt of 6 tokens leaves no room")
    assert error.message == "prompt: prompt of 6 tokens leaves no room"


def test_typed_errors_use_the_shared_table() -> None:
    assert to_api_error(ValidationError("prompt_embeds", "bad")).status == 400
    assert to_api_error(EngineUnavailableError("down")).status == 503
    assert to_api_error(OverloadedError("overloaded: 3 requests already queued")).status == 429
    internal = to_api_error(RuntimeError("x" * 10_000))
    assert internal.status == 500 and len(internal.message) <= 300


# -- sampling values: the model's own rules (backend.sampling), a 400 naming the field --------------

HOSTILE = {
    "max_tokens-float": ({"max_tokens": 5.0}, "max_tokens", "not a float"),
    "ignore_eos-string-1": ({"ignore_eos": "1"}, "ignore_eos", "true or false"),
    "temperature-bool": ({"temperature": True}, "temperature", "not a boolean"),
    "seed-float": ({"seed": 1.5}, "seed", "integer"),
    "top_k-bool": ({"top_k": True}, "top_k", "not a boolean"),
    "min_tokens-float": ({"min_tokens": 1.0}, "min_tokens", "integer"),
    "skip_special_tokens-yes": ({"skip_special_tokens": "yes"}, "skip_special_tokens", "true or false"),
    "seed-2^70": ({"seed": 2**70}, "seed", "2^63-1"),
    "top_k-2^70": ({"top_k": 2**70}, "top_k", "2^63-1"),
    "seed-400-digits": ({"seed": 10**400}, "seed", "2^63-1"),
    "logit_bias-nan": ({"logit_bias": {"5": float("nan")}}, "logit_bias", "finite"),
    "temperature-inf": ({"temperature": float("inf")}, "temperature", "finite"),
    "stop-100k": ({"stop": ["x"] * 100_000}, "stop", "over the limit of 64"),
    "stop-lone-surrogate": ({"stop": ["\ud800"]}, "stop", "surrogate"),
}


@pytest.mark.parametrize("fields,param,fragment", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_sampling_values_are_400s_naming_the_field(fields: dict, param: str, fragment: str) -> None:
    from fastapi.exceptions import RequestValidationError

    from client.frontend.app import validation_error

    body = {"prompt": "Hi", **fields}
    with pytest.raises(PydanticError) as info:
        CompletionRequest(**body)
    error = validation_error(RequestValidationError(info.value.errors()))
    assert (error.status, error.param) == (400, param)
    assert fragment in error.message and error.message.startswith(f"{param}: ")
    assert len(error.message) < 200


def test_max_completion_tokens_is_typed() -> None:
    # Lone surrogates in prompts and chat text: routes.common.check_unicode (tests/unit/test_frontend_app.py).
    with pytest.raises(PydanticError, match="max_completion_tokens"):
        ChatCompletionRequest(messages=[{"role": "user", "content": "x"}], max_completion_tokens=2.0)


def test_sampling_values_are_sent_typed() -> None:
    """What the schema passes on is what the model's parser reads back unchanged (or clamped)."""
    request = CompletionRequest(prompt="Hi", temperature=0, top_k=1000, seed=-(2**63), stop="\n",
                                logit_bias={"5": 300, "6": -0.5}, ignore_eos=False)
    assert request.to_sampling_params() == {
        "temperature": 0.0, "top_k": 1000, "seed": -(2**63), "ignore_eos": False,
        "logit_bias": {5: 100.0, 6: -0.5}, "stop": ["\n"], "max_tokens": 16}
    # The vocabulary is the model's to check: top_k 1000 passes here and is refused there.
