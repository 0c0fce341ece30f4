"""Where the servers' CPU goes during a benchmark cell: the serving processes vs vLLM's engine.

A path's servers are process trees: `vllm serve` (its API server, then vLLM's engine core and worker
processes), tritonserver (itself, the model's Python stub, then the engine), and for the frontend
the frontend's processes plus tritonserver's tree. vLLM names its engine processes `VLLM::...`;
everything else in a tree is serving. CPU seconds are read from /proc (psutil) before and after a
cell. On a CPU box the engine's share includes its spin-waiting, which fills whatever the serving
processes leave, so the serving share per token is the number to compare between paths.
"""

from __future__ import annotations

import dataclasses
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
