"""The frontend's CPU per streamed token, in its two halves: reading Triton's gRPC stream, and HTTP/SSE.

1. gRPC receive: tritonserver with our model (tiny model by default) streams `--requests` requests
   of `--output-tokens` tokens at `--concurrency`, read in this process three ways: tritonclient's
   aio stream (what the frontend uses), a raw `grpc.aio` stub on tritonclient's protobufs, and the
   synchronous grpc API in threads. Each response is read into a Delta as the frontend does. CPU
   seconds of this process per response (`time.process_time`) show what the receive costs.
2. HTTP side: the real frontend app in a process of its own, with a generation client that yields
   one delta every 3 ms per request and no Triton at all, driven by bench_serving's OpenAI client
   (streamed /v1/completions with prompt_embeds). CPU of the frontend's process per token.

    .venv/bin/python -m benchmarks.frontend_costs --name cpu-frontend-costs

Prints a Markdown table; writes results/bench/<name>.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import torch

from benchmarks.bench_serving import machine_info
from benchmarks.server_cpu import cpu_split
from benchmarks.servers import REPO_ROOT, Servers, engine_args
from client.frontend.triton_client import TritonClient, TritonRequest, read_delta, triton_inputs
from client.triton_inputs import MODEL_NAME
from scripts.devservers import LOOPBACK, TINY_MODEL, Process, checkout_env, free_port

# The HTTP-side server: the real app, a client that streams without Triton.
FAKE_FRONTEND = """
import asyncio, sys
import uvicorn
from client.frontend.app import create_app
from client.frontend.config import FrontendConfig
from client.frontend.triton_client import Delta

class Streaming:
    facts = {"hidden_size": %(hidden)d, "max_model_len": 8192, "vocab_size": 262, "model": "fake", "dtype": "float32"}
    async def is_ready(self): return True
    async def model_facts(self): return self.facts
    async def generate(self, request):
        n = int(request.sampling.get("max_tokens") or 16)
        for i in range(n):
            await asyncio.sleep(0.003)
            last = i == n - 1
            yield Delta(text="x", num_output_tokens=1, num_input_tokens=1 if last else None,
                        finish_reason="length" if last else None, final=last)

