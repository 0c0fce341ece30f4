"""Notice that Triton is shutting down, so in-flight requests can be drained before it gives up.

Triton unloads a decoupled model only after every request got its final response, so finalize()
comes too late to drain: during shutdown Triton waits its exit timeout and then exits hard. What
changes at once is its HTTP endpoint: Triton 2.51 closes it on SIGTERM (other versions answer
`/v2/health/ready` with 400 while they stop). A thread here polls that URL (found from the
tritonserver command line, or configured) and reports, once, that a server which was up (it
answered ready, or this model has served requests) is now not ready or unreachable. Before that,
"unreachable" only means the endpoints have not started yet.

The stub's own `pb_utils.is_model_ready` is not used: called off the stub's main thread while
Triton shuts down it crashed the stub in its shared-memory allocator (seen on Triton 2.51).
"""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request
from typing import Callable, Sequence

import psutil

logger = logging.getLogger(__name__)

_READY_PATH = "/v2/health/ready"


def ready_url_from_argv(argv: Sequence[str]) -> str | None:
    """Triton's HTTP readiness URL from a tritonserver command line; None if HTTP is off."""
    options: dict[str, str] = {}
    args = list(argv[1:])
    for i, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        name, sep, value = arg[2:].partition("=")
        if not sep:
            value = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else "true"
        options[name] = value
    if options.get("allow-http", "true").strip().lower() in ("0", "false", "no", "off"):
        return None
    address = options.get("http-address", "0.0.0.0")
    if address in ("0.0.0.0", "", "::"):
        address = "127.0.0.1"
    if ":" in address:
        address = f"[{address}]"
    return f"http://{address}:{int(options.get('http-port', '8000'))}{_READY_PATH}"


def find_ready_url() -> str | None:
    """Walk up from this process (the Python stub) to tritonserver and read its options."""
    for proc in psutil.Process().parents():
        try:
            argv = proc.cmdline()
        except psutil.Error:
            continue
        if argv and argv[0].rsplit("/", 1)[-1] == "tritonserver":
            return ready_url_from_argv(argv)
    return None


def probe(url: str, timeout_s: float = 2.0) -> bool | None:
    """True: ready. False: not ready, or nothing listens. None: no clear answer (busy, timeout)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except urllib.error.HTTPError:
        return False  # Triton answers 400 while not ready
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionRefusedError):
            return False
        return None
    except (TimeoutError, OSError):
        return None


class ServerWatch:
    """Calls on_stopping() once, from its own thread, when a server that was up turns not-ready."""

    def __init__(self, url: str, on_stopping: Callable[[], None], interval_s: float = 0.5,
                 served: Callable[[], bool] = lambda: False,
                 probe_fn: Callable[[str], bool | None] = probe) -> None:
        self.url = url
        self._on_stopping = on_stopping
        self._served = served
        self._interval_s = interval_s
        self._probe = probe_fn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="server-watch", daemon=True)

    def start(self) -> "ServerWatch":
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        seen_ready = False  # not ready (or no endpoint) while models load too: only a change counts
        while not self._stop.wait(self._interval_s):
            ready = self._probe(self.url)
            if ready and not seen_ready:
                logger.info("server watch: %s is ready", self.url)
                seen_ready = True
            elif ready is False and (seen_ready or self._served()):
                logger.info("server watch: the server is stopping")
                self._on_stopping()
                return
