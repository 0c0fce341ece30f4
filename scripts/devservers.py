"""The one place that starts and stops dev servers: tritonserver, our frontend and vLLM's own server.

`make serve` (scripts/serve.py), the integration tests (tests/servers.py re-exports this), the
benchmark and the load tests all start their servers here: free ports, a log file per server,
readiness waits, a copy of model_repository/ with overrides, and a stop that leaves nothing behind:
- each server runs in its own process group. Stopping it sends SIGTERM to the server alone
  (tritonserver then drains and unloads the model; signalled too, the engine would abort at once)
  and, once it exited or after a timeout, SIGKILL to the whole group: its children, the model's
  stub and vLLM engine included, go with it;
- but in the session of the process that starts it, not a session of its own: Linux's scheduler
  autogroups (on by default on this box and many distributions) give every session an equal CPU
  share, and within a share the CPU engine's low priority (config.pbtxt's engine_niceness) counts.
  A client in a session of its own, on the 2-core box, next to a server session whose CPU engine
  spins: 4 to 10 of 96 streamed requests at 8 streams arrived in one burst at the end; in one
  session none of 288 (backend/lifecycle.py);
- each server started from the main thread is SIGKILLed by the kernel when the process that
  started it dies, even by SIGKILL (PR_SET_PDEATHSIG; the kernel sends it when the *thread* that
  started the child ends, so servers started from other threads go without it);
- the model's own reaper (backend/reaper.py) then ends the stub and engine of a killed tritonserver.
Every server binds 127.0.0.1 unless a host is given; tritonserver's restricted APIs get a key.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import httpx

from backend.launcher import ADMIN_KEY_HEADER, GRPC_ADMIN_KEY_HEADER, LOOPBACK, new_admin_key, server_command, server_options

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = REPO_ROOT / "build" / "tiny-model"
MODEL_NAME = "vllm_model"
MODEL_JSON = REPO_ROOT / "model_repository" / MODEL_NAME / "1" / "model.json"
START_TIMEOUT_S = float(os.environ.get("SERVER_START_TIMEOUT_S", "420"))
STOP_TIMEOUT_S = 60.0
# model.json keys that are not vLLM server flags (or are forced on for every path).
_NOT_FLAGS = frozenset({"model", "disable_log_stats"})
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port nothing listens on now (the server that gets it binds it a moment later)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


# free_port's race: between the probe and the server's bind, another process may take the port (a
# client's outgoing connection gets its port from the same range). A server that exits saying so is
# started again on other ports, at most this many times in all.
PORT_ATTEMPTS = 3


def engine_args(model: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
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


def make_repository(target: Path, *, engine_args: dict | None = None, parameters: dict | None = None) -> Path:
    """Copy model_repository/ to `target` with engine-argument and config.pbtxt-parameter overrides."""
    shutil.copytree(REPO_ROOT / "model_repository", target, ignore=shutil.ignore_patterns("__pycache__"))
    model_json = target / MODEL_NAME / "1" / "model.json"
    args = json.loads(model_json.read_text())
    args["model"] = str(TINY_MODEL)
    args.update(engine_args or {})
    model_json.write_text(json.dumps(args, indent=2))
    # model.py finds the backend package relative to itself: point the copy at this checkout.
    model_py = target / MODEL_NAME / "1" / "model.py"
    model_py.write_text(model_py.read_text().replace(
        "Path(__file__).resolve().parents[3]", repr(str(REPO_ROOT))))
    if parameters:
        config = target / MODEL_NAME / "config.pbtxt"
        lines = [line for line in config.read_text().splitlines()
                 if not any(f'key: "{key}"' in line for key in parameters)]
        lines += [f'parameters: {{ key: "{k}", value: {{ string_value: "{v}" }} }}' for k, v in parameters.items()]
        config.write_text("\n".join(lines) + "\n")
    return target


def python_module_argv(module: str, *args: str) -> list[str]:
    """`python -m module args` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def checkout_env(root: Path = REPO_ROOT) -> dict[str, str]:
    """This environment with a checkout (this one by default) on PYTHONPATH (for `python -m client.frontend`
    and friends)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    return env


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn: the child gets SIGKILL when its starter dies (Linux, main thread only; see above)."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork: the child only calls it
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the starter died before prctl took effect
            os._exit(1)
    return preexec


def _http_ok(url: str) -> bool:
    return httpx.get(url, timeout=5).status_code == 200


class Process:
    """A server in its own process group (in this session), its output in a log file (or this terminal when None)."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path | None, *, own_session: bool = False) -> None:
        """`own_session`: a session of its own instead (as a server started from another terminal)."""
        self.log_path = log_path
        self._log = open(log_path, "wb") if log_path is not None else None
        group = {"start_new_session": True} if own_session else {"process_group": 0}
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT if self._log else None,
                                     preexec_fn=_die_with_parent(), **group)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _start_on_free_ports(self, launch: Callable[[], tuple[list[str], dict[str, str]]], log_path: Path | None,
                             ready: Callable[[], bool], what: str, timeout_s: float, *, fixed_ports: bool,
                             own_session: bool = False) -> None:
        """Start the server `launch` describes (it picks the ports) and wait until ready; when it exits
        because another process took a port first (free_port's race), start it again on others."""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            argv, env = launch()
            Process.__init__(self, argv, env, log_path, own_session=own_session)
            try:
                self.wait_until(ready, what, timeout_s)
                return
            except RuntimeError:
                if fixed_ports or attempt == PORT_ATTEMPTS or "already in use" not in self.tail():
                    raise
                logger.warning("%s lost a port to another process; starting it again on others", what)

    def wait_until(self, ready: Callable[[], bool], what: str, timeout_s: float = START_TIMEOUT_S) -> None:
        """Poll `ready` until true; if the server exits, the timeout passes or anything interrupts the
        wait (Ctrl-C included), stop the server and raise."""
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{what} exited with {self.proc.returncode}; log:\n{self.tail()}")
                try:
                    if ready():
                        return
                except (httpx.HTTPError, OSError):
                    pass  # not listening yet
                time.sleep(1)
            raise TimeoutError(f"{what} not ready after {timeout_s:.0f}s; log:\n{self.tail()}")
        except BaseException:
            self.stop()
            raise

    def tail(self, chars: int = 6000) -> str:
        """The end of the server's log ('' when it logs to the terminal)."""
        if self.log_path is None:
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM the server, wait up to `timeout_s`, then SIGKILL whatever of its process group is left."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("pid %d did not stop in %.0fs; killing its process group", self.proc.pid, timeout_s)
        _signal_group(self.proc.pid, signal.SIGKILL)  # the engine's processes, should any outlive tritonserver
        self.proc.wait(10)
        if self._log is not None:
            self._log.close()


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass  # the group is empty: everything in it has exited


