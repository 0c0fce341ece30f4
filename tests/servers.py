"""The servers the integration tests talk to: re-exported from scripts.devservers, the one module
that starts dev servers (tooling imports that module, never tests/)."""

import os

import psutil

from scripts.devservers import (  # noqa: F401 - the names the tests import from here
    REPO_ROOT,
    START_TIMEOUT_S,
    TINY_MODEL,
    FrontendServer,
    Process,
    TritonServer,
    VllmServer,
    free_port,
    make_repository,
    python_module_argv,
)


def engine_cores(server: TritonServer) -> list[psutil.Process]:
    """The vLLM EngineCore processes under a running tritonserver (one per model instance)."""
    return [child for child in psutil.Process(server.proc.pid).children(recursive=True)
            if "EngineCore" in child.name() or "EngineCore" in " ".join(child.cmdline())]


def thread_niceness(proc: psutil.Process) -> set[int]:
    """The niceness values of a process's threads (Linux keeps one per thread)."""
    values = set()
    for thread in proc.threads():
        try:
            values.add(os.getpriority(os.PRIO_PROCESS, thread.id))
        except OSError:
            pass  # ended meanwhile
    return values


def engine_niceness(server: TritonServer) -> dict[str, set[int]]:
    """{process: its threads' niceness values} for every engine process (EngineCore and what it started)."""
    family = [p for core in engine_cores(server) for p in (core, *core.children(recursive=True))]
    return {f"{p.pid} {p.name()}": thread_niceness(p) for p in family}
