"""api: the JSON API of ``moi serve`` (``/api/v1/``) beside the Python API, same cluster.

``api_submit``: typed ``ping`` jobs POSTed to ``/api/v1/jobs`` by 50 concurrent
HTTP clients (keep-alive connections) of a multi-user ``moi serve``
process, until every job has ended, in jobs/s; the baseline submits the same
jobs with ``moi.job.submit_type`` in a loop in this process.  Both sides end
when Redis shows every job finished; they take turns going first over several
rounds and each side's median is kept.

``api_list_p99``: ``GET /api/v1/jobs?limit=100`` for a user with 100,000 jobs
(written straight through a Redis pipeline, each added to the creation index
as ``moi.store`` does), the 99th percentile over pages taken by following the
cursor from the newest; the baseline reads the user's whole tree in one call
(``Store.tree``) and sorts it, which is what listing costs without the index.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from results import Result
from services import wait_for_port
from tornado.httpclient import HTTPClient

from moi import auth, job, keys, redis_server, runtime
from moi.context import resolve
from moi.group import create_info, get_id_from_user
from moi.status import is_terminal
from moi.store import decode, index_commands

CLIENTS = 50
ROUNDS = 3


@contextmanager
def api_server() -> Iterator[str]:
    """``moi serve`` on a free loopback port (multi-user: no token, keys exist); its URL."""
    port = redis_server.free_port()
    env = {k: v for k, v in os.environ.items() if k != "MOI_TOKEN"}
    command = [sys.executable, "-m", "moi.cli", "serve", "--port", str(port)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port, 60, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def wait_all_ended(ids: list[str], timeout: float = 600) -> None:
    """Block until Redis shows every job of ``ids`` finished.

    Jobs finish about in the order they were submitted: each look reads the
    first 50 not seen finished, so waiting costs little CPU beside the jobs.
    """
    r, left = runtime.redis_client(), list(ids)
    deadline = time.monotonic() + timeout
    while left:
        head = left[:50]
        statuses = [(decode(raw) or {}).get("status") for raw in r.mget(head)]
        unfinished = [i for i, s in zip(head, statuses, strict=True) if not is_terminal(s)]
        left = unfinished + left[50:]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(left)} jobs still running after {timeout} s")
        if unfinished:
            time.sleep(0.005)


async def _post_all(url: str, key: str, jobs: int) -> list[str]:
    """POST ``jobs`` typed pings from :data:`CLIENTS` keep-alive connections; their ids.

    A minimal HTTP/1.1 client on asyncio streams: Tornado's simple client opens
    a connection per request, which would measure the load generator.
    """
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"type": "ping", "environ": {"ping": 1}}).encode()
    head = (
        f"POST /api/v1/jobs HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    ids: list[str] = []
    counter = iter(range(jobs))

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for _ in counter:
                writer.write(head + body)
                status = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode().partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                answer = await reader.readexactly(length)
                if b" 201 " not in status:
                    raise RuntimeError(f"POST /api/v1/jobs: {status!r} {answer[:200]!r}")
                ids.append(json.loads(answer)["id"])
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(CLIENTS)))
    return ids


def submit_rate(url: str, key: str, jobs: int) -> dict[str, list[float]]:
    """Jobs per second of each side, per round."""
    ctx = resolve(None)
    parent = get_id_from_user("bench-api-python")

    def through_api() -> float:
        start = time.perf_counter()
        wait_all_ended(asyncio.run(_post_all(url, key, jobs)))
        return jobs / (time.perf_counter() - start)

    def through_python() -> float:
        start = time.perf_counter()
        ids = [
            job.submit_type(ctx, parent, f"ping {i}", "ping", {"ping": 1})[0] for i in range(jobs)
        ]
        wait_all_ended(ids)
        return jobs / (time.perf_counter() - start)

    sides = {"api": through_api, "python": through_python}
    for side in sides.values():  # warm-up: connections, imports on the engines
        side()
    rates: dict[str, list[float]] = {side: [] for side in sides}
    for round_ in range(ROUNDS):
        for name in list(sides) if round_ % 2 == 0 else list(sides)[::-1]:
            rates[name].append(sides[name]())
    return rates


def fill(user: str, count: int) -> str:
    """Give ``user`` ``count`` finished jobs, written through pipelines; the user's group id."""
    group = get_id_from_user(user)
    store = runtime.store()
    ttl, start = store.key_timeout, time.time() - count
    for first in range(0, count, 5000):
        with store.r.pipeline(transaction=False) as pipe:
            for n in range(first, min(count, first + 5000)):
                info = create_info(f"job {n}", "job", parent=group)
                info.update(status="Success", result={"pong": n})
                pipe.set(keys.info(info["id"]), json.dumps(info), ex=ttl)
                pipe.sadd(keys.children(group), info["id"])
                for command in index_commands(info, start + n, ttl):
                    pipe.execute_command(*command)
            pipe.execute()
    return group


def list_latencies(url: str, key: str, pages: int) -> list[float]:
    """Seconds of each ``GET /jobs?limit=100``, following the cursor from the newest page."""
    client = HTTPClient()
    headers = {"Authorization": f"Bearer {key}"}
    times: list[float] = []
    cursor: str | None = None
    try:
        for _ in range(pages):
            query = "limit=100" + (f"&cursor={cursor}" if cursor else "")
            start = time.perf_counter()
            answer = client.fetch(f"{url}/api/v1/jobs?{query}", headers=headers)
            times.append(time.perf_counter() - start)
            page: dict[str, Any] = json.loads(answer.body)
            assert len(page["jobs"]) == 100, len(page["jobs"])
            cursor = page["next"]
    finally:
        client.close()
    return times


def tree_listing(group: str, reads: int) -> list[float]:
    """Seconds of listing the newest 100 jobs without the index: whole tree, sorted."""
    times = []
    for _ in range(reads):
        start = time.perf_counter()
        nodes = runtime.store().tree(group)
        jobs = sorted(
            (n for n in nodes if n.get("type") == "job"),
            key=lambda n: n["date_created"],
            reverse=True,
        )[:100]
        times.append(time.perf_counter() - start)
        assert len(jobs) == 100
    return times


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def run(quick: bool) -> list[Result]:
    jobs, stored, pages = (200, 10_000, 100) if quick else (1000, 100_000, 500)
    resolve(None).client.wait_for_engines(2, timeout=120)
    r = runtime.redis_client()
    submitter = auth.create("bench-api-submit", r=r)[0]
    lister = auth.create("bench-api-list", r=r)[0]
    group = fill("bench-api-list", stored)
    with api_server() as url:
        rates = submit_rate(url, submitter, jobs)
        latencies = list_latencies(url, lister, pages)
    baseline = tree_listing(group, 5 if quick else 10)
    return [
        Result(
            "api_submit",
            statistics.median(rates["api"]),
            statistics.median(rates["python"]),
            "jobs/s",
            target="ratio >= 0.8",
            note=f"{jobs} typed ping jobs until all ended, POST /api/v1/jobs from {CLIENTS} "
            f"concurrent clients vs job.submit_type in a loop, median of {ROUNDS} rounds",
        ),
        Result(
            "api_list_p99",
            p99(latencies) * 1000,
            statistics.median(baseline) * 1000,
            "ms",
            target="value <= 50",
            note=f"GET /api/v1/jobs?limit=100 over {pages} pages (cursor) of a user with "
            f"{stored} jobs, p50 {statistics.median(latencies) * 1000:.1f} ms; baseline: "
            "the whole tree read and sorted (median)",
        ),
    ]
