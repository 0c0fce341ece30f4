"""The stub profile's summary: py-spy collapsed stacks -> thread shares, buckets, top frames."""

from benchmarks.profile_stub import summarize


def test_summary_counts_threads_buckets_and_leaves(tmp_path):
    raw = tmp_path / "raw.txt"
    raw.write_text(
        "engine-loop;_run_once (asyncio/base_events.py:1);_generate (backend/engine.py:250);"
        "send (backend/triton_io.py:60) 30\n"
        "engine-loop;_run_once (asyncio/base_events.py:1);output_handler (vllm/v1/engine/async_llm.py:849) 10\n"
        "MainThread;execute (model.py:40);read_inputs (backend/triton_io.py:20) 10\n"
        "garbage line\n")
    text = summarize(raw)
    assert text.startswith("50 samples")
    assert "| engine-loop | 80% |" in text
    assert "| response send (pb_utils, IPC to tritonserver) | 60.0% |" in text
    assert "| vLLM output handler (detokenize, per-request queues) | 20.0% |" in text
    assert "| asyncio loop (select, callbacks) | 80.0% |" in text
    assert "| `send (backend/triton_io.py:60)` | 60.0% |" in text
