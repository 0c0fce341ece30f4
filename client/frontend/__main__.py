"""`python -m client.frontend --triton-url localhost:8001 --port 9000`: serve the OpenAI-compatible API.

The frontend is stateless, so it scales past one core by running `--workers` processes on one
listening socket (uvicorn's workers: the parent binds, supervises and restarts them, and stops
all of them on SIGINT/SIGTERM). Each worker has its own event loop, gRPC channel to Triton and
budgets. Their metrics go through prometheus_client's multiprocess mode in a temporary directory
that lives as long as the parent.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

import uvicorn

from client.frontend.app import CONFIG_ENV, create_app, setup_process
from client.frontend.config import parse_args, to_json

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run uvicorn (one process, or a supervisor and its workers) until stopped."""
    config = parse_args(argv)
    setup_process(config)
    common = {"host": config.host, "port": config.port, "log_level": config.log_level,
              "timeout_graceful_shutdown": 5, "access_log": False}
    if config.workers == 1:
        uvicorn.run(create_app(config), **common)
        return
    metrics_dir = tempfile.mkdtemp(prefix="frontend-metrics-")
    # Read by the workers (spawned, so they import prometheus_client after this is set).
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    os.environ[CONFIG_ENV] = to_json(config)
    logger.info("starting %d workers", config.workers)
    try:
        uvicorn.run("client.frontend.app:app_from_env", factory=True, workers=config.workers, **common)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
