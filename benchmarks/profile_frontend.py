"""Where does the OpenAI frontend spend its CPU? Sample it with py-spy under streamed load.

Starts tritonserver with our model and the frontend in front of it (with `--frontend-args`),
drives the frontend with bench_serving's OpenAI client (streamed completions with prompt_embeds,
32 rows, concurrency 8 by default) and records every frontend process (workers included) with
py-spy meanwhile, keeping only samples that hold the GIL (Python CPU work, not waits). Prints and
writes a Markdown summary: the load's throughput, the frontend's CPU seconds, inclusive shares of
the parts that matter, and the top self-time frames.

    .venv/bin/python -m benchmarks.profile_frontend --name before
    .venv/bin/python -m benchmarks.profile_frontend --name after --frontend-args "--workers 2"
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

from benchmarks.servers import REPO_ROOT, Servers, engine_args

logger = logging.getLogger("profile_frontend")
TINY_MODEL = REPO_ROOT / "build" / "tiny-model"

# Inclusive buckets: a sample counts for each bucket one of its frames matches (substring).
BUCKETS = {
    "HTTP server (uvicorn/h11/httptools, starlette)": ("uvicorn/", "h11/", "starlette/"),
    "request parsing (JSON + pydantic + FastAPI)": ("request_body_to_args", "_get_body", "json/decoder.py",
                                                   "validate_python", "solve_dependencies"),
    "payload decode (base64, torch.load, checks)": ("client/frontend/payloads.py",),
    "Triton inputs (numpy, InferInput)": ("build_inputs (client/triton_inputs.py", "triton_inputs ("),
    "gRPC stream (tritonclient aio + grpc)": ("tritonclient/grpc/aio", "grpc/aio/", "grpc/_cython"),
    "reading responses (read_delta, as_numpy)": ("read_delta (",),
    "SSE rendering + JSON encoding": ("sse_stream (", "render (", "sse (", "sse_events (", "json/encoder.py"),
    "metrics middleware": ("client/frontend/middleware.py",),
    "asyncio loop (select, callbacks)": ("_run_once (asyncio/base_events.py", "uvloop"),
}


def summarize(raw: Path, top: int = 15) -> str:
    """Markdown from py-spy's raw (collapsed-stack) output."""
    buckets: collections.Counter = collections.Counter()
    leaves: collections.Counter = collections.Counter()
    threads: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        threads[frames[0].split(" ")[0] if frames[0].startswith("process") else frames[0]] += n
        leaves[frames[-1]] += n
        for name, needles in BUCKETS.items():
            if any(needle in frame for frame in frames for needle in needles):
                buckets[name] += n
    if not total:
        return "no samples\n"
    lines = [f"{total} samples holding the GIL\n", "| inclusive bucket | share |", "|---|---:|"]
    lines += [f"| {b} | {buckets[b] / total:.1%} |" for b in BUCKETS]
    lines += ["", "| top self-time frame | share |", "|---|---:|"]
    lines += [f"| `{f[:140]}` | {n / total:.1%} |" for f, n in leaves.most_common(top)]
    return "\n".join(lines) + "\n"


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (and their children) so far."""
    total = 0.0
    for pid in pids:
        try:
            process = psutil.Process(pid)
            for p in [process, *process.children(recursive=True)]:
                times = p.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def completions_served(url: str) -> float:
    """frontend_requests_total for /v1/completions, from the frontend's /metrics."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("frontend_requests_total{") and 'endpoint="/v1/completions"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for_load(url: str, load: subprocess.Popen, requests: int = 50, timeout_s: float = 300) -> None:
    """Until the frontend has served `requests` completions (the load is in its measured run)."""
    deadline = time.monotonic() + timeout_s
    while completions_served(url) < requests:
        if load.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the load ended or never started")
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="local")
    p.add_argument("--model", default=str(TINY_MODEL))
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--output-tokens", type=int, default=16)
    p.add_argument("--requests", type=int, default=800,
                   help="per measured run (the load runs twice: warm, then sampled)")
    p.add_argument("--duration", type=int, default=15, help="seconds of sampling")
    p.add_argument("--frontend-args", default="", help="extra frontend options, e.g. '--workers 2'")
    p.add_argument("--triton-parameters", default="{}", help="JSON of config.pbtxt parameter overrides")
    p.add_argument("--out-dir", type=Path, default=REPO_ROOT / "results" / "profile")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    workdir = REPO_ROOT / "results" / "tmp" / f"profile-frontend-{args.name}"
    raw = workdir / "frontend.txt"

    with Servers(workdir) as servers:
        triton_url = servers.triton(engine_args(args.model), json.loads(args.triton_parameters) or None)
        url = servers.frontend(triton_url, "--model-path", args.model, *shlex.split(args.frontend_args))
        frontend = servers.processes[-1]
        load_argv = [sys.executable, "-m", "benchmarks.bench_serving", "--paths", "frontend", "--frontend-url", url,
                     "--model", args.model, "--prompt-lens", str(args.prompt_len), "--concurrency",
                     str(args.concurrency), "--output-tokens", str(args.output_tokens), "--requests",
                     str(args.requests), "--repeats", "1", "--out-dir", str(workdir)]
        load = subprocess.Popen([*load_argv, "--name", "load"], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT)
        wait_for_load(url, load)  # past client start-up, warm-up and payload building
        pid = frontend.proc.pid
        cpu_before, t0 = cpu_seconds([pid]), time.monotonic()
        logger.info("sampling the frontend (pid %d and its workers) for %ds", pid, args.duration)
        spy = threading.Thread(target=subprocess.run, args=([py_spy, "record", "--pid", str(pid), "--subprocesses",
                                                             "--duration", str(args.duration), "--rate", "200",
                                                             "--format", "raw", "--output", str(raw),
                                                             "--nonblocking", "--gil"],),
                               kwargs={"check": True})
        spy.start()
        spy.join()
        cpu = cpu_seconds([pid]) - cpu_before
        wall = time.monotonic() - t0
        load.wait()
        report = json.loads((workdir / "load.json").read_text())
        row = report["summary"][0]
    throughput = (f"Load result (bench_serving, one run of {args.requests} requests): "
                  f"{row.get('output_tok_s', float('nan')):.1f} output tok/s, TTFT p50 "
                  f"{row.get('ttft_p50_ms', float('nan')):.1f} ms, {row.get('errors', 0)} errors. "
                  f"Frontend CPU while sampled: {cpu:.1f} s over {wall:.1f} s wall "
                  f"({cpu / wall:.2f} cores; py-spy's own overhead included).\n\n")
    summary = (f"# Frontend profile: {args.name}\n\nLoad: streamed /v1/completions with prompt_embeds of "
               f"{args.prompt_len} rows, concurrency {args.concurrency}, {args.output_tokens} output tokens; "
               f"frontend options `{args.frontend_args or '(defaults)'}`, config.pbtxt overrides "
               f"`{args.triton_parameters}`; py-spy {args.duration}s at 200 Hz on "
               f"every frontend process, GIL-holding samples only.\n\n" + throughput + summarize(raw))
    (args.out_dir / f"frontend-{args.name}.md").write_text(summary)
    print(summary)


if __name__ == "__main__":
    main()
