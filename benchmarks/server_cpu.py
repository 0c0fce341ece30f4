"""Where the servers' CPU goes during a benchmark cell: the serving processes vs vLLM's engine.

A path's servers are process trees: `vllm serve` (its API server, then vLLM's engine core and worker
processes), tritonserver (itself, the model's Python stub, then the engine), and for the frontend
the frontend's processes plus tritonserver's tree. vLLM names its engine processes `VLLM::...`;
everything else in a tree is serving. CPU seconds are read from /proc (psutil) before and after a
cell. On a CPU box the engine's share includes its spin-waiting, which fills whatever the serving
processes leave, so the serving share per token is the number to compare between paths.

`pin_serving` keeps a tree's serving processes on given CPUs (every thread), engines untouched. vLLM's
CPU build binds its worker's OpenMP threads to some cores and reserves the rest for other work; a
serving thread that lands on an OpenMP core preempts the worker and stalls the whole step.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable

import psutil

ENGINE_PROCESS_PREFIX = "VLLM::"  # vLLM's engine core and worker processes (their process titles)


@dataclasses.dataclass(frozen=True)
class CpuSplit:
    """CPU seconds (user + system) of a set of process trees, split into serving and engine."""

    serving_s: float = 0.0
    engine_s: float = 0.0

    def __sub__(self, other: CpuSplit) -> CpuSplit:
        return CpuSplit(self.serving_s - other.serving_s, self.engine_s - other.engine_s)


def _trees(roots: Iterable[int]) -> dict[int, psutil.Process]:
    """The processes `roots` and all their descendants, by pid (gone ones left out)."""
    found: dict[int, psutil.Process] = {}
    for pid in roots:
        try:
            root = psutil.Process(pid)
            for process in [root, *root.children(recursive=True)]:
                found[process.pid] = process
        except psutil.Error:
            continue
    return found


def cpu_split(roots: Iterable[int]) -> CpuSplit:
    """CPU seconds so far of the trees under `roots`, engine processes (VLLM::...) apart from the rest."""
    serving = engine = 0.0
    for process in _trees(roots).values():
        try:
            times = process.cpu_times()
            engine_process = process.name().startswith(ENGINE_PROCESS_PREFIX)
        except psutil.Error:
            continue  # exited meanwhile
        if engine_process:
            engine += times.user + times.system
        else:
            serving += times.user + times.system
    return CpuSplit(serving, engine)


def parse_cpus(text: str) -> set[int]:
    """A CPU list as taskset and vLLM write it ("1", "0,2", "2-5") -> CPU numbers."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        if not first.isdigit() or (last and not last.isdigit()) or int(last or first) < int(first):
            raise ValueError(f"not a CPU list: {text!r} (e.g. '1', '0,2' or '2-5')")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def pin_serving(roots: Iterable[int], cpus: set[int]) -> int:
    """Run every thread of the serving processes under `roots` on `cpus` (engine processes, VLLM::...,
    keep their own placement); returns how many threads were set. Threads started later inherit
    their creator's CPUs."""
    pinned = 0
    for process in _trees(roots).values():
        try:
            if process.name().startswith(ENGINE_PROCESS_PREFIX):
                continue
            threads = [thread.id for thread in process.threads()]
        except psutil.Error:
            continue
        for tid in threads:
            try:
                os.sched_setaffinity(tid, cpus)
                pinned += 1
            except (ProcessLookupError, PermissionError):
                continue  # the thread ended meanwhile, or is not ours to move
    return pinned
