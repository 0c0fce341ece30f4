"""`make serve`: start tritonserver (the vllm_model) and the OpenAI-compatible frontend; Ctrl-C stops both.

Usage: python -m scripts.serve [--model-repository DIR] [--http-port 8000] [--grpc-port 8001]
       [--metrics-port 8002] [--frontend-port 9000] [--host 0.0.0.0] [-- extra frontend arguments]
Each server runs in its own process group, so stopping one stops its children too (the vLLM engine).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from backend.config import load_engine_args
from backend.launcher import REPO_ROOT, add_server_arguments, server_command
from client.triton_inputs import MODEL_NAME

logger = logging.getLogger("serve")
START_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 60.0


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _start(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(argv, env=env, start_new_session=True)


def _wait_ready(proc: subprocess.Popen, url: str, what: str, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it was ready")
        if _http_ok(url):
            return
        time.sleep(1)
    raise TimeoutError(f"{what} not ready after {timeout_s:.0f}s ({url})")


def _stop(proc: subprocess.Popen | None, what: str) -> None:
    """SIGINT the process group, wait, then SIGKILL whatever of the group is left."""
    if proc is None:
        return
    if proc.poll() is None:
        logger.info("stopping %s", what)
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop in %.0fs; killing it", what, STOP_TIMEOUT_S)
    try:  # the engine's worker processes, should any outlive their parent
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _model_path(repository: Path) -> Path | None:
    """The served model's directory from the repository's model.json, for the frontend's --model-path."""
    path = Path(load_engine_args(repository / MODEL_NAME / "1" / "model.json")["model"])
    return path if (path / "config.json").is_file() else None


def _interrupt(signum: int, frame: object) -> None:
    """SIGINT/SIGTERM handler: unwind through the cleanup in main()."""
    raise KeyboardInterrupt


def main() -> None:
    """Start both servers, print the URLs, and stop both on Ctrl-C (or when either exits)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_arguments(parser)
    parser.add_argument("--frontend-port", type=int, default=9000)
    parser.add_argument("--host", default="0.0.0.0", help="frontend bind address")
    parser.add_argument("frontend_args", nargs="*", help="further frontend arguments (after --)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [serve] %(message)s")

    triton = frontend = None
    # Ctrl-C and SIGTERM (a supervisor) both unwind through the cleanup below. SIGINT is set
    # explicitly: a shell starts background jobs with SIGINT ignored, which Python would keep.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        argv, env = server_command(args.model_repository, http_port=args.http_port, grpc_port=args.grpc_port,
                                   metrics_port=args.metrics_port)
        logger.info("starting tritonserver (the vLLM engine takes a minute to load)")
        triton = _start(argv, env)
        _wait_ready(triton, f"http://localhost:{args.http_port}/v2/models/{MODEL_NAME}/ready", "tritonserver")

        frontend_argv = [sys.executable, "-m", "client.frontend", "--triton-url", f"localhost:{args.grpc_port}",
                         "--host", args.host, "--port", str(args.frontend_port),
                         "--triton-metrics-url", f"http://localhost:{args.metrics_port}/metrics"]
        model_path = _model_path(args.model_repository)
        if model_path is not None:
            frontend_argv += ["--model-path", str(model_path)]
        frontend = _start(frontend_argv + list(args.frontend_args), dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
        _wait_ready(frontend, f"http://localhost:{args.frontend_port}/health", "frontend", timeout_s=120)

        logger.info("ready:\n  OpenAI API   http://localhost:%d/v1  (models, completions, chat/completions)\n"
                    "  health       http://localhost:%d/health   metrics http://localhost:%d/metrics\n"
                    "  Triton       HTTP http://localhost:%d  gRPC localhost:%d  metrics http://localhost:%d/metrics\n"
                    "Ctrl-C stops both.", args.frontend_port, args.frontend_port, args.frontend_port,
                    args.http_port, args.grpc_port, args.metrics_port)
        while triton.poll() is None and frontend.poll() is None:
            time.sleep(1)
        logger.error("a server exited (tritonserver: %s, frontend: %s); stopping", triton.poll(), frontend.poll())
        sys.exit(1)
    except KeyboardInterrupt:
        logger.info("interrupted")
    except (RuntimeError, TimeoutError) as exc:
        logger.error("%s", exc)
        sys.exit(1)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        _stop(frontend, "frontend")
        _stop(triton, "tritonserver")


if __name__ == "__main__":
    main()
