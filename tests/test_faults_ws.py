"""Faults a websocket server must survive, against a server in its own process.

(a) one client sends 1,000 malformed frames: the server stays up and another
client's updates keep arriving; (b) 20 clients stop reading while ~500
updates/s flow: the server's memory stays bounded, the 20 are dropped, and a
normal client keeps receiving.  Everything runs on loopback and is bounded
in count and time; measured figures are printed (``pytest -s`` shows them).

The server is moi's :class:`~moi.websocket.MOIMessageHandler` in a small
Tornado app run by this file (``python test_faults_ws.py serve PORT CAP``);
updates come from another process (``... update RATE SECONDS JOB...``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from support import wait_until_listening
from test_ws_hardening import RawClient
from tornado.httpclient import HTTPRequest
from tornado.web import create_signed_value
from tornado.websocket import WebSocketClientConnection, websocket_connect

from moi import redis_server
from moi.group import create_info, get_id_from_user

SECRET = "faults-secret"
#: Bytes that may wait for one client of the server under test before it is dropped.
SLOW_CAP = 1024 * 1024
#: Slowest an update may reach a normal client, in seconds.
LATENCY_BOUND = 2.0
#: How long updates flow (500/s) while 20 clients do not read.
STALL_SECONDS = 30
#: Most the server under test may grow while 20 clients stop reading.
RSS_GROWTH_BOUND = 100 * 1024 * 1024


# -- the processes ------------------------------------------------------------------------
def serve(port: int, cap: int) -> None:
    """Run moi's websocket handler on ``127.0.0.1:port`` until SIGTERM."""
    import tornado.web

    from moi.relay import close_relay
    from moi.websocket import MAX_MESSAGE_SIZE, MOIMessageHandler

    async def main() -> None:
        app = tornado.web.Application(
            [(r"/moi-ws/", MOIMessageHandler, {"max_buffered": cap})],
            cookie_secret=SECRET,
            websocket_max_message_size=MAX_MESSAGE_SIZE,
        )
        server = app.listen(port, address="127.0.0.1")
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        server.stop()
        await close_relay()

    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    asyncio.run(main())


def update(rate: float, seconds: float, job_ids: list[str]) -> None:
    """Update ``job_ids`` in turn, ``rate`` times a second for ``seconds``; print the count.

    Each status is ``"<n> <time>"`` (when it was written) plus 2 KB of padding.
    """
    from moi import runtime

    store = runtime.store()
    start = time.time()
    n = 0
    while (elapsed := time.time() - start) < seconds:
        if n >= elapsed * rate:
            time.sleep(min(0.002, n / rate - elapsed))  # pacing the load, not waiting on it
            continue
        n += 1
        store.update(job_ids[n % len(job_ids)], {"status": f"{n} {time.time()}", "pad": "p" * 2000})
    print(n, flush=True)


@pytest.fixture
def server(moi_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """The server under test in its own process: ``(port, process, log path)``."""
    cap = SLOW_CAP
    port = redis_server.free_port()
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, __file__, "serve", str(port), str(cap)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ),
        )
    try:
        wait_until_listening(port, proc, log.read_text)
        yield port, proc, log
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def updater(rate: float, seconds: float, job_ids: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "update", str(rate), str(seconds), *job_ids],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )


# -- the clients ----------------------------------------------------------------------------
def cookie(user: str) -> str:
    return create_signed_value(SECRET, "user", user).decode()


def tree(jobs: int) -> tuple[str, list[str]]:
    """A new user and the ids of ``jobs`` jobs in its group."""
    user = f"fault-{uuid.uuid4().hex[:8]}"
    group_id = get_id_from_user(user)
    return user, [
        create_info(f"j{n}", "job", parent=group_id, store=True)["id"] for n in range(jobs)
    ]


async def connect(port: int, user: str, nodes: int) -> WebSocketClientConnection:
    """A client that asked for ``user``'s tree of ``nodes`` nodes and received it."""
    url = f"ws://127.0.0.1:{port}/moi-ws/"
    ws = await websocket_connect(HTTPRequest(url, headers={"Cookie": f"user={cookie(user)}"}))
    await ws.write_message(json.dumps({"get": []}))
    for _ in range(nodes):
        frame = json.loads(await asyncio.wait_for(ws.read_message(), 10))
        assert "get" in frame, frame
    return ws


