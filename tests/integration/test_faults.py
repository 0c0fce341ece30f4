"""Faults against a real server: cancellation (running and queued), overload, penalties with mixed
embedding lengths (vLLM issue 57719), engine death, engine stall and recovery, graceful shutdown.

Uses its own tritonserver with one sequence at a time (so requests queue), a queue bound of 2 and
a short stall timeout.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import threading
import time

import httpx
import numpy as np
import psutil
import pytest

from client.triton_sync import InferenceServerException, generate
from tests.integration.streams import OpenStream, gauge, wait_for, xfail_on_connection_reset
from tests.servers import FrontendServer, TritonServer, engine_cores, engine_niceness, make_repository

# Long enough that a "running" request is still running when checked, also on a fast CPU (the
# tiny model writes ~5,000 tokens/s there): these servers raise the context to the model's 65,536.
LONG_CONTEXT = {"max_model_len": 65536}
LONG = {"temperature": 0, "max_tokens": 65000, "ignore_eos": True}
GREEDY = {"temperature": 0, "max_tokens": 12}
STALL_S = 6  # the other tests here keep the engine producing: they never come near it


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    repo = make_repository(root / "repo", engine_args={"max_num_seqs": 1, **LONG_CONTEXT},
                           parameters={"max_queued_requests": "2", "cancel_poll_interval_s": "0.05",
                                       "engine_stall_timeout_s": str(STALL_S)})
    server = TritonServer(repo, root / "tritonserver.log")
    yield server
    server.stop()


def counts(server) -> dict[str, float]:
    text = server.metrics()
    return {state: gauge(text, "vllm:num_requests", state=state) for state in ("active", "queued", "engine_unfinished")}


def idle(server) -> bool:
    return all(v == 0 for v in counts(server).values())


@xfail_on_connection_reset
def test_cancelling_a_running_stream_aborts_it_in_the_engine(server):
    stream = OpenStream(server.grpc_url, text="cancel me", sampling=LONG)
    stream.wait_responses(3)
    wait_for(lambda: counts(server)["engine_unfinished"] == 1, 10, "the engine to hold the request")  # gauges lag a poll
    stream.cancel()
    took = wait_for(lambda: idle(server), 10, "the engine to drop the cancelled request")
    assert took < 5
    assert gauge(server.metrics(), "vllm:request_outcome_total", outcome="cancelled") >= 1
    stream.close()


@xfail_on_connection_reset
def test_cancelling_a_queued_request_that_has_no_token_yet(server):
    running = OpenStream(server.grpc_url, text="first", sampling=LONG)
    running.wait_responses(2)
    queued = OpenStream(server.grpc_url, text="second", sampling=LONG)
    wait_for(lambda: counts(server)["queued"] == 1, 30, "the second request to queue")
    assert not queued.responses
    queued.cancel()

    def only_running_left() -> bool:
        now = counts(server)
        return now["queued"] == 0 and now["engine_unfinished"] == now["active"] <= 1

    wait_for(only_running_left, 10, "only the running request to remain")
    error = running.error
    assert not running.final.is_set() or error is None, f"the running request ended: {error and error.status()}"
    running.cancel()
    wait_for(lambda: idle(server), 10, "the engine to be idle")
    running.close()
    queued.close()


@xfail_on_connection_reset  # tritonserver 2.51 can drop the queued streams, and then admits the third
def test_overload_is_refused_at_once(server):
    running = OpenStream(server.grpc_url, text="busy", sampling=LONG)
    running.wait_responses(2)
    waiting = [OpenStream(server.grpc_url, text=f"wait {i}", sampling=LONG) for i in range(2)]
    wait_for(lambda: counts(server)["queued"] == 2, 30, "two queued requests")
    start = time.monotonic()
    with pytest.raises(InferenceServerException, match="overloaded"):
        generate(server.grpc_url, text="one too many", sampling=GREEDY)
    assert time.monotonic() - start < 5
    for stream in [running, *waiting]:
        stream.close()
    wait_for(lambda: idle(server), 15, "the engine to be idle")


def test_penalties_with_embedding_prompts_of_different_lengths(triton, tiny):
    """vLLM issue 57719: penalties + prompt_embeds of mixed lengths in one batch killed the engine."""
    sampling = {"temperature": 0, "max_tokens": 16, "ignore_eos": True, "repetition_penalty": 1.3, "frequency_penalty": 0.5,
                "presence_penalty": 0.5}
    rng = np.random.default_rng(1)
    requests = []
    for i in range(12):
        n = [900, 300, 37][i % 3]
        ids = rng.integers(0, 256, size=n).tolist()
        requests.append(dict(embeds=tiny.embed(ids)) if i % 2 == 0 else dict(text=bytes(ids).decode("latin-1")))
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda r: generate(triton.grpc_url, sampling=sampling, **r), requests))
    assert all(len(r.token_ids) == 16 for r in results)
    # Same answers one at a time (no batch effects), and the engine is alive.
    for i in (0, 2):  # embedding prompts of 900 and 37 rows
        alone = generate(triton.grpc_url, sampling=sampling, **requests[i])
        assert alone.token_ids == results[i].token_ids
    assert triton.model_ready()


def _when_serving(call, timeout_s: float = 300):
    """call() once the engine serves: a test that failed before this one may have left it restarting."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except InferenceServerException as exc:
            if "restarting" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(1)


