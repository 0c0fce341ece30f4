"""The load-test command runs headless against a real tritonserver: ~20 s, zero failures, all outputs written."""

from __future__ import annotations

import csv
import subprocess
import sys

from tests.servers import REPO_ROOT


def test_locust_triton_users_run_without_failures(triton, tmp_path):
    out = tmp_path / "loadtest"
    argv = [sys.executable, "-m", "loadtest.run", "--users", "2", "--spawn-rate", "2", "--run-time", "20s",
            "--user-class", "TritonGrpcUser", "--triton-url", triton.grpc_url, "--out", str(out),
            "--", "--prompt-tokens", "64", "--embeds-share", "0.5", "--chat-parts", "3", "--max-tokens", "8"]
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    log = (out / "locust.log").read_text() if (out / "locust.log").exists() else ""
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n{log[-3000:]}"
    stats = {(r["Type"], r["Name"]): r for r in csv.DictReader(open(out / "locust_stats.csv"))}
    requests = {name: row for (kind, name), row in stats.items() if kind == "REQ"}
    assert requests, stats.keys()
    assert sum(int(r["Request Count"]) for r in requests.values()) >= 4
    assert all(int(r["Failure Count"]) == 0 for r in stats.values())
    # Streaming users report TTFT and inter-token latency as their own entries.
    assert {kind for kind, _ in stats} >= {"REQ", "TTFT", "ITL"}
    for name in ("report.html", "plot.png", "locust_stats_history.csv"):
        assert (out / name).stat().st_size > 0, name
