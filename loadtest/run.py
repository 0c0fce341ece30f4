"""One headless load test: start the servers it needs (or target running ones), run Locust, plot.

    python -m loadtest.run --users 8 --spawn-rate 2 --run-time 60s --user-class TritonGrpcUser \
        -- --prompt-tokens 512 --embeds-share 0.5 --max-tokens 32

Writes results/loadtest/<timestamp>/: Locust's CSVs (stats, failures, full history), report.html,
plot.png (latency percentiles and throughput over time) and run.json (the command and settings).
Arguments after `--` go to the locustfile (workload knobs; see loadtest/locustfile.py).
Without --triton-url / --frontend-url / --vllm-url the needed servers are started on free ports on
the tiny model and stopped afterwards.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from loadtest.workload import DEFAULT_MODEL, REPO_ROOT, require_local

logger = logging.getLogger(__name__)

USER_CLASSES = ("TritonGrpcUser", "FrontendCompletionsUser", "FrontendChatUser", "VllmServerUser")
NEEDS = {"TritonGrpcUser": "triton", "FrontendCompletionsUser": "frontend", "FrontendChatUser": "frontend",
         "VllmServerUser": "vllm"}


def run_locust(out: Path, *, users: int, spawn_rate: float, run_time: str, user_classes: list[str],
               urls: dict[str, str], extra: list[str], python: str = sys.executable) -> int:
    """Run Locust headless with CSV + HTML output under `out`; returns its exit code."""
    argv = [python, "-m", "locust", "-f", str(REPO_ROOT / "loadtest" / "locustfile.py"), "--headless",
            "-u", str(users), "-r", str(spawn_rate), "-t", run_time, "--stop-timeout", "30",
            "--csv", str(out / "locust"), "--csv-full-history", "--html", str(out / "report.html"),
            "--only-summary", "--loglevel", "WARNING"]
    for key, url in urls.items():
        argv += [f"--{key}-url", url]
    argv += [*extra, *user_classes]
    logger.info("locust: %s", " ".join(argv))
    (out / "run.json").write_text(json.dumps({"argv": argv, "urls": urls, "time": time.time()}, indent=2))
    with open(out / "locust.log", "wb") as log:
        return subprocess.call(argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)


def plot(out: Path) -> Path:
    """plot.png from locust_stats_history.csv: REQ/TTFT/ITL percentiles per name, req/s and tokens/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(out / "locust_stats_history.csv")))
    series: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        if row["Name"] != "Aggregated":
            series[(row["Type"], row["Name"])].append(row)
    t0 = min((float(r["Timestamp"]) for r in rows), default=0.0)
    fig, axes = plt.subplots(4, 1, figsize=(11, 13), sharex=True)
    panels = {"REQ": axes[0], "TTFT": axes[1], "ITL": axes[2]}
    tokens: dict[float, float] = defaultdict(float)
    for (kind, name), points in sorted(series.items()):
        times = [float(p["Timestamp"]) - t0 for p in points]
        if kind in panels:
            for pct, style in (("50%", "-"), ("99%", "--")):
                values = [_num(p[pct]) for p in points]
                panels[kind].plot(times, values, style, label=f"{name} p{pct[:-1]}")
        if kind == "REQ":
            axes[3].plot(times, [_num(p["Requests/s"]) for p in points], label=f"{name} req/s")
        if kind in ("TTFT", "ITL"):  # one TTFT or ITL entry per output token
            for t, p in zip(times, points):
                tokens[t] += _num(p["Requests/s"])
    if tokens:
        ax = axes[3].twinx()
        ts = sorted(tokens)
        ax.plot(ts, [tokens[t] for t in ts], "k:", label="output tokens/s (all)")
        ax.set_ylabel("tokens/s")
        ax.legend(loc="upper right", fontsize=8)
    titles = {"REQ": "request latency (ms)", "TTFT": "time to first token (ms)", "ITL": "inter-token latency (ms)"}
    for kind, ax in panels.items():
        ax.set_ylabel(titles[kind])
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7, loc="upper left")
    axes[3].set_ylabel("requests/s")
    axes[3].set_xlabel("seconds since start")
    axes[3].grid(alpha=0.3)
    if axes[3].lines:
        axes[3].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"load test {out.name} (rolling-window percentiles)")
    fig.tight_layout()
    path = out / "plot.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _num(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


def summary(out: Path) -> str:
    """A short table from locust_stats.csv: per entry count, failures, p50, p99."""
    lines = [f"{'type':5} {'name':34} {'count':>7} {'fail':>5} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>7}"]
    for row in csv.DictReader(open(out / "locust_stats.csv")):
        lines.append(f"{row['Type']:5} {row['Name']:34} {row['Request Count']:>7} {row['Failure Count']:>5} "
                     f"{row['50%']:>8} {row['99%']:>8} {_num(row['Requests/s']):7.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--spawn-rate", type=float, default=2.0)
    parser.add_argument("--run-time", default="60s", help="Locust duration, e.g. 90s, 5m (the run stops by itself)")
    parser.add_argument("--user-class", action="append", choices=USER_CLASSES,
                        help="user classes to run (repeatable; default TritonGrpcUser)")
    parser.add_argument("--triton-url", help="running tritonserver gRPC host:port (else one is started)")
    parser.add_argument("--frontend-url", help="running frontend base URL (else one is started)")
    parser.add_argument("--vllm-url", help="running vLLM server base URL (else one is started)")
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="model for servers started here")
    parser.add_argument("--out", type=Path, help="output directory (default results/loadtest/<timestamp>)")
    args = parser.parse_args(argv)
    # Started from a background shell, SIGINT arrives ignored: restore it, so Ctrl-C (or kill -INT)
    # unwinds through Servers.close() and stops the servers.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    classes = args.user_class or ["TritonGrpcUser"]
    out = args.out or REPO_ROOT / "results" / "loadtest" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    needed = {NEEDS[c] for c in classes}
    urls = {k: require_local(v) for k, v in (("triton", args.triton_url), ("frontend", args.frontend_url),
                                              ("vllm", args.vllm_url)) if v}
    if "--model" not in extra:
        extra = ["--model", args.model, *extra]

    from scripts.devservers import Servers, engine_args

    with Servers(out / "servers") as servers:
        engine = engine_args(args.model)
        if "triton" not in urls and needed & {"triton", "frontend"}:
            urls["triton"] = servers.triton(engine)
        if "frontend" not in urls and "frontend" in needed:
            urls["frontend"] = servers.frontend(urls["triton"])
        if "vllm" not in urls and "vllm" in needed:
            urls["vllm"] = servers.vllm(engine)
        code = run_locust(out, users=args.users, spawn_rate=args.spawn_rate, run_time=args.run_time,
                          user_classes=classes, urls=urls, extra=extra)
    if not (out / "locust_stats.csv").exists():
        logger.error("locust wrote no stats (exit %s); see %s", code, out / "locust.log")
        return code or 1
    plot(out)
    print(summary(out))
    print(f"\nresults in {out} (report.html, plot.png, locust_*.csv); locust exit code {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())
