"""The frontend's reused Triton streams: a stream goes back to the pool only after its request's final
response, anything else retires or cancels it, and no response reaches the wrong request.

A fake grpc.aio call stands in for Triton here; tests/integration/test_frontend.py runs the real one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2
from tritonclient.utils import serialize_byte_tensor

from client.frontend.errors import APIError
from client.frontend.triton_client import TritonClient, TritonRequest
from client.frontend.triton_streams import EMPTY_FINAL, StreamPool

Script = Callable[[Any], list[Any]]  # the request message -> the responses Triton sends for it


def response(request_id: str, text: str = "a", *, final: bool | None = False, reason: str = "",
             error: str = "") -> Any:
    """A ModelStreamInferResponse as Triton sends it (final: the triton_final_response flag; None: absent)."""
    out = service_pb2.ModelStreamInferResponse(error_message=error)
    infer = out.infer_response
    infer.id = request_id
    if not error:
        for name, value in (("text_output", text), ("finish_reason", reason)):
            if name == "text_output" or value:
                infer.outputs.add(name=name, datatype="BYTES", shape=[1])
                infer.raw_output_contents.append(serialize_byte_tensor(np.array([value.encode()], np.object_)).item())
    if final is not None:
        infer.parameters["triton_final_response"].bool_param = final
    return out


def steps(tokens: int) -> Script:
    """A request that streams `tokens` steps, the last one final."""
    return lambda message: [response(message.id, final=i == tokens - 1, reason="length" if i == tokens - 1 else "")
                            for i in range(tokens)]


class FakeCall:
    """grpc.aio's StreamStreamCall (reader/writer style) over scripted responses."""

    def __init__(self, script: Script) -> None:
        self.script, self.written, self.pending = script, [], asyncio.Queue()
        self.cancelled = self.half_closed = self.finished = False
        self.callbacks: list[Any] = []

    async def write(self, message: Any) -> None:
        if self.finished:
            raise asyncio.InvalidStateError("RPC already finished")
        self.written.append(message)
        for item in self.script(message):
            self.pending.put_nowait(item)

    async def read(self) -> Any:
        item = await self.pending.get()
        if item is None:  # hangs up: Triton ended the stream
            self.finish()
            return grpc.aio.EOF
        if self.cancelled:
            raise asyncio.CancelledError
        return item

    async def done_writing(self) -> None:
        self.half_closed = True
        self.finish()  # Triton then ends the stream with OK

    def cancel(self) -> bool:
        self.cancelled = True
        self.pending.put_nowait(response("", final=True))  # wakes a pending read, which then raises
        self.finish()
        return True

    def done(self) -> bool:
        return self.finished

    def add_done_callback(self, callback: Any) -> None:
        self.callbacks.append(callback)

    def finish(self) -> None:
        if not self.finished:
            self.finished = True
            for callback in self.callbacks:
                callback(self)


class FakeStub:
    def __init__(self, *scripts: Script) -> None:
        self.scripts, self.calls = list(scripts), []

    def ModelStreamInfer(self) -> FakeCall:  # grpc's generated method name
        call = FakeCall(lambda message: self.scripts.pop(0)(message))
        self.calls.append(call)
        return call


def run_client(test: Callable[[TritonClient, FakeStub], Any], *scripts: Script, timeout_s: float = 600) -> None:
    async def main() -> None:
        client = TritonClient("localhost:1", "vllm_model", timeout_s=timeout_s)
        stub = FakeStub(*scripts)
        client._streams._stub = stub
        try:
            await test(client, stub)
        finally:
            await client.close()

    asyncio.run(main())


REQUEST = TritonRequest(sampling={"max_tokens": 2}, text="hi", stream=True)


async def collect(client: TritonClient, request: TritonRequest = REQUEST) -> list[Any]:
    return [delta async for delta in client.generate(request)]


def test_a_finished_request_gives_its_stream_to_the_next() -> None:
    async def test(client: TritonClient, stub: FakeStub) -> None:
        first = await collect(client)
        second = await collect(client)
        assert [d.final for d in first] == [False, True] and len(second) == 3
        assert len(stub.calls) == 1 and not stub.calls[0].cancelled and not stub.calls[0].half_closed
        ids = [m.id for m in stub.calls[0].written]
        assert len(set(ids)) == 2
        assert all(m.parameters[EMPTY_FINAL].bool_param for m in stub.calls[0].written)

    run_client(test, steps(2), steps(3))


