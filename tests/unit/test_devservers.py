"""Dev servers leave nothing behind: a killed starter takes its servers along; stop() ends the group."""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from backend.reaper import gone
from scripts.devservers import Process

# A starter that starts a "server" through devservers, prints its pid, then waits to be killed.
_STARTER = ("import os, time; from scripts.devservers import Process; "
            "p = Process(['sleep', '600'], dict(os.environ), None); print(p.pid, flush=True); time.sleep(600)")
# A "server" that ignores SIGTERM and has a child of its own (as tritonserver has the stub).
_STUBBORN = ("import signal, subprocess, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
             "c = subprocess.Popen(['sleep', '600']); print(c.pid, flush=True); time.sleep(600)")


def _gone_within(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or gone(psutil.Process(pid)):
            return True
        time.sleep(0.05)
    return False


def test_a_server_dies_with_the_process_that_started_it_even_by_sigkill():
    starter = subprocess.Popen([sys.executable, "-c", _STARTER], stdout=subprocess.PIPE, text=True)
    server = int(starter.stdout.readline())
    assert os.getpgid(server) == server  # its own process group
    assert os.getsid(server) == os.getsid(starter.pid)  # in its starter's session (one scheduler autogroup)
    starter.kill()
    starter.wait()
    assert _gone_within(server, 5), "the server outlived the process that started it"


def test_stop_kills_a_server_that_ignores_sigterm_and_its_children(tmp_path):
    process = Process([sys.executable, "-c", _STUBBORN], dict(os.environ), tmp_path / "log")
    deadline = time.monotonic() + 10
    while not (tmp_path / "log").read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int((tmp_path / "log").read_text().split()[0])
    started = time.monotonic()
    process.stop(timeout_s=1)
    assert time.monotonic() - started < 5
    assert process.proc.returncode == -signal.SIGKILL
    assert _gone_within(child, 5), "the server's child outlived stop()"


@pytest.mark.parametrize("own_session", [False, True])
def test_a_server_shares_this_session_unless_asked(tmp_path, own_session):
    process = Process([sys.executable, "-c", "import time; time.sleep(60)"], dict(os.environ), tmp_path / "log",
                      own_session=own_session)
    try:
        assert os.getpgid(process.pid) == process.pid
        assert (os.getsid(process.pid) == process.pid) is own_session
        assert (os.getsid(process.pid) == os.getsid(0)) is not own_session
    finally:
        process.stop(timeout_s=5)
