"""The engine-side config.pbtxt parameters, and engine arguments model.json passes through."""

from __future__ import annotations

import dataclasses

import pytest

from backend.config import check_engine_arg_names, parse_serving_config, sender_thread_count
from backend.errors import ConfigError


def test_stall_timeout_and_sender_threads_are_typed_with_safe_defaults():
    default = parse_serving_config({})
    assert default.engine_stall_timeout_s == 120.0 and default.response_sender_threads == "auto"
    config = parse_serving_config({"engine_stall_timeout_s": "0", "response_sender_threads": " 2"})
    assert config.engine_stall_timeout_s == 0.0 and sender_thread_count(config.response_sender_threads, "cpu") == 2


@pytest.mark.parametrize("setting, device, threads", [
    ("auto", "cpu", 4), ("auto", "cuda", 1), ("auto", "rocm", 1), ("auto", None, 1), ("1", "cpu", 1),
    ("8", "cuda", 8), ("16", "cpu", 16)])
def test_sender_threads_auto_is_four_on_a_cpu_engine_and_one_elsewhere(setting, device, threads):
    assert sender_thread_count(parse_serving_config({"response_sender_threads": setting}).response_sender_threads,
                               device) == threads


def test_intake_threads_and_switch_interval_are_typed_with_safe_defaults():
    default = parse_serving_config({})
    assert default.intake_threads == 2 and default.gil_switch_interval_s == 0.0  # 0: Python's own
    config = parse_serving_config({"intake_threads": "4", "gil_switch_interval_s": "0.0005"})
    assert config.intake_threads == 4 and config.gil_switch_interval_s == 0.0005


@pytest.mark.parametrize("parameters", [
    {"engine_stall_timeout_s": "-1"}, {"engine_stall_timeout_s": "inf"}, {"engine_stall_timeout_s": "nan"},
    {"response_sender_threads": "0"}, {"response_sender_threads": "17"}, {"response_sender_threads": "2.5"},
    {"response_sender_threads": "-1"}, {"response_sender_threads": "Auto4"},
    {"intake_threads": "0"}, {"intake_threads": "17"},
    {"gil_switch_interval_s": "-0.001"}, {"gil_switch_interval_s": "1e-9"}, {"gil_switch_interval_s": "nan"},
], ids=["negative", "inf", "nan", "no-thread", "too-many", "float", "negative-threads", "not-auto", "no-intake", "too-many-intake",
        "negative-switch", "tiny-switch", "nan-switch"])
def test_bad_engine_side_parameters_fail_the_load(parameters):
    with pytest.raises(ConfigError, match=next(iter(parameters))):
        parse_serving_config(parameters)


def test_stream_interval_is_an_engine_argument_model_json_may_set():
    from vllm.engine.arg_utils import AsyncEngineArgs

    known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    check_engine_arg_names({"model": "m", "stream_interval": 4}, known)  # no error
    assert AsyncEngineArgs(model="m").stream_interval == 1
