"""Shared fixtures: the tiny model's tokenizer and embedding table, and one real Triton server."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from tests.servers import TINY_MODEL, TritonServer, make_repository


class TinyModel:
    """Tokenizer and input-embedding table of a model directory: the oracle's `embed_tokens(ids)`."""

    def __init__(self, path: Path = TINY_MODEL) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.table = _embedding_table(path)
        self.hidden_size = self.table.shape[1]

    def ids(self, text: str, special: bool = False) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def embed(self, ids: list[int]) -> np.ndarray:
        # float32 holds bf16 and fp16 values exactly: the engine casts back to the same numbers.
        return np.ascontiguousarray(self.table[ids], dtype=np.float32)

    def embed_parts(self, messages: list[dict], layout: list[tuple[int, int]]) -> tuple[list[dict], np.ndarray, list[int]]:
        """Chat messages with the text parts at `layout` ((message, part) pairs) replaced by
        embedding parts; returns the new messages, their rows (embed_tokens of the text) and lengths."""
        messages = copy.deepcopy(messages)
        rows, lengths = [], []
        for m, p in sorted(layout):  # parts are consumed in message/part order
            ids = self.ids(messages[m]["content"][p]["text"])
            rows.append(self.embed(ids))
            lengths.append(len(ids))
            messages[m]["content"][p] = {"type": "prompt_embeds"}
        return messages, np.concatenate(rows), lengths


def _embedding_table(path: Path) -> np.ndarray:
    for shard in sorted(path.glob("*.safetensors")):
        with safe_open(shard, framework="pt") as f:
            if "model.embed_tokens.weight" in f.keys():
                return f.get_tensor("model.embed_tokens.weight").float().numpy()
    raise FileNotFoundError(f"no model.embed_tokens.weight in {path}")


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
