"""tritonserver's command line: closed by default (loopback, restricted APIs with a key), open by choice."""

import argparse
from pathlib import Path

import pytest

from backend.launcher import (
    ADMIN_KEY_ENV,
    ADMIN_KEY_HEADER,
    add_server_arguments,
    admin_key_from,
    server_command,
    server_options,
)
from backend.server_watch import ready_url_from_argv


def _options(argv: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for arg in argv:
        name, _, value = arg.partition("=")
        out.setdefault(name, []).append(value)
    return out


def test_every_endpoint_binds_loopback_by_default():
    options = _options(server_options(Path("repo"), admin_key="k"))
    for name in ("--http-address", "--grpc-address", "--metrics-address"):
        assert options[name] == ["127.0.0.1"], name
    assert options["--model-control-mode"] == ["none"]


def test_host_opens_all_three_endpoints():
    options = _options(server_options(Path("repo"), host="0.0.0.0", admin_key="k"))
    assert {options[n][0] for n in ("--http-address", "--grpc-address", "--metrics-address")} == {"0.0.0.0"}


def test_state_changing_apis_need_the_key_on_http_and_grpc():
    options = _options(server_options(Path("repo"), admin_key="s3cret"))
    for name in ("--http-restricted-api", "--grpc-restricted-protocol"):
        (value,) = options[name]
        apis, _, header = value.partition(":")
        assert set(apis.split(",")) == {"shared-memory", "model-repository", "trace", "logging"}
        assert header == f"{ADMIN_KEY_HEADER}=s3cret"
    # Inference, health, metadata and model configuration stay open (clients read them).
    assert not {"inference", "health", "metadata"} & set(options["--http-restricted-api"][0].split(":")[0].split(","))


@pytest.mark.parametrize("key", ["", "a,b", "a:b", "a=b", "a b"], ids=["empty", "comma", "colon", "equals", "space"])
def test_a_key_that_would_break_the_option_is_refused(key):
    with pytest.raises(ValueError, match="admin key"):
        server_options(Path("repo"), admin_key=key)


def test_without_a_key_each_start_gets_a_new_random_one():
    keys = set()
    for _ in range(2):
        argv, _ = server_command(Path("repo"))
        (value,) = _options(argv)["--http-restricted-api"]
        keys.add(value.rsplit("=", 1)[1])
    assert len(keys) == 2 and all(len(k) >= 24 for k in keys)


def test_the_models_readiness_poll_finds_the_loopback_address():
    argv, _ = server_command(Path("repo"), http_port=9123, admin_key="k")
    assert ready_url_from_argv(argv) == "http://127.0.0.1:9123/v2/health/ready"


def _parse(args: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_server_arguments(parser, host_option="--triton-host")
    return parser.parse_args(args)


def test_options_default_to_loopback_and_take_the_key_from_the_environment(monkeypatch):
    monkeypatch.delenv(ADMIN_KEY_ENV, raising=False)
    args = _parse([])
    assert args.triton_host == "127.0.0.1"
    key, generated = admin_key_from(args)
    assert generated and key
    monkeypatch.setenv(ADMIN_KEY_ENV, "from-env")
    assert admin_key_from(_parse([])) == ("from-env", False)
    assert admin_key_from(_parse(["--admin-key", "given"])) == ("given", False)
    assert _parse(["--triton-host", "0.0.0.0"]).triton_host == "0.0.0.0"
