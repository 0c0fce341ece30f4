"""Request intake off the stub's main thread: execute() only queues Triton's request objects.

Triton hands a Python model its requests through execute(), on the stub's main thread, and sends
the next ones only after execute() returned. Reading and checking a request there (input tensors,
embeddings, the chat template) holds that gate shut for as long as the thread waits for the GIL,
which the engine loop and the sender threads keep busy under load: perf_analyzer on an H200 at 64
streams saw 43 ms of `compute infer` per request (6 ms at 1 stream) and 2.2 s of queue time in
Triton (results/gpu/2026-11-28-h200-cudagraphs/). Intake threads do the reading instead, in
parallel with each other and with execute().
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


class Intake:
    """Threads that take queued requests and run `handle(request)` on each; `handle` must answer
    every request it gets, errors included (one that escapes is logged, and the thread goes on)."""

    def __init__(self, handle: Callable[[Any], None], threads: int = 2) -> None:
        self._handle = handle
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._run, name=f"intake-{i}", daemon=True) for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def put(self, request: Any) -> None:
        """Queue one request (never blocks)."""
        self._queue.put(request)

    def close(self, timeout_s: float = 30) -> None:
        """Handle what is queued, then stop the threads."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout_s)

    def _run(self) -> None:
        while (request := self._queue.get()) is not None:
            try:
                self._handle(request)
            except Exception:  # noqa: BLE001 - one bad request must not stop the intake
                logger.exception("taking a request failed")
