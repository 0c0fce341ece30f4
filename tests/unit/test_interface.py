"""config.pbtxt holds exactly the tensors backend/interface.py defines; the modules read names from it."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from backend import interface

CONFIG = Path(__file__).resolve().parents[2] / "model_repository" / "vllm_model" / "config.pbtxt"


@pytest.fixture(scope="module")
def config() -> model_config_pb2.ModelConfig:
    return text_format.Parse(CONFIG.read_text(), model_config_pb2.ModelConfig())


def _as_tuples(tensors, optional: bool) -> dict[str, tuple]:
    return {t.name: (model_config_pb2.DataType.Name(t.data_type).removeprefix("TYPE_"), tuple(t.dims),
                     t.optional if optional else False) for t in tensors}


def test_inputs_match_the_interface(config):
    expected = {t.name: (t.datatype, t.dims, t.optional) for t in interface.INPUTS}
    assert _as_tuples(config.input, optional=True) == expected


def test_outputs_match_the_interface(config):
    expected = {t.name: (t.datatype, t.dims, False) for t in interface.OUTPUTS}
    assert _as_tuples(config.output, optional=False) == expected


def test_names_are_unique_within_inputs_and_within_outputs():
    assert len(set(interface.INPUT_NAMES)) == len(interface.INPUT_NAMES)
    assert len(set(interface.OUTPUT_NAMES)) == len(interface.OUTPUT_NAMES)


def test_every_input_has_an_openai_mapping_entry():
    assert set(interface.INPUT_TO_OPENAI) == set(interface.INPUT_NAMES)


def test_the_openai_map_names_only_sampling_fields_the_model_reads():
    from backend.sampling import FIELDS

    assert set(interface.OPENAI_TO_SAMPLING.values()) <= set(FIELDS)


def test_wire_datatype_of_strings_is_bytes():
    by_name = {t.name: t for t in interface.INPUTS}
    assert by_name["text_input"].wire_datatype == "BYTES" and by_name["input_ids"].wire_datatype == "INT64"
