"""``moi watch``: a live full-screen terminal view of a user's jobs (built on ``rich``).

The view reads the user's tree once, subscribes to every node's channel (as
the dashboard's relay does) and, on each change, reads only the changed info
objects; it redraws at most every :data:`FRAME` seconds, and every second
for the elapsed times.  ``q`` (or Ctrl-C) quits.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import sys
import termios
import time
import tty
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from urllib.parse import quote

import click
import redis
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from moi import keys, runtime
from moi.cli import main, printable
from moi.cli.remote import _remote, client_of, remote
from moi.errors import MoiError
from moi.group import get_id_from_user
from moi.relay import parse_message
from moi.status import Status, is_terminal
from moi.store import decode_all

#: Shortest time between two redraws (seconds).
FRAME = 0.05
#: Status order of the counts line (others follow, by name).
ORDER = ("Pending", "Queued", "Running", "Success", "Failed", "Cancelled")
STYLES = {
    "Queued": "grey50",
    "Running": "bold blue",
    "Success": "green",
    "Failed": "bold red",
    "Cancelled": "dark_orange",
}
#: Channel messages read per pass (the rest wait for the next pass).
BURST = 1000


def view_options(command: Any) -> Any:
    """``--json`` and ``--finished``, shared by the local and the remote ``watch``."""
    command = click.option(
        "--finished",
        default=10,
        show_default=True,
        type=click.IntRange(1, 1000),
        help="How many of the latest finished jobs to show.",
    )(command)
    return click.option(
        "--json", "as_json", is_flag=True, help="Print one JSON snapshot and exit."
    )(command)


@main.command("watch")
@click.option("--user", default="no-user", show_default=True, help="Whose jobs to watch.")
@view_options
def watch(user: str, as_json: bool, finished: int) -> None:
    """Watch a user's jobs live in the terminal: counts, running, latest finished; q quits."""
    group_id = get_id_from_user(user)
    show(Tree(group_id, runtime.redis_client()), user, as_json, finished)


@remote("watch")
@_remote.command("watch")
@click.option("--user", default=None, help="Whose jobs (admin keys) [default: the key's user].")
@view_options
@click.pass_context
def remote_watch(ctx: click.Context, user: str | None, as_json: bool, finished: int) -> None:
    """Watch your jobs on the server live, over its websocket: counts, running, finished."""
    client = client_of(ctx)
    tree = RemoteTree(client.url, client._key, user)  # noqa: SLF001 -- the same key, on the socket
    try:
        show(tree, user or "", as_json, finished)
    finally:
        tree.close()


def show(tree: Tree | RemoteTree, user: str, as_json: bool, finished: int) -> None:
    """``--json``: one snapshot on stdout; else the live full-screen view until ``q``."""
    if as_json:
        tree.load()
        data = snapshot(user or tree.user, tree.group_id, tree.jobs(), finished, time.time())
        click.echo(json.dumps(data))
        return
    if not sys.stdin.isatty() or not sys.stdout.isatty():
        raise click.UsageError("moi watch needs a terminal; use --json for a snapshot")
    try:
        with tree.following(), keys_pressed() as pressed:
            _live(tree, user or tree.user, finished, pressed)
    except KeyboardInterrupt:
        pass


def _live(tree: Tree | RemoteTree, user: str, finished: int, pressed: Any) -> None:
    """Redraw on changes (at most every FRAME s) and every second, until ``q``."""
    with Live(console=Console(), screen=True, auto_refresh=False) as live:
        drawn, dirty = 0.0, True
        while True:
            dirty = tree.poll(FRAME) or dirty
            if "q" in pressed():
                return
            now = time.time()
            if (dirty and now - drawn >= FRAME) or now - drawn >= 1.0:
                data = snapshot(user, tree.group_id, tree.jobs(), finished, now)
                live.update(render(data), refresh=True)
                drawn, dirty = now, False


