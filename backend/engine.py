"""The engine driver: one vLLM AsyncLLM on its own event-loop thread, fed by Triton's execute().

execute() only schedules (submit() is thread-safe and returns at once). Each request runs as a task
on the loop (backend.stream) that appends its output to a ResponseStream; sender threads
(backend.responses) do the blocking sends to Triton, so the loop, which also runs vLLM's output
handling, never waits on Triton. Whatever happens, each request gets exactly one final response.
A watchdog task replaces an engine that died or stalled (backend.lifecycle).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from typing import Any
from collections.abc import Callable

from backend.admission import check_admission
from backend.errors import EngineUnavailableError, RequestCancelledError, ServingError
from backend.lifecycle import EngineLifecycle, vllm_engine_factory
from backend.observer import QueuedObserver
from backend.responses import ResponseSender
from backend.stream import Active, run_request
from backend.types import GenerationRequest, ModelInfo, Observer, RequestRecord, ResponseSink

logger = logging.getLogger(__name__)


class EngineDriver:
    """Owns the event-loop thread, the engine's lifecycle, the active requests and admission control."""

    def __init__(self, engine_args: dict[str, Any], *, max_queued_requests: int,
                 max_queued_prompt_tokens: int, cancel_poll_interval_s: float,
                 shutdown_grace_s: float = 10.0, stall_timeout_s: float = 0.0, sender_threads: int = 1,
                 engine_niceness: str = "auto", observer: Observer | None = None,
                 engine_factory: Callable[[], Any] | None = None) -> None:
        self._max_queued_requests = max_queued_requests
        self._max_queued_prompt_tokens = max_queued_prompt_tokens
        self._grace_s = shutdown_grace_s
        self._stall_s = stall_timeout_s  # 0: off
        self._lifecycle = EngineLifecycle(engine_factory or vllm_engine_factory(engine_args), engine_niceness)
        self._sender = ResponseSender(sender_threads, cancel_poll_interval_s)
        self._observer = None if observer is None else QueuedObserver(observer, self.counts)
        # Triton unloads a decoupled model only once every request got its final response, so
        # finalize() can't be where draining starts: begin_drain() is called when the server stops.
        self._draining: asyncio.Task | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="engine-loop", daemon=True)
        self._active: dict[str, Active] = {}
        self._ids = itertools.count()
        self.admitted = 0  # requests taken since the model loaded
        self._accepting = False
        self._watchdog: asyncio.Task | None = None
        self._last_progress = time.monotonic()  # last engine output, or when work arrived at an idle engine

    # -- lifecycle (called from Triton's thread) ---------------------------------------------

    def start(self) -> ModelInfo:
        """Start the loop thread, the sender and the engine; blocks until the engine is ready."""
        self._thread.start()
        self._sender.start()
        info = self._call(self._start_engine())
        self._accepting = True
        if self._observer is not None:
            self._observer.start()
        return info

    async def _start_engine(self) -> ModelInfo:
        info = self._lifecycle.start()
        self._watchdog = asyncio.create_task(self._watch())
        return info

    @property
    def restarts(self) -> int:
        """Engine replacements since the model loaded."""
        return self._lifecycle.restarts

    def shutdown(self) -> None:
        """Stop taking requests, let in-flight ones finish up to the grace period, end the rest, stop."""
        self._accepting = False
        if not self._thread.is_alive():
            return
        try:
            self._call(self._drain(self._grace_s), timeout=self._grace_s + 150)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._sender.close()  # after the loop: every final response is queued by now
            if self._observer is not None:
                self._observer.close()

    def begin_drain(self) -> None:
        """The server is stopping (any thread): refuse new requests, end in-flight ones after the grace."""
        self._accepting = False
        self._loop.call_soon_threadsafe(self._start_draining)

    def _start_draining(self) -> None:
        if self._draining is None:
            logger.info("the server is stopping: no new requests, draining for %.1fs", self._grace_s)
            self._draining = self._loop.create_task(self._drain(self._grace_s))

    async def _drain(self, grace_s: float) -> None:
        if self._draining is not None and self._draining is not asyncio.current_task():
            await asyncio.wait([self._draining])  # already draining since the server began to stop
            grace_s = 0
        tasks = [a.task for a in self._active.values() if a.task is not None]
        if tasks:
            logger.info("waiting up to %.1fs for %d in-flight requests", grace_s, len(tasks))
            _, pending = await asyncio.wait(tasks, timeout=grace_s or None)
            for active in list(self._active.values()):
                active.end(EngineUnavailableError("the server is shutting down"), "cancelled")
            if pending:
                _, stuck = await asyncio.wait(pending, timeout=10)
                logger.info("ended %d requests at the shutdown deadline (%d did not end)", len(pending), len(stuck))
        if self._draining is asyncio.current_task():
            return  # started by begin_drain(): finalize() stops the engine later
        if self._watchdog is not None:
            self._watchdog.cancel()
        await self._lifecycle.shutdown()

    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- requests ----------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """False while the engine is dead, stalled or restarting, and while shutting down."""
        return self._accepting and self._lifecycle.ready

    def submit(self, request: GenerationRequest, sink: ResponseSink) -> None:
        """Schedule a request on the engine loop; thread-safe, returns at once."""
        self._loop.call_soon_threadsafe(self._admit, request, sink)

    def _admit(self, request: GenerationRequest, sink: ResponseSink) -> None:
        try:
            check_admission(
                accepting=self._accepting, engine_ready=self._lifecycle.ready,
                queued_prompt_tokens=(a.request.prompt.num_tokens for a in self._active.values() if not a.started),
                prompt_tokens=request.prompt.num_tokens, max_queued_requests=self._max_queued_requests,
                max_queued_prompt_tokens=self._max_queued_prompt_tokens)
        except ServingError as exc:
            self._sender.fail(self._sender.open(request, sink), exc)  # the loop never sends itself
            return
        request_id = f"req-{next(self._ids)}"
        self.admitted += 1
        if not self._waiting():
            self._last_progress = time.monotonic()  # an idle engine owes nothing until now
        stream = self._sender.open(request, sink)
        active = Active(request_id, request, push=lambda chunk: self._sender.push(stream, chunk),
                        fail=lambda exc: self._sender.fail(stream, exc))
        stream.on_cancel = lambda: self._loop.call_soon_threadsafe(
            active.end, RequestCancelledError("request cancelled by the client"), "cancelled")
        active.task = self._loop.create_task(self._run(active))
        self._active[request_id] = active

    async def _run(self, active: Active) -> None:
        try:
            record = await run_request(self._lifecycle.engine, active, self._progress)
        except asyncio.CancelledError:
            # Cancelled before it began, or again while aborting (then its answer is queued already).
            active.fail(active.end_error or RequestCancelledError("request cancelled by the client"))
            record = RequestRecord(active.end_outcome, active.request.prompt.num_tokens,
                                   active.request.prompt.num_embedding_tokens, 0, None, None)
        finally:
            self._active.pop(active.request_id, None)
        if record.outcome == "engine_dead":
            self._lifecycle.replace("the engine died")
        if self._observer is not None:
            self._observer.on_finish(record)

    def _progress(self) -> None:
        self._last_progress = time.monotonic()

    async def _watch(self) -> None:
        """Replace an engine that died (its process crashed or was killed) or stalled."""
        interval = min(1.0, self._stall_s / 4) if self._stall_s > 0 else 1.0
        watched = None
        while True:
            await asyncio.sleep(interval)
            engine = self._lifecycle.engine
            if engine is None or not self._accepting:
                continue
            if engine is not watched:  # a fresh engine owes nothing for the time before it ran
                watched, self._last_progress = engine, time.monotonic()
            if engine.errored:
                self._lifecycle.replace("the engine died")
                continue
            waiting = self._waiting()
            if self._stall_s > 0 and waiting and time.monotonic() - self._last_progress > self._stall_s:
                self._replace_stalled(waiting)

    def _waiting(self) -> list[Active]:
        """Requests the engine owes output: those already ended (e.g. still aborting on a replaced
        engine) owe nothing."""
        return [a for a in self._active.values() if a.end_error is None]

    def _replace_stalled(self, waiting: list[Active]) -> None:
        logger.error("the engine produced nothing for %.0fs with %d requests in flight: replacing it",
                     time.monotonic() - self._last_progress, len(waiting))
        error = EngineUnavailableError("the engine stalled; it is being restarted, retry shortly")
        for active in waiting:
            active.end(error, "stalled")
        self._lifecycle.replace(f"no output for {self._stall_s:.0f}s with {len(waiting)} requests in flight",
                                kill=True)

    # -- introspection for tests and metrics --------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Requests in flight here, those without a first token yet, and those the engine holds.

        Called from the metrics thread: it only reads (list() of a dict is atomic under the GIL).
        """
        active = list(self._active.values())
        engine = self._lifecycle.engine
        unfinished = engine.output_processor.get_num_unfinished_requests() if engine is not None else 0
        return {"active": len(active), "queued": sum(1 for a in active if not a.started),
                "engine_unfinished": unfinished, "engine_healthy": int(self.healthy),
                "engine_restarts": self._lifecycle.restarts}
