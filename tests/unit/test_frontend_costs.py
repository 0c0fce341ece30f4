"""benchmarks/frontend_costs.py's closed loop counts every response of every request."""

from __future__ import annotations

import asyncio

from benchmarks.frontend_costs import _closed_loop


def test_the_closed_loop_runs_each_request_once_and_adds_up_all_responses() -> None:
    started = []

    async def one() -> int:
        started.append(1)
        await asyncio.sleep(0.001)  # the workers interleave, as over a real stream
        return 3

    responses, cpu_s = asyncio.run(_closed_loop(one, requests=20, concurrency=4))
    assert len(started) == 20 and responses == 60 and cpu_s >= 0