class Tree:
    """The info objects of a user's tree, kept current from the nodes' channels."""

    user = ""  # named by the caller

    def __init__(self, group_id: str, client: redis.Redis) -> None:
        self.group_id, self.r = group_id, client
        self.nodes: dict[str, dict[str, Any]] = {}
        self._sub: Any = None

    def load(self) -> None:
        """Read the whole tree (one round trip)."""
        self.nodes = {info["id"]: info for info in runtime.store().tree(self.group_id)}

    def jobs(self) -> list[dict[str, Any]]:
        return [info for info in self.nodes.values() if info.get("type") == "job"]

    @contextmanager
    def following(self) -> Iterator[None]:
        """Subscribe to every node's channel, then read the tree: no change is missed."""
        self._sub = self.r.pubsub(ignore_subscribe_messages=True)
        try:
            self._subscribe([self.group_id])
            self.load()
            self._subscribe(list(self.nodes))
            yield
        finally:
            self._sub.close()

    def _subscribe(self, ids: list[str]) -> None:
        for at in range(0, len(ids), 1000):
            self._sub.subscribe(*map(keys.pubsub, ids[at : at + 1000]))

    def poll(self, timeout: float) -> bool:
        """Apply the changes published within ``timeout`` seconds; whether any came."""
        changed, added, removed = set(), set(), False
        message = self._sub.get_message(timeout=timeout)
        for _ in range(BURST):
            if message is None:
                break
            for verb, ids in parse_message(message["data"]):
                if verb == "update":
                    changed.update(ids)
                elif verb == "add":
                    added.update(ids)
                elif verb == "remove":
                    removed = True
            message = self._sub.get_message(timeout=0)
        if removed:  # a subtree went: read it all again
            known = set(self.nodes)
            self.load()
            self._subscribe(sorted(set(self.nodes) - known))
            return True
        new = sorted(added - set(self.nodes))
        if new:
            self._subscribe(new)
        wanted = sorted(changed | added)
        if wanted:
            for info in decode_all(self.r.mget([keys.info(i) for i in wanted])):
                self.nodes[info["id"]] = info
        return bool(wanted)


class RemoteTree:
    """The same view of a remote ``moi serve``: its websocket (the panel's protocol), as a key.

    The handshake carries ``Authorization: Bearer KEY``; the server answers
    ``get`` with the key user's tree (an admin's ``?user=``'s), then pushes
    ``add`` / ``update`` / ``remove`` frames as the panel gets them.
    """

    def __init__(self, url: str, key: str, user: str | None = None) -> None:
        scheme, rest = url.split("://", 1)
        query = f"?user={quote(user)}" if user else ""
        self.ws_url = f"{'wss' if scheme == 'https' else 'ws'}://{rest}/moi-ws/{query}"
        self.key, self.user = key, user or ""
        self.group_id = ""
        self.nodes: dict[str, dict[str, Any]] = {}
        self._loop = asyncio.new_event_loop()
        self._conn: Any = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._loop.close()

    def _connect(self) -> None:
        from tornado.httpclient import HTTPClientError, HTTPRequest
        from tornado.websocket import websocket_connect

        request = HTTPRequest(self.ws_url, headers={"Authorization": f"Bearer {self.key}"})

        async def connect() -> Any:  # on this tree's loop: Tornado takes the running one
            return await websocket_connect(request)

        try:
            self._conn = self._loop.run_until_complete(connect())
        except HTTPClientError as exc:
            why = {401: "the key was refused", 403: "the key was refused", 404: "no such user"}
            raise MoiError(f"{self.ws_url}: {why.get(exc.code, exc)}") from None
        except OSError as exc:
            raise MoiError(f"cannot reach {self.ws_url}: {exc}") from None

    def load(self) -> None:
        """Ask for the whole tree; take frames until none comes for a moment."""
        if self._conn is None:
            self._connect()
        self.nodes.clear()
        self._conn.write_message(json.dumps({"get": []}))
        if not self._read(30.0):
            raise MoiError(f"{self.ws_url}: no answer to get within 30 s")
        while self._read(0.3):
            pass

    def jobs(self) -> list[dict[str, Any]]:
        return [info for info in self.nodes.values() if info.get("type") == "job"]

    @contextmanager
    def following(self) -> Iterator[None]:
        """The socket follows every node once it has sent the tree."""
        self.load()
        yield

    def poll(self, timeout: float) -> bool:
        """Apply the frames that come within ``timeout`` seconds; whether any did."""
        changed = self._read(timeout)
        for _ in range(BURST):
            if not self._read(0):
                break
        return changed

    def _read(self, timeout: float) -> bool:
        """Apply one message if one comes within ``timeout`` seconds."""
        assert self._conn is not None

        async def read() -> Any:
            return await asyncio.wait_for(self._conn.read_message(), max(timeout, 0.001))

        try:
            message = self._loop.run_until_complete(read())
        except asyncio.TimeoutError:
            return False
        if message is None:
            raise MoiError(f"{self.ws_url}: the server closed the connection")
        frame = json.loads(message)
        for verb, info in frame.items():
            if verb == "error":
                raise MoiError(f"the server refused: {info.get('message')}")
            if verb in ("get", "add", "update") and isinstance(info, dict) and "id" in info:
                if not self.group_id and verb == "get":
                    self.group_id = info["id"]  # the tree's root comes first
                self.nodes[info["id"]] = {**self.nodes.get(info["id"], {}), **info}
            elif verb == "remove" and isinstance(info, dict):
                self._drop(str(info.get("id")))
        return True

    def _drop(self, node_id: str) -> None:
        gone = {node_id}
        while True:
            below = {i for i, n in self.nodes.items() if n.get("parent") in gone} - gone
            if not below:
                break
            gone |= below
        for i in gone:
            self.nodes.pop(i, None)