class Observer:
    """Reads a normal client's frames and measures how late each update arrives."""

    def __init__(self, ws: WebSocketClientConnection) -> None:
        self.ws = ws
        self.latencies: list[float] = []
        self.last = 0  # highest update number seen
        self.closed = False

    async def run(self) -> None:
        while (message := await self.ws.read_message()) is not None:
            info = json.loads(message).get("update") or {}
            number, _, written = str(info.get("status", "")).partition(" ")
            if number.isdigit() and written:
                self.latencies.append(time.time() - float(written))
                self.last = max(self.last, int(number))
        self.closed = True

    async def until(self, number: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.last < number:
            assert not self.closed, f"the normal client was closed: {self.ws.close_code}"
            assert time.monotonic() < deadline, f"update {number} never came (last {self.last})"
            await asyncio.sleep(0.05)

    def summary(self) -> str:
        ms = sorted(1000 * x for x in self.latencies)
        p99 = ms[int(0.99 * (len(ms) - 1))]
        return (
            f"{len(ms)} updates, latency median {statistics.median(ms):.1f} ms, "
            f"p99 {p99:.1f} ms, max {ms[-1]:.1f} ms"
        )


async def finished(proc: subprocess.Popen[str], timeout: float) -> int:
    """The number of updates ``proc`` made, once it exits."""
    out, _ = await asyncio.wait_for(asyncio.to_thread(proc.communicate), timeout)
    assert proc.returncode == 0
    return int(out.split()[-1])


# -- (a) malformed frames -------------------------------------------------------------------
MALFORMED: list[str | bytes] = [
    "not json",
    "[" * 200_000,
    '{"get": 5}',
    '{"explode": []}',
    '{"get": [1, 2]}',
    "{}",
    "null",
    '"just a string"',
    json.dumps({"cancel": ["x"] * 1001}),
    '{"get": ["no-such-node"]}',
    b"\xff\xfe\x00binary",
    '{"get": [""]}',
    '{"remove": {"a": 1}}',
    '{"get": [], "cancel": []}',
    '{"get": ' + "[" * 50_000,
    "{" + '"a":{' * 30_000,
]


def test_malformed_frames_do_not_disturb_other_clients(server: Any) -> None:
    port, proc, log = server
    user, jobs = tree(5)
    asyncio.run(_malformed(port, user, jobs))
    assert proc.poll() is None, log.read_text()[-2000:]


async def _malformed(port: int, user: str, jobs: list[str]) -> None:
    observer = Observer(await connect(port, user, len(jobs) + 1))
    watching = asyncio.ensure_future(observer.run())
    attacker = await connect(port, user, len(jobs) + 1)
    load = updater(20, 8, jobs)
    start = time.monotonic()
    errors = asyncio.ensure_future(_count_errors(attacker, 1000))
    for n in range(1000):
        frame = MALFORMED[n % len(MALFORMED)]
        await attacker.write_message(frame, binary=isinstance(frame, bytes))
    answered = await asyncio.wait_for(errors, 60)
    attack = time.monotonic() - start
    total = await finished(load, 30)
    await observer.until(total, 10)
    print(
        f"\n(a) 1000 malformed frames sent and answered in {attack:.2f} s; observer: "
        f"{observer.summary()}"
    )
    assert answered == 1000
    assert max(observer.latencies) < LATENCY_BOUND, observer.summary()
    assert len(observer.latencies) >= 0.9 * total  # a few may be coalesced, not lost
    fresh = await connect(port, user, len(jobs) + 1)  # and a new client is served
    for ws in (fresh, attacker, observer.ws):
        ws.close()
    await asyncio.wait_for(watching, 10)


async def _count_errors(ws: WebSocketClientConnection, expected: int) -> int:
    count = 0
    while count < expected:
        message = await ws.read_message()
        assert message is not None, f"the attacker was closed after {count} answers"
        frame = json.loads(message)
        count += "error" in frame
    return count


# -- (b) clients that stop reading ----------------------------------------------------------
def test_clients_that_stop_reading_are_dropped_and_memory_stays_bounded(server: Any) -> None:
    port, proc, log = server
    user, jobs = tree(50)
    asyncio.run(_stalled(port, proc.pid, user, jobs, log))


async def _stalled(port: int, pid: int, user: str, jobs: list[str], log: Path) -> None:
    server = psutil.Process(pid)
    observer = Observer(await connect(port, user, len(jobs) + 1))
    watching = asyncio.ensure_future(observer.run())
    baseline = server.memory_info().rss
    stalled = [await RawClient.connect(port, cookie(user)) for _ in range(20)]
    load = updater(500, STALL_SECONDS, jobs)
    peak = baseline
    while load.poll() is None:  # sample the server's memory while the load runs
        peak = max(peak, server.memory_info().rss)
        await asyncio.sleep(0.1)
    total = await finished(load, 10)
    await observer.until(total, 10)
    drops = log.read_text().count("dropping the websocket")
    print(
        f"\n(b) {total} updates in {STALL_SECONDS} s to 21 clients, 20 of them not reading; "
        f"normal client: {observer.summary()}\n(b) server RSS {baseline / 2**20:.0f} MiB "
        f"before, peak {peak / 2**20:.0f} MiB (+{(peak - baseline) / 2**20:.0f} MiB); "
        f"{drops} slow clients dropped"
    )
    assert peak - baseline < RSS_GROWTH_BOUND
    assert drops == 20
    assert max(observer.latencies) < 5 * LATENCY_BOUND, observer.summary()
    ends = await asyncio.gather(*(raw.until_closed(30) for raw in stalled))
    assert all(code in (None, 1013) for _, code in ends)  # each was closed by the server
    observer.ws.close()
    await asyncio.wait_for(watching, 10)
    text = log.read_text()
    assert "never retrieved" not in text and "Traceback" not in text, text[-2000:]


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]), int(sys.argv[3]))
    elif sys.argv[1] == "update":
        update(float(sys.argv[2]), float(sys.argv[3]), sys.argv[4:])
