"""Soak run: mixed good, bad and cancelled traffic for a bounded time, with process memory watched.

    python -m loadtest.soak --duration 600 [--users 4] [--out DIR]

Starts tritonserver (tiny model) and the frontend on free ports, runs Locust headless with
SoakTritonUser and SoakFrontendUser (loadtest/locustfile.py: text, embeddings and chat with
embedding parts; --bad-share bad inputs; --cancel-share streams cancelled after the first token),
samples the RSS of tritonserver, the Python stub, the vLLM engine processes and the frontend every
--rss-interval seconds, then checks that the engine is idle. Stops everything it started.

Writes results/soak/<timestamp>/: Locust's CSVs and report.html, rss.csv, summary.json, servers/*.log.
Pass: no failed good request, every bad input answered 4xx / INVALID_ARG naming the input, every
cancel got its first token, RSS growth from the first window's median to the last window's median
within max(--rss-margin-pct, --rss-margin-mib) per process group, and the vllm:num_requests gauges
back to 0. Exit code 0 on pass, 1 on fail.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from loadtest.run import run_locust, summary
from loadtest.workload import DEFAULT_MODEL, REPO_ROOT

logger = logging.getLogger(__name__)

USER_CLASSES = ["SoakTritonUser", "SoakFrontendUser"]
ROLES = ("tritonserver", "stub", "engine", "frontend")
STUB_NAME = "triton_python_backend_stub"
GAUGE_STATES = ("active", "queued", "engine_unfinished")


def roles_of(triton_pid: int, frontend_pid: int) -> dict[str, list[psutil.Process]]:
    """Processes by role: tritonserver, its Python stub(s), the stub's descendants (vLLM engine), the frontend."""
    out: dict[str, list[psutil.Process]] = {role: [] for role in ROLES}
    try:
        triton = psutil.Process(triton_pid)
        out["tritonserver"].append(triton)
        for child in triton.children(recursive=True):
            name = child.name()
            if STUB_NAME in name or any(STUB_NAME in part for part in child.cmdline()[:1]):
                out["stub"].append(child)
        stubs = set(out["stub"])
        for stub in stubs:
            out["engine"] += [p for p in stub.children(recursive=True) if p not in stubs]
    except psutil.Error:
        pass
    try:
        frontend = psutil.Process(frontend_pid)
        out["frontend"] = [frontend, *frontend.children(recursive=True)]
    except psutil.Error:
        pass
    return out


class RssSampler(threading.Thread):
    """Every `interval_s`, the summed RSS (MiB) per role, appended to rss.csv and kept in memory."""

    def __init__(self, path: Path, triton_pid: int, frontend_pid: int, interval_s: float) -> None:
        super().__init__(daemon=True)
        self.path, self.triton_pid, self.frontend_pid, self.interval_s = path, triton_pid, frontend_pid, interval_s
        self.samples: list[dict[str, Any]] = []
        self._done = threading.Event()
        self.t0 = time.monotonic()

    def sample(self) -> dict[str, Any]:
        row: dict[str, Any] = {"t_s": round(time.monotonic() - self.t0, 1)}
        for role, procs in roles_of(self.triton_pid, self.frontend_pid).items():
            rss, pids = 0, []
            for proc in procs:
                try:
                    rss += proc.memory_info().rss
                    pids.append(str(proc.pid))
                except psutil.Error:
                    pass
            row[f"{role}_mib"] = round(rss / 2**20, 1)
            row[f"{role}_pids"] = " ".join(pids)
        return row

    def run(self) -> None:
        with open(self.path, "w", newline="") as f:
            fields = ["t_s", *[f"{r}_{k}" for r in ROLES for k in ("mib", "pids")]]
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            while True:
                row = self.sample()
                self.samples.append(row)
                writer.writerow(row)
                f.flush()
                if self._done.wait(self.interval_s):
                    return

    def stop(self) -> None:
        self._done.set()
        self.join(30)


