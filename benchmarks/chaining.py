"""chaining: a typed ``ping`` job against a plain function job; one chain hop.

``typed_ping``: wall time of submitting jobs through ``moi.job.submit_type``
(type ``ping``) and waiting for every result, against the same number of
plain function jobs doing the same (``workload.pong``) through
``moi.job.submit``; the two sides interleaved over rounds, taking turns to go
first, each side's median kept.

``chain_hop``: the time from one chained job's end (its ``date_end``, written
in the atomic step that queues the next job) to the next job's start (its
``date_start``, written by the engine that runs it), over chains of
``workload.hop`` jobs: the engine's own hand-over through its client of the
cluster.  The first chain warms the engines' clients up and is not counted.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from datetime import datetime
from typing import Any

import workload
from results import Result, interleaved

from moi import chain, job, runtime
from moi.context import resolve
from moi.group import get_id_from_user

ROUNDS = 6


def _typed_vs_function(quick: bool) -> list[Result]:
    jobs = 100 if quick else 500
    ctx = resolve(None)
    ctx.client.wait_for_engines(2, timeout=120)
    parent = get_id_from_user("bench-chaining")
    sides: dict[str, Callable[[int], Any]] = {
        "typed": lambda i: job.submit_type(ctx, parent, f"ping {i}", "ping", {"ping": i})[2],
        "function": lambda i: job.submit(
            ctx, parent, f"pong {i}", None, workload.pong, {"ping": i}
        )[2],
    }

    times = interleaved(sides, jobs, ROUNDS)
    best = min(times["typed"]) / min(times["function"])
    return [
        Result(
            "typed_ping",
            statistics.median(times["typed"]),
            statistics.median(times["function"]),
            "s",
            target="ratio <= 1.10",
            note=f"{jobs} typed ping jobs vs {jobs} plain function jobs doing the same, "
            f"2 engines, median of {ROUNDS} interleaved rounds; fastest rounds' ratio {best:.3f}",
        )
    ]


def _gaps(infos: list[dict[str, Any]]) -> list[float]:
    """Milliseconds from each job's end to the next one's start."""
    gaps = []
    for before, after in zip(infos, infos[1:], strict=False):
        end = datetime.fromisoformat(before["date_end"])
        start = datetime.fromisoformat(after["date_start"])
        gaps.append((start - end).total_seconds() * 1000)
    return gaps


def _chain_hop(quick: bool) -> list[Result]:
    length, chains = (20, 2) if quick else (100, 5)
    parent = get_id_from_user("bench-chaining")
    ctx = resolve(None)

    def chained() -> list[float]:
        """A chain of ``hop`` jobs, each handed over by the engine that ran the one before."""
        first, _, _ = job.submit(ctx, parent, "hop", None, workload.hop, length)
        last = job.wait(first, timeout=600, chain=True)
        assert last["status"] == "Success", last
        return _gaps(chain.jobs(first))

    def client_driven() -> list[float]:
        """The baseline: the submitter waits for each job's result, then submits the next."""
        ids = []
        for k in range(length + 1):
            job_id, _, ar = job.submit(ctx, parent, f"step {k}", None, workload.trivial, k)
            ar.get(timeout=600)
            ids.append(job_id)
        return _gaps(runtime.store().get_many(ids))

    chained()  # warm up: each engine makes its client of the cluster on its first hand-over
    client_driven()
    moi: list[float] = []
    base: list[float] = []
    for _ in range(chains):
        moi += chained()
        base += client_driven()
    note = (
        f"{len(moi)} hops in {chains} chains of {length + 1} jobs: a job's date_end to the next "
        "one's date_start; baseline: the submitter waits for each result and submits the next"
    )
    return [
        Result(
            "chain_hop_p50",
            statistics.median(moi),
            statistics.median(base),
            "ms",
            target="value <= 5",
            note=note,
        ),
        Result("chain_hop_p99", _p99(moi), _p99(base), "ms", note=note),
    ]


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def run(quick: bool) -> list[Result]:
    runtime.store()  # connect before timing anything
    return _typed_vs_function(quick) + _chain_hop(quick)
