"""Do streams arrive as they are sent? Our model against a minimal decoupled Python model, same tritonserver.

    python -m scripts.repro_stream_bursts                        # both, 30 sequential streamed requests each
    python -m scripts.repro_stream_bursts --only ours --own-session --engine-niceness 0   # the bursts, back
    python -m scripts.repro_stream_bursts --only ours --own-session --requests 96 --concurrency 8

A request is late when its first response reaches the client after 70% of its duration (the test
in tests/integration/test_streaming_smooth.py). The toy model streams 96 responses from a thread,
one every 1.25 ms (about the tiny model's pace on 2 CPU cores), with a BYTES output, a thread
polling `is_cancelled` every 50 ms and a thread keeping the GIL busy, like our stub's.

What it showed on the 2-core box (tritonserver 2.51, Linux 6.18): the toy, none of 330 requests
late over nine runs; our model, 17-58% of requests per run, while tritonserver ran in a session of
its own and the engine at normal priority. The cause (README, "Streaming path"): vLLM's engine
core and worker spin-wait while a request runs and hold both cores, and a client in another
scheduler autogroup (session) got no CPU until the request ended. Dev servers now stay in their
starter's session; `--own-session` puts tritonserver back in one of its own, as a server started
from another terminal is, where the engine's niceness 19 (`--engine-niceness`, default auto) keeps
sequential streams smooth. A run may also end in tritonserver 2.51's "Stream removed" reset
(README, Known issues).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import queue
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
import numpy as np
import tritonclient.grpc as grpcclient

from backend.launcher import new_admin_key, server_command
from client.triton_inputs import MODEL_NAME, build_inputs
from scripts.devservers import Process, TritonServer, free_port, make_repository

LATE = 0.7
SAMPLING = {"temperature": 0, "max_tokens": 96, "ignore_eos": True}  # as the smoothness test

TOY_CONFIG = """
name: "toy"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "N", data_type: TYPE_INT32, dims: [ 1 ] } ]
output [ { name: "OUT", data_type: TYPE_INT32, dims: [ 1 ] }, { name: "TEXT", data_type: TYPE_STRING, dims: [ 1 ] } ]
instance_group [ { count: 1, kind: KIND_CPU } ]
"""

TOY_MODEL = '''
import threading, time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.live, self.lock = {}, threading.Lock()
        threading.Thread(target=self._poll_cancelled, daemon=True).start()
        threading.Thread(target=self._busy, daemon=True).start()

    def execute(self, requests):
        for request in requests:
            n = int(pb_utils.get_input_tensor_by_name(request, "N").as_numpy()[0])
            with self.lock:
                self.live[id(request)] = request
            threading.Thread(target=self._stream, args=(request, n), daemon=True).start()
        return None

    def _stream(self, request, n):
        sender = request.get_response_sender()
        for i in range(n):
            time.sleep(0.00125)
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([i], dtype=np.int32)),
                                                    pb_utils.Tensor("TEXT", np.array([b"x"], dtype=np.object_))]))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        with self.lock:
            self.live.pop(id(request), None)

    def _poll_cancelled(self):
        while True:
            time.sleep(0.05)
            with self.lock:
                requests = list(self.live.values())
            for request in requests:
                request.is_cancelled()

    def _busy(self):
        x = 0
        while True:
            for i in range(10000):
                x += i * i
            time.sleep(0.0002)
'''


def toy_inputs(n: int = 96) -> list:
    count = grpcclient.InferInput("N", [1], "INT32")
    count.set_data_from_numpy(np.array([n], dtype=np.int32))
    return [count]


def timed_stream(url: str, model: str, inputs: list) -> tuple[float, float]:
    """One streamed request: (first response, final response) seconds after sending."""
    arrivals: queue.SimpleQueue = queue.SimpleQueue()
    client = grpcclient.InferenceServerClient(url)
    try:
        client.start_stream(callback=lambda result, error: arrivals.put((time.perf_counter(), result, error)))
        start = time.perf_counter()
        client.async_stream_infer(model, inputs, enable_empty_final_response=True)
        first = None
        while True:
            at, result, error = arrivals.get(timeout=30)
            if error is not None:
                raise error
            response = result.get_response()
            if response.outputs and first is None:
                first = at
            if response.parameters["triton_final_response"].bool_param:
                return first - start, at - start
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()


def report(name: str, results: list[tuple[float, float]]) -> None:
    late = [(round(first, 3), round(total, 3)) for first, total in results if first > LATE * total]
    print(f"{name}: {len(late)} of {len(results)} late (first, total seconds): {late[:5]}", flush=True)


def run_toy(workdir: Path, requests: int) -> None:
    repo = workdir / "toy-repo"
    (repo / "toy" / "1").mkdir(parents=True)
    (repo / "toy" / "config.pbtxt").write_text(TOY_CONFIG)
    (repo / "toy" / "1" / "model.py").write_text(textwrap.dedent(TOY_MODEL))
    ports = free_port(), free_port(), free_port()
    argv, env = server_command(repo, http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2],
                               host="127.0.0.1", admin_key=new_admin_key())
    server = Process(argv, env, workdir / "toy-tritonserver.log")
    try:
        server.wait_until(lambda: httpx.get(f"http://127.0.0.1:{ports[0]}/v2/models/toy/ready").status_code == 200,
                          "tritonserver (toy)")
        report("toy model", [timed_stream(f"127.0.0.1:{ports[1]}", "toy", toy_inputs()) for _ in range(requests)])
    finally:
        server.stop()


def run_ours(workdir: Path, requests: int, niceness: str, own_session: bool, concurrency: int) -> None:
    repository = make_repository(workdir / "repo", parameters={"engine_niceness": niceness})
    server = TritonServer(repository, workdir / "tritonserver.log", own_session=own_session)
    where = "its own session" if own_session else "this session"
    def one(i: int) -> tuple[float, float]:
        return timed_stream(server.grpc_url, MODEL_NAME, build_inputs(grpcclient, text=f"smooth {i}", stream=True,
                                                                      sampling=SAMPLING))

    try:
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(one, range(requests)))
        report(f"vllm_model (tiny, engine_niceness {niceness}, tritonserver in {where}, {concurrency} streams)", results)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("toy", "ours"))
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--engine-niceness", default="auto", help="config.pbtxt's engine_niceness (default %(default)s)")
    parser.add_argument("--own-session", action="store_true", help="start our tritonserver in a session of its own")
    parser.add_argument("--concurrency", type=int, default=1, help="streams at once to our model (default 1)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stream-bursts-") as tmp:
        if args.only in (None, "toy"):
            run_toy(Path(tmp), args.requests)
        if args.only in (None, "ours"):
            run_ours(Path(tmp), args.requests, args.engine_niceness, args.own_session, args.concurrency)


if __name__ == "__main__":
    main()