def _when(value: Any) -> float | None:
    """Epoch seconds of a protocol date (``str(datetime.now())``), or ``None``."""
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None


def snapshot(
    user: str, group_id: str, jobs: list[dict[str, Any]], finished: int, now: float
) -> dict[str, Any]:
    """What ``moi watch`` shows (and ``--json`` prints): counts, running, latest finished."""
    counts = Counter(str(info.get("status")) for info in jobs)
    running = []
    for info in jobs:
        status = str(info.get("status"))
        if is_terminal(status) or status in (Status.QUEUED, "Pending"):
            continue
        start = _when(info.get("date_start"))
        running.append({**_brief(info), "elapsed": None if start is None else now - start})
    running.sort(key=lambda job: -(job["elapsed"] or 0))
    ended = [info for info in jobs if is_terminal(info.get("status"))]
    ended.sort(key=lambda info: str(info.get("date_end") or ""), reverse=True)
    latest = []
    for info in ended[:finished]:
        start, end = _when(info.get("date_start")), _when(info.get("date_end"))
        took = end - start if start is not None and end is not None else None
        latest.append({**_brief(info), "date_end": info.get("date_end"), "duration": took})
    return {
        "user": user,
        "group_id": group_id,
        "jobs": len(jobs),
        "counts": dict(sorted(counts.items(), key=lambda kv: _rank(kv[0]))),
        "running": running,
        "finished": latest,
    }


def _brief(info: dict[str, Any]) -> dict[str, Any]:
    return {key: info.get(key) for key in ("id", "name", "status", "context")}


def _rank(status: str) -> tuple[int, str]:
    return (ORDER.index(status) if status in ORDER else len(ORDER), status)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    value = max(0.0, value)
    if value < 60:
        return f"{value:.1f} s"
    minutes, seconds = divmod(int(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def render(data: dict[str, Any]) -> Group:
    """The screen for a :func:`snapshot`; every value from data shown as plain text."""
    header = Text(f"moi watch: {printable(data['user'])}  ", style="bold")
    header.append(f"{data['jobs']} jobs   ")
    for status in sorted({*data["counts"], *ORDER[1:]}, key=_rank):
        n = data["counts"].get(status, 0)
        header.append(f"{printable(status)} {n}", style=STYLES.get(status, "magenta"))
        header.append("  ")
    running = Table(title="running", expand=True, title_justify="left")
    for column in ("name", "status", "elapsed", "id"):
        running.add_column(column, no_wrap=True)
    for job in data["running"][:50]:
        running.add_row(*_cells(job, _seconds(job["elapsed"])))
    done = Table(title="latest finished", expand=True, title_justify="left")
    for column in ("name", "status", "took", "id"):
        done.add_column(column, no_wrap=True)
    for job in data["finished"]:
        done.add_row(*_cells(job, _seconds(job["duration"])))
    return Group(header, running, done, Text("q quits", style="dim"))


def _cells(job: dict[str, Any], time_text: str) -> list[Text]:
    status = str(job.get("status"))
    return [
        Text(printable(job.get("name"))),
        Text(printable(status), style=STYLES.get(status, "magenta")),
        Text(time_text),
        Text(printable(job.get("id")), style="dim"),
    ]


@contextmanager
def keys_pressed() -> Iterator[Any]:
    """Read keys without waiting for Enter; yields a function returning those pressed since."""
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def pressed() -> str:
        got = ""
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 64)
            if not chunk:
                return got + "q"  # the terminal went away
            got += chunk.decode(errors="replace").lower()
        return got

    try:
        yield pressed
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