class TritonServer(Process):
    """tritonserver with a model repository, on free ports (or the given ones), ready when it returns."""

    def __init__(self, repository: Path, log_path: Path | None, extra: list[str] | None = None, *,
                 host: str = LOOPBACK, admin_key: str | None = None, ports: tuple[int, int, int] | None = None,
                 command: list[str] | None = None, timeout_s: float = START_TIMEOUT_S,
                 own_session: bool = False) -> None:
        self.host = host
        self.admin_key = admin_key or new_admin_key()

        def launch() -> tuple[list[str], dict[str, str]]:
            self.http_port, self.grpc_port, self.metrics_port = ports or (free_port(), free_port(), free_port())
            if command:  # another machine's own tritonserver (e.g. the GPU box); its environment as is
                return [*command, *server_options(repository, http_port=self.http_port, grpc_port=self.grpc_port,
                                                  metrics_port=self.metrics_port, host=host,
                                                  admin_key=self.admin_key), *(extra or [])], dict(os.environ)
            return server_command(repository, http_port=self.http_port, grpc_port=self.grpc_port,
                                  metrics_port=self.metrics_port, host=host, admin_key=self.admin_key, extra=extra)

        self._start_on_free_ports(launch, log_path, self.model_ready, "tritonserver", timeout_s,
                                  fixed_ports=ports is not None, own_session=own_session)

    @property
    def _address(self) -> str:
        """Where a client on this machine reaches the server."""
        return LOOPBACK if self.host in ("0.0.0.0", "", "::") else self.host

    @property
    def grpc_url(self) -> str:
        return f"{self._address}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self._address}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._address}:{self.metrics_port}/metrics"

    @property
    def admin_headers(self) -> dict[str, str]:
        """The HTTP header the restricted APIs (shared memory, model repository, trace, logging) need."""
        return {ADMIN_KEY_HEADER: self.admin_key}

    @property
    def admin_grpc_headers(self) -> dict[str, str]:
        """The same key as gRPC metadata (Triton expects its own prefix there)."""
        return {GRPC_ADMIN_KEY_HEADER: self.admin_key}

    def model_ready(self, model: str = MODEL_NAME) -> bool:
        return httpx.get(f"{self.http_url}/v2/models/{model}/ready", timeout=5).status_code == 200

    def metrics(self) -> str:
        return httpx.get(self.metrics_url, timeout=10).text


