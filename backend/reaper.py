"""Nothing the model starts outlives it: a small watcher process beside each Python stub.

The stub (the process that runs model.py) starts vLLM's engine core, which starts its worker.
Two hard deaths left them running with parent 1, holding their memory (on a GPU, the card, so the
next start fails):
- tritonserver dies (SIGKILL, a crash) while the engine is hung or stopped: the stub notices its
  server is gone, but its exit waits on the engine and never ends;
- the stub itself is killed: vLLM's engine core has no parent-death check of its own.
A thread in the stub covers neither a stuck stub nor a dead one, so a separate process does it:
`python -m backend.reaper STUB_PID SERVER_PID` notes the stub's descendants every interval, and
once the stub or tritonserver is gone it SIGKILLs the stub and every process it noted (SIGKILL
ends stopped processes too), then exits. It ignores SIGINT, SIGTERM and SIGHUP: a Ctrl-C or a
supervisor's SIGTERM to the process group must not take it away before the others are gone.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
INTERVAL_S = 1.0


def gone(proc: psutil.Process) -> bool:
    """True when the process has exited (a zombie counts: it runs no more code)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def watch(stub: psutil.Process, server: psutil.Process, interval_s: float = INTERVAL_S) -> list[int]:
    """Note the stub's descendants until the stub or the server is gone; kill what is left; return pids."""
    me = os.getpid()
    noted: set[psutil.Process] = set()  # psutil.Process compares by pid and start time: safe from reuse
    while not gone(stub) and not gone(server):
        try:
            noted = {p for p in noted if not gone(p)} | {p for p in stub.children(recursive=True) if p.pid != me}
        except psutil.Error:
            pass  # the stub ended between the two checks: the loop condition sees it next
        time.sleep(interval_s)
    killed = []
    for proc in (stub, *noted):
        if gone(proc):
            continue
        try:
            proc.kill()
            killed.append(proc.pid)
        except psutil.Error:
            pass
    return killed


def start_reaper(interval_s: float = INTERVAL_S) -> subprocess.Popen:
    """From the stub: start the watcher for this process and its parent (tritonserver)."""
    python = sys.executable if Path(sys.executable).name.startswith("python") else shutil.which("python3")
    if python is None:
        raise RuntimeError("no python3 on PATH to run backend.reaper")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))  # the stub ignores PYTHONPATH; the reaper does not
    argv = [python, "-m", "backend.reaper", str(os.getpid()), str(os.getppid()), "--interval", str(interval_s)]
    return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stub_pid", type=int)
    parser.add_argument("server_pid", type=int)
    parser.add_argument("--interval", type=float, default=INTERVAL_S)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    try:
        stub, server = psutil.Process(args.stub_pid), psutil.Process(args.server_pid)
    except psutil.NoSuchProcess:
        logger.error("reaper: stub %d or server %d is gone already", args.stub_pid, args.server_pid)
        return
    killed = watch(stub, server, args.interval)
    if killed:
        logger.warning("reaper: the %s is gone; killed what it left running: %s",
                       "server" if gone(server) else "model stub", killed)


if __name__ == "__main__":
    main()
