"""The servers the integration tests talk to: re-exported from scripts.devservers, the one module
that starts dev servers (tooling imports that module, never tests/)."""

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
