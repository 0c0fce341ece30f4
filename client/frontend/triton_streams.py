"""Triton gRPC streams that carry one request at a time and are kept for the next one.

Opening a ModelStreamInfer call per request (the call, its headers, the half-close, the status)
cost the frontend about 230 µs of CPU per request on the 2-core CPU box, over a third of what it
spent on a 2-token request's gRPC side (results/frontend-stream-pool). A `StreamPool` keeps the
streams instead: a request takes an idle stream (or opens one), writes its ModelInferRequest, reads
its responses, and gives the stream back once Triton has marked one of them final.

Reuse rests on what tritonserver does on a stream (checked with 2.51, and tested end to end):
- with `triton_enable_empty_final_response` on the request, every response carries
  `triton_final_response`, true on the request's last one, also when the model sends its final
  flag alone;
- every response carries its request's id.

A stream goes back only after a response marked final that has the request's own id. Anything else
retires it (an error Triton raised before the model ran, a broken stream) or cancels it (a stray
id, a client that left, a timeout), so no response of one request can reach another. Cancelling a request is still
cancelling its stream, which Triton turns into a cancelled request: the stream carries nothing else.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import Any

import grpc
from tritonclient.grpc import service_pb2_grpc
from tritonclient.grpc._utils import _get_inference_request

EMPTY_FINAL = "triton_enable_empty_final_response"
FINAL = "triton_final_response"
# As tritonclient's own channels: no gRPC cap on message size (requests carry embedding tensors;
# the frontend's body and row limits bound them).
CHANNEL_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


def infer_request(model: str, inputs: list[Any], request_id: str) -> Any:
    """A ModelInferRequest for a stream, asking Triton to mark each response final or not.

    tritonclient builds the message (its asyncio client does the same); the parameter is set as
    its synchronous client's `async_stream_infer(enable_empty_final_response=True)` sets it.
    """
    request = _get_inference_request(model_name=model, inputs=inputs, model_version="", request_id=request_id,
                                     outputs=None, sequence_id=0, sequence_start=False, sequence_end=False,
                                     priority=0, timeout=None, parameters=None)
    request.parameters[EMPTY_FINAL].bool_param = True
    return request


def is_final(response: Any) -> bool:
    """Whether a ModelInferResponse is its request's last (Triton's flag; see EMPTY_FINAL)."""
    parameters = response.parameters
    return FINAL in parameters and parameters[FINAL].bool_param


class StreamPool:
    """Idle ModelStreamInfer calls on one channel, most recently used first.

    Create it inside the serving event loop (grpc.aio). Not thread-safe; it needs no lock on one loop.
    """

    def __init__(self, url: str, *, max_idle: int = 256, idle_s: float = 120.0,
                 on_open: Callable[[], None] | None = None) -> None:
        self._channel = grpc.aio.insecure_channel(url, options=CHANNEL_OPTIONS)
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self._idle: collections.deque[tuple[float, Any]] = collections.deque()  # (idle since, call), oldest first
        self._closing: set[Any] = set()  # retired calls and their half-closes, until each is done
        self._max_idle = max_idle
        self._idle_s = idle_s
        self._on_open = on_open  # called for each stream opened (a metric)

    @property
    def idle(self) -> int:
        return len(self._idle)

    def take(self) -> Any:
        """The most recently used idle stream that is still open, else a new one."""
        self._retire_stale(time.monotonic())
        while self._idle:
            _, call = self._idle.pop()
            if not call.done():  # a stream that ended while idle (server gone, restarted) is dropped
                return call
        if self._on_open is not None:
            self._on_open()
        return self._stub.ModelStreamInfer()

    def give_back(self, call: Any) -> None:
        """A stream whose request has had its final response, for the next request."""
        now = time.monotonic()
        self._retire_stale(now)
        while len(self._idle) >= self._max_idle:
            self.retire(self._idle.popleft()[1])
        if call.done():
            return
        self._idle.append((now, call))

    def _retire_stale(self, now: float) -> None:
        """Close the streams idle longer than `idle_s` rather than use them (after a quiet spell a
        proxy may have dropped them); the oldest come first."""
        while self._idle and now - self._idle[0][0] > self._idle_s:
            self.retire(self._idle.popleft()[1])

    def retire(self, call: Any) -> None:
        """Close a stream with no request in flight: half-close it, so Triton ends it with OK (no cancel).

        The call is held until its status arrives (one dropped sooner is cancelled when collected),
        and the half-close's task until it ends (the loop keeps only a weak reference to it).
        """
        if call.done():
            return
        closing = asyncio.ensure_future(call.done_writing())
        closing.add_done_callback(_ignore_result)
        for held in (call, closing):
            self._closing.add(held)
            held.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        while self._idle:
            self._idle.pop()[1].cancel()
        for held in list(self._closing):
            held.cancel()
        await self._channel.close()


def _ignore_result(task: asyncio.Future) -> None:
    """Consume a background close's outcome (a stream that failed meanwhile has nothing to tell)."""
    if not task.cancelled():
        task.exception()

