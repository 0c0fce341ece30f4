"""What Triton itself sees of our model under load: queue time and execute() time per request.

Triton's statistics extension (`/v2/models/<model>/stats`) splits each request's time into queue
(waiting for the model's execute() to be called), compute input, compute infer (our execute()) and
output. For a decoupled Python model, requests wait in that queue while execute() runs, so a slow
execute() shows up here first. For each variant (config.pbtxt parameter overrides) this starts one
tritonserver, drives it with bench_serving's Triton client at each concurrency, and reads the
statistics before and after; prints a Markdown table and writes results/bench/<name>.json.

    .venv/bin/python -m benchmarks.triton_stats --name cpu-intake \\
        --variants '{"default": {}, "switch-1ms": {"gil_switch_interval_s": "0.001"}}'
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import httpx

from benchmarks.servers import REPO_ROOT, Servers, engine_args
from scripts.devservers import TINY_MODEL

PHASES = ("queue", "compute_input", "compute_infer", "compute_output")


def read_stats(http_url: str, model: str = "vllm_model") -> dict[str, tuple[int, int]]:
    """{phase: (count, total ns)} of the model's inference statistics."""
    stats = httpx.get(f"{http_url}/v2/models/{model}/stats", timeout=10).json()["model_stats"][0]["inference_stats"]
    return {phase: (int(stats[phase]["count"]), int(stats[phase]["ns"])) for phase in PHASES}


def per_request_ms(before: dict, after: dict) -> dict[str, float]:
    """Mean ms per request of each phase between two readings."""
    out = {}
    for phase in PHASES:
        count = after[phase][0] - before[phase][0]
        out[phase] = (after[phase][1] - before[phase][1]) / max(count, 1) / 1e6
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="triton-stats")
    p.add_argument("--model", default=str(TINY_MODEL))
    p.add_argument("--variants", default='{"default": {}}', help="JSON {name: config.pbtxt overrides}")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--concurrency", default="1,16")
    p.add_argument("--output-tokens", type=int, default=32)
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--out-dir", type=Path, default=REPO_ROOT / "results" / "bench")
    args = p.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for variant, parameters in json.loads(args.variants).items():
        workdir = REPO_ROOT / "results" / "tmp" / f"stats-{args.name}-{variant}"
        with Servers(workdir) as servers:
            url = servers.triton(engine_args(args.model), parameters)
            http_url = servers.processes[-1].http_url
            for concurrency in args.concurrency.split(","):
                before = read_stats(http_url)
                subprocess.run([sys.executable, "-m", "benchmarks.bench_serving", "--name", "load", "--out-dir",
                                str(workdir), "--paths", "triton", "--triton-url", url, "--model", args.model,
                                "--prompt-lens", str(args.prompt_len), "--concurrency", concurrency,
                                "--output-tokens", str(args.output_tokens), "--requests", str(args.requests),
                                "--repeats", "1"], check=True, capture_output=True, cwd=REPO_ROOT)
                phases = per_request_ms(before, read_stats(http_url))
                cell = json.loads((workdir / "load.json").read_text())["cells"][0]
                rows.append({"variant": variant, "parameters": parameters, "concurrency": int(concurrency),
                             **{f"{k}_ms": round(v, 3) for k, v in phases.items()},
                             "output_tok_s": round(cell["output_tok_s"], 1), "ttft_p50_ms": round(cell["ttft_p50_ms"], 1)})
                print(rows[-1], flush=True)
    (args.out_dir / f"{args.name}.json").write_text(json.dumps(rows, indent=2))
    table = ["| variant | conc | queue ms | execute() ms | out tok/s | TTFT p50 ms |", "|---|---:|---:|---:|---:|---:|"]
    table += [f"| {r['variant']} | {r['concurrency']} | {r['queue_ms']:.2f} | {r['compute_infer_ms']:.2f} | "
              f"{r['output_tok_s']:.0f} | {r['ttft_p50_ms']:.1f} |" for r in rows]
    print("\n".join(table))
    (args.out_dir / f"{args.name}.md").write_text(
        f"# Triton statistics: {args.name}\n\n{args.prompt_len}-row prompt_embeds, {args.output_tokens} output "
        f"tokens, {args.requests} requests per cell, model {args.model}.\n\n" + "\n".join(table) + "\n")


if __name__ == "__main__":
    main()
