"""submit_overhead: trivial jobs through ``moi.job.submit`` vs ``ctx.bv.apply_async``.

Both submit every job, then wait for every result, on the same cluster.
The two are interleaved over several rounds, taking turns to go first, and
each side's median wall time is kept, so a slow moment of the machine does
not land on one side; the ratio of the fastest rounds is noted too.

A third side, ``two_round_trips``, runs through ``apply_async`` a job that
makes two plain Redis round trips (PING) on the engine: the floor of any
design that confirms ``Running`` before the function runs and the final
status before its result goes back, as moi does.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import workload
from results import Result, interleaved

from moi import job, runtime
from moi.context import resolve
from moi.group import get_id_from_user

ROUNDS = 6


def run(quick: bool) -> list[Result]:
    jobs = 200 if quick else 1000
    ctx = resolve(None)
    ctx.client.wait_for_engines(2, timeout=120)  # both engines, from the first round on
    parent = get_id_from_user("bench-submit")

    url = runtime.redis_url()
    sides: dict[str, Callable[[int], Any]] = {
        "baseline": lambda i: ctx.bv.apply_async(workload.trivial, i),
        "moi": lambda i: job.submit(ctx, parent, f"trivial {i}", None, workload.trivial, i)[2],
        "floor": lambda i: ctx.bv.apply_async(workload.two_round_trips, i, url),
    }

    times = interleaved(sides, jobs, ROUNDS)
    best = min(times["moi"]) / min(times["baseline"])
    return [
        Result(
            "submit_overhead",
            statistics.median(times["moi"]),
            statistics.median(times["baseline"]),
            "s",
            target="ratio <= 1.10",
            note=f"{jobs} trivial jobs, 2 engines, median of {ROUNDS} interleaved rounds; "
            f"fastest rounds' ratio {best:.3f}",
        ),
        Result(
            "submit_two_round_trips",
            statistics.median(times["floor"]),
            statistics.median(times["baseline"]),
            "s",
            note="apply_async of a job making two Redis PINGs: the floor of moi's design",
        ),
    ]
