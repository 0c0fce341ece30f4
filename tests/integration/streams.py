"""A gRPC stream held open by a test: watch responses arrive, cancel it, wait for its end."""

from __future__ import annotations

import functools
import threading
import time
from typing import Any

import pytest

import tritonclient.grpc as grpcclient

from client.triton_errors import is_connection_reset
from client.triton_inputs import MODEL_NAME, build_inputs


class OpenStream:
    """One request on its own gRPC stream; responses and the error (if any) collected in the background."""

    opened: list[OpenStream] = []  # every stream since the last xfail_on_connection_reset test began

    def __init__(self, url: str, **request: Any) -> None:
        OpenStream.opened.append(self)
        self.responses: list[Any] = []
        self.error: Exception | None = None
        self.final = threading.Event()
        self._client = grpcclient.InferenceServerClient(url)
        self._client.start_stream(callback=self._on_response)
        self._client.async_stream_infer(MODEL_NAME, build_inputs(grpcclient, stream=True, **request),
                                        enable_empty_final_response=True)

    def _on_response(self, result: Any, error: Exception | None) -> None:
        if error is not None:
            self.error = error
            self.final.set()
            return
        if result.get_response().outputs:
            self.responses.append(result)
        if result.get_response().parameters["triton_final_response"].bool_param:
            self.final.set()

    def wait_responses(self, n: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.responses) < n:
            if self.final.is_set() or time.monotonic() > deadline:
                raise AssertionError(f"stream ended or stalled after {len(self.responses)} responses: {self.error}")
            time.sleep(0.02)

    def cancel(self) -> None:
        self._client.stop_stream(cancel_requests=True)

    @property
    def connection_reset(self) -> bool:
        """The stream ended because tritonserver dropped the connection, not with a model answer."""
        return is_connection_reset(self.error)

    def close(self) -> None:
        self._client.stop_stream(cancel_requests=True)
        self._client.close()


def xfail_on_connection_reset(test):
    """Run a test that holds several fast streams; close every stream it opened, whatever happens.

    On this 2-core box tritonserver 2.51 sometimes resets its gRPC connections while a stream
    delivers thousands of responses a second and another stream opens (reproduced with the code of
    2026-11-27 too, with grpcio 1.67-1.85 and with a TCP connection per stream). A failure that
    comes with such a reset is reported as an expected failure naming it; any other failure fails.
    """

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> Any:
        OpenStream.opened = []
        try:
            return test(*args, **kwargs)
        # pytest.fail.Exception: pytest.raises' "DID NOT RAISE" (a request a reset let through).
        except (Exception, pytest.fail.Exception) as exc:  # noqa: BLE001 - re-raised unless it comes with a reset
            time.sleep(2)  # a reset reaches each stream's callback a moment later
            invalid_stream = "no longer in valid state" in str(exc)  # tritonclient, after a reset
            if invalid_stream or any(s.connection_reset for s in OpenStream.opened):
                pytest.xfail(f"tritonserver reset the gRPC connection under a fast stream: {exc}"[:300])
            raise
        finally:
            for stream in OpenStream.opened:
                try:
                    stream.close()
                except Exception:  # noqa: BLE001 - cleanup must reach every stream
                    pass

    return run


def gauge(metrics_text: str, name: str, **labels: str) -> float:
    """Value of one metric line (all given labels must match)."""
    for line in metrics_text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(f"{name} {labels} not in metrics")


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.2) -> float:
    """Poll until predicate() is true; return the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)
    return time.monotonic() - start


