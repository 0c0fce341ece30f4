"""The engine driver: one vLLM AsyncLLM on its own event-loop thread, fed by Triton's execute().

execute() only schedules (submit() is thread-safe and returns at once). Each request runs as a
task on the loop; whatever happens, its sink gets exactly one final response. A watcher task
polls the sinks for client cancellation, also for requests still waiting for a first token,
and cancels their tasks, which makes vLLM abort them in the engine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import threading
import time
from typing import Any, Protocol

import torch

from backend.errors import (
    EngineUnavailableError,
    OverloadedError,
    RequestCancelledError,
    ServingError,
    ValidationError,
)
from backend.request import GenerationRequest

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Chunk:
    """One response's worth of generation: new text (or all of it), and the counts."""

    text: str
    token_ids: list[int]
    finish_reason: str | None
    num_input_tokens: int
    num_output_tokens: int


class ResponseSink(Protocol):
    """Where a request's responses go (a Triton response sender, or a list in tests)."""

    def send(self, chunk: Chunk | None, *, final: bool) -> None: ...

    def send_error(self, exc: BaseException) -> None:
        """Send an error response carrying the final flag."""

    def is_cancelled(self) -> bool: ...


class Observer(Protocol):
    """Receives per-request measurements (Triton custom metrics implement this)."""

    def on_finish(self, request: GenerationRequest, outcome: str, ttft_s: float | None,
                  token_gaps_s: list[float], num_output_tokens: int) -> None: ...

    def on_counts(self, counts: dict[str, int]) -> None:
        """Current load: see EngineDriver.counts()."""


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What request parsing needs to know about the loaded model."""

    hidden_size: int
    max_model_len: int
    dtype: torch.dtype
    tokenizer: Any  # the engine's own Hugging Face tokenizer, so both sides tokenize alike


@dataclasses.dataclass
class _Active:
    task: asyncio.Task
    sink: ResponseSink
    prompt_tokens: int
    started: bool = False  # has produced its first output (no longer counts as queued)


class EngineDriver:
    """Owns the event-loop thread, the AsyncLLM, the active requests and admission control."""

    def __init__(self, engine_args: dict[str, Any], *, max_queued_requests: int,
                 max_queued_prompt_tokens: int, cancel_poll_interval_s: float,
                 shutdown_grace_s: float = 10.0, observer: Observer | None = None) -> None:
        self._engine_args = engine_args
        self._max_queued_requests = max_queued_requests
        self._max_queued_prompt_tokens = max_queued_prompt_tokens
        self._poll_s = cancel_poll_interval_s
        self._observer = observer
        self._grace_s = shutdown_grace_s
        # Triton unloads a decoupled model only once every request got its final response, so
        # finalize() can't be where draining starts: begin_drain() is called when the server stops.
        self._draining: asyncio.Task | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="engine-loop", daemon=True)
        self._engine: Any = None
        self._active: dict[str, _Active] = {}
        self._ids = itertools.count()
        self.admitted = 0  # requests taken since the model loaded
        self._accepting = False
        self._watcher: asyncio.Task | None = None
        self._restart: asyncio.Task | None = None
        self.restarts = 0

    # -- lifecycle (called from Triton's thread) ---------------------------------------------

    def start(self) -> ModelInfo:
        """Start the loop thread and the engine; blocks until the engine is ready."""
        self._thread.start()
        info = self._call(self._start_engine())
        self._accepting = True
        return info

    def _new_engine(self) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(AsyncEngineArgs(**self._engine_args))

    async def _start_engine(self) -> ModelInfo:
        self._engine = self._new_engine()
        self._watcher = asyncio.create_task(self._watch_cancellations())
        config = self._engine.model_config
        return ModelInfo(hidden_size=config.get_hidden_size(), max_model_len=config.max_model_len,
                         dtype=config.dtype, tokenizer=self._engine.get_tokenizer())

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
        tasks = [a.task for a in self._active.values()]
        if tasks:
            logger.info("waiting up to %.1fs for %d in-flight requests", grace_s, len(tasks))
            _, pending = await asyncio.wait(tasks, timeout=grace_s or None)
            for task in pending:
                task.cancel(msg="shutdown")
            if pending:
                _, stuck = await asyncio.wait(pending, timeout=10)
                logger.info("ended %d requests at the shutdown deadline (%d did not end)", len(pending), len(stuck))
        if self._draining is asyncio.current_task():
            return  # started by begin_drain(): finalize() stops the engine later
        if self._watcher is not None:
            self._watcher.cancel()
        if self._restart is not None:
            await asyncio.wait([self._restart], timeout=120)
        if self._engine is not None:
            self._engine.shutdown()

    def _restart_if_dead(self) -> None:
        """Replace a dead engine (its process crashed or was killed) with a fresh one, once."""
        if self._engine is None or not self._engine.errored or self._restart is not None or not self._accepting:
            return
        self._restart = self._loop.create_task(self._restart_engine())

    async def _restart_engine(self) -> None:
        dead, self._engine = self._engine, None  # admission answers UNAVAILABLE meanwhile
        logger.error("the vLLM engine died (%s); starting a new one", dead.dead_error)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, dead.shutdown)
        except Exception:  # noqa: BLE001 - the dead engine's cleanup must not block recovery
            logger.exception("shutting down the dead engine failed")
        try:
            # Off the loop: engine start blocks for seconds to minutes, and requests must
            # meanwhile get their UNAVAILABLE answers at once.
            engine = await loop.run_in_executor(None, self._new_engine)
        except Exception:  # noqa: BLE001 - stay unavailable; the operator must reload the model
            logger.exception("engine restart failed; the model stays unavailable until reloaded")
            self._restart = None
            return
        if not self._accepting:  # shut down while restarting
            engine.shutdown()
            return
        self._engine, self._restart = engine, None
        self.restarts += 1
        logger.info("the vLLM engine was restarted (%d restarts so far)", self.restarts)

    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- requests ----------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """False while the engine is dead or restarting, and while shutting down."""
        return self._accepting and self._engine is not None and not self._engine.errored

    def submit(self, request: GenerationRequest, sink: ResponseSink) -> None:
        """Schedule a request on the engine loop; thread-safe, returns at once."""
        self._loop.call_soon_threadsafe(self._admit, request, sink)

    def _admit(self, request: GenerationRequest, sink: ResponseSink) -> None:
        try:
            self._check_admission(request)
        except ServingError as exc:
            sink.send_error(exc)
            return
        request_id = f"req-{next(self._ids)}"
        self.admitted += 1
        task = self._loop.create_task(self._generate(request_id, request, sink))
        self._active[request_id] = _Active(task, sink, request.prompt.num_tokens)
        task.add_done_callback(lambda _: self._active.pop(request_id, None))

    def _check_admission(self, request: GenerationRequest) -> None:
        if not self._accepting:
            raise EngineUnavailableError("the model is shutting down")
        if self._engine is None or self._engine.errored:
            raise EngineUnavailableError("the engine is restarting; retry shortly")
        queued = [a for a in self._active.values() if not a.started]
        if len(queued) >= self._max_queued_requests:
            raise OverloadedError(f"overloaded: {len(queued)} requests already queued")
        tokens = sum(a.prompt_tokens for a in queued) + request.prompt.num_tokens
        if queued and tokens > self._max_queued_prompt_tokens:
            raise OverloadedError(f"overloaded: {tokens} prompt tokens would be queued")

    async def _generate(self, request_id: str, request: GenerationRequest, sink: ResponseSink) -> None:
        from vllm.exceptions import VLLMValidationError
        from vllm.v1.engine.exceptions import EngineDeadError

        start = time.perf_counter()
        first: float | None = None
        last_time = start
        gaps: list[float] = []
        sent_text, sent_ids = 0, 0
        output = None
        outcome = "success"
        try:
            async for output in self._engine.generate(request.prompt.to_vllm(), request.sampling, request_id):
                now = time.perf_counter()
                completion = output.outputs[0]
                new_tokens = len(completion.token_ids) - sent_ids
                if first is None:
                    first = now
                    self._active[request_id].started = True
                elif new_tokens:
                    gaps.extend([(now - last_time) / new_tokens] * new_tokens)
                last_time = now
                if request.stream:
                    sink.send(self._chunk(request, output, sent_text, sent_ids), final=output.finished)
                    sent_text, sent_ids = len(completion.text), len(completion.token_ids)
            if output is None or not output.finished:
                raise EngineUnavailableError("the engine ended the request without a result")
            if not request.stream:
                sink.send(self._chunk(request, output, 0, 0), final=True)
        except asyncio.CancelledError:
            # Raised here by the watcher (client cancelled) or by shutdown; vLLM's generator
            # has already aborted the request in the engine on its way out.
            outcome = "cancelled"
            if self._accepting:
                sink.send_error(RequestCancelledError("request cancelled by the client"))
            else:
                sink.send_error(EngineUnavailableError("the server is shutting down"))
        except EngineDeadError:
            outcome = "engine_dead"
            sink.send_error(EngineUnavailableError("the engine died; it is being restarted, retry shortly"))
            self._restart_if_dead()
        except (VLLMValidationError, ValueError) as exc:
            # The engine's own input checks; ours run first, so this is a gap in them.
            outcome = "invalid"
            parameter = getattr(exc, "parameter", None) or "request"
            sink.send_error(ValidationError(parameter, str(exc)[:200]))
        except ServingError as exc:
            outcome = "error"
            sink.send_error(exc)
        except Exception as exc:  # noqa: BLE001 - the request must still get its final response
            outcome = "error"
            logger.exception("request %s failed", request_id)
            sink.send_error(exc)
        finally:
            if self._observer is not None:
                n_out = len(output.outputs[0].token_ids) if output is not None else 0
                ttft = None if first is None else first - start
                self._observer.on_finish(request, outcome, ttft, gaps, n_out)

    @staticmethod
    def _chunk(request: GenerationRequest, output: Any, text_from: int, ids_from: int) -> Chunk:
        completion = output.outputs[0]
        text = completion.text[text_from:]
        if not request.exclude_input_in_output:
            text = request.prompt.echo_text + text
        return Chunk(
            text=text,
            token_ids=list(completion.token_ids[ids_from:]),
            finish_reason=completion.finish_reason if output.finished else None,
            num_input_tokens=request.prompt.num_tokens,
            # As vllm_backend: the tokens in this response (all of them when not streaming).
            num_output_tokens=len(completion.token_ids) - ids_from,
        )

    async def _watch_cancellations(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            for active in list(self._active.values()):
                if active.task.done():
                    continue  # its final response is sent; the sink must not be touched again
                try:
                    cancelled = active.sink.is_cancelled()
                except Exception:  # noqa: BLE001 - a broken sender must not stop the watcher
                    logger.exception("is_cancelled() failed")
                    continue
                if cancelled and not active.task.done():
                    active.task.cancel()
            self._restart_if_dead()
            if self._observer is not None:
                self._observer.on_counts(self.counts())

    # -- introspection for tests and metrics --------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Requests in flight here, those without a first token yet, and those the engine holds."""
        queued = sum(1 for a in self._active.values() if not a.started)
        engine = self._engine.output_processor.get_num_unfinished_requests() if self._engine else 0
        return {"active": len(self._active), "queued": queued, "engine_unfinished": engine,
                "engine_healthy": int(self.healthy), "engine_restarts": self.restarts}
