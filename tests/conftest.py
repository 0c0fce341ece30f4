"""Shared fixtures: the tiny model's tokenizer and embedding table, and one real Triton server."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.servers import TINY_MODEL, TritonServer, make_repository


class TinyModel:
    """Tokenizer and input-embedding table of the tiny model: the oracle's `embed_tokens(ids)`."""

    def __init__(self) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL)
        self.table = load_file(TINY_MODEL / "model.safetensors")["model.embed_tokens.weight"]
        self.hidden_size = self.table.shape[1]

    def ids(self, text: str, special: bool = False) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def embed(self, ids: list[int]) -> np.ndarray:
        return np.ascontiguousarray(self.table[ids], dtype=np.float32)


@pytest.fixture(scope="session")
def tiny() -> TinyModel:
    if not (TINY_MODEL / "config.json").exists():
        pytest.fail(f"{TINY_MODEL} missing: run `make model` (make test does)")
    return TinyModel()


@pytest.fixture(scope="session")
def triton(tmp_path_factory) -> TritonServer:
    """One tritonserver + vLLM CPU engine for the whole session (startup takes about a minute)."""
    root = tmp_path_factory.mktemp("triton")
    server = TritonServer(make_repository(root / "repo"), root / "tritonserver.log")
    yield server
    server.stop()