def rss_verdict(samples: list[dict[str, Any]], window_s: float, margin_pct: float,
                margin_mib: float) -> dict[str, Any]:
    """Per role: median of the first and the last window, max, growth and whether it is within the margin."""
    end = samples[-1]["t_s"] if samples else 0.0
    first_t = samples[0]["t_s"] if samples else 0.0
    out: dict[str, Any] = {}
    for role in ROLES:
        key = f"{role}_mib"
        first = [s[key] for s in samples if s["t_s"] <= first_t + window_s and s[key] > 0]
        last = [s[key] for s in samples if s["t_s"] >= end - window_s and s[key] > 0]
        if not first or not last:
            out[role] = {"ok": False, "why": "no samples"}
            continue
        start_mib, end_mib = statistics.median(first), statistics.median(last)
        allowed = max(start_mib * margin_pct / 100, margin_mib)
        out[role] = {"start_mib": start_mib, "end_mib": end_mib,
                     "max_mib": max(s[key] for s in samples), "growth_mib": round(end_mib - start_mib, 1),
                     "allowed_mib": round(allowed, 1), "ok": end_mib - start_mib <= allowed,
                     "pids_start": samples[0][f"{role}_pids"], "pids_end": samples[-1][f"{role}_pids"]}
    return out


def request_counts(out: Path) -> dict[str, dict[str, int]]:
    """REQ entries of locust_stats.csv: {name: {requests, failures}}."""
    counts = {}
    for row in csv.DictReader(open(out / "locust_stats.csv")):
        if row["Type"] == "REQ":
            counts[row["Name"]] = {"requests": int(row["Request Count"]), "failures": int(row["Failure Count"])}
    return counts


def engine_gauges(metrics_url: str) -> dict[str, float]:
    """vllm:num_requests{state} from Triton's metrics port."""
    values: dict[str, float] = {}
    for line in httpx.get(metrics_url, timeout=10).text.splitlines():
        if line.startswith("vllm:num_requests{"):
            for state in GAUGE_STATES:
                if f'state="{state}"' in line:
                    values[state] = float(line.rsplit(" ", 1)[1])
    return values


