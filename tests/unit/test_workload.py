"""The load tests' and benchmark's embedding source: rows of the model's own table, whatever its dtype."""

from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import save_file

from loadtest.workload import EmbeddingSource


def test_rows_come_from_a_bfloat16_table(tmp_path) -> None:
    """Real checkpoints are bf16, which numpy cannot read: the table is read through torch."""
    table = torch.randn(50, 16).to(torch.bfloat16)
    save_file({"model.embed_tokens.weight": table, "lm_head.weight": torch.zeros(50, 16)},
              str(tmp_path / "model.safetensors"))
    source = EmbeddingSource(tmp_path, seed=0)
    assert source.hidden_size == 16
    rows = source.embeds(8)
    assert rows.shape == (8, 16) and rows.dtype == np.float32
    known = {tuple(r) for r in table.float().numpy()}
    assert all(tuple(r) in known for r in rows[1:])  # row 0 is fresh noise, so prompts never repeat