def _engine_core(server) -> psutil.Process:
    cores = engine_cores(server)
    assert len(cores) == 1, f"expected one EngineCore process, found {cores}"
    return cores[0]


@xfail_on_connection_reset
def test_engine_death_fails_in_flight_requests_fast_and_the_engine_recovers(server, tiny, tmp_path):
    reference = generate(server.grpc_url, embeds=tiny.embed(tiny.ids("recover", special=True)), sampling=GREEDY)
    frontend = FrontendServer(server.grpc_url, tmp_path / "frontend.log", "--hidden-size", str(tiny.hidden_size),
                              "--triton-metrics-url", f"http://localhost:{server.metrics_port}/metrics")
    health: list[int] = []  # the frontend's /health, polled from the kill until the engine is back
    polling = threading.Event()

    def poll_health() -> None:
        while not polling.is_set():
            health.append(httpx.get(f"{frontend.url}/health", timeout=10).status_code)
            time.sleep(0.1)

    streams = [OpenStream(server.grpc_url, text="doomed, running", sampling=LONG)]
    streams[0].wait_responses(2)
    streams += [OpenStream(server.grpc_url, text=f"doomed, queued {i}", sampling=LONG) for i in range(2)]
    wait_for(lambda: counts(server)["queued"] == 2, 30, "two queued requests")
    old = _engine_core(server)
    poller = threading.Thread(target=poll_health, daemon=True)
    poller.start()
    old.kill()
    start = time.monotonic()
    for stream in streams:
        assert stream.final.wait(15), "an in-flight request hung after the engine died"
        assert stream.error is not None and "engine" in stream.error.message()
    assert time.monotonic() - start < 15
    # Meanwhile new requests get a clear, immediate "unavailable" answer (or, if the restart was
    # quick, a normal one).
    wait_for(lambda: gauge(server.metrics(), "vllm:engine_restarts") >= 1, 300, "the engine restart")
    assert gauge(server.metrics(), "vllm:engine_healthy") == 1
    time.sleep(0.5)
    polling.set()
    poller.join(15)
    frontend.stop()
    # Triton's own readiness can't be lowered by a Python-backend model; the frontend's /health reads
    # the model's engine gauge, so a load balancer stops sending while the engine restarts.
    assert 503 in health, f"/health never said 503 while the engine restarted: {health[:20]}"
    assert health[-1] == 200
    again = generate(server.grpc_url, embeds=tiny.embed(tiny.ids("recover", special=True)), sampling=GREEDY)
    assert again.token_ids == reference.token_ids
    assert _engine_core(server).pid != old.pid
    assert all(values == {19} for values in engine_niceness(server).values()), "the new engine runs at niceness 0"
    for stream in streams:
        stream.close()


