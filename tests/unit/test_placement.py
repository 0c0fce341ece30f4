"""Instance placement: a KIND_GPU instance's engine sees only its own GPU; other kinds are left alone."""

from __future__ import annotations

import json

import pytest

from backend.errors import ConfigError
from backend.placement import engine_devices, pin_engine

ONE_GPU = {"model": "m"}


@pytest.mark.parametrize("kind, device_id, visible, expected", [
    ("GPU", 0, None, "0"),
    ("GPU", 1, None, "1"),
    ("GPU", 1, "", "1"),
    ("GPU", 1, "2,3", "3"),  # Triton counts the visible devices: id 1 is the second of them
    ("GPU", 0, " 5 , 7 ", "5"),
    ("GPU", 1, "GPU-aaaa,GPU-bbbb", "GPU-bbbb"),  # UUIDs, as device plugins set them
    ("GPU", -1, None, None),
    ("MODEL", 0, None, None),
    ("MODEL", 0, "2,3", None),
    ("CPU", 0, None, None),
], ids=["gpu0", "gpu1", "gpu1-empty-env", "gpu1-of-2,3", "spaces", "uuids", "no-device", "model", "model-visible", "cpu"])
def test_engine_devices(kind, device_id, visible, expected):
    assert engine_devices(kind, device_id, ONE_GPU, visible) == expected


@pytest.mark.parametrize("engine_args", [
    {"tensor_parallel_size": 2}, {"pipeline_parallel_size": 2}, {"data_parallel_size": 2},
], ids=["tp2", "pp2", "dp2"])
def test_kind_gpu_refuses_an_engine_over_several_gpus(engine_args):
    with pytest.raises(ConfigError, match="KIND_MODEL"):
        engine_devices("GPU", 0, {**ONE_GPU, **engine_args})


def test_kind_model_allows_several_gpus():
    assert engine_devices("MODEL", 0, {**ONE_GPU, "tensor_parallel_size": 2, "data_parallel_size": 2}) is None


@pytest.mark.parametrize("value", [0, -1, "2", 1.5, True])
def test_bad_parallel_size(value):
    with pytest.raises(ConfigError, match="tensor_parallel_size"):
        engine_devices("MODEL", 0, {**ONE_GPU, "tensor_parallel_size": value})


def test_device_beyond_the_visible_list():
    with pytest.raises(ConfigError, match="lists 2 device"):
        engine_devices("GPU", 2, ONE_GPU, "0,1")


def _args(kind: str, device_id: int) -> dict[str, str]:
    return {"model_instance_kind": kind, "model_instance_device_id": str(device_id),
            "model_instance_name": f"vllm_model_{device_id}"}


def test_pin_engine_sets_the_environment(tmp_path):
    path = tmp_path / "model.json"
    path.write_text(json.dumps(ONE_GPU))
    environ = {"CUDA_VISIBLE_DEVICES": "4,5"}
    assert pin_engine(_args("GPU", 1), path, environ) == "5"
    assert environ == {"CUDA_VISIBLE_DEVICES": "5"}


def test_pin_engine_leaves_kind_model_alone(tmp_path):
    path = tmp_path / "model.json"
    path.write_text(json.dumps({**ONE_GPU, "tensor_parallel_size": 2}))
    environ: dict[str, str] = {}
    assert pin_engine(_args("MODEL", 0), path, environ) is None
    assert environ == {}
