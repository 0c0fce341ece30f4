"""The servers the integration tests talk to: re-exported from scripts.devservers, the one module
that starts dev servers (tooling imports that module, never tests/)."""

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