@xfail_on_connection_reset
def test_a_stalled_engine_is_replaced_in_place(server, tiny):
    """SIGSTOP the engine mid-stream: in-flight requests end UNAVAILABLE within the stall timeout
    (plus a margin), the health gauge reads 0 meanwhile, and the same tritonserver serves again."""
    prompt = tiny.embed(tiny.ids("stall", special=True))
    reference = _when_serving(lambda: generate(server.grpc_url, embeds=prompt, sampling=GREEDY))
    restarts = gauge(server.metrics(), "vllm:engine_restarts")
    streams = [OpenStream(server.grpc_url, text="stalled, running", sampling=LONG)]
    streams[0].wait_responses(2)
    stopped = _engine_core(server)
    stopped.suspend()  # SIGSTOP: alive, silent
    start = time.monotonic()
    try:
        for stream in streams:
            assert stream.final.wait(STALL_S + 20 - (time.monotonic() - start)), "a request outlived the stall"
        ended = time.monotonic() - start
        for stream in streams:  # the gRPC stream carries the message only; the code is unit-tested
            assert stream.error is not None and "stalled" in stream.error.message()
        assert STALL_S - 1 < ended < STALL_S + 15, f"ended after {ended:.1f}s"
        wait_for(lambda: gauge(server.metrics(), "vllm:engine_healthy") == 0, 5, "the health gauge to read 0")
        wait_for(lambda: not stopped.is_running() or stopped.status() == psutil.STATUS_ZOMBIE, 30,
                 "the stalled engine process to be killed")
    finally:
        if stopped.is_running():
            stopped.kill()
    wait_for(lambda: gauge(server.metrics(), "vllm:engine_restarts") > restarts, 300, "the engine restart")
    wait_for(lambda: gauge(server.metrics(), "vllm:engine_healthy") == 1, 10, "the health gauge to read 1")
    again = generate(server.grpc_url, embeds=prompt, sampling=GREEDY)
    assert again.token_ids == reference.token_ids
    assert server.proc.poll() is None and _engine_core(server).pid != stopped.pid
    assert gauge(server.metrics(), "vllm:request_outcome_total", outcome="stalled") >= 1
    wait_for(lambda: idle(server), 10, "the engine to be idle")
    for stream in streams:
        stream.close()


EXIT_TIMEOUT_S = 30  # Triton's own deadline; the drain must end requests well before it
GRACE_S = 3


@pytest.fixture
def fresh_server(tmp_path):
    """Its own server: the test stops it."""
    repo = make_repository(tmp_path / "repo", engine_args=LONG_CONTEXT, parameters={"shutdown_grace_s": str(GRACE_S)})
    server = TritonServer(repo, tmp_path / "tritonserver.log", extra=[f"--exit-timeout-secs={EXIT_TIMEOUT_S}"])
    yield server
    server.stop()


@xfail_on_connection_reset
def test_shutdown_drains_in_flight_requests_and_exits_cleanly(fresh_server):
    """SIGTERM: the model sees Triton turn not-ready, stops admitting, lets in-flight requests run
    shutdown_grace_s, then ends them; Triton can then unload the model and exit by itself.

    Without the drain Triton would wait its whole exit timeout for the open decoupled request and
    then exit hard (status 1), so both the timing and the exit status tell a drain from a timeout.
    Triton 2.51 does not pass the model's last error ("the server is shutting down") to a gRPC
    stream while it shuts down: the client sees its stream end (a final response or a closed stream).
    """
    server = fresh_server
    stream = OpenStream(server.grpc_url, text="interrupted", sampling=LONG)
    stream.wait_responses(2)
    family = [server.proc.pid] + [c.pid for c in psutil.Process(server.proc.pid).children(recursive=True)]
    assert engine_cores(server)
    start = time.monotonic()
    os.kill(server.proc.pid, signal.SIGTERM)
    assert stream.final.wait(EXIT_TIMEOUT_S), "the in-flight request was not ended by the drain"
    ended_after = time.monotonic() - start
    assert GRACE_S - 0.5 < ended_after < EXIT_TIMEOUT_S - 5, f"ended after {ended_after:.1f}s"
    stream.close()
    assert server.proc.wait(EXIT_TIMEOUT_S + 30) == 0, "tritonserver did not exit cleanly"
    assert "Segfault" not in server.log_path.read_text(errors="replace")
    wait_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                             for p in family), 60, "every server process to exit")
