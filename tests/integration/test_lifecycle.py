"""Stopping leaves nothing behind: `make serve` stopped as a supervisor stops it, or killed outright
while the vLLM engine is stopped (SIGSTOP, a hung engine), leaves no tritonserver, Python stub,
engine, reaper or frontend process.

Each test starts its own `make serve` / `python -m scripts.serve` on free ports (it must break it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from backend.reaper import gone
from scripts.devservers import REPO_ROOT, free_port

START_TIMEOUT_S = 300
STOP_DEADLINE_S = 90  # tritonserver's graceful stop, idle, takes a few seconds; its exit timeout is 30 s
KILL_DEADLINE_S = 15  # the reaper polls every second


def _port_args() -> tuple[list[str], int]:
    http, grpc, metrics, frontend = (free_port() for _ in range(4))
    return ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
            "--frontend-port", str(frontend)], frontend


def _start(argv: list[str], log: Path, frontend_port: int) -> subprocess.Popen:
    """Start in a new session (as a supervisor would) and wait until the frontend is healthy."""
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"serve exited with {proc.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{frontend_port}/health", timeout=5).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"serve not ready after {START_TIMEOUT_S}s:\n{log.read_text(errors='replace')[-4000:]}")


def _family(root: int) -> dict[str, psutil.Process]:
    """`root` and every process under it, by role (and by pid)."""
    roles: dict[str, psutil.Process] = {}
    top = psutil.Process(root)
    for proc in [top, *top.children(recursive=True)]:
        line = " ".join(proc.cmdline())
        role = next((r for r, mark in (("serve", "scripts.serve"), ("stub", "triton_python_backend_stub"),
                                       ("tritonserver", "bin/tritonserver"), ("frontend", "client.frontend"),
                                       ("reaper", "backend.reaper"), ("engine", "EngineCore"))
                     if mark in line or mark in proc.name()), str(proc.pid))
        roles.setdefault(role, proc)
        roles[str(proc.pid)] = proc
    for role in ("serve", "tritonserver", "stub", "engine", "reaper", "frontend"):
        assert role in roles, f"no {role} process under {root}: {sorted(roles)}"
    return roles


def _survivors(family: dict[str, psutil.Process], deadline_s: float) -> list[str]:
    """The processes of `family` still running after up to `deadline_s` (pid and command line)."""
    deadline = time.monotonic() + deadline_s
    while True:
        left = sorted({f"{p.pid} {_cmdline(p)}" for p in family.values() if not gone(p)})
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())[:120]
    except psutil.Error:
        return "?"


def _kill_all(family: dict[str, psutil.Process]) -> None:
    for proc in family.values():
        if not gone(proc):
            proc.kill()


def test_make_serve_stops_everything_on_sigterm_to_its_process_group(tmp_path):
    ports, frontend_port = _port_args()
    make = _start(["make", "-o", "install", "-o", "model", "serve", f"SERVE_ARGS={' '.join(ports)}"],
                  tmp_path / "serve.log", frontend_port)
    family = _family(make.pid)
    try:
        os.killpg(make.pid, signal.SIGTERM)  # what a supervisor sends; make forwards it to serve.py again
        # More, while the cleanup runs (an impatient supervisor or user): none may cut it short.
        for _ in range(30):
            try:
                family["serve"].send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.1)
        left = _survivors(family, STOP_DEADLINE_S)
        assert not left, f"left running after SIGTERM to make's process group: {left}"
        assert "stopping tritonserver" in (tmp_path / "serve.log").read_text(errors="replace")
    finally:
        _kill_all(family)
        make.wait(10)


def test_kill_9_of_serve_leaves_nothing_even_with_the_engine_stopped(tmp_path):
    """tritonserver dies with serve.py (the kernel's parent-death signal) while the engine core is
    stopped, as a hung engine: the model's reaper must end the stub and the engine."""
    ports, frontend_port = _port_args()
    serve = _start([sys.executable, "-m", "scripts.serve", *ports], tmp_path / "serve.log", frontend_port)
    family = _family(serve.pid)
    try:
        family["engine"].suspend()  # SIGSTOP
        serve.kill()
        serve.wait(10)
        left = _survivors(family, KILL_DEADLINE_S)
        assert not left, f"left running after kill -9 of serve.py: {left}"
    finally:
        _kill_all(family)