def test_the_final_flag_ends_a_request_not_its_finish_reason() -> None:
    """n > 1 and a final flag sent alone: the request ends at Triton's flag, so nothing is left on the stream."""
    def late_flag(message: Any) -> list[Any]:
        return [response(message.id, reason="length"), response(message.id, "", final=True)]

    async def test(client: TritonClient, stub: FakeStub) -> None:
        deltas = await collect(client)
        assert [(d.finish_reason, d.final) for d in deltas] == [("length", False), (None, True)]
        assert client._streams.idle == 1

    run_client(test, late_flag)


def test_a_request_left_early_cancels_its_stream_and_the_next_opens_another() -> None:
    async def test(client: TritonClient, stub: FakeStub) -> None:
        stream = client.generate(REQUEST)
        await anext(stream)
        await stream.aclose()
        assert stub.calls[0].cancelled
        assert len(await collect(client)) == 2 and len(stub.calls) == 2 and not stub.calls[1].cancelled

    run_client(test, steps(5), steps(2))


@pytest.mark.parametrize("final, reused", [(True, True), (None, False)], ids=["model_error", "triton_error"])
def test_an_error_ends_its_request_and_the_stream_is_reused_only_after_the_final_flag(final, reused) -> None:
    """The model's errors carry the final flag; Triton's own (unknown model, bad input) come without it."""
    def failing(message: Any) -> list[Any]:
        return [response(message.id, error="[INVALID_ARG] sampling_parameters: temperature must be in [0, 2]",
                         final=final)]

    async def test(client: TritonClient, stub: FakeStub) -> None:
        with pytest.raises(APIError) as caught:
            await collect(client)
        await asyncio.sleep(0)  # the half-close runs as a task
        assert caught.value.status == 400 and not stub.calls[0].cancelled
        assert stub.calls[0].half_closed is not reused  # retired with a half-close, never a cancel
        assert len(await collect(client)) == 2
        assert len(stub.calls) == (1 if reused else 2)

    run_client(test, failing, steps(2))


def test_a_response_of_another_request_is_an_error_and_cancels_the_stream() -> None:
    async def test(client: TritonClient, stub: FakeStub) -> None:
        with pytest.raises(APIError, match="another request") as caught:
            await collect(client)
        assert caught.value.status == 500 and stub.calls[0].cancelled
        assert len(await collect(client)) == 2 and len(stub.calls) == 2

    run_client(test, lambda message: [response("someone-else", final=True)], steps(2))


def test_a_stream_triton_ends_mid_request_is_an_error() -> None:
    async def test(client: TritonClient, stub: FakeStub) -> None:
        with pytest.raises(APIError, match="closed the stream before the final response"):
            await collect(client)
        assert len(await collect(client)) == 2 and len(stub.calls) == 2

    run_client(test, lambda message: [response(message.id), None], steps(2))


def test_a_request_without_a_final_response_in_time_is_cancelled() -> None:
    async def test(client: TritonClient, stub: FakeStub) -> None:
        with pytest.raises(APIError, match="no final response within 0.05 s") as caught:
            await collect(client)
        assert caught.value.status == 503 and stub.calls[0].cancelled
        assert len(await collect(client)) == 2 and len(stub.calls) == 2

    run_client(test, lambda message: [response(message.id)], steps(2), timeout_s=0.05)


def test_an_idle_stream_that_ended_is_not_reused() -> None:
    async def test(client: TritonClient, stub: FakeStub) -> None:
        await collect(client)
        stub.calls[0].finish()  # the server went away while the stream sat idle
        assert len(await collect(client)) == 2 and len(stub.calls) == 2

    run_client(test, steps(2), steps(2))


def test_the_pool_keeps_at_most_max_idle_streams_and_drops_old_ones() -> None:
    async def test() -> None:
        pool = StreamPool("localhost:1", max_idle=2, idle_s=60)
        calls = [FakeCall(steps(1)) for _ in range(3)]
        for call in calls:
            pool.give_back(call)
        await asyncio.sleep(0)
        assert pool.idle == 2 and calls[0].half_closed  # the oldest went
        pool._idle[0] = (pool._idle[0][0] - 61, pool._idle[0][1])  # idle for over the limit
        pool.give_back(FakeCall(steps(1)))
        await asyncio.sleep(0)
        assert pool.idle == 2 and calls[1].half_closed
        assert pool.take() is not calls[2] and pool.take() is calls[2]  # most recently used first
        pool.give_back(calls[2])
        pool._idle[0] = (pool._idle[0][0] - 61, calls[2])  # a quiet spell: not used, closed
        assert pool.take() is not calls[2] and pool.idle == 0
        await asyncio.sleep(0)
        assert calls[2].half_closed
        await pool.close()

    asyncio.run(test())
