"""Configuration loading: bad settings fail the model load with a message naming the setting."""

from __future__ import annotations

import json

import pytest

from backend.config import ServingConfig, check_engine_arg_names, load_engine_args, parse_serving_config
from backend.errors import ConfigError


def test_parameters_are_typed():
    config = parse_serving_config({"max_embedding_parts": "8", "report_custom_metrics": "false",
                                   "cancel_poll_interval_s": "0.2"})
    assert config == ServingConfig(max_embedding_parts=8, report_custom_metrics=False, cancel_poll_interval_s=0.2)


@pytest.mark.parametrize("parameters, fragment", [
    ({"max_embedding_part": "8"}, "unknown parameter"),
    ({"max_embedding_parts": "many"}, "expected int"),
    ({"max_embedding_parts": "0"}, ">= 1"),
    ({"report_custom_metrics": "maybe"}, "boolean"),
    ({"placeholder": " "}, "placeholder"),
])
def test_bad_parameters(parameters, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_serving_config(parameters)


def test_engine_args_resolve_relative_paths(tmp_path):
    path = tmp_path / "model.json"
    path.write_text(json.dumps({"model": "../m", "tokenizer": "org/name"}))
    args = load_engine_args(path)
    assert args["model"] == str((tmp_path / "../m").resolve())
    assert args["tokenizer"] == "org/name" and args["enable_prompt_embeds"] is True


@pytest.mark.parametrize("content, fragment", [
    ("{", "invalid JSON"), ("[]", "JSON object"), ("{}", "'model' is required"),
    ('{"model": "m", "enable_prompt_embeds": false}', "must be true"),
])
def test_bad_engine_args(tmp_path, content, fragment):
    path = tmp_path / "model.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=fragment):
        load_engine_args(path)


def test_missing_engine_args_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_engine_args(tmp_path / "model.json")


def test_unknown_engine_arg():
    with pytest.raises(ConfigError, match="max_modle_len"):
        check_engine_arg_names({"model": "m", "max_modle_len": 5}, {"model", "max_model_len"})


@pytest.mark.parametrize("value", ["auto", "0", "19", " 10 "])
def test_engine_niceness_values(value):
    assert parse_serving_config({"engine_niceness": value}).engine_niceness == value


@pytest.mark.parametrize("value", ["20", "-1", "high", "", "1.5"])
def test_bad_engine_niceness(value):
    with pytest.raises(ConfigError, match="engine_niceness"):
        parse_serving_config({"engine_niceness": value})
