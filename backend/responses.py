"""The response side: each request's pending output, shaped into responses and sent off the engine loop.

The engine loop only appends to a request's ResponseStream (no I/O, no blocking). Sender threads,
each owning a shard of the requests (one request's responses keep their order), take everything
pending for a request and send it as ONE response. When they keep up that is one response per engine
step; when a send round trip to Triton is slower than the engine, the backlog goes out joined (text,
token ids, counts, final flag) instead of queueing one blocking round trip per step. A sweep thread
asks the sinks for client cancellation, also off the loop.

Output shaping lives here too: echo of the prompt, which optional outputs a response carries, counts.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import queue
import threading
from collections.abc import Callable

from backend.types import Chunk, GenerationRequest, PromptLogprobs, Response, ResponseSink

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class _Pending:
    """One choice's output not yet sent."""

    text: list[str] = dataclasses.field(default_factory=list)
    token_ids: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    top_ids: list[list[int]] = dataclasses.field(default_factory=list)
    top_logprobs: list[list[float]] = dataclasses.field(default_factory=list)
    finish_reason: str | None = None
    ended: bool = False
    prompt_logprobs: PromptLogprobs | None = None  # the choice's first chunk brings them (when asked)

    def add(self, chunk: Chunk) -> None:
        self.text.append(chunk.text)
        if chunk.prompt_logprobs is not None:
            self.prompt_logprobs = chunk.prompt_logprobs
        self.token_ids.extend(chunk.token_ids)
        if chunk.logprobs is not None:
            self.logprobs.extend(chunk.logprobs)
            self.top_ids.extend(chunk.top_logprobs_ids or [])
            self.top_logprobs.extend(chunk.top_logprobs or [])
        if chunk.finish_reason is not None or chunk.final:
            self.ended, self.finish_reason = True, chunk.finish_reason


class ResponseStream:
    """One request's output not yet sent, and how to shape it; push/fail from the loop, take from a sender."""

    def __init__(self, request: GenerationRequest, sink: ResponseSink, key: int, shard: int) -> None:
        self.request = request
        self.sink = sink
        self.key = key
        self.shard = shard
        self.on_cancel: Callable[[], None] | None = None  # set by the engine side: ends the request
        self.closed = False  # the final response went to the sink (set by the sender thread)
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}  # by choice index, in order of arrival
        self._final = False
        self._error: BaseException | None = None
        self._scheduled = False  # in its sender's queue, waiting to be taken
        # Choices whose prompt echo is still due (non-streaming with exclude_input_in_output=false).
        self._echo_pending: set[int] = set() if request.exclude_input_in_output else set(range(request.n))

    def push(self, chunk: Chunk) -> bool:
        """Append one chunk; True when the stream must be queued for its sender."""
        with self._lock:
            if self._final:
                return False  # nothing after the final chunk or an error
            if (chunk.text or chunk.token_ids or chunk.finish_reason is not None or self.request.n == 1
                    or chunk.prompt_logprobs is not None):
                self._pending.setdefault(chunk.index, _Pending()).add(chunk)
            # else: n > 1 and the request's end with no choice in it (vLLM can end a parent request
            # after its last choice's own end): only the final flag is left to send.
            if chunk.final:
                self._final = True
            elif not self.request.stream:
                return False  # not streamed: one response per choice, at the end
            return self._schedule()

    def fail(self, exc: BaseException) -> bool:
        """End the request with an error (after what is pending); True when it must be queued."""
        with self._lock:
            if self._final:
                return False
            self._final, self._error = True, exc
            return self._schedule()

    def _schedule(self) -> bool:
        if self._scheduled:
            return False  # already queued: its sender will take this too
        self._scheduled = True
        return True

    def take(self) -> tuple[list[Response], BaseException | None, bool]:
        """Everything pending, one response per choice with output (the request's last one last),
        the error, and whether the request ended."""
        with self._lock:
            self._scheduled = False
            pending, self._pending = self._pending, {}
            final, error = self._final, self._error
        responses = [self._shape(index, p) for index, p in pending.items()
                     if "".join(p.text) or p.token_ids or p.prompt_logprobs or (p.ended and error is None)]
        return responses, error, final

    def _shape(self, index: int, pending: _Pending) -> Response:
        request = self.request
        text = "".join(pending.text)
        if index in self._echo_pending:  # non-streaming with exclude_input_in_output=false, as vllm_backend
            text = request.prompt.echo_text + text
            self._echo_pending.discard(index)
        ended = pending.ended
        with_logprobs = request.logprobs is not None
        return Response(
            text=text,
            token_ids=pending.token_ids if request.return_output_token_ids or with_logprobs else None,
            num_output_tokens=len(pending.token_ids) if request.return_num_output_tokens else None,
            finish_reason=(pending.finish_reason or "") if ended and request.return_finish_reason else None,
            num_input_tokens=request.prompt.num_tokens if ended and request.return_num_input_tokens else None,
            index=index if request.n > 1 else None,
            logprobs=pending.logprobs if with_logprobs else None,
            top_logprobs_ids=pending.top_ids if with_logprobs else None,
            top_logprobs=pending.top_logprobs if with_logprobs else None,
            prompt_logprobs=pending.prompt_logprobs,
        )


