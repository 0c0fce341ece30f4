"""The engine's CPU priority: every thread of its processes set nicer, on every start (real processes)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from types import SimpleNamespace

import psutil
import pytest

from backend.lifecycle import EngineLifecycle, engine_niceness, renice
from tests.servers import thread_niceness
from tests.unit.fake_engine import FakeEngine

# A stand-in engine process: four threads; one more starts on each line read from stdin.
_ENGINE = """
import sys, threading, time
def idle():
    time.sleep(600)
for _ in range(4):
    threading.Thread(target=idle, daemon=True).start()
print("ready", flush=True)
for line in sys.stdin:
    threading.Thread(target=idle, daemon=True).start()
    print("started", flush=True)
"""


@pytest.fixture
def engine_process():
    proc = subprocess.Popen([sys.executable, "-c", _ENGINE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    yield proc
    proc.kill()
    proc.wait()


def _start_thread(proc: subprocess.Popen) -> None:
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "started"


def test_every_thread_is_set_and_new_threads_inherit_it(engine_process):
    process = psutil.Process(engine_process.pid)
    assert thread_niceness(process) == {0}
    assert renice([engine_process.pid], 7) == len(process.threads()) == 5
    assert thread_niceness(process) == {7}
    _start_thread(engine_process)
    assert len(process.threads()) == 6 and thread_niceness(process) == {7}


def test_niceness_is_never_lowered(engine_process):
    renice([engine_process.pid], 9)
    assert renice([engine_process.pid], 3) == 0
    assert thread_niceness(psutil.Process(engine_process.pid)) == {9}


def test_gone_processes_are_skipped(engine_process):
    engine_process.kill()
    engine_process.wait()
    assert renice([engine_process.pid], 5) == 0


def _engine(device_type: str | None) -> SimpleNamespace:
    return SimpleNamespace(vllm_config=SimpleNamespace(device_config=SimpleNamespace(device_type=device_type)))


@pytest.mark.parametrize("setting, device_type, expected", [
    ("auto", "cpu", 19), ("auto", "cuda", 0), ("auto", None, 0), ("5", "cuda", 5), (" 0 ", "cpu", 0),
])
def test_auto_is_nice_on_cpu_only(setting, device_type, expected):
    assert engine_niceness(setting, _engine(device_type)) == expected


def test_no_vllm_config_is_not_a_cpu_engine():
    assert engine_niceness("auto", object()) == 0


class _ProcessEngine(FakeEngine):
    """A fake engine whose "engine core" is a real process, found where vLLM keeps its processes."""

    def __init__(self, pid: int, device_type: str) -> None:
        super().__init__()
        self.vllm_config = _engine(device_type).vllm_config
        manager = SimpleNamespace(processes=[SimpleNamespace(pid=pid)])
        self.engine_core = SimpleNamespace(resources=SimpleNamespace(engine_manager=manager))


@pytest.mark.parametrize("device_type, expected", [("cpu", {19}), ("cuda", {0})])
def test_each_started_engine_gets_its_niceness(engine_process, device_type, expected):
    lifecycle = EngineLifecycle(lambda: _ProcessEngine(engine_process.pid, device_type), "auto")
    lifecycle.start()
    assert thread_niceness(psutil.Process(engine_process.pid)) == expected
    assert os.getpriority(os.PRIO_PROCESS, 0) == 0  # this process (the stub) is left alone


def test_a_replacement_engine_gets_it_too(engine_process):
    engines = iter([FakeEngine(), _ProcessEngine(engine_process.pid, "cpu")])
    lifecycle = EngineLifecycle(lambda: next(engines), "auto")

    async def replace() -> None:
        lifecycle.start()
        lifecycle.replace("test")
        while lifecycle.replacing:
            await asyncio.sleep(0.01)

    asyncio.run(replace())
    assert lifecycle.restarts == 1
    assert thread_niceness(psutil.Process(engine_process.pid)) == {19}


def test_a_frozen_heap_lets_a_replaced_engine_go_and_is_frozen_again() -> None:
    """The model freezes its startup heap (freeze_heap). Frozen objects are never collected, so a
    replaced engine's reference cycles would stay for good; the restart unfreezes, then freezes again."""
    import gc
    import weakref

    from backend.lifecycle import freeze_heap

    old, fresh = FakeEngine(), FakeEngine()
    old.cycle = old  # as vLLM's engine client: its own tasks and threads refer back to it
    gone = weakref.ref(old)
    engines = [old, fresh]  # popped: an iterator over a list would keep the old engine
    lifecycle = EngineLifecycle(lambda: engines.pop(0), "0")
    del old

    async def replace() -> None:
        lifecycle.start()
        assert freeze_heap() > 0
        lifecycle.replace("test")
        while lifecycle.replacing:
            await asyncio.sleep(0.01)

    try:
        asyncio.run(replace())
        assert lifecycle.restarts == 1 and lifecycle.engine is fresh
        assert gone() is None  # collected by the restart's collection, not kept frozen
        assert gc.get_freeze_count() > 0  # and the heap is frozen again
    finally:
        gc.unfreeze()
