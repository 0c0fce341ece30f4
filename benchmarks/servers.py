"""The benchmark's and load tests' servers: an alias of scripts.devservers, where every dev server
is started (vLLM's own server, tritonserver with a model copy, our frontend; free ports, logs,
readiness waits, a stop that leaves nothing behind)."""

from scripts.devservers import (  # noqa: F401 - names the benchmark programs import from here
    REPO_ROOT,
    Servers,
    engine_args,
)