class ResponseSender:
    """Sender threads (requests sharded over them) and the cancellation sweep; start() before use."""

    def __init__(self, threads: int = 1, cancel_poll_interval_s: float = 0.2) -> None:
        self._queues: list[queue.SimpleQueue] = [queue.SimpleQueue() for _ in range(threads)]
        self._threads = [threading.Thread(target=self._run, args=(q,), name=f"response-sender-{i}", daemon=True)
                         for i, q in enumerate(self._queues)]
        self._poll_s = cancel_poll_interval_s
        self._sweeper = threading.Thread(target=self._sweep, name="cancel-sweep", daemon=True)
        self._stop = threading.Event()
        self._open: dict[int, ResponseStream] = {}
        self._ids = itertools.count()
        self.responses_sent = 0  # responses handed to sinks, errors included (for tests and profiles)

    def start(self) -> ResponseSender:
        """Start the sender threads and the cancellation sweep."""
        for thread in [*self._threads, self._sweeper]:
            thread.start()
        return self

    def open(self, request: GenerationRequest, sink: ResponseSink) -> ResponseStream:
        """A new stream for one request, on the next shard."""
        key = next(self._ids)
        stream = ResponseStream(request, sink, key, shard=key % len(self._queues))
        self._open[key] = stream
        return stream

    def push(self, stream: ResponseStream, chunk: Chunk) -> None:
        """Queue a chunk (thread-safe, never blocks)."""
        if stream.push(chunk):
            self._queues[stream.shard].put(stream)

    def fail(self, stream: ResponseStream, exc: BaseException) -> None:
        """End a request with an error response (thread-safe, never blocks)."""
        if stream.fail(exc):
            self._queues[stream.shard].put(stream)

    def close(self, timeout_s: float = 30) -> None:
        """Send what is queued, then stop the threads."""
        self._stop.set()
        for q in self._queues:
            q.put(None)
        for thread in [*self._threads, self._sweeper]:
            if thread.is_alive():
                thread.join(timeout_s)

    @property
    def open_streams(self) -> int:
        """Requests whose final response has not been sent yet."""
        return len(self._open)

    def _run(self, work: queue.SimpleQueue) -> None:
        while (stream := work.get()) is not None:
            try:
                self._deliver(stream)
            except Exception:  # noqa: BLE001 - one broken sink must not stop the others' responses
                logger.exception("sending a response failed")

    def _deliver(self, stream: ResponseStream) -> None:
        responses, error, final = stream.take()
        for i, response in enumerate(responses):
            last = i == len(responses) - 1
            stream.sink.send(response, final=final and error is None and last)
            self.responses_sent += 1
        if error is not None:
            stream.sink.send_error(error)
            self.responses_sent += 1
        elif final and not responses:
            stream.sink.send(None, final=True)  # every choice's output went out already
            self.responses_sent += 1
        if final:
            stream.closed = True
            self._open.pop(stream.key, None)

    def _sweep(self) -> None:
        """Ask each open request's sink whether its client cancelled; end those that did."""
        while not self._stop.wait(self._poll_s):
            for stream in list(self._open.values()):
                if stream.closed or stream.on_cancel is None:
                    continue
                try:
                    cancelled = stream.sink.is_cancelled()  # the sink guards against asking after final
                except Exception:  # noqa: BLE001 - a broken sender must not stop the sweep
                    logger.exception("is_cancelled() failed")
                    continue
                if cancelled:
                    stream.on_cancel()
