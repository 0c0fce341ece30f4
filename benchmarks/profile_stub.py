"""Where does the Triton path spend its time? Sample the model's Python stub with py-spy under load.

Starts tritonserver with our model (the same engine arguments as the benchmark), drives it with
bench_serving's Triton client (short prompts at saturation by default: the cell where the Triton
path trails vLLM's own server), and records the stub process with py-spy meanwhile. Prints and
writes a Markdown summary: samples per thread, inclusive share of the functions that matter, and
the top self-time frames.

    .venv/bin/python -m benchmarks.profile_stub --name cpu-tiny
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

from benchmarks.servers import REPO_ROOT, Servers, engine_args
from scripts.devservers import TINY_MODEL

logger = logging.getLogger("profile_stub")

# Inclusive-time buckets: a sample counts for each bucket one of its frames matches (substring).
BUCKETS = {
    "response send (pb_utils, IPC to tritonserver)": ("send (backend/triton_io.py", "send_error (backend/triton_io.py"),
    "cancel checks (is_cancelled IPC)": ("is_cancelled (backend/triton_io.py",),
    "request parsing + prompt building": ("read_inputs (backend/triton_io.py", "parse_request (backend/request.py"),
    "execute() (the stub's main thread: Triton waits for it)": ("execute (model.py",),
    "intake threads (read, check, schedule)": ("_take (model.py",),
    "vLLM output handler (detokenize, per-request queues)": ("output_handler (vllm/v1/engine/async_llm.py",),
    "vLLM generate() bookkeeping": ("generate (vllm/v1/engine/async_llm.py",),
    "our per-request stream (engine loop)": ("run_request (backend/stream.py",),
    "response shaping + coalescing (sender threads)": ("take (backend/responses.py",),
    "metrics (Triton custom metrics)": ("on_finish (backend/triton_io.py", "on_counts (backend/triton_io.py"),
    "asyncio loop (select, callbacks)": ("_run_once (asyncio/base_events.py",),
}


def stub_pid(server_pid: int, timeout_s: float = 30) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in psutil.Process(server_pid).children(recursive=True):
            if "triton_python_backend_stub" in " ".join(child.cmdline()):
                return child.pid
        time.sleep(0.5)
    raise RuntimeError("no triton_python_backend_stub process under tritonserver")


def _thread_root(frames: list[str]) -> str:
    """The thread's own entry: its first frame outside threading.py (all threads start in Thread._bootstrap)."""
    root = next((frame for frame in frames if "(threading.py:" not in frame), frames[0])
    return re.sub(r":\d+\)$", ")", root)  # one row per thread function, not per line


def summarize(raw: Path, top: int = 20) -> str:
    """Markdown from py-spy's raw (collapsed-stack) output."""
    threads: collections.Counter = collections.Counter()
    buckets: collections.Counter = collections.Counter()
    leaves: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        threads[_thread_root(frames)] += n
        leaves[frames[-1]] += n
        for name, needles in BUCKETS.items():
            if any(needle in frame for frame in frames for needle in needles):
                buckets[name] += n
    if not total:
        return "no samples\n"
    lines = [f"{total} samples (active threads only)\n", "| thread | share |", "|---|---:|"]
    lines += [f"| {t} | {n / total:.0%} |" for t, n in threads.most_common(8)]
    lines += ["", "| inclusive bucket | share |", "|---|---:|"]
    lines += [f"| {b} | {buckets[b] / total:.1%} |" for b in BUCKETS]
    lines += ["", "| top self-time frame | share |", "|---|---:|"]
    lines += [f"| `{f}` | {n / total:.1%} |" for f, n in leaves.most_common(top)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="local")
    p.add_argument("--model", default=str(TINY_MODEL))
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--output-tokens", type=int, default=64)
    p.add_argument("--requests", type=int, default=2000,
                   help="more than the sampling needs (payloads are built up front); stopped after")
    p.add_argument("--duration", type=int, default=20, help="seconds of sampling")
    p.add_argument("--engine-args", default="{}", help="JSON overrides of model.json (e.g. dummy weights on a GPU)")
    p.add_argument("--triton-parameters", default="{}", help="config.pbtxt parameter overrides (JSON)")
    p.add_argument("--gil", action="store_true",
                   help="sample only the thread holding the GIL (py-spy --gil): where the GIL's time goes")
    p.add_argument("--gil-too", action="store_true",
                   help="after the all-threads recording, record the GIL holder too, under the same load")
    p.add_argument("--out-dir", type=Path, default=REPO_ROOT / "results" / "profile")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    raw = args.out_dir / f"stub-{args.name}.txt"

    with Servers(REPO_ROOT / "results" / "tmp" / f"profile-{args.name}") as servers:
        url = servers.triton(engine_args(args.model, json.loads(args.engine_args)), json.loads(args.triton_parameters))
        pid = stub_pid(servers.processes[-1].proc.pid)
        load = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_serving", "--name", f"profile-{args.name}",
                                 "--paths", "triton", "--triton-url", url, "--model", args.model,
                                 "--prompt-lens", str(args.prompt_len), "--concurrency", str(args.concurrency),
                                 "--output-tokens", str(args.output_tokens), "--requests", str(args.requests),
                                 "--repeats", "1"], cwd=REPO_ROOT)
        time.sleep(12)  # past client start-up, warm-up and payload building
        recordings = [(raw, args.gil)] + ([(args.out_dir / f"stub-{args.name}-gil.txt", True)] if args.gil_too else [])
        for output, gil in recordings:
            logger.info("sampling the stub (pid %d) for %ds%s", pid, args.duration, " (GIL holder)" if gil else "")
            subprocess.run([py_spy, "record", "--pid", str(pid), "--duration", str(args.duration), "--rate", "200",
                            "--format", "raw", "--output", str(output), "--nonblocking", *(["--gil"] if gil else [])],
                           check=True)
        if load.poll() is not None:
            logger.warning("the load ended before the sampling did (exit %s): raise --requests", load.returncode)
        load.terminate()
        load.wait()
    for output, gil in recordings:
        summary = (f"# Stub profile: {args.name}\n\nLoad: Triton gRPC, prompt_embeds of {args.prompt_len} rows, "
                   f"concurrency {args.concurrency}, {args.output_tokens} output tokens; py-spy {args.duration}s "
                   f"at 200 Hz on the Python stub" + (", GIL holder only (`--gil`)" if gil else "")
                   + f"; engine-args overrides {args.engine_args}; config.pbtxt overrides {args.triton_parameters}."
                   "\n\n" + summarize(output))
        output.with_suffix(".md").write_text(summary)
        print(summary)


if __name__ == "__main__":
    main()