class FrontendServer(Process):
    """`python -m client.frontend` on a free port (or the given one), against a running tritonserver."""

    def __init__(self, grpc_url: str, log_path: Path | None, *extra: str, host: str = LOOPBACK,
                 port: int | None = None, python: list[str] | None = None,
                 timeout_s: float = 120, root: Path = REPO_ROOT) -> None:
        """`root`: the checkout to run the frontend from (another one: a git worktree of another revision)."""
        self.host = host
        # -P: the working directory (this checkout) does not go on sys.path ahead of another `root`.
        interpreter = [*(python or [sys.executable]), *([] if root == REPO_ROOT else ["-P"])]

        def launch() -> tuple[list[str], dict[str, str]]:
            self.port = port or free_port()
            return [*interpreter, "-m", "client.frontend", "--triton-url", grpc_url,
                    "--host", host, "--port", str(self.port), *extra], checkout_env(root)

        self._start_on_free_ports(launch, log_path, lambda: _http_ok(f"{self.url}/health"), "frontend", timeout_s,
                                  fixed_ports=port is not None)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK if self.host in ('0.0.0.0', '', '::') else self.host}:{self.port}"


class VllmServer(Process):
    """vLLM's own OpenAI server (`--enable-prompt-embeds`) with the given engine arguments."""

    def __init__(self, args: dict[str, Any], log_path: Path | None, *extra: str,
                 python: list[str] | None = None, timeout_s: float = START_TIMEOUT_S) -> None:
        def launch() -> tuple[list[str], dict[str, str]]:
            self.port = free_port()
            argv = [*(python or [sys.executable]), "-m", "vllm.entrypoints.openai.api_server", *vllm_flags(args),
                    "--host", LOOPBACK, "--port", str(self.port), "--disable-uvicorn-access-log", *extra]
            if "--enable-prompt-embeds" not in argv:
                argv.append("--enable-prompt-embeds")
            return argv, checkout_env()

        self._start_on_free_ports(launch, log_path, lambda: _http_ok(f"{self.url}/v1/models"), "vLLM server",
                                  timeout_s, fixed_ports=False)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"


class Servers:
    """Starts servers on demand, each logging to `workdir/<name>.log`, and stops all of them on close()."""

    def __init__(self, workdir: Path, *, python: list[str] | None = None,
                 tritonserver_cmd: list[str] | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.python = python or [sys.executable]
        self.tritonserver_cmd = tritonserver_cmd
        self.processes: list[Process] = []
        self.triton_metrics_url: str | None = None

    def _started(self, name: str, start: Callable[[], Process]) -> Process:
        logger.info("starting %s", name)
        process = start()
        self.processes.append(process)
        command = shlex.join(process.proc.args)
        if isinstance(process, TritonServer):  # the key stays out of logs
            command = command.replace(process.admin_key, "<admin key>")
        logger.info("%s ready: %s", name, command)
        return process

    def vllm(self, args: dict[str, Any]) -> str:
        """vLLM's own server with --enable-prompt-embeds; returns its base URL."""
        server = self._started("vllm", lambda: VllmServer(args, self.workdir / "vllm.log", python=self.python))
        return server.url

    def triton(self, args: dict[str, Any], parameters: dict[str, str] | None = None,
               extra: list[str] | None = None) -> str:
        """tritonserver with our model on `args` (+ config.pbtxt `parameters`); returns host:port for gRPC."""
        repo = self.workdir / "repository"
        if repo.exists():
            shutil.rmtree(repo)
        make_repository(repo, engine_args=args, parameters=parameters)
        server = self._started("tritonserver", lambda: TritonServer(
            repo, self.workdir / "tritonserver.log", extra, command=self.tritonserver_cmd))
        self.triton_metrics_url = server.metrics_url
        return server.grpc_url

    def frontend(self, triton_url: str, *extra: str) -> str:
        """Our OpenAI frontend in front of `triton_url`; returns its base URL."""
        server = self._started("frontend", lambda: FrontendServer(
            triton_url, self.workdir / "frontend.log", *extra, python=self.python, timeout_s=START_TIMEOUT_S))
        return server.url

    def stop(self, process: Process) -> None:
        """Stop one server started here."""
        process.stop()
        self.processes.remove(process)

    def close(self) -> None:
        """Stop every server started here, newest first."""
        for process in reversed(self.processes):
            try:
                process.stop()
            except (OSError, subprocess.SubprocessError):  # keep stopping the others
                logger.exception("could not stop pid %d", process.pid)
        self.processes.clear()

    def __enter__(self) -> "Servers":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
