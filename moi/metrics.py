"""Prometheus metrics of a moi server, read from Redis at scrape time.

Nothing is counted twice: :func:`gather` reads what Redis and the server
process already hold (the served user's tree, the counters engines and
submitters keep in the HASH ``moi:stats``, the leases, the relay's and the
log hub's own figures) and :class:`MoiCollector` turns that snapshot into
metric families for ``prometheus_client``.  :func:`render` does both.

Metrics (all prefixed ``moi_``): ``jobs{user,status,context}`` (gauge),
``jobs_running``, ``jobs_queued`` (all users), ``jobs_submitted_total{context}``,
``jobs_finished_total{context,status}``, ``job_run_seconds{context}``
(histogram of finished jobs' run times, measured on the engines),
``engines{context}``, ``websockets``, ``subscribed_channels{kind}``,
``relay_batches_total``, ``relay_messages_total``, ``relay_lag_seconds``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from moi import keys
from moi.logs import RUN_BUCKETS, LogHub
from moi.relay import Relay
from moi.store import text

#: What ``GET /metrics`` answers with.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Snapshot:
    """Everything one scrape reports, read at once."""

    user: str = ""
    #: Jobs of the served user's tree by (status, context).
    jobs: Counter[tuple[str, str]] = field(default_factory=Counter)
    running: int = 0
    queued: int = 0
    #: The ``moi:stats`` HASH.
    stats: dict[str, float] = field(default_factory=dict)
    engines: dict[str, int] = field(default_factory=dict)
    websockets: int = 0
    node_channels: int = 0
    log_channels: int = 0
    relay_batches: int = 0
    relay_messages: int = 0
    relay_lag: float = 0.0


async def gather(
    redis_client: aioredis.Redis,
    user: str = "",
    group_id: str | None = None,
    relay: Relay | None = None,
    hub: LogHub | None = None,
    engines: dict[str, int] | None = None,
) -> Snapshot:
    """Read a :class:`Snapshot` (two round trips to Redis).

    Parameters
    ----------
    redis_client : redis.asyncio.Redis
    user, group_id : str
        The served user and their group: their jobs are counted by status.
    relay, hub : optional
        The process's relay and log hub, for their figures.
    engines : dict, optional
        Engines per context, as the caller's ipyparallel clients see them.
    """
    snap = Snapshot(user=user, engines=dict(engines or {}))
    async with redis_client.pipeline(transaction=False) as pipe:
        pipe.zcard(keys.LEASES)
        pipe.zcard(keys.QUEUED)
        pipe.hgetall(keys.STATS)
        snap.running, snap.queued, raw = await pipe.execute()
    snap.stats = {text(k): _number(v) for k, v in raw.items()}
    if group_id is not None and relay is not None:
        for info in await relay.store.tree(group_id):
            if info.get("type") == "job":
                snap.jobs[(str(info.get("status")), str(info.get("context")))] += 1
    if relay is not None:
        snap.websockets = relay.view_count()
        snap.node_channels = relay.channel_count()
        snap.relay_batches, snap.relay_messages = relay.batches, relay.messages
        snap.relay_lag = relay.lag
    if hub is not None:
        snap.log_channels = hub.channel_count()
    return snap


def _number(raw: Any) -> float:
    try:
        value = float(text(raw))
    except ValueError:
        return 0.0
    return value if math.isfinite(value) else 0.0


class MoiCollector(Collector):
    """The metric families of one :class:`Snapshot`."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snap = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self.snap
        jobs = GaugeMetricFamily(
            "moi_jobs", "Jobs in the served user's tree", labels=["user", "status", "context"]
        )
        for (status, context), n in sorted(snap.jobs.items()):
            jobs.add_metric([snap.user, status, context], n)
        yield jobs
        yield GaugeMetricFamily("moi_jobs_running", "Jobs running now (all users)", snap.running)
        yield GaugeMetricFamily("moi_jobs_queued", "Jobs queued now (all users)", snap.queued)
        yield from self._counters()
        yield from self._run_times()
        engines = GaugeMetricFamily("moi_engines", "Engines per context", labels=["context"])
        for context, n in sorted(snap.engines.items()):
            engines.add_metric([context], n)
        yield engines
        yield GaugeMetricFamily("moi_websockets", "Connected websockets", snap.websockets)
        channels = GaugeMetricFamily(
            "moi_subscribed_channels", "Pub/sub channels subscribed", labels=["kind"]
        )
        channels.add_metric(["node"], snap.node_channels)
        channels.add_metric(["log"], snap.log_channels)
        yield channels
        yield CounterMetricFamily(
            "moi_relay_batches", "Batches of pub/sub messages relayed", snap.relay_batches
        )
        yield CounterMetricFamily(
            "moi_relay_messages", "Pub/sub messages relayed", snap.relay_messages
        )
        yield GaugeMetricFamily(
            "moi_relay_lag_seconds",
            "Time the last relayed batch took from being read to reaching every view",
            snap.relay_lag,
        )

    def _counters(self) -> Iterator[Metric]:
        submitted = CounterMetricFamily("moi_jobs_submitted", "Jobs submitted", labels=["context"])
        finished = CounterMetricFamily(
            "moi_jobs_finished", "Jobs finished on an engine", labels=["context", "status"]
        )
        for name, value in sorted(self.snap.stats.items()):
            kind, *labels = name.split("|")
            if kind == "submitted" and len(labels) == 1:
                submitted.add_metric(labels, value)
            elif kind == "finished" and len(labels) == 2:
                finished.add_metric(labels, value)
        yield submitted
        yield finished

    def _run_times(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            "moi_job_run_seconds", "Run time of jobs finished on an engine", labels=["context"]
        )
        stats = self.snap.stats
        contexts = sorted({n.split("|")[1] for n in stats if n.startswith("run_count|")})
        for context in contexts:
            running_total, buckets = 0.0, []
            for bound in (*map(str, RUN_BUCKETS), "+Inf"):
                running_total += stats.get(keys.stat_field("run_bucket", context, bound), 0.0)
                buckets.append((bound, running_total))
            total = stats.get(keys.stat_field("run_sum", context), 0.0)
            family.add_metric([context], buckets, total)
        yield family


def render(snapshot: Snapshot) -> bytes:
    """``snapshot`` in the Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MoiCollector(snapshot))
    return generate_latest(registry)
