"""A short soak (about 45 s of load) on its own servers: the criteria of loadtest/soak.py, asserted one by one.

The RSS margin is looser than the 10-minute default (+10% or 50 MiB): in under a minute the
first window still holds warm-up (allocator arenas growing to the working set, tokenizer and
sampler caches, the frontend's first decodes), which a short run cannot tell from a leak; a leak
is what the 10-minute run (docs/soak.md) is for. Here the margin only catches gross growth.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.servers import REPO_ROOT

DURATION_S = 45


def test_short_soak_passes(tmp_path):
    out = tmp_path / "soak"
    argv = [sys.executable, "-m", "loadtest.soak", "--duration", str(DURATION_S), "--users", "2",
            "--rss-interval", "2", "--rss-margin-pct", "25", "--rss-margin-mib", "150", "--out", str(out)]
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=DURATION_S + 420)
    summary_path = out / "summary.json"
    assert summary_path.exists(), f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    summary = json.loads(summary_path.read_text())
    by_kind, criteria = summary["by_kind"], summary["criteria"]
    context = f"{json.dumps(by_kind)}\n{json.dumps(summary['requests'], indent=1)}\n{done.stdout[-2000:]}"
    assert by_kind["good"]["requests"] >= 10, context
    assert criteria["good_requests_without_failure"], context
    assert by_kind["bad"]["requests"] >= 1 and criteria["bad_inputs_all_rejected_4xx"], context
    assert criteria["cancels_all_got_a_first_token"], context
    assert criteria["engine_idle_at_end"], summary["engine_gauges_at_end"]
    assert criteria["rss_within_margin"], json.dumps(summary["rss"], indent=1)
    # Every process group was found and sampled (a broken psutil walk would pass the RSS check vacuously).
    assert all(summary["rss"][role].get("start_mib", 0) > 0 for role in ("tritonserver", "stub", "engine", "frontend"))
    assert summary["passed"] and done.returncode == 0, done.stdout[-2000:]
    for name in ("rss.csv", "report.html", "locust_stats.csv"):
        assert (out / name).stat().st_size > 0, name
