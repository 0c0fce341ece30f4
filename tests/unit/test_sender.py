"""The response side alone: coalescing under backlog, order, final flag once, lean responses, errors."""

from __future__ import annotations

import threading
import time

import pytest

from backend.errors import EngineUnavailableError
from backend.responses import ResponseSender
from backend.types import Chunk
from tests.unit.fake_engine import FakeSink, make_request

ALL = {"return_finish_reason": True, "return_num_input_tokens": True, "return_num_output_tokens": True,
           "return_output_token_ids": True}


@pytest.fixture
def sender():
    sender = ResponseSender(threads=2, cancel_poll_interval_s=0.01).start()
    yield sender
    sender.close()


def _chunks(n: int) -> list[Chunk]:
    return [Chunk(f"t{i} ", [i], final=i == n - 1, finish_reason="length" if i == n - 1 else None) for i in range(n)]


def test_each_chunk_is_its_own_response_when_the_sender_keeps_up(sender):
    sink = FakeSink()
    stream = sender.open(make_request(**ALL), sink)
    for chunk in _chunks(4):
        sender.push(stream, chunk)
        time.sleep(0.02)
    assert sink.done.wait(5)
    assert [r.text for r, _ in sink.responses] == ["t0 ", "t1 ", "t2 ", "t3 "]
    assert [final for _, final in sink.responses] == [False, False, False, True]
    assert [r.num_output_tokens for r, _ in sink.responses] == [1, 1, 1, 1]


def test_backlog_goes_out_joined_in_order_with_one_final_flag(sender):
    sink = FakeSink(send_s=0.05)  # a slow round trip: the engine outruns the sender
    stream = sender.open(make_request(**ALL), sink)
    for chunk in _chunks(40):
        sender.push(stream, chunk)
        time.sleep(0.005)  # ten steps per send
    assert sink.done.wait(10)
    assert 2 <= len(sink.responses) <= 12, "the backlog was not coalesced"
    assert sink.token_ids == list(range(40))
    assert sink.text == "".join(f"t{i} " for i in range(40))
    assert sum(r.num_output_tokens for r, _ in sink.responses) == 40
    assert [final for _, final in sink.responses].count(True) == 1 and sink.responses[-1][1]


def test_finish_reason_and_input_count_only_on_the_final_response(sender):
    sink = FakeSink()
    stream = sender.open(make_request(**ALL), sink)
    for chunk in _chunks(3):
        sender.push(stream, chunk)
        time.sleep(0.02)
    assert sink.done.wait(5)
    *early, (last, _) = sink.responses
    assert all(r.finish_reason is None and r.num_input_tokens is None for r, _ in early)
    assert last.finish_reason == "length" and last.num_input_tokens == 3


def test_outputs_not_asked_for_are_not_built(sender):
    sink = FakeSink()
    stream = sender.open(make_request(), sink)
    for chunk in _chunks(2):
        sender.push(stream, chunk)
    assert sink.done.wait(5)
    for response, _ in sink.responses:
        assert (response.token_ids, response.num_output_tokens, response.finish_reason,
                response.num_input_tokens) == (None, None, None, None)


def test_not_streamed_is_one_response_with_the_echo(sender):
    sink = FakeSink()
    stream = sender.open(make_request(stream=False, exclude_input_in_output=False, **ALL), sink)
    for chunk in _chunks(5):
        sender.push(stream, chunk)
    assert sink.done.wait(5)
    assert len(sink.responses) == 1
    response, final = sink.responses[0]
    assert final and response.text == "PROMPT t0 t1 t2 t3 t4 " and response.token_ids == [0, 1, 2, 3, 4]
    assert response.num_output_tokens == 5


def test_an_error_follows_what_was_pending_and_is_the_final_answer(sender):
    sink = FakeSink(send_s=0.05)
    stream = sender.open(make_request(**ALL), sink)
    for chunk in _chunks(10)[:5]:
        sender.push(stream, chunk)
    sender.fail(stream, EngineUnavailableError("gone"))
    sender.push(stream, Chunk("late", [99], final=True))  # after the end: dropped
    assert sink.done.wait(5)
    time.sleep(0.1)
    assert sink.token_ids == [0, 1, 2, 3, 4]
    assert all(not final for _, final in sink.responses)
    assert len(sink.errors) == 1 and sender.open_streams == 0


def test_requests_are_spread_over_the_sender_threads(sender):
    sinks = [FakeSink(send_s=0.01) for _ in range(4)]
    for sink in sinks:
        stream = sender.open(make_request(), sink)
        for chunk in _chunks(3):
            sender.push(stream, chunk)
    assert all(sink.done.wait(5) for sink in sinks)
    assert len(set().union(*(s.threads for s in sinks))) == 2
    assert all(len(s.threads) == 1 for s in sinks), "one request's responses must stay on one thread"


def test_cancel_sweep_calls_back_and_never_asks_after_the_final_response(sender):
    cancelled = threading.Event()
    sink = FakeSink(cancel_after=1)
    stream = sender.open(make_request(), sink)
    stream.on_cancel = cancelled.set
    sender.push(stream, _chunks(3)[0])
    assert cancelled.wait(5)
    sender.fail(stream, EngineUnavailableError("cancelled"))
    assert sink.done.wait(5)
    time.sleep(0.1)  # several sweeps
    assert sink.asked_after_final == 0


def test_close_sends_what_is_queued(sender):
    sink = FakeSink(send_s=0.02)
    stream = sender.open(make_request(), sink)
    for chunk in _chunks(5):
        sender.push(stream, chunk)
    sender.close()
    assert sink.done.is_set() and sink.text == "t0 t1 t2 t3 t4 "
