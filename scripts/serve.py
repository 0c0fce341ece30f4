"""`make serve`: start tritonserver (the vllm_model) and the OpenAI-compatible frontend; Ctrl-C stops both.

Usage: python -m scripts.serve [--model-repository DIR] [--http-port 8000] [--grpc-port 8001]
       [--metrics-port 8002] [--frontend-port 9000] [--host 127.0.0.1] [--triton-host 127.0.0.1]
       [--admin-key KEY] [-- extra frontend arguments]

Closed by default: both servers listen on 127.0.0.1 only; `--host 0.0.0.0` opens the frontend (in a
container, for example) and `--triton-host` Triton's three endpoints. Triton's restricted APIs take
the key from --admin-key / $TRITON_ADMIN_KEY, else one made for this start and printed here once
(HTTP header `triton-admin-key`, gRPC metadata `triton-grpc-protocol-triton-admin-key`).
See docs/security.md.

Stopping leaves nothing behind, however it comes: Ctrl-C, SIGTERM (to this process or its whole
process group, as a supervisor or `make` sends it, even twice) or SIGHUP run one cleanup that no
further signal interrupts: the frontend, then tritonserver, each given SIGTERM and a deadline, then
SIGKILL to its process group. If this process is killed outright (SIGKILL), the kernel kills both
servers (scripts/devservers.py), and the model's reaper ends the Python stub and the vLLM engine.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path

from backend.config import load_engine_args
from backend.launcher import ADMIN_KEY_HEADER, GRPC_ADMIN_KEY_HEADER, add_server_arguments, admin_key_from
from client.triton_inputs import MODEL_NAME
from scripts.devservers import LOOPBACK, FrontendServer, Process, TritonServer

logger = logging.getLogger("serve")
START_TIMEOUT_S = 600.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _model_path(repository: Path) -> Path | None:
    """The served model's directory from the repository's model.json, for the frontend's --model-path."""
    path = Path(load_engine_args(repository / MODEL_NAME / "1" / "model.json")["model"])
    return path if (path / "config.json").is_file() else None


def _ignore_stop_signals() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def _interrupt(signum: int, frame: object) -> None:
    """SIGINT/SIGTERM/SIGHUP handler: unwind through the cleanup, which no later signal may cut short
    (a second Ctrl-C; make forwards the SIGTERM its process group got, so serve.py gets two)."""
    _ignore_stop_signals()
    raise KeyboardInterrupt


def _stop_all(servers: list[Process]) -> None:
    """Stop the servers, newest first (a server still starting was stopped by its own wait)."""
    _ignore_stop_signals()
    for server in reversed(servers):
        logger.info("stopping %s", "frontend" if isinstance(server, FrontendServer) else "tritonserver")
        server.stop()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_arguments(parser, host_option="--triton-host")
    parser.add_argument("--frontend-port", type=int, default=9000)
    parser.add_argument("--host", default=LOOPBACK,
                        help="address the frontend binds to (0.0.0.0: every interface; default %(default)s)")
    parser.add_argument("frontend_args", nargs="*", help="further frontend arguments (after --)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Start both servers, print the URLs, and stop both on Ctrl-C/SIGTERM (or when either exits)."""
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [serve] %(message)s")
    # Set explicitly: a shell starts background jobs with SIGINT ignored, which Python would keep.
    for signum in STOP_SIGNALS:
        signal.signal(signum, _interrupt)
    admin_key, generated = admin_key_from(args)
    servers: list[Process] = []
    try:
        logger.info("starting tritonserver on %s (the vLLM engine takes a minute to load)", args.triton_host)
        triton = TritonServer(args.model_repository, None, host=args.triton_host, admin_key=admin_key,
                              ports=(args.http_port, args.grpc_port, args.metrics_port), timeout_s=START_TIMEOUT_S)
        servers.append(triton)
        extra = ["--triton-metrics-url", triton.metrics_url]
        model_path = _model_path(args.model_repository)
        if model_path is not None:
            extra += ["--model-path", str(model_path)]
        frontend = FrontendServer(triton.grpc_url, None, *extra, *args.frontend_args, host=args.host,
                                  port=args.frontend_port)
        servers.append(frontend)
        logger.info("ready:\n  OpenAI API   %s/v1  (models, completions, chat/completions)\n"
                    "  health       %s/health   metrics %s/metrics\n"
                    "  Triton       HTTP %s  gRPC %s  metrics %s\n"
                    "Ctrl-C stops both.", frontend.url, frontend.url, frontend.url,
                    triton.http_url, triton.grpc_url, triton.metrics_url)
        if generated:  # shown once, here: the operator's terminal
            logger.info("Triton's restricted APIs (shared memory, repository, trace, logging) need the key %s\n"
                        "  (HTTP header %s, gRPC metadata %s; set $TRITON_ADMIN_KEY to choose it)",
                        admin_key, ADMIN_KEY_HEADER, GRPC_ADMIN_KEY_HEADER)
        while triton.proc.poll() is None and frontend.proc.poll() is None:
            time.sleep(1)
        logger.error("a server exited (tritonserver: %s, frontend: %s); stopping",
                     triton.proc.poll(), frontend.proc.poll())
        sys.exit(1)
    except KeyboardInterrupt:
        logger.info("interrupted")
    except (RuntimeError, TimeoutError) as exc:
        logger.error("%s", exc)
        sys.exit(1)
    finally:
        _stop_all(servers)


if __name__ == "__main__":
    main()
