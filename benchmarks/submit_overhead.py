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
import time

import workload
from results import Result

from moi import job, runtime
from moi.context import resolve
from moi.group import get_id_from_user

ROUNDS = 6


def run(quick: bool) -> list[Result]:
    jobs = 200 if quick else 1000
    ctx = resolve(None)
    ctx.client.wait_for_engines(2, timeout=120)  # both engines, from the first round on
    parent = get_id_from_user("bench-submit")

    def baseline() -> float:
        start = time.perf_counter()
        results = [ctx.bv.apply_async(workload.trivial, i) for i in range(jobs)]
        for ar in results:
            ar.get(timeout=600)
        return time.perf_counter() - start

    def floor() -> float:
        start = time.perf_counter()
        results = [
            ctx.bv.apply_async(workload.two_round_trips, i, runtime.redis_url())
            for i in range(jobs)
        ]
        for ar in results:
            ar.get(timeout=600)
        return time.perf_counter() - start

    def moi() -> float:
        start = time.perf_counter()
        results = [
            job.submit(ctx, parent, f"trivial {i}", None, workload.trivial, i)[2]
            for i in range(jobs)
        ]
        for ar in results:
            ar.get(timeout=600)
        return time.perf_counter() - start

    baseline(), moi(), floor()  # warm up: connections, imports on the engines
    times: dict[str, list[float]] = {"moi": [], "baseline": [], "floor": []}
    for round_ in range(ROUNDS):
        order = [("baseline", baseline), ("moi", moi), ("floor", floor)]
        for side, run_side in order if round_ % 2 == 0 else order[::-1]:
            times[side].append(run_side())
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
