"""bench_serving's per-cell arithmetic, on a fake client (no servers): tokens, chunks, ITL, medians."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from benchmarks.bench_serving import RequestResult, markdown, run_cell, summarize, verdicts
from loadtest.workload import EmbeddingSource


class FakeClient:
    """Every request: 8 tokens in `chunks` chunks, 1 ms apart, the first after 5 ms."""

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks

    def prepare(self, embeds: np.ndarray) -> np.ndarray:
        return embeds

    async def send(self, payload: np.ndarray) -> RequestResult:
        await asyncio.sleep(0)
        times = [0.005 + 0.001 * i for i in range(self.chunks)]
        return RequestResult(ok=True, ttft_s=times[0], chunk_times_s=times, output_tokens=8,
                             latency_s=times[-1])


@pytest.mark.parametrize(("chunks", "tokens_per_chunk"), [(8, 1.0), (4, 2.0), (2, 4.0)])
def test_tokens_per_chunk_shows_merged_steps(chunks: int, tokens_per_chunk: float) -> None:
    source = EmbeddingSource(hidden_size=4)
    cell = asyncio.run(run_cell(FakeClient(chunks), "frontend", source, prompt_len=2, concurrency=2,
                                requests=6, repeat=0))
    assert cell.requests == 6 and cell.errors == 0
    assert cell.tokens_per_chunk == pytest.approx(tokens_per_chunk)
    # The first chunk is the first token; a later chunk's gap is spread over the tokens after it.
    assert cell.itl_p50_ms == pytest.approx(1.0 / ((8 - 1) // (chunks - 1)), rel=0.01)


def test_summary_and_page_carry_tokens_per_chunk() -> None:
    source = EmbeddingSource(hidden_size=4)
    cells = [asyncio.run(run_cell(FakeClient(chunks), path, source, prompt_len=2, concurrency=1, requests=2,
                                  repeat=0)) for path, chunks in (("vllm", 8), ("frontend", 4))]
    rows = summarize(cells)
    assert [(r["path"], r["tokens_per_chunk"]) for r in rows] == [("vllm", 1.0), ("frontend", 2.0)]
    page = markdown({"name": "t", "summary": rows, "verdicts": verdicts(rows, [2], [1]), "meta": {
        "date": "-", "machine": {"summary": "-"}, "load_before": [], "load_after": [], "versions": {},
        "model": {"path": "-", "shape": "-"}, "engine_args": {}, "paths": ["vllm", "frontend"],
        "settings": {"prompt_lens": [2], "concurrency": [1], "output_tokens": 8, "repeats": 1,
                     "server_mode": "-"}}})
    assert "tok/chunk |" in page and "| 2.00 |" in page