app = create_app(FrontendConfig(hidden_size=%(hidden)d, model_name="fake"), client_factory=Streaming)
uvicorn.run(app, host="%(host)s", port=%(port)d, log_level="warning", access_log=False)
"""


def _request(args: argparse.Namespace, hidden: int) -> TritonRequest:
    sampling = {"max_tokens": args.output_tokens, "ignore_eos": True, "temperature": 0}
    return TritonRequest(sampling=sampling, embeds=torch.randn(args.prompt_len, hidden), stream=True)


async def _closed_loop(one: Callable[[], Awaitable[int]], requests: int, concurrency: int) -> tuple[int, float]:
    """Run `requests` calls of `one` (each returns its response count), `concurrency` at a time."""
    left, total = requests, 0

    async def worker() -> None:
        nonlocal left, total
        while left > 0:
            left -= 1
            responses = await one()  # not `total += await one()`: that reads total before the await
            total += responses

    cpu0 = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total, time.process_time() - cpu0


async def _tritonclient(url: str, args: argparse.Namespace, hidden: int) -> tuple[int, float]:
    client = TritonClient(url, MODEL_NAME)

    async def one() -> int:
        return len([delta async for delta in client.generate(_request(args, hidden))])

    try:
        await _closed_loop(one, 2 * args.concurrency, args.concurrency)  # warm-up
        return await _closed_loop(one, args.requests, args.concurrency)
    finally:
        await client.close()


def _protobuf_request(args: argparse.Namespace, hidden: int) -> Any:
    from tritonclient.grpc._utils import _get_inference_request

    return _get_inference_request(model_name=MODEL_NAME, inputs=triton_inputs(_request(args, hidden)),
                                  model_version="", request_id="", outputs=None, sequence_id=0,
                                  sequence_start=False, sequence_end=False, priority=0, timeout=None, parameters=None)


async def _raw_aio(url: str, args: argparse.Namespace, hidden: int) -> tuple[int, float]:
    import grpc
    from tritonclient.grpc import InferResult, service_pb2_grpc

    channel = grpc.aio.insecure_channel(url)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

    async def one() -> int:
        call = stub.ModelStreamInfer()
        await call.write(_protobuf_request(args, hidden))
        await call.done_writing()
        count = 0
        while (response := await call.read()) is not grpc.aio.EOF:
            count += 1
            if read_delta(InferResult(response.infer_response)).final:
                break
        return count

    try:
        await _closed_loop(one, 2 * args.concurrency, args.concurrency)
        return await _closed_loop(one, args.requests, args.concurrency)
    finally:
        await channel.close()


def _sync_threads(url: str, args: argparse.Namespace, hidden: int) -> tuple[int, float]:
    import grpc
    from tritonclient.grpc import InferResult, service_pb2_grpc

    channel = grpc.insecure_channel(url)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    counts: list[int] = []

    def worker(requests: int) -> None:
        for _ in range(requests):
            count = 0
            for response in stub.ModelStreamInfer(iter([_protobuf_request(args, hidden)])):
                count += 1
                if read_delta(InferResult(response.infer_response)).final:
                    break
            counts.append(count)

    def run(requests: int) -> tuple[int, float]:
        counts.clear()
        threads = [threading.Thread(target=worker, args=(requests // args.concurrency,))
                   for _ in range(args.concurrency)]
        cpu0 = time.process_time()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sum(counts), time.process_time() - cpu0

    try:
        run(2 * args.concurrency)
        return run(args.requests)
    finally:
        channel.close()


def grpc_receive(url: str, args: argparse.Namespace, hidden: int) -> list[dict[str, Any]]:
    """CPU per response of each way to read the stream, `--repeats` times each, interleaved."""
    ways = {"tritonclient grpc.aio (the frontend's)": lambda: asyncio.run(_tritonclient(url, args, hidden)),
            "raw grpc.aio stub": lambda: asyncio.run(_raw_aio(url, args, hidden)),
            "sync grpc, a thread per stream": lambda: _sync_threads(url, args, hidden)}
    samples: dict[str, list[float]] = {way: [] for way in ways}
    for _ in range(args.repeats):
        for way, measure in ways.items():
            responses, cpu = measure()
            samples[way].append(cpu * 1e6 / max(1, responses))
    return [{"part": "gRPC receive", "way": way, "cpu_us": sorted(values)[len(values) // 2], "all": values,
             "unit": "per response"} for way, values in samples.items()]


def http_side(args: argparse.Namespace, hidden: int, workdir: Path) -> dict[str, Any]:
    """CPU per token of the frontend process with a Triton-free generation client."""
    port = free_port()
    code = FAKE_FRONTEND % {"hidden": hidden, "host": LOOPBACK, "port": port}
    server = Process([sys.executable, "-c", code], checkout_env(), workdir / "fake-frontend.log")
    url = f"http://{LOOPBACK}:{port}"
    values = []
    try:
        server.wait_until(lambda: httpx.get(f"{url}/v1/models", timeout=2).status_code == 200, "fake frontend")
        for repeat in range(args.repeats):
            cpu0 = cpu_split([server.pid])
            subprocess.run([sys.executable, "-m", "benchmarks.bench_serving", "--paths", "frontend",
                            "--frontend-url", url, "--served-model", "fake", "--hidden-size", str(hidden),
                            "--prompt-lens", str(args.prompt_len), "--concurrency", str(args.concurrency),
                            "--output-tokens", str(args.output_tokens), "--requests", str(args.requests),
                            "--repeats", "1", "--name", f"http-{repeat}", "--out-dir", str(workdir)],
                           cwd=REPO_ROOT, check=True, capture_output=True)
            cpu = (cpu_split([server.pid]) - cpu0).serving_s
            cells = json.loads((workdir / f"http-{repeat}.json").read_text())["cells"]
            tokens = sum(round(c["output_tok_s"] * c["wall_s"]) for c in cells)  # warm-up cells included
            values.append(cpu * 1e6 / max(1, tokens))
    finally:
        server.stop()
    return {"part": "HTTP/SSE side", "way": "frontend app, generation client without Triton",
            "cpu_us": sorted(values)[len(values) // 2], "all": values, "unit": "per token"}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="frontend-costs")
    p.add_argument("--model", default=str(TINY_MODEL))
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--output-tokens", type=int, default=32)
    p.add_argument("--requests", type=int, default=320)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out-dir", type=Path, default=REPO_ROOT / "results" / "bench")
    args = p.parse_args(argv)
    hidden = json.loads((Path(args.model) / "config.json").read_text())["hidden_size"]
    workdir = REPO_ROOT / "results" / "tmp" / f"frontend-costs-{args.name}"
    with Servers(workdir) as servers:
        rows = grpc_receive(servers.triton(engine_args(args.model)), args, hidden)
    rows.append(http_side(args, hidden, workdir))
    setup = (f"Machine: {machine_info()['summary']}. Model `{args.model}`; {args.prompt_len}-row prompt_embeds, "
             f"{args.output_tokens} output tokens, {args.concurrency} streams, {args.requests} requests a run, "
             f"median of {args.repeats} runs (`benchmarks/frontend_costs.py`).")
    lines = [f"# Frontend costs: {args.name}", "", setup, "",
             "| part | way | CPU µs | per | runs |", "|---|---|---:|---|---|"]
    lines += [f"| {r['part']} | {r['way']} | {r['cpu_us']:.0f} | {r['unit']} | "
              f"{', '.join(f'{v:.0f}' for v in r['all'])} |" for r in rows]
    report = "\n".join(lines) + "\n"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{args.name}.json").write_text(json.dumps({"name": args.name, "rows": rows}, indent=1))
    (args.out_dir / f"{args.name}.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
