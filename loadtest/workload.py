"""Prompts and payloads shared by the Locust users and the benchmark: text, embeddings, chat parts.

Embedding rows come from the model's own input-embedding table when its safetensors are at hand
(so prompts look like real token embeddings), else from a seeded normal distribution of the
given hidden size (dummy-weight models on the GPU). Every prompt gets a distinct first row so
no two requests share a prefix-cache entry.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import random
import string
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO_ROOT / "build" / "tiny-model"
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def require_local(url: str) -> str:
    """Return `url` unchanged; raise ValueError unless it points at this machine."""
    host = urlsplit(url if "://" in url else f"//{url}").hostname or ""
    if host not in LOCAL_HOSTS:
        raise ValueError(f"load generators only target localhost, not {host!r}")
    return url


def hidden_size_of(model: str | Path) -> int | None:
    """hidden_size from the model directory's config.json, or None when there is none."""
    config = Path(model) / "config.json"
    if not config.exists():
        return None
    data = json.loads(config.read_text())
    return int(data.get("hidden_size") or data.get("text_config", {}).get("hidden_size"))


class EmbeddingSource:
    """Makes [rows, hidden] float32 prompts: rows of the model's embedding table, or seeded noise."""

    def __init__(self, model: str | Path | None = None, hidden_size: int | None = None, seed: int = 0) -> None:
        self._rng = np.random.default_rng(seed)
        self._table: np.ndarray | None = None
        weights = Path(model) / "model.safetensors" if model else None
        if weights is not None and weights.exists():
            from safetensors import safe_open

            # Through torch: numpy has no bfloat16, the usual dtype of real checkpoints. Only the table is read.
            with safe_open(weights, framework="pt") as f:
                name = next((k for k in f.keys() if k.endswith("embed_tokens.weight")), None)
                if name is not None:
                    self._table = f.get_tensor(name).float().numpy()
        if self._table is not None:
            self.hidden_size = int(self._table.shape[1])
            if hidden_size is not None and hidden_size != self.hidden_size:
                raise ValueError(f"hidden_size {hidden_size} differs from the model's {self.hidden_size}")
        else:
            found = hidden_size or (hidden_size_of(model) if model else None)
            if not found:
                raise ValueError("hidden_size is unknown: give --hidden-size or a model directory with config.json")
            self.hidden_size = int(found)

    def embeds(self, rows: int) -> np.ndarray:
        """A fresh [rows, hidden] float32 prompt (distinct from every earlier one)."""
        if self._table is not None:
            ids = self._rng.integers(0, self._table.shape[0], size=rows)
            out = self._table[ids]
        else:
            out = self._rng.standard_normal((rows, self.hidden_size), dtype=np.float32) * 0.02
        out = np.ascontiguousarray(out, dtype=np.float32)
        out[0] = self._rng.standard_normal(self.hidden_size, dtype=np.float32) * 0.02
        return out


def random_text(tokens: int, rng: random.Random | None = None) -> str:
    """ASCII text of `tokens` bytes: exactly that many tokens for the byte-level tiny model."""
    rng = rng or random
    return "".join(rng.choice(string.ascii_lowercase + " ") for _ in range(tokens))


def encode_embeds(array: np.ndarray, dtype: str = "float32") -> str:
    """vLLM's wire format for prompt_embeds: base64 of torch.save(tensor)."""
    import torch

    buffer = io.BytesIO()
    tensor = torch.from_numpy(array)
    torch.save(tensor.to(getattr(torch, dtype)), buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def sampling(max_tokens: int) -> dict[str, Any]:
    """Fixed-length greedy output: ignore_eos makes every request produce exactly max_tokens."""
    return {"max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True}


def split_rows(total: int, parts: int) -> list[int]:
    """`total` rows cut into `parts` near-equal positive sizes."""
    parts = max(1, min(parts, total))
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]
