"""Start the three servers the benchmark and load tests compare, each on free ports, all stoppable.

- vLLM's own OpenAI server (`python -m vllm.entrypoints.openai.api_server`), with the same engine
  arguments as our model.json (translated to CLI flags),
- tritonserver with a copy of model_repository/ whose model.json carries those engine arguments,
- our OpenAI frontend in front of that tritonserver.
The Python and tritonserver commands are parameters, so the GPU machine can pass its own.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import httpx

from backend.launcher import server_command
from tests.servers import Process, free_port, make_repository

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_JSON = REPO_ROOT / "model_repository" / "vllm_model" / "1" / "model.json"
# model.json keys that are not vLLM server flags (or are forced on for every path).
_NOT_FLAGS = frozenset({"model", "disable_log_stats"})


def engine_args(model: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model's engine arguments (model.json), with `model` and `overrides` applied."""
    args = json.loads(MODEL_JSON.read_text())
    args["model"] = str(model)
    args.update(overrides or {})
    return args


def vllm_flags(args: dict[str, Any]) -> list[str]:
    """Engine arguments as `vllm serve` flags: the same settings on both sides."""
    flags = ["--model", str(args["model"])]
    for key, value in args.items():
        if key in _NOT_FLAGS or value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            if value:
                flags.append(flag)
            elif key in ("enable_prefix_caching", "enable_chunked_prefill"):
                flags.append("--no-" + key.replace("_", "-"))
        elif isinstance(value, (dict, list)):
            flags += [flag, json.dumps(value)]
        else:
            flags += [flag, str(value)]
    return flags


def _http_ok(url: str) -> bool:
    return httpx.get(url, timeout=5).status_code == 200


class Servers:
    """Starts servers on demand and stops all of them (process groups) on close()."""

    def __init__(self, workdir: Path, *, python: list[str] | None = None,
                 tritonserver_cmd: list[str] | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.python = python or [sys.executable]
        self.tritonserver_cmd = tritonserver_cmd
        self.processes: list[Process] = []

    def _start(self, name: str, argv: list[str], env: dict[str, str] | None, ready_url: str) -> Process:
        logger.info("starting %s: %s", name, shlex.join(argv))
        if env is None:
            env = dict(os.environ)
            # `python -m client.frontend` and friends import this checkout's packages.
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        process = Process(argv, env, self.workdir / f"{name}.log")
        self.processes.append(process)
        process.wait_until(lambda: _http_ok(ready_url), name)
        logger.info("%s ready", name)
        return process

    def vllm(self, args: dict[str, Any]) -> str:
        """vLLM's own server with --enable-prompt-embeds; returns its base URL."""
        port = free_port()
        argv = [*self.python, "-m", "vllm.entrypoints.openai.api_server", *vllm_flags(args),
                "--host", "127.0.0.1", "--port", str(port), "--disable-uvicorn-access-log"]
        if "--enable-prompt-embeds" not in argv:
            argv.append("--enable-prompt-embeds")
        url = f"http://localhost:{port}"
        self._start("vllm", argv, None, f"{url}/v1/models")
        return url

    def triton(self, args: dict[str, Any], parameters: dict[str, str] | None = None) -> str:
        """tritonserver with our model on `args` (+ config.pbtxt `parameters`); returns host:port for gRPC."""
        repo = self.workdir / "repository"
        if repo.exists():
            shutil.rmtree(repo)
        make_repository(repo, engine_args=args, parameters=parameters)
        http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
        if self.tritonserver_cmd:
            argv = [*self.tritonserver_cmd, f"--model-repository={repo}", f"--http-port={http_port}",
                    f"--grpc-port={grpc_port}", f"--metrics-port={metrics_port}"]
            env = dict(os.environ)
        else:
            argv, env = server_command(repo, http_port=http_port, grpc_port=grpc_port,
                                       metrics_port=metrics_port,
                                       backend_dir=REPO_ROOT / "build" / "triton-backends")
        self.triton_metrics_url = f"http://localhost:{metrics_port}/metrics"
        self._start("tritonserver", argv, env, f"http://localhost:{http_port}/v2/models/vllm_model/ready")
        return f"localhost:{grpc_port}"

    def frontend(self, triton_url: str) -> str:
        """Our OpenAI frontend in front of `triton_url`; returns its base URL."""
        port = free_port()
        argv = [*self.python, "-m", "client.frontend", "--triton-url", triton_url, "--port", str(port)]
        url = f"http://localhost:{port}"
        self._start("frontend", argv, None, f"{url}/v1/models")
        return url

    def stop(self, process: Process) -> None:
        """Stop one server started here."""
        process.stop()
        self.processes.remove(process)

    def close(self) -> None:
        """Stop every server started here, newest first."""
        for process in reversed(self.processes):
            try:
                process.stop()
            except Exception:  # noqa: BLE001 - keep stopping the others
                logger.exception("could not stop %s", process.log_path.name)
        self.processes.clear()

    def __enter__(self) -> "Servers":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
