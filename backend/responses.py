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

import itertools
import logging
import queue
import threading
from collections.abc import Callable

from backend.types import Chunk, GenerationRequest, Response, ResponseSink

logger = logging.getLogger(__name__)


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
        self._text: list[str] = []
        self._token_ids: list[int] = []
        self._final = False
        self._finish_reason: str | None = None
        self._error: BaseException | None = None
        self._scheduled = False  # in its sender's queue, waiting to be taken
        self._echo_pending = not request.exclude_input_in_output

    def push(self, chunk: Chunk) -> bool:
        """Append one chunk; True when the stream must be queued for its sender."""
        with self._lock:
            if self._final:
                return False  # nothing after the final chunk or an error
            self._text.append(chunk.text)
            self._token_ids.extend(chunk.token_ids)
            if chunk.final:
                self._final, self._finish_reason = True, chunk.finish_reason
            elif not self.request.stream:
                return False  # not streamed: one response, at the end
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

    def take(self) -> tuple[Response | None, BaseException | None, bool]:
        """Everything pending as one response (None when there is no output to send), the error, final."""
        with self._lock:
            self._scheduled = False
            text, token_ids = "".join(self._text), self._token_ids
            self._text, self._token_ids = [], []
            final, error, reason = self._final, self._error, self._finish_reason
        ends_here = final and error is None
        if not (text or token_ids or ends_here):
            return None, error, final
        return self._shape(text, token_ids, reason, ends_here), error, final

    def _shape(self, text: str, token_ids: list[int], reason: str | None, final: bool) -> Response:
        request = self.request
        if self._echo_pending:  # non-streaming with exclude_input_in_output=false, as vllm_backend
            text, self._echo_pending = request.prompt.echo_text + text, False
        return Response(
            text=text,
            token_ids=token_ids if request.return_output_token_ids else None,
            num_output_tokens=len(token_ids) if request.return_num_output_tokens else None,
            finish_reason=(reason or "") if final and request.return_finish_reason else None,
            num_input_tokens=request.prompt.num_tokens if final and request.return_num_input_tokens else None,
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
        response, error, final = stream.take()
        if error is not None:
            if response is not None:
                stream.sink.send(response, final=False)
                self.responses_sent += 1
            stream.sink.send_error(error)
            self.responses_sent += 1
        elif response is not None:
            stream.sink.send(response, final=final)
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
