"""A/B the OpenAI frontend: builds from git revisions, all serving at once against one tritonserver.

On the 2-core CPU box, `vllm serve`'s own tok/s moved by up to a third between runs
(results/frontend-cpu-bound), more than most frontend changes are worth. Here every build runs at
the same time, in front of the same tritonserver and engine, and the load alternates between them
(order reversed every round), so they see the same machine. Per build and round: output tok/s, TTFT,
and the CPU per output token of the frontend process and of tritonserver with the model's stub
(psutil), the steadier numbers. Medians over rounds.

    .venv/bin/python -m benchmarks.ab_frontend --rev f3e8019 --rev WORKTREE --name pool

`WORKTREE` is this checkout as it is; any other revision is checked out with `git worktree` (the
frontend is pure Python: nothing to build). Prints a Markdown table; writes <out-dir>/<name>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.bench_serving import machine_info
from benchmarks.server_cpu import cpu_split, parse_cpus, pin_serving
from benchmarks.servers import REPO_ROOT, Servers, engine_args
from scripts.devservers import TINY_MODEL, FrontendServer

logger = logging.getLogger("ab_frontend")
WORKTREE = "WORKTREE"


def checkout(rev: str, into: Path) -> Path:
    """The tree to run `rev` from: this checkout, or a detached worktree of the revision."""
    if rev == WORKTREE:
        return REPO_ROOT
    subprocess.run(["git", "worktree", "add", "--detach", str(into), rev], cwd=REPO_ROOT, check=True,
                   capture_output=True)
    return into


def run_load(url: str, args: argparse.Namespace, hidden: int, out_dir: Path, name: str) -> dict[str, Any]:
    """One bench_serving cell against `url`: its row, and the output tokens it asked for (warm-up included)."""
    subprocess.run([sys.executable, "-m", "benchmarks.bench_serving", "--paths", "frontend", "--frontend-url", url,
                    "--served-model", "vllm_model", "--hidden-size", str(hidden),
                    "--prompt-lens", str(args.prompt_len), "--concurrency", str(args.concurrency),
                    "--output-tokens", str(args.output_tokens), "--requests", str(args.requests),
                    "--repeats", "1", "--name", name, "--out-dir", str(out_dir)],
                   cwd=REPO_ROOT, check=True, capture_output=True)
    cell = json.loads((out_dir / f"{name}.json").read_text())["cells"][0]
    cell["tokens"] = (args.requests + 2) * args.output_tokens  # bench_serving warms up with 2 requests
    return cell


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rev", action="append", required=True, help=f"a git revision, or {WORKTREE}; twice or more")
    p.add_argument("--name", default="ab-frontend")
    p.add_argument("--model", default=str(TINY_MODEL))
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--output-tokens", type=int, default=32)
    p.add_argument("--requests", type=int, default=640)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--frontend-args", default="", help="extra options for every frontend")
    p.add_argument("--serving-cpus", type=parse_cpus, default=None,
                   help="pin tritonserver, the stub and the frontends (not vLLM's engine) to these CPUs, e.g. '1': "
                        "the run-to-run spread on the CPU box comes largely from where they land against the "
                        "engine's OpenMP core")
    p.add_argument("--out-dir", type=Path, default=REPO_ROOT / "results" / "bench")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    hidden = json.loads((Path(args.model) / "config.json").read_text())["hidden_size"]
    rows: dict[str, list[dict[str, Any]]] = {rev: [] for rev in args.rev}
    with tempfile.TemporaryDirectory(prefix="ab-frontend-") as tmp, Servers(Path(tmp) / "servers") as servers:
        work = Path(tmp)
        triton_url = servers.triton(engine_args(args.model))
        triton_pid = servers.processes[-1].pid
        frontends: dict[str, FrontendServer] = {}
        trees = []
        try:
            for i, rev in enumerate(args.rev):
                root = checkout(rev, work / f"tree-{i}")
                if root != REPO_ROOT:
                    trees.append(root)
                frontends[rev] = FrontendServer(triton_url, work / f"frontend-{i}.log", *args.frontend_args.split(),
                                                root=root)
            if args.serving_cpus:
                pinned = pin_serving([triton_pid, *(server.pid for server in frontends.values())], args.serving_cpus)
                logger.info("pinned %d serving threads to CPUs %s", pinned, sorted(args.serving_cpus))
            for round_ in range(args.rounds):
                order = args.rev if round_ % 2 == 0 else args.rev[::-1]
                for rev in order:
                    server = frontends[rev]
                    before = (cpu_split([server.pid]), cpu_split([triton_pid]))
                    cell = run_load(server.url, args, hidden, work, f"load-{round_}")
                    after = (cpu_split([server.pid]), cpu_split([triton_pid]))
                    row = {"tok_s": cell["output_tok_s"], "ttft_p50_ms": cell["ttft_p50_ms"],
                           "errors": cell["errors"], "tok_per_chunk": cell["tokens_per_chunk"],
                           "frontend_us_per_tok": (after[0] - before[0]).serving_s * 1e6 / cell["tokens"],
                           "triton_us_per_tok": (after[1] - before[1]).serving_s * 1e6 / cell["tokens"],
                           "engine_us_per_tok": (after[1] - before[1]).engine_s * 1e6 / cell["tokens"]}
                    rows[rev].append(row)
                    logger.info("round %d %s: %s", round_, rev, {k: round(v, 1) for k, v in row.items()})
        finally:
            for server in frontends.values():
                server.stop()
            for tree in trees:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO_ROOT, check=False)
    keys = ("tok_s", "ttft_p50_ms", "frontend_us_per_tok", "triton_us_per_tok", "engine_us_per_tok", "errors")
    medians = {rev: {k: statistics.median(r[k] for r in rows[rev]) for k in keys} for rev in args.rev}
    setup = (f"Machine: {machine_info()['summary']}. Model `{args.model}`; streamed /v1/completions, "
             f"{args.prompt_len}-row prompt_embeds, {args.output_tokens} output tokens, {args.concurrency} streams, "
             f"{args.requests} requests a round, {args.rounds} rounds alternating builds (order reversed each "
             f"round), medians (`benchmarks/ab_frontend.py`). Serving processes pinned to CPUs: "
             f"{sorted(args.serving_cpus) if args.serving_cpus else 'no'}.")
    header = ("| build | out tok/s | TTFT p50 ms | frontend CPU µs/tok | tritonserver + stub CPU µs/tok | "
              "engine CPU µs/tok | errors |")
    lines = [f"# Frontend A/B: {args.name}", "", setup, "", header, "|---|---:|---:|---:|---:|---:|---:|"]
    for rev in args.rev:
        m = medians[rev]
        lines.append(f"| {rev} | {m['tok_s']:.0f} | {m['ttft_p50_ms']:.1f} | {m['frontend_us_per_tok']:.0f} | "
                     f"{m['triton_us_per_tok']:.0f} | {m['engine_us_per_tok']:.0f} | {m['errors']:.0f} |")
    report = "\n".join(lines) + "\n"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{args.name}.json").write_text(json.dumps(
        {"name": args.name, "meta": {"machine": machine_info(), "command": sys.argv}, "medians": medians,
         "rounds": rows}, indent=1))
    (args.out_dir / f"{args.name}.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
