"""One pub/sub relay per server process, shared by every websocket.

The relay holds a single ``redis.asyncio`` pub/sub connection.  Views (one
:class:`moi.group.Group` per browser) tell it which nodes they follow.  The
channels of nodes with uuid-shaped ids (every id moi makes) come through one
pattern subscription made at connect, so following 100,000 nodes costs no
Redis command; any other id's channel is subscribed while at least one view
follows its node.  Messages of nodes nobody follows are dropped before any
info object is read (the cost of the pattern: each costs the relay a parse).
Messages are drained in batches, every changed info object is read once (one MGET per
batch) and handed to each view that follows it.  When Redis goes away the
relay reconnects with back-off, subscribes again and asks every view to
resync.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Coroutine
from functools import partial
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from moi import connection, keys
from moi.astore import AsyncStore

log = logging.getLogger("moi.relay")

#: Most messages handled as one batch (one MGET).
BATCH = 1000
#: Longest wait for Redis to confirm a subscription before going on anyway.
CONFIRM_TIMEOUT = 5.0
_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)
#: Background tasks running, held so none is collected half-way.
_tasks: set[asyncio.Task[Any]] = set()


def background(coro: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any]:
    """Run ``coro`` as a task that is kept alive and whose failure is logged.

    Parameters
    ----------
    coro : coroutine
        The work to run on the current event loop.
    what : str
        What it does, for the log line should it fail.

    Returns
    -------
    asyncio.Task
        The task (cancel it to stop the work; cancelling is not logged).
    """
    task = asyncio.ensure_future(coro)
    _tasks.add(task)
    task.add_done_callback(partial(_finished, what))
    return task


def _finished(what: str, task: asyncio.Task[Any]) -> None:
    _tasks.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("%s failed", what, exc_info=task.exception())


class Follower(Protocol):
    """What the relay calls on a view following nodes."""

    def on_update(self, info: dict[str, Any]) -> None: ...
    def on_add(self, parent_id: str, info: dict[str, Any]) -> None: ...
    def on_remove(self, parent_id: str, node_id: str, info: dict[str, Any]) -> None: ...
    async def resync(self) -> None: ...


#: Prefix of the names of relays' Redis connections (``CLIENT LIST`` shows them).
CLIENT_NAME = "moi-relay"


class Relay:
    """Fans Redis pub/sub messages out to the views that follow each node.

    Parameters
    ----------
    redis_url : str
        Redis server holding the job tree.
    key_timeout : int
        Expiry of keys the server writes (cancel, remove).
    max_connections : int
        Size of the pool used for reads and writes; pub/sub has one more
        connection of its own.  All carry the name :attr:`name`.
    """

    def __init__(self, redis_url: str, key_timeout: int, max_connections: int = 4) -> None:
        #: Name every Redis connection of this relay carries.
        self.name = f"{CLIENT_NAME}-{secrets.token_hex(4)}"
        pool = connection.async_pool(
            redis_url, max_connections=max_connections, client_name=self.name
        )
        self.client = aioredis.Redis(connection_pool=pool)
        self.store = AsyncStore(self.client, key_timeout)
        self._url = redis_url
        self._followers: dict[str, set[Follower]] = defaultdict(set)
        self._pubsub: aioredis.client.PubSub | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._commands = asyncio.Lock()  # one pub/sub command at a time
        self._confirming: dict[str, asyncio.Future[None]] = {}  # channel -> confirmed
        self._pattern_ready = asyncio.Event()  # Redis confirmed the uuid channel pattern
        self._resyncs: dict[Follower, asyncio.Task[None]] = {}  # view -> its running resync
        self.connected = asyncio.Event()
        #: Connections made so far; grows by one on every reconnect.
        self.generation = 0
        #: Batches and messages relayed so far, and the seconds the last batch took (metrics).
        self.batches, self.messages, self.lag = 0, 0, 0.0

    # -- following ----------------------------------------------------------
    async def follow(self, follower: Follower, ids: list[str]) -> None:
        """Deliver changes of ``ids`` to ``follower`` from now on."""
        self.start()
        plain = [i for i in ids if not keys.in_channel_pattern(i)]  # (one check per id)
        new = [i for i in plain if not self._followers.get(i)]
        for node_id in ids:
            self._followers[node_id].add(follower)
        # changes are only delivered once Redis confirms (also when the subscription is
        # made by connecting); callers read state after this, so wait for the
        # confirmations of these channels, ours or another follower's.  The futures are
        # made before any await: a second follower of the same channel finds them.
        loop = asyncio.get_running_loop()
        ours = {keys.pubsub(i): loop.create_future() for i in new}
        self._confirming.update(ours)
        pending: list[asyncio.Future[Any]] = [
            self._confirming[c] for c in map(keys.pubsub, plain) if c in self._confirming
        ]
        await self._send("subscribe", new)
        waiter = None
        if len(plain) < len(ids) and not self._pattern_ready.is_set():  # some patterned
            waiter = asyncio.ensure_future(self._pattern_ready.wait())
            pending.append(waiter)
        if pending:
            await asyncio.wait(pending, timeout=CONFIRM_TIMEOUT)  # else a reconnect resyncs
        if waiter is not None:
            waiter.cancel()  # (done already, unless Redis is away)
        for channel, future in ours.items():
            if self._confirming.get(channel) is future:
                del self._confirming[channel]

    async def unfollow(self, follower: Follower, ids: list[str]) -> None:
        """Stop delivering changes of ``ids`` to ``follower``."""
        gone = []
        for node_id in ids:
            followers = self._followers.get(node_id)
            if followers is None:
                continue
            followers.discard(follower)
            if not followers:
                del self._followers[node_id]
                if not keys.in_channel_pattern(node_id):
                    gone.append(node_id)
        await self._send("unsubscribe", gone)

    def channel_count(self) -> int:
        """Number of nodes followed (channels subscribed or matched by the pattern)."""
        return len(self._followers)

    def view_count(self) -> int:
        """Number of views (one per connected websocket) following nodes."""
        return len(self._views())

    async def _send(self, command: str, ids: list[str]) -> None:
        if not ids or self._pubsub is None or not self.connected.is_set():
            return  # subscribed again on reconnect
        channels = [keys.pubsub(i) for i in ids]
        try:
            async with self._commands:
                for start in range(0, len(channels), BATCH):
                    await getattr(self._pubsub, command)(*channels[start : start + BATCH])
        except _DOWN:
            pass  # the listener notices and resubscribes everything

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> None:
        """Start listening on the running event loop (the first ``follow`` does it)."""
        if self._task is None:
            self._task = background(self._run(), "the relay")

    async def stop(self) -> None:
        """Stop listening and close the connections (waits at most a few seconds)."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=2)
            self._task = None
        for task in self._resyncs.values():
            task.cancel()
        closers = [self.client.aclose()]
        if self._pubsub is not None:
            closers.append(self._pubsub.aclose())
        for closer in closers:
            try:
                await asyncio.wait_for(closer, 2)
            except (*_DOWN, asyncio.TimeoutError):
                pass

    async def _connect(self) -> None:
        if self._pubsub is not None:
            try:
                await self._pubsub.aclose()
            except _DOWN:
                pass
        self._pubsub = connection.async_client(self._url, client_name=self.name).pubsub()
        async with self._commands:
            # from here on follow() subscribes by itself; everything followed so far is below
            self.connected.set()
            await self._pubsub.psubscribe(keys.UUID_CHANNEL_PATTERN)
            others = [i for i in self._followers if not keys.in_channel_pattern(i)]
            channels = [keys.RELAY_CHANNEL] + [keys.pubsub(i) for i in others]
            for start in range(0, len(channels), BATCH):
                await self._pubsub.subscribe(*channels[start : start + BATCH])
        self.generation += 1

    async def _run(self) -> None:
        backoff, first = 0.1, True
        while True:
            try:
                await self._connect()
                if not first:
                    log.warning("reconnected to Redis; resyncing %d views", len(self._views()))
                    self._resync_all()
                first, backoff = False, 0.1
                await self._listen()
            except (*_DOWN, RedisError) as exc:  # RedisError: LOADING, a refused command
                self.connected.clear()
                self._pattern_ready.clear()
                if self._stopping or _being_cancelled():
                    raise asyncio.CancelledError from exc  # redis-py turned our cancel into this
                log.warning("lost Redis (%s); retrying in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _resync_all(self) -> None:
        """Start each view's resync, replacing one still running from an earlier reconnect."""
        for view in self._views():
            earlier = self._resyncs.pop(view, None)
            if earlier is not None:
                earlier.cancel()
            task = background(self._resync_when_subscribed(view), "a view's resync")
            self._resyncs[view] = task
            task.add_done_callback(partial(self._resync_done, view))

    async def _resync_when_subscribed(self, view: Follower) -> None:
        """Resync ``view`` once Redis confirmed the pattern: no change between is lost."""
        try:
            await asyncio.wait_for(self._pattern_ready.wait(), CONFIRM_TIMEOUT)
        except asyncio.TimeoutError:
            pass  # resync anyway: the view is stale for sure
        await view.resync()

    def _resync_done(self, view: Follower, task: asyncio.Task[None]) -> None:
        if self._resyncs.get(view) is task:
            del self._resyncs[view]

    def _views(self) -> set[Follower]:
        return {f for followers in self._followers.values() for f in followers}

    async def _listen(self) -> None:
        assert self._pubsub is not None
        while True:
            message = await self._pubsub.get_message(timeout=None)
            read_at = time.perf_counter()
            batch: list[dict[str, Any]] = []
            while message is not None:
                kind = message["type"]
                if kind in ("message", "pmessage"):
                    batch.append(message)
                elif kind == "subscribe":
                    self._confirmed(message["channel"].decode())
                elif kind == "psubscribe":
                    self._pattern_ready.set()
                if len(batch) >= BATCH:
                    break
                message = await self._pubsub.get_message(timeout=0)
            if batch:
                try:
                    await self._dispatch(batch)
                except _DOWN:
                    raise
                except Exception:  # keep relaying for everyone else
                    log.exception("could not relay %d pub/sub messages", len(batch))
                self.batches, self.messages = self.batches + 1, self.messages + len(batch)
                self.lag = time.perf_counter() - read_at

    def _confirmed(self, channel: str) -> None:
        future = self._confirming.get(channel)
        if future is not None and not future.done():
            future.set_result(None)

    async def _dispatch(self, messages: list[dict[str, Any]]) -> None:
        updates: dict[str, None] = {}
        moves: list[tuple[str, str, str]] = []  # (verb, parent, child)
        for message in messages:
            node_id = keys.node_id_of_channel(message["channel"].decode(errors="replace"))
            if node_id not in self._followers:
                continue  # another user's node, or one nobody watches now
            for verb, ids in parse_message(message["data"]):
                if verb == "update":
                    updates.update(dict.fromkeys(ids))
                elif verb in ("add", "remove"):
                    moves += [(verb, node_id, i) for i in ids]
        wanted = set(updates) | {child for _, _, child in moves}
        infos = {info["id"]: info for info in await self.store.get_many(wanted)}
        for node_id in updates:
            if node_id in infos:
                for view in list(self._followers.get(node_id, ())):
                    view.on_update(infos[node_id])
        for verb, parent, child in moves:
            for view in list(self._followers.get(parent, ())):
                if verb == "add" and child in infos:
                    view.on_add(parent, infos[child])
                elif verb == "remove":
                    view.on_remove(parent, child, infos.get(child, {"id": child}))


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return bool(task is not None and getattr(task, "cancelling", lambda: 0)())


def parse_message(data: bytes) -> list[tuple[str, list[str]]]:
    """The ``(verb, ids)`` pairs of a channel message; malformed ones are dropped."""
    try:
        payload = json.loads(data)
    except (ValueError, RecursionError):
        return []
    if not isinstance(payload, dict):
        return []
    return [
        (verb, [i for i in ids if isinstance(i, str)])
        for verb, ids in payload.items()
        if isinstance(ids, list)
    ]


_relay: Relay | None = None
_relay_loop: asyncio.AbstractEventLoop | None = None  # the loop its connections belong to


def get_relay() -> Relay:
    """The process's relay, made on first use (and again on another event loop).

    A server runs one loop; a process that runs several one after the other
    (tests) gets a relay per loop, since a relay's connections belong to the
    loop that made them.
    """
    global _relay, _relay_loop
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if _relay is not None and loop is not None and _relay_loop not in (None, loop):
        _relay = None  # the old one's loop is gone or elsewhere: leave it be
    if _relay is None:
        from moi import runtime

        _relay = Relay(runtime.redis_url(), runtime.settings().key_timeout)
        _relay_loop = loop
    elif _relay_loop is None:
        _relay_loop = loop
    return _relay


async def close_relay() -> None:
    """Stop the process's relay (tests, server shutdown)."""
    global _relay, _relay_loop
    if _relay is not None:
        await _relay.stop()
        _relay, _relay_loop = None, None
