"""Start and stop the real servers the integration tests talk to (tritonserver, frontend, vLLM's own)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import httpx

from backend.launcher import server_command

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = REPO_ROOT / "build" / "tiny-model"
START_TIMEOUT_S = float(os.environ.get("SERVER_START_TIMEOUT_S", "420"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_repository(target: Path, *, engine_args: dict | None = None, parameters: dict | None = None) -> Path:
    """Copy model_repository/ to `target` with engine-argument and config.pbtxt-parameter overrides."""
    shutil.copytree(REPO_ROOT / "model_repository", target, ignore=shutil.ignore_patterns("__pycache__"))
    model_json = target / "vllm_model" / "1" / "model.json"
    args = json.loads(model_json.read_text())
    args["model"] = str(TINY_MODEL)
    args.update(engine_args or {})
    model_json.write_text(json.dumps(args, indent=2))
    # model.py finds the backend package relative to itself: point the copy at this checkout.
    model_py = target / "vllm_model" / "1" / "model.py"
    model_py.write_text(model_py.read_text().replace(
        "Path(__file__).resolve().parents[3]", repr(str(REPO_ROOT))))
    if parameters:
        config = target / "vllm_model" / "config.pbtxt"
        lines = [line for line in config.read_text().splitlines()
                 if not any(f'key: "{key}"' in line for key in parameters)]
        lines += [f'parameters: {{ key: "{k}", value: {{ string_value: "{v}" }} }}' for k, v in parameters.items()]
        config.write_text("\n".join(lines) + "\n")
    return target


class Process:
    """A server process with its log in a file; stopped with SIGINT, then SIGKILL."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_until(self, ready: Callable[[], bool], what: str, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {self.proc.returncode}; log:\n{self.tail()}")
            try:
                if ready():
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(1)
        self.stop()
        raise TimeoutError(f"{what} not ready after {timeout_s}s; log:\n{self.tail()}")

    def tail(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, timeout_s: float = 60) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        try:  # whatever survived, the engine's worker processes included
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self._log.close()


class TritonServer(Process):
    """tritonserver with a model repository, on free ports."""

    def __init__(self, repository: Path, log_path: Path, extra: list[str] | None = None) -> None:
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        argv, env = server_command(repository, http_port=self.http_port, grpc_port=self.grpc_port,
                                   metrics_port=self.metrics_port,
                                   backend_dir=REPO_ROOT / "build" / "triton-backends", extra=extra)
        super().__init__(argv, env, log_path)
        self.wait_until(self.model_ready, "tritonserver")

    @property
    def grpc_url(self) -> str:
        return f"localhost:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://localhost:{self.http_port}"

    def model_ready(self, model: str = "vllm_model") -> bool:
        return httpx.get(f"{self.http_url}/v2/models/{model}/ready", timeout=5).status_code == 200

    def metrics(self) -> str:
        return httpx.get(f"http://localhost:{self.metrics_port}/metrics", timeout=10).text


def python_module_argv(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


class FrontendServer(Process):
    """`python -m client.frontend` on a free port, against a running tritonserver."""

    def __init__(self, grpc_url: str, log_path: Path, *extra: str) -> None:
        self.port = free_port()
        argv = python_module_argv("client.frontend", "--triton-url", grpc_url, "--host", "127.0.0.1",
                                  "--port", str(self.port), *extra)
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        super().__init__(argv, env, log_path)
        self.wait_until(lambda: httpx.get(f"{self.url}/health", timeout=5).status_code == 200, "frontend",
                        timeout_s=120)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
