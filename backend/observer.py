"""Metrics off the engine loop: records go through a queue to one thread that updates the observer.

Each Triton metric update is a round trip from the stub to tritonserver; made on the engine loop
(one histogram observation per token, as before) they delayed every request's responses. Here the
loop only enqueues one record per finished request, and the load gauges are refreshed at most once
per `gauge_interval_s`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from backend.types import Observer, RequestRecord

logger = logging.getLogger(__name__)


class QueuedObserver:
    """An Observer whose updates run on their own thread; on_finish() never blocks the caller."""

    def __init__(self, target: Observer, counts: Callable[[], dict[str, int]], gauge_interval_s: float = 1.0) -> None:
        self._target = target
        self._counts = counts
        self._interval_s = gauge_interval_s
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="metrics", daemon=True)

    def start(self) -> QueuedObserver:
        """Start the metrics thread."""
        self._thread.start()
        return self

    def on_finish(self, record: RequestRecord) -> None:
        """Queue one finished request's record (thread-safe, never blocks)."""
        self._queue.put(record)

    def on_counts(self, counts: dict[str, int]) -> None:
        """Gauges are pulled by the metrics thread itself; pushes are ignored."""

    def close(self) -> None:
        """Write what is queued and the gauges once more, then stop the thread."""
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(10)

    def _run(self) -> None:
        next_gauges = 0.0
        while True:
            try:
                record = self._queue.get(timeout=max(0.0, next_gauges - time.monotonic()))
            except queue.Empty:
                record = ...
            if record is None:
                self._update_gauges()
                return
            if record is not ...:
                try:
                    self._target.on_finish(record)
                except Exception:  # noqa: BLE001 - metrics must never stop serving
                    logger.exception("metrics update failed")
            if time.monotonic() >= next_gauges:
                self._update_gauges()
                next_gauges = time.monotonic() + self._interval_s

    def _update_gauges(self) -> None:
        try:
            self._target.on_counts(self._counts())
        except Exception:  # noqa: BLE001 - metrics must never stop serving
            logger.exception("gauge update failed")
