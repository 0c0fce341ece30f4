"""EngineDriver with a fake engine: streaming, cancel, failure paths without leaks, stall, drain, metrics."""

from __future__ import annotations

import time

import pytest

from backend.engine import EngineDriver
from backend.errors import EngineUnavailableError, OverloadedError, RequestCancelledError, ValidationError
from backend.types import RequestRecord
from tests.unit.fake_engine import FakeEngine, FakeSink, make_request


class Records:
    def __init__(self) -> None:
        self.finished: list[RequestRecord] = []
        self.counts: list[dict] = []

    def on_finish(self, record: RequestRecord) -> None:
        self.finished.append(record)

    def on_counts(self, counts: dict) -> None:
        self.counts.append(counts)


def make_driver(engines: list[FakeEngine], **options) -> EngineDriver:
    """A driver whose factory hands out `engines` in turn (the last one again when they run out)."""
    made = iter(engines)

    def factory() -> FakeEngine:
        return next(made, engines[-1])

    options = {"max_queued_requests": 8, "max_queued_prompt_tokens": 1000, "cancel_poll_interval_s": 0.02,
               "shutdown_grace_s": 0.5, **options}
    driver = EngineDriver({}, engine_factory=factory, **options)
    driver.start()
    return driver


def wait_until(predicate, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def records():
    return Records()


def test_a_stream_gets_every_step_then_one_final_and_the_engine_is_left_empty(records):
    engine = FakeEngine(steps=6, step_s=0.02)
    driver = make_driver([engine], observer=records)
    sink = FakeSink()
    driver.submit(make_request(return_output_token_ids=True), sink)
    assert sink.done.wait(5)
    assert sink.token_ids == list(range(6)) and [f for _, f in sink.responses].count(True) == 1
    assert len(sink.responses) >= 5  # a sender that keeps up: (nearly) one response per step
    wait_until(lambda: records.finished)
    record = records.finished[0]
    assert record.outcome == "success" and record.output_tokens == 6 and record.tpot_s > 0.01
    assert driver.counts()["active"] == 0 and not engine.registered
    driver.shutdown()


def test_the_engine_loop_does_not_wait_for_slow_sends():
    engine = FakeEngine(steps=30, step_s=0.005)
    driver = make_driver([engine])
    sink = FakeSink(send_s=0.05)  # ten engine steps per send
    start = time.monotonic()
    driver.submit(make_request(return_output_token_ids=True), sink)
    wait_until(lambda: driver.counts()["active"] == 0)
    engine_done = time.monotonic() - start
    assert sink.done.wait(5)
    assert engine_done < 30 * 0.05 / 2, "the engine waited for the sends"
    assert sink.token_ids == list(range(30)) and len(sink.responses) < 15
    driver.shutdown()


def test_client_cancel_ends_the_request_and_aborts_it_in_the_engine(records):
    engine = FakeEngine(steps=1000, step_s=0.01)
    driver = make_driver([engine], observer=records)
    sink = FakeSink(cancel_after=2)
    driver.submit(make_request(), sink)
    assert sink.done.wait(5)
    assert isinstance(sink.errors[0], RequestCancelledError)
    wait_until(lambda: records.finished)
    assert records.finished[0].outcome == "cancelled" and engine.aborted and not engine.registered
    time.sleep(0.1)
    assert sink.asked_after_final == 0
    driver.shutdown()


def test_an_engine_error_after_registration_is_answered_and_aborted():
    """vLLM keeps a request whose generate() raised after registering it, unless it is aborted."""
    engine = FakeEngine(mode="raise")
    driver = make_driver([engine])
    sink = FakeSink()
    driver.submit(make_request(), sink)
    assert sink.done.wait(5)
    assert isinstance(sink.errors[0], ValidationError)
    wait_until(lambda: driver.counts() == {**driver.counts(), "active": 0, "engine_unfinished": 0})
    assert engine.aborted == ["req-0"]
    driver.shutdown()


def test_a_dead_engine_fails_requests_and_is_replaced():
    dead, fresh = FakeEngine(mode="dead"), FakeEngine(steps=2)
    driver = make_driver([dead, fresh])
    sink = FakeSink()
    driver.submit(make_request(), sink)
    assert sink.done.wait(5)
    assert isinstance(sink.errors[0], EngineUnavailableError) and "died" in str(sink.errors[0])
    wait_until(lambda: driver.restarts == 1)
    assert dead.shut_down and driver.healthy
    again = FakeSink()
    driver.submit(make_request(), again)
    assert again.done.wait(5) and not again.errors
    driver.shutdown()


def test_a_stalled_engine_is_replaced_and_its_requests_end_unavailable(records):
    stalled, fresh = FakeEngine(mode="stall"), FakeEngine(steps=3)
    driver = make_driver([stalled, fresh], stall_timeout_s=0.4, observer=records)
    sinks = [FakeSink() for _ in range(3)]
    start = time.monotonic()
    for sink in sinks:
        driver.submit(make_request(), sink)
    health = []
    while not all(s.done.is_set() for s in sinks) and time.monotonic() - start < 5:
        health.append(driver.healthy)
        time.sleep(0.02)
    took = time.monotonic() - start
    assert all(isinstance(s.errors[0], EngineUnavailableError) and "stalled" in str(s.errors[0]) for s in sinks)
    assert 0.4 <= took < 2.5
    wait_until(lambda: driver.restarts == 1)
    assert stalled.shut_down and not stalled.registered
    wait_until(lambda: len(records.finished) == 3)
    assert {r.outcome for r in records.finished} == {"stalled"}
    good = FakeSink()
    driver.submit(make_request(), good)
    assert good.done.wait(5) and not good.errors and driver.healthy
    driver.shutdown()


def test_requests_still_aborting_on_a_replaced_engine_do_not_stall_the_fresh_one():
    """A stalled engine's aborts hang (a SIGSTOPped process never answers) while its replacement
    starts; those requests are over for their clients and must not count against the new engine."""
    stalled, fresh = FakeEngine(mode="stall", abort_s=2.0), FakeEngine(steps=3)
    driver = make_driver([stalled, fresh], stall_timeout_s=0.3)
    sink = FakeSink()
    driver.submit(make_request(), sink)
    assert sink.done.wait(5) and "stalled" in str(sink.errors[0])
    wait_until(lambda: driver.restarts == 1)
    time.sleep(1.0)  # three stall timeouts with the old request still aborting
    assert driver.healthy and driver.restarts == 1
    good = FakeSink()
    driver.submit(make_request(), good)
    assert good.done.wait(5) and not good.errors, good.errors
    driver.shutdown()


def test_a_busy_engine_is_not_a_stalled_one():
    engine = FakeEngine(steps=40, step_s=0.05)  # 2 s of steady output, stall timeout 0.4 s
    driver = make_driver([engine], stall_timeout_s=0.4)
    sink = FakeSink()
    time.sleep(0.6)  # idle time before the request does not count either
    driver.submit(make_request(), sink)
    assert sink.done.wait(10) and not sink.errors and driver.restarts == 0
    driver.shutdown()


def test_overload_is_refused_through_the_sender():
    engine = FakeEngine(mode="stall")
    driver = make_driver([engine], max_queued_requests=1)
    first, second = FakeSink(), FakeSink()
    driver.submit(make_request(), first)
    driver.submit(make_request(), second)
    assert second.done.wait(5) and isinstance(second.errors[0], OverloadedError)
    driver.shutdown()
    assert first.done.is_set() and isinstance(first.errors[0], EngineUnavailableError)


def test_shutdown_ends_in_flight_requests_after_the_grace_and_sends_their_final_response():
    engine = FakeEngine(steps=10_000, step_s=0.01)
    driver = make_driver([engine], shutdown_grace_s=0.3)
    sink = FakeSink()
    driver.submit(make_request(), sink)
    wait_until(lambda: sink.responses)
    start = time.monotonic()
    driver.shutdown()
    assert 0.25 < time.monotonic() - start < 5
    assert sink.done.is_set() and "shutting down" in str(sink.errors[0])
    assert engine.shut_down and not engine.registered


def test_gauges_are_pushed_by_the_metrics_thread(records):
    driver = make_driver([FakeEngine()], observer=records)
    wait_until(lambda: records.counts)
    assert records.counts[0]["engine_healthy"] == 1
    driver.shutdown()
