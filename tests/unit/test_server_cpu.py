"""The benchmark's server CPU split: a process tree's CPU, vLLM's engine processes (VLLM::...) apart."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import psutil
import pytest

from benchmarks.server_cpu import CpuSplit, cpu_split, parse_cpus, pin_serving

BURN = "import time\nend = time.process_time() + {seconds}\nwhile time.process_time() < end: pass\n"

# A child named as vLLM names its engine core burns 0.4 s of CPU; its parent (the "server") 0.2 s.
ENGINE = "open('/proc/self/comm', 'w').write('VLLM::EngineCor')\n" + BURN.format(seconds=0.4) + (
    "print('burnt', flush=True)\nimport time\ntime.sleep(60)\n")
SERVER = textwrap.dedent(f"""
    import subprocess, sys, time
    engine = subprocess.Popen([sys.executable, "-c", {ENGINE!r}], stdout=subprocess.PIPE, text=True)
    engine.stdout.readline()
    """) + BURN.format(seconds=0.2) + "print('ready', flush=True)\ntime.sleep(60)\n"


def test_a_tree_is_split_into_engine_and_serving_processes() -> None:
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        split = cpu_split([server.pid])
        assert 0.35 <= split.engine_s < 1.4, split  # the grandchild counts, as the engine's (10 ms ticks)
        assert 0.15 <= split.serving_s < split.engine_s, split
        later = cpu_split([server.pid]) - split  # both sleep now
        assert later.serving_s < 0.05 and later.engine_s < 0.05
    finally:
        for child in psutil.Process(server.pid).children(recursive=True):
            child.kill()
        server.kill()
        server.wait()


def test_gone_processes_count_nothing() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    assert cpu_split([process.pid, 2 ** 22 + 7]) == CpuSplit(0.0, 0.0)


@pytest.mark.parametrize(("text", "cpus"), [("1", {1}), ("0,2", {0, 2}), ("2-4,7", {2, 3, 4, 7})])
def test_cpu_lists_read_as_taskset_writes_them(text: str, cpus: set[int]) -> None:
    assert parse_cpus(text) == cpus


@pytest.mark.parametrize("text", ["", "a", "3-1", "1,", "-2", "1-x"])
def test_a_bad_cpu_list_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a CPU list"):
        parse_cpus(text)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to tell pinned from not")
def test_serving_threads_are_pinned_and_engine_processes_are_not() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        (engine,) = psutil.Process(server.pid).children()
        assert pin_serving([server.pid], {allowed[-1]}) >= 1
        assert all(os.sched_getaffinity(t.id) == {allowed[-1]} for t in psutil.Process(server.pid).threads())
        assert all(os.sched_getaffinity(t.id) == set(allowed) for t in engine.threads())
    finally:
        for child in psutil.Process(server.pid).children(recursive=True):
            child.kill()
        server.kill()
        server.wait()
