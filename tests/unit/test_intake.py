"""The intake threads: every queued request is handled, a failing one does not stop the others,
and concurrent parsing through one PromptBuilder gives the same prompts as serial parsing."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from backend.intake import Intake
from backend.prompt import PromptBuilder
from scripts.devservers import TINY_MODEL


def test_every_request_is_handled_and_a_failure_does_not_stop_the_intake():
    handled, lock = [], threading.Lock()

    def handle(request: int) -> None:
        if request % 7 == 0:
            raise RuntimeError("a bug in one request's path")
        with lock:
            handled.append((request, threading.current_thread().name))

    intake = Intake(handle, threads=3)
    for i in range(1, 200):
        intake.put(i)
    intake.close()
    assert sorted(r for r, _ in handled) == [i for i in range(1, 200) if i % 7]
    assert {name for _, name in handled} <= {"intake-0", "intake-1", "intake-2"}


def test_close_handles_what_is_queued_first():
    seen = []
    intake = Intake(seen.append, threads=1)
    for i in range(50):
        intake.put(i)
    intake.close()
    assert seen == list(range(50))


@pytest.mark.skipif(not (TINY_MODEL / "tokenizer.json").exists(), reason="make model first")
def test_one_prompt_builder_serves_several_threads():
    from transformers import AutoTokenizer

    builder = PromptBuilder(AutoTokenizer.from_pretrained(TINY_MODEL), "<|prompt_embeds|>", 8, torch.float32)
    texts = [f"request number {i} " * (1 + i % 5) for i in range(64)]
    part = torch.zeros(2, 8)
    serial = [builder.from_text(t + "<|prompt_embeds|>", [part]).token_ids for t in texts]
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lambda t: builder.from_text(t + "<|prompt_embeds|>", [part]).token_ids, texts))
    assert concurrent == serial
