"""The error kind tag: formatted in one place (backend.errors), parsed in one place (client.triton_errors)."""

from __future__ import annotations

import pytest

from backend.errors import (
    EngineUnavailableError,
    OverloadedError,
    RequestCancelledError,
    ValidationError,
    tagged_message,
)
from client.triton_errors import is_connection_reset, parse_error


@pytest.mark.parametrize("exc, kind, parameter", [
    (ValidationError("sampling_parameters", "n must be in [1, 16]"), "INVALID_ARG", "sampling_parameters"),
    (ValidationError("input_ids", "holds a token id outside the vocabulary"), "INVALID_ARG", "input_ids"),
    (ValidationError("request", "engine check"), "INVALID_ARG", "request"),
    (OverloadedError("overloaded: 256 requests queued"), "UNAVAILABLE", None),
    (EngineUnavailableError("the engine died"), "UNAVAILABLE", None),
    (RequestCancelledError("request cancelled by the client"), "CANCELLED", None),
    (RuntimeError("boom"), "INTERNAL", None),
], ids=["sampling", "input_ids", "engine-check", "overloaded", "dead", "cancelled", "internal"])
def test_tag_round_trips(exc, kind, parameter):
    text = tagged_message(exc)
    assert text.startswith(f"[{kind}] ")
    info = parse_error(text)
    assert (info.kind, info.parameter) == (kind, parameter)
    assert info.message == text.removeprefix(f"[{kind}] ")


def test_grpc_status_prefix_of_str_exception_is_skipped():
    info = parse_error("[StatusCode.INVALID_ARGUMENT] [INVALID_ARG] stream: must be one BOOL value")
    assert (info.kind, info.parameter, info.message) == ("INVALID_ARG", "stream", "stream: must be one BOOL value")


@pytest.mark.parametrize("text", ["Request for unknown model: 'x' is not found", "[NOT_A_TAG] text", ""])
def test_untagged_text_has_no_kind(text):
    info = parse_error(text)
    assert info.kind is None and info.message == text


def test_a_parameter_is_only_a_model_input_name():
    assert parse_error("[INVALID_ARG] prompt: x").parameter is None


def test_long_messages_stay_bounded_and_tagged():
    text = tagged_message(ValidationError("messages", "x" * 5000))
    assert text.startswith("[INVALID_ARG] messages: ") and len(text) < 400


def test_overload_is_told_apart_from_other_unavailable_errors():
    from backend.admission import check_admission

    with pytest.raises(OverloadedError) as info:
        check_admission(accepting=True, engine_ready=True, queued_prompt_tokens=[1, 1], prompt_tokens=1,
                        max_queued_requests=2, max_queued_prompt_tokens=100)
    assert parse_error(tagged_message(info.value)).overloaded
    assert not parse_error(tagged_message(EngineUnavailableError("the engine died"))).overloaded


def test_a_dropped_connection_is_told_from_a_model_error():
    assert is_connection_reset("[StatusCode.UNAVAILABLE] Stream removed (recvmsg:Connection reset by peer (104))")
    assert is_connection_reset(RuntimeError("[StatusCode.UNAVAILABLE] Stream removed (sendmsg: Broken pipe (32))"))
    assert not is_connection_reset("[StatusCode.UNAVAILABLE] [UNAVAILABLE] the engine died; it is being restarted")
    assert not is_connection_reset(None)
