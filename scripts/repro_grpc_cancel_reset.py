"""Reproduce tritonserver 2.51 resetting the gRPC connection of a fast stream.

One stream generates fast (thousands of responses a second from the tiny CPU model); a second
stream, queued behind it (max_num_seqs 1), is cancelled by its client (stop_stream with
cancel_requests; `--mode nocancel` leaves it, `--mode alone` opens none); both are closed between
trials. On the 2-core box tritonserver then sometimes resets the fast stream's TCP connection
("Stream removed (recvmsg: Connection reset by peer)"), also with a connection per stream
(`--own-connections`) and with the model's cancellation checks off. Seen: cancel 1/5, 4/5 (own
connections); nocancel 3/5 in one run, 0/4 in another; alone 0/4. Prints one line per trial and
the count of resets.

    .venv/bin/python -m scripts.repro_grpc_cancel_reset --trials 5 [--own-connections] [--mode cancel]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import tritonclient.grpc as grpcclient

from client.triton_errors import is_connection_reset
from client.triton_inputs import MODEL_NAME, build_inputs
from scripts.devservers import TritonServer, engine_args, make_repository

LONG = {"temperature": 0, "max_tokens": 65000, "ignore_eos": True}


class Stream:
    """One request on its own gRPC client; responses counted, the error kept."""

    def __init__(self, url: str, text: str, own_connection: bool) -> None:
        self.responses = 0
        self.error: Exception | None = None
        self.done = threading.Event()
        options = [("grpc.use_local_subchannel_pool", 1)] if own_connection else None
        self.client = grpcclient.InferenceServerClient(url, channel_args=options)
        self.client.start_stream(callback=self._on_response)
        self.client.async_stream_infer(MODEL_NAME, build_inputs(grpcclient, text=text, sampling=LONG, stream=True))

    def _on_response(self, result: Any, error: Exception | None) -> None:
        if error is not None:
            self.error = error
            self.done.set()
        else:
            self.responses += 1

    @property
    def reset(self) -> bool:
        return is_connection_reset(self.error)

    def close(self) -> None:
        self.client.stop_stream(cancel_requests=True)
        self.client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--mode", choices=("cancel", "nocancel", "alone"), default="cancel")
    parser.add_argument("--own-connections", action="store_true", help="one TCP connection per stream")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = make_repository(Path(tmp) / "repo",
                               engine_args={**engine_args("build/tiny-model"), "max_num_seqs": 1, "max_model_len": 65536})
        server = TritonServer(repo, Path(tmp) / "tritonserver.log")
        resets = 0
        try:
            for trial in range(args.trials):
                fast = Stream(server.grpc_url, "first", args.own_connections)
                while fast.responses < 2 and not fast.done.is_set():
                    time.sleep(0.01)
                queued = Stream(server.grpc_url, "second", args.own_connections) if args.mode != "alone" else None
                time.sleep(1.0)
                if queued is not None and args.mode == "cancel":
                    queued.client.stop_stream(cancel_requests=True)
                time.sleep(2.0)
                print(f"trial {trial}: fast stream {fast.responses} responses, error: {fast.error}", flush=True)
                resets += fast.reset
                for stream in (fast, queued):
                    if stream is not None:
                        stream.close()
                time.sleep(1.0)
        finally:
            server.stop()
    print(f"connection resets of the fast stream: {resets} of {args.trials} trials ({args.mode})")


if __name__ == "__main__":
    main()
