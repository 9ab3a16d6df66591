"""Websocket clients and job writers: the load the push benchmarks put on a server.

Writers change jobs with moi's own atomic write (the ``UPDATE`` Lua script
the engines run, with the keys and arguments :meth:`moi.store.Store.update` uses),
stamping each change with ``bench_seq`` and ``bench_sent`` (``time.time()``
just before the write).  Clients record, for every ``update`` frame, the time
from that stamp to the frame's arrival.  Everything runs on loopback and
every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect

from moi import keys, lua, runtime
from moi.group import create_info, get_id_from_user
from moi.store import update_call

#: Most connections opened at once.
CONNECT_CONCURRENCY = 50


@dataclass
class Tree:
    """A user and the jobs under its group, as written by :func:`make_users`."""

    user: str
    group_id: str
    jobs: list[str]


def make_users(prefix: str, users: int, jobs_each: int) -> list[Tree]:
    """Create ``users`` users with ``jobs_each`` queued jobs each (synchronously)."""
    store = runtime.store()
    trees = []
    for n in range(users):
        user = f"{prefix}-{n}"
        group_id = get_id_from_user(user)
        jobs = []
        with store.r.pipeline(transaction=False) as pipe:
            for j in range(jobs_each):
                info = create_info(f"job {j}", "job", parent=group_id, context="default")
                pipe.set(keys.info(info["id"]), json.dumps(info), ex=store.key_timeout)
                pipe.sadd(keys.children(group_id), info["id"])
                jobs.append(info["id"])
            pipe.execute()
        trees.append(Tree(user, group_id, jobs))
    return trees


@dataclass
class Fleet:
    """Websocket clients and what they received."""

    url: str
    latencies: list[float] = field(default_factory=list)
    updates: int = 0
    finals: set[tuple[int, str]] = field(default_factory=set)  # (client, job id)
    _waiting: dict[str, tuple[int, asyncio.Future[None]]] = field(default_factory=dict)
    _sockets: list[ClientConnection] = field(default_factory=list)
    _readers: list[asyncio.Task[None]] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def open(self, trees: Iterable[Tree], timeout: float = 120.0) -> None:
        """Connect one client per tree and wait until each has received its whole tree."""
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(tree: Tree) -> None:
            async with gate:
                ws = await connect(
                    f"{self.url}?user={quote(tree.user)}",
                    max_size=None,
                    compression=None,
                    ping_interval=None,
                    open_timeout=timeout,
                )
                await ws.send(json.dumps({"get": []}))
                expected, got = len(tree.jobs) + 1, 0
                while got < expected:
                    frame = json.loads(await ws.recv())
                    got += "get" in frame
                self._sockets.append(ws)
                client = len(self._sockets)
                self._readers.append(asyncio.ensure_future(self._read(client, ws)))

        await asyncio.wait_for(asyncio.gather(*(one(t) for t in trees)), timeout)

    async def initial_get(self, tree: Tree, timeout: float = 60.0) -> float:
        """Seconds from connecting to holding all ``get`` frames of ``tree``."""
        start = time.perf_counter()
        async with connect(
            f"{self.url}?user={quote(tree.user)}", max_size=None, compression=None
        ) as ws:
            await ws.send(json.dumps({"get": []}))
            expected, got = len(tree.jobs) + 1, 0
            while got < expected:
                got += "get" in json.loads(await asyncio.wait_for(ws.recv(), timeout))
            return time.perf_counter() - start

    async def close(self) -> None:
        """Close every client."""
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*(ws.close() for ws in self._sockets), return_exceptions=True)

    async def _read(self, client: int, ws: ClientConnection) -> None:
        async for raw in ws:
            info = json.loads(raw).get("update")
            if not info or "bench_sent" not in info:
                continue
            self.latencies.append(time.time() - info["bench_sent"])
            self.updates += 1
            if info.get("bench_final"):
                self.finals.add((client, info["id"]))
            waiting = self._waiting.get(info["id"])
            if waiting and info["bench_seq"] >= waiting[0] and not waiting[1].done():
                waiting[1].set_result(None)
            self._changed.set()

    async def until(self, done: Any, timeout: float) -> bool:
        """Wait until ``done()`` is true (re-checked on every frame); False on timeout."""
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))
            except asyncio.TimeoutError:
                pass
        return True

    def expect(self, job_id: str, seq: int) -> asyncio.Future[None]:
        """A future done when a frame of ``job_id`` with ``bench_seq >= seq`` arrives."""
        future = asyncio.get_running_loop().create_future()
        self._waiting[job_id] = (seq, future)
        return future


class Writer:
    """Changes jobs the way an engine does, from this process."""

    def __init__(self, redis_url: str, key_timeout: int) -> None:
        pool = aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=16)
        self.client = aioredis.Redis(connection_pool=pool)
        self._update = self.client.register_script(lua.UPDATE)
        self.key_timeout = key_timeout
        self._seq = itertools.count(1)
        self.written = 0

    def next_seq(self) -> int:
        """The sequence number the next change carries."""
        return next(self._seq)

    async def write(self, job_id: str, final: bool = False, seq: int | None = None) -> int:
        """Change ``job_id``'s status (to ``Success`` when ``final``); return its sequence."""
        seq = self.next_seq() if seq is None else seq
        fields: dict[str, Any] = {
            "status": "Success" if final else f"step {seq}",
            "bench_seq": seq,
            "bench_final": final,
            "bench_sent": time.time(),
        }
        call = update_call(job_id, fields, self.key_timeout)
        await self._update(keys=call["keys"], args=call["args"])
        self.written += 1
        return seq

    async def paced(self, job_ids: list[str], rate: float, duration: float) -> None:
        """Write ``rate`` changes a second for ``duration`` s, round robin over ``job_ids``."""
        loop = asyncio.get_running_loop()
        start, total = loop.time(), int(rate * duration)
        for n in range(total):
            delay = start + n / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.write(job_ids[n % len(job_ids)])

    async def closed_loop(
        self, fleet: Fleet, job_ids: list[str], window: int, duration: float
    ) -> tuple[int, int]:
        """Keep ``window`` changes in flight for ``duration`` s, each job at most one.

        A change is complete when its frame reaches the client.  Returns
        ``(completed, timed_out)``.
        """
        idle = deque(job_ids)
        end = time.monotonic() + duration
        outcome: dict[str, int] = defaultdict(int)

        async def worker() -> None:
            while time.monotonic() < end and idle:
                job_id, seq = idle.popleft(), self.next_seq()
                delivered = fleet.expect(job_id, seq)  # before writing: the frame may be quick
                await self.write(job_id, seq=seq)
                try:
                    await asyncio.wait_for(delivered, 10)
                    outcome["done"] += 1
                except asyncio.TimeoutError:
                    outcome["lost"] += 1
                idle.append(job_id)

        await asyncio.gather(*(worker() for _ in range(min(window, len(job_ids)))))
        return outcome["done"], outcome["lost"]

    async def finish_all(self, job_ids: list[str], concurrency: int = 50) -> None:
        """Give every job its final status."""
        gate = asyncio.Semaphore(concurrency)

        async def one(job_id: str) -> None:
            async with gate:
                await self.write(job_id, final=True)

        await asyncio.gather(*(one(j) for j in job_ids))

    async def close(self) -> None:
        """Close the connection."""
        await self.client.aclose()


def percentile(samples: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``samples``, nearest rank."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))
    return ordered[rank]
