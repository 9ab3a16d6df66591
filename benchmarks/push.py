"""push_latency, broadcast and fanout: job changes pushed to websocket clients.

Each scenario runs against the original-style server (baseline) and then
against moi's, each in its own process, on fresh users of its own.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from urllib.parse import urlparse

import psutil
from results import Result
from services import ws_server
from wsload import Fleet, Tree, Writer, make_users, percentile

from moi import runtime

KINDS = ("original", "moi")


@dataclass
class Scenario:
    """What one scenario measured on one server."""

    p50_ms: float = 0.0
    p99_ms: float = 0.0
    frames_per_s: float = 0.0
    delivered: float = 0.0
    updates_per_s: float = 0.0
    timed_out: int = 0
    connections: int = 0


def _writer() -> Writer:
    return Writer(runtime.redis_url(), runtime.settings().key_timeout)


def redis_connections(pid: int) -> int:
    """Open TCP connections from process ``pid`` to the benchmark's Redis server."""
    port = urlparse(runtime.redis_url()).port
    return sum(
        1
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


async def paced(url: str, trees: list[Tree], rate: float, duration: float) -> Scenario:
    """Clients for ``trees`` (repeats allowed); ``rate`` changes/s round robin over their jobs."""
    fleet, writer = Fleet(url), _writer()
    try:
        await fleet.open(trees)
        jobs = sorted({j for t in trees for j in t.jobs})
        watchers = {j: sum(j in t.jobs for t in trees) for j in jobs}
        start = time.perf_counter()
        await writer.paced(jobs, rate, duration)
        expected = sum(watchers[jobs[n % len(jobs)]] for n in range(writer.written))
        await fleet.until(lambda: fleet.updates >= expected, 30)
        elapsed = time.perf_counter() - start
        ms = [s * 1000 for s in fleet.latencies]
        return Scenario(
            p50_ms=percentile(ms, 50),
            p99_ms=percentile(ms, 99),
            frames_per_s=fleet.updates / elapsed,
            delivered=fleet.updates / expected,
        )
    finally:
        await fleet.close()
        await writer.close()


async def flood(url: str, pid: int, trees: list[Tree], duration: float) -> Scenario:
    """Changes as fast as the server delivers them, then a final status for every job."""
    fleet, writer = Fleet(url), _writer()
    try:
        await fleet.open(trees)
        connections = redis_connections(pid)
        jobs = [j for t in trees for j in t.jobs]
        start = time.perf_counter()
        done, lost = await writer.closed_loop(fleet, jobs, window=500, duration=duration)
        rate = done / (time.perf_counter() - start)
        connections = max(connections, redis_connections(pid))
        await writer.finish_all(jobs)
        await fleet.until(lambda: len(fleet.finals) >= len(jobs), 60)
        ms = [s * 1000 for s in fleet.latencies]
        return Scenario(
            p99_ms=percentile(ms, 99),
            delivered=len(fleet.finals) / len(jobs),
            updates_per_s=rate,
            timed_out=lost,
            connections=connections,
        )
    finally:
        await fleet.close()
        await writer.close()


def run(quick: bool) -> list[Result]:
    seconds = 3.0 if quick else 10.0
    fan_users, fan_seconds = (200, 5.0) if quick else (1000, 30.0)
    latency, broadcast, fanout = {}, {}, {}
    for kind in KINDS:
        own = make_users(f"bench-{kind}-latency", 100, 1)
        shared = make_users(f"bench-{kind}-broadcast", 1, 10)[0]
        many = make_users(f"bench-{kind}-fanout", fan_users, 2)
        with ws_server(kind) as (url, pid):
            latency[kind] = asyncio.run(paced(url, own, 500, seconds))
            broadcast[kind] = asyncio.run(paced(url, [shared] * 100, 50, seconds))
            fanout[kind] = asyncio.run(flood(url, pid, many, fan_seconds))
        print(f"  {kind}: latency {latency[kind]}, broadcast {broadcast[kind]}")
        print(f"  {kind}: fanout {fanout[kind]}")
    moi, base = "moi", "original"
    return [
        Result(
            "push_latency_p50",
            latency[moi].p50_ms,
            latency[base].p50_ms,
            "ms",
            note=f"100 clients, own users, 500 updates/s for {seconds:g} s",
        ),
        Result(
            "push_latency_p99",
            latency[moi].p99_ms,
            latency[base].p99_ms,
            "ms",
            target="value <= 10",
            note=f"delivered {latency[moi].delivered:.4f} (baseline {latency[base].delivered:.4f})",
        ),
        Result(
            "broadcast_p99",
            broadcast[moi].p99_ms,
            broadcast[base].p99_ms,
            "ms",
            note=f"100 clients on one group of 10 jobs, 50 updates/s for {seconds:g} s",
        ),
        Result(
            "broadcast_frames_per_s",
            broadcast[moi].frames_per_s,
            broadcast[base].frames_per_s,
            "frames/s",
            note=f"delivered {broadcast[moi].delivered:.4f} "
            f"(baseline {broadcast[base].delivered:.4f})",
        ),
        Result(
            "fanout_delivered",
            fanout[moi].delivered,
            fanout[base].delivered,
            "final statuses",
            target="value == 1.0",
            note=f"{fan_users} clients, own users, 2 jobs each, {fan_seconds:g} s flood",
        ),
        Result(
            "fanout_updates_per_s",
            fanout[moi].updates_per_s,
            fanout[base].updates_per_s,
            "updates/s",
            note=f"500 changes in flight; p99 {fanout[moi].p99_ms:.1f} ms "
            f"(baseline {fanout[base].p99_ms:.1f} ms); changes not delivered within 10 s: "
            f"{fanout[moi].timed_out} (baseline {fanout[base].timed_out})",
        ),
        Result(
            "fanout_redis_connections",
            fanout[moi].connections,
            fanout[base].connections,
            "connections",
            note="TCP connections from the server process to Redis",
        ),
    ]