def wait_idle(metrics_url: str, timeout_s: float) -> tuple[bool, dict[str, float]]:
    """Poll until every vllm:num_requests gauge is 0; return (idle, last values)."""
    deadline = time.monotonic() + timeout_s
    while True:
        gauges = engine_gauges(metrics_url)
        if gauges and all(v == 0 for v in gauges.values()) and len(gauges) == len(GAUGE_STATES):
            return True, gauges
        if time.monotonic() > deadline:
            return False, gauges
        time.sleep(1)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def judge(counts: dict[str, dict[str, int]], rss: dict[str, Any], idle: bool) -> dict[str, Any]:
    """The pass criteria, each with its figure."""
    by_kind = {"good": [0, 0], "bad": [0, 0], "cancel": [0, 0]}
    for name, c in counts.items():
        kind = "bad" if " bad:" in name else "cancel" if name.endswith(" cancel") else "good"
        by_kind[kind][0] += c["requests"]
        by_kind[kind][1] += c["failures"]
    criteria = {
        "good_requests_without_failure": by_kind["good"][0] > 0 and by_kind["good"][1] == 0,
        "bad_inputs_all_rejected_4xx": by_kind["bad"][0] > 0 and by_kind["bad"][1] == 0,
        "cancels_all_got_a_first_token": by_kind["cancel"][1] == 0,
        "rss_within_margin": all(r.get("ok") for r in rss.values()),
        "engine_idle_at_end": idle,
    }
    return {"by_kind": {k: {"requests": v[0], "failures": v[1]} for k, v in by_kind.items()},
            "criteria": criteria, "passed": all(criteria.values())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=600, help="seconds of load (default 600)")
    parser.add_argument("--users", type=int, default=4, help="Locust users, split over the two classes")
    parser.add_argument("--spawn-rate", type=float, default=2.0)
    parser.add_argument("--bad-share", type=float, default=0.1)
    parser.add_argument("--cancel-share", type=float, default=0.1)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--rss-interval", type=float, default=3.0, help="seconds between RSS samples")
    parser.add_argument("--rss-window", type=float, default=60.0,
                        help="seconds of the first and last window compared (at most a quarter of the run)")
    parser.add_argument("--rss-margin-pct", type=float, default=10.0)
    parser.add_argument("--rss-margin-mib", type=float, default=50.0)
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--out", type=Path, help="default results/soak/<timestamp>")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # see loadtest/run.py
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    out = args.out or REPO_ROOT / "results" / "soak" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    window_s = min(args.rss_window, args.duration / 4)
    record: dict[str, Any] = {"argv": sys.argv, "settings": {k: (str(v) if isinstance(v, Path) else v)
                                                             for k, v in vars(args).items()},
                              "rss_window_s": window_s, "cpu_count": os.cpu_count(), "uptime_before": uptime()}
    from scripts.devservers import FrontendServer, Process, TritonServer, engine_args, make_repository

    servers_dir = out / "servers"
    servers_dir.mkdir(exist_ok=True)
    started: list[Process] = []
    try:
        t_start = time.monotonic()
        # A short exit timeout: Triton 2.51 waits it out on shutdown (README, "Shutdown"), and it is idle time.
        triton = TritonServer(make_repository(servers_dir / "repository", engine_args=engine_args(args.model)),
                              servers_dir / "tritonserver.log", extra=["--exit-timeout-secs=10"])
        started.append(triton)
        frontend = FrontendServer(triton.grpc_url, servers_dir / "frontend.log", "--model-path", args.model)
        started.append(frontend)
        frontend_url = frontend.url
        record["server_start_s"] = round(time.monotonic() - t_start, 1)
        logger.info("servers up in %.0f s; soak for %d s", record["server_start_s"], args.duration)

        sampler = RssSampler(out / "rss.csv", triton.proc.pid, frontend.proc.pid, args.rss_interval)
        sampler.start()
        extra = ["--model", args.model, "--prompt-tokens", str(args.prompt_tokens), "--max-tokens",
                 str(args.max_tokens), "--bad-share", str(args.bad_share), "--cancel-share", str(args.cancel_share)]
        try:
            code = run_locust(out, users=args.users, spawn_rate=args.spawn_rate, run_time=f"{args.duration}s",
                              user_classes=USER_CLASSES, urls={"triton": triton.grpc_url, "frontend": frontend_url},
                              extra=extra)
        finally:
            sampler.stop()
        idle, gauges = wait_idle(triton.metrics_url, timeout_s=30)
    finally:
        for process in reversed(started):  # each with its process group: the engine goes with tritonserver
            process.stop()
    record["uptime_after"] = uptime()
    record["locust_exit_code"] = code
    if not (out / "locust_stats.csv").exists():
        logger.error("locust wrote no stats (exit %s); see %s", code, out / "locust.log")
        (out / "summary.json").write_text(json.dumps({**record, "passed": False}, indent=2))
        return 1
    counts = request_counts(out)
    rss = rss_verdict(sampler.samples, window_s, args.rss_margin_pct, args.rss_margin_mib)
    verdict = judge(counts, rss, idle)
    record.update(requests=counts, rss=rss, engine_gauges_at_end=gauges, rss_samples=len(sampler.samples),
                  **verdict)
    (out / "summary.json").write_text(json.dumps(record, indent=2))
    print(summary(out))
    print(f"\n{'role':13} {'start MiB':>10} {'end MiB':>10} {'max MiB':>10} {'growth':>8} {'allowed':>8}  ok")
    for role, r in rss.items():
        if "start_mib" in r:
            print(f"{role:13} {r['start_mib']:10.1f} {r['end_mib']:10.1f} {r['max_mib']:10.1f} "
                  f"{r['growth_mib']:8.1f} {r['allowed_mib']:8.1f}  {r['ok']}")
        else:
            print(f"{role:13} {r.get('why')}")
    for name, ok in verdict["criteria"].items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    print(f"\n{'PASSED' if verdict['passed'] else 'FAILED'}; results in {out}")
    return 0 if verdict["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
