"""The reaper with real processes standing in for tritonserver, the Python stub and a stopped engine."""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from backend.reaper import gone

# A stand-in stub: starts an "engine" child, prints its pid, then waits.
_STUB = ("import subprocess, sys, time; "
         "e = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
         "print(e.pid, flush=True); time.sleep(600)")


@pytest.fixture
def family():
    """(server, stub, engine pid, reaper): the engine stopped (SIGSTOP), as a hung vLLM engine core."""
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    stub = subprocess.Popen([sys.executable, "-c", _STUB], stdout=subprocess.PIPE, text=True)
    engine = int(stub.stdout.readline())
    os.kill(engine, signal.SIGSTOP)
    reaper = subprocess.Popen([sys.executable, "-m", "backend.reaper", str(stub.pid), str(server.pid),
                               "--interval", "0.1"])
    time.sleep(1.0)  # the reaper notes the stub's children
    yield server, stub, engine, reaper
    for proc in (reaper, stub, server):
        proc.kill()
        proc.wait()
    if psutil.pid_exists(engine):
        os.kill(engine, signal.SIGKILL)


def _all_gone(pids, timeout_s=10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(gone(psutil.Process(p)) if psutil.pid_exists(p) else True for p in pids):
            return True
        time.sleep(0.1)
    return False


def test_nothing_is_killed_while_server_and_stub_live(family):
    server, stub, engine, reaper = family
    time.sleep(0.5)
    assert reaper.poll() is None
    assert not gone(psutil.Process(engine)) and stub.poll() is None


def test_a_killed_server_takes_the_stub_and_its_stopped_engine(family):
    server, stub, engine, reaper = family
    server.kill()
    assert _all_gone([stub.pid, engine]), "the stub or its stopped engine outlived the server"
    assert reaper.wait(10) == 0


def test_a_killed_stub_takes_its_stopped_engine(family):
    server, stub, engine, reaper = family
    stub.kill()
    assert _all_gone([engine]), "the stopped engine outlived its stub"
    assert reaper.wait(10) == 0
    assert server.poll() is None  # the server is not the reaper's to kill


def test_signals_to_the_process_group_do_not_stop_the_reaper(family):
    server, stub, engine, reaper = family
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        reaper.send_signal(signum)
    time.sleep(0.5)
    assert reaper.poll() is None
