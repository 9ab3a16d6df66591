"""The Redis job tree: info objects, children sets, atomic updates, reads.

Every write of an info object and its publish are one atomic step (a Lua
script from :mod:`moi.lua` or a MULTI/EXEC pipeline); reading a tree of any
size is one round trip.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Literal, cast

import orjson
import redis
from redis.exceptions import NoScriptError

from moi import keys, lua
from moi.errors import UnknownIdError
from moi.status import Status

Guard = Literal["any", "live", "queued", "final"]

log = logging.getLogger("moi.store")

#: Most ids one ``add`` message of :meth:`Store.creating_many` names.
ADD_BATCH = 1000

#: Most nodes one tree read returns (guards the server against runaway trees).
TREE_LIMIT = 200_000


def now() -> str:
    """Timestamp in the protocol's format, ``str(datetime.now())``."""
    return str(datetime.now())


def text(value: bytes | str) -> str:
    """A Redis reply as ``str`` (clients here return bytes)."""
    return value.decode() if isinstance(value, bytes) else value


def field_args(fields: dict[str, Any]) -> list[str]:
    """Flatten fields into the ``name, raw JSON`` argument pairs the scripts take."""
    args: list[str] = []
    for name, value in fields.items():
        args += [name, json.dumps(value)]
    return args


def update_call(
    node_id: str,
    fields: dict[str, Any],
    key_timeout: int,
    guard: Guard = "any",
    lease: tuple[str, float] | None = None,
    if_missing: dict[str, Any] | None = None,
) -> dict[str, list[Any]]:
    """The ``keys`` and ``args`` of :data:`moi.lua.UPDATE` (see :meth:`Store.update`)."""
    op, lease_ttl = lease or ("", 0)
    return {
        "keys": [keys.info(node_id), keys.pubsub(node_id), keys.LEASES],
        "args": [
            node_id,
            key_timeout,
            guard,
            op,
            lease_ttl,
            json.dumps(if_missing) if if_missing else "",
            *field_args(fields),
        ],
    }


def decode(raw: bytes | str | None) -> dict[str, Any] | None:
    """Parse a stored info object; ``None`` when missing or not an info object.

    Other programs share the protocol: a value they garbled is skipped, it
    does not break the reader.
    """
    if raw is None:
        return None
    try:
        info = orjson.loads(raw)
    except ValueError:
        try:  # what orjson refuses but Python reads: ints beyond 64 bits, NaN
            info = json.loads(raw)
        except (ValueError, RecursionError):  # garbled, or nested too deeply to read
            return None
    return info if isinstance(info, dict) and isinstance(info.get("id"), str) else None


def decode_all(raws: Iterable[bytes | str | None]) -> list[dict[str, Any]]:
    """The info objects among ``raws``, skipping missing and garbled ones."""
    return [info for info in map(decode, raws) if info is not None]


def pack(commands: list[tuple[str | int, ...]]) -> bytes:
    """Commands in the Redis protocol (RESP), ready to send in one write.

    Three times quicker than redis-py's ``pack_commands`` on the submit path.
    """
    out = []
    for command in commands:
        out.append(b"*%d\r\n" % len(command))
        for arg in command:
            data = str(arg).encode()
            out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


def _loads(raw: bytes | str | None) -> Any:
    """Parse JSON bookkeeping; ``None`` when missing or garbled."""
    try:
        return None if raw is None else json.loads(raw)
    except ValueError:
        return None


def _read_owed(connection: Any, count: int) -> None:
    """Read replies of earlier best-effort commands; an error reply is only logged."""
    for _ in range(count):
        try:
            connection.read_response()
        except redis.ResponseError as exc:
            log.warning("a bookkeeping write failed: %s", exc)


def _send_owed(connection: Any, payload: bytes, count: int) -> int:
    """Send best-effort commands without waiting; return how many replies are owed."""
    try:
        connection.send_packed_command([payload], check_health=False)
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        log.warning("a bookkeeping write was not sent: %s", exc)
        return 0
    return count


def _retrying_once(
    action: Callable[[], Any], before_retry: Callable[[], Any] | None = None
) -> None:
    """Run ``action``; if the connection broke, run ``before_retry`` and ``action`` once more."""
    try:
        action()
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        if before_retry is not None:
            before_retry()
        action()


def index_commands(info: dict[str, Any], when: float, ttl: int) -> list[tuple[str | int, ...]]:
    """Commands adding a new node to its parent's index of jobs or groups by creation time.

    The JSON API pages through a user's jobs with these (:func:`moi.keys.jobs_index`).
    """
    index = keys.jobs_index if info.get("type") == "job" else keys.groups_index
    key = index(info["parent"])
    return [("ZADD", key, repr(when), info["id"]), ("EXPIRE", key, ttl)]


class Store:
    """Synchronous access to the moi job tree in one Redis database.

    Parameters
    ----------
    client : redis.Redis
        Connection (pool) to use.
    key_timeout : int
        Seconds after which every key written expires.
    """

    def __init__(self, client: redis.Redis, key_timeout: int) -> None:
        self.r = client
        self.key_timeout = key_timeout
        self._update = client.register_script(lua.UPDATE)
        self._cancel = client.register_script(lua.CANCEL)
        self._heartbeat = client.register_script(lua.HEARTBEAT)
        self._reap = client.register_script(lua.REAP)
        self._tree = client.register_script(lua.TREE)
        self._detach = client.register_script(lua.DETACH)
        self._chain = client.register_script(lua.CHAIN)
        self._record_task = client.register_script(lua.RECORD_TASK)
        self._creating_lock = threading.Lock()
        self._creating_connection: Any = None
        self._creating_owed = 0  # replies of commands sent after the last creating()
        self._update_lock = threading.Lock()
        self._update_connection: tuple[int, Any] | None = None

    # -- reads -------------------------------------------------------------
    def get(self, node_id: str) -> dict[str, Any] | None:
        """Return the info object of ``node_id``, or ``None``."""
        return decode(self.r.get(keys.info(node_id)))

    def require(self, node_id: str) -> dict[str, Any]:
        """Return the info object of ``node_id`` or raise :class:`UnknownIdError`."""
        info = self.get(node_id)
        if info is None:
            raise UnknownIdError(f"unknown job or group id: {node_id}")
        return info

    def get_many(self, ids: Iterable[str]) -> list[dict[str, Any]]:
        """Return the info objects of ``ids`` that exist, in one MGET."""
        ids = list(ids)
        if not ids:
            return []
        raws = self.r.mget([keys.info(i) for i in ids])
        return decode_all(raws)

    def children(self, node_id: str) -> set[str]:
        """Return the ids directly under ``node_id``."""
        return {text(m) for m in self.r.smembers(keys.children(node_id))}

    def tree(self, root_id: str) -> list[dict[str, Any]]:
        """Return ``root_id`` and all its descendants, breadth first, in one round trip."""
        return decode_all(self._tree(keys=[root_id], args=[lua.CHILDREN_SUFFIX, TREE_LIMIT]))

    # -- writes ------------------------------------------------------------
    def create(self, info: dict[str, Any], parent_if_missing: dict[str, Any] | None = None) -> None:
        """Store a new info object under its parent and announce it, atomically.

        ``parent_if_missing`` is stored as the parent's info when it has none.
        An id or parent that cannot name a node raises
        :class:`~moi.errors.InvalidIdError` before anything is sent.
        """
        with self.r.pipeline(transaction=True) as pipe:
            for command in self._create_commands(info, parent_if_missing):
                pipe.execute_command(*command)
            pipe.execute()

    @contextmanager
    def creating(
        self, info: dict[str, Any], parent_if_missing: dict[str, Any] | None = None
    ) -> Iterator[list[tuple[str | int, ...]]]:
        """Send :meth:`create`'s write, run the body, then wait for Redis to confirm it.

        The write leaves before the body runs and its round trip overlaps the
        body (handing the task to the cluster).  An info object already there
        is kept: an engine that started the job first wrote it (``if_missing``
        of :meth:`update`).  Commands the body appends to the list it is given
        (:meth:`queued_task_commands`) are sent after the write, best effort:
        their replies are read at the next use, so their round trip overlaps
        the next submit instead of lengthening this one.  Writes go through
        one connection of their own, one at a time.
        """
        commands = self._create_commands(info, parent_if_missing, keep_existing=True)
        with self._sending([("MULTI",), *commands, ("EXEC",)]) as more:
            yield more

    @contextmanager
    def creating_many(
        self, infos: list[dict[str, Any]], parent_if_missing: dict[str, Any] | None = None
    ) -> Iterator[list[tuple[str | int, ...]]]:
        """:meth:`creating` for many new jobs under one parent, in one atomic write.

        Every info object of ``infos`` has the same ``parent``; the parent's
        children set gets them all in one ``SADD`` and each ``add`` message
        names up to :data:`ADD_BATCH` of them.
        """
        with self._sending(
            [("MULTI",), *self._create_many_commands(infos, parent_if_missing), ("EXEC",)]
        ) as more:
            yield more

    def _create_many_commands(
        self, infos: list[dict[str, Any]], parent_if_missing: dict[str, Any] | None
    ) -> list[tuple[str | int, ...]]:
        ttl, parent = self.key_timeout, keys.check_node_id(infos[0]["parent"], "parent id")
        ids = [keys.check_node_id(info["id"]) for info in infos]
        if any(info.get("parent") != parent for info in infos):
            raise ValueError("creating_many: every info object must have the same parent")
        commands: list[tuple[str | int, ...]] = []
        if parent_if_missing is not None:
            commands.append(
                ("SET", keys.info(parent), json.dumps(parent_if_missing), "EX", ttl, "NX")
            )
        commands += [
            ("SET", keys.info(i), json.dumps(info), "EX", ttl, "NX")
            for i, info in zip(ids, infos, strict=True)
        ]
        when = time.time()  # the creation index, in input order (the last is the newest)
        scored = [part for n, i in enumerate(ids) for part in (repr(when + n * 1e-6), i)]
        index = keys.jobs_index(parent)
        commands += [
            ("SADD", keys.children(parent), *ids),
            ("EXPIRE", keys.children(parent), ttl),
            ("EXPIRE", keys.info(parent), ttl),
            ("ZADD", index, *scored),
            ("EXPIRE", index, ttl),
        ]
        commands += [  # a watcher reads the announced infos in bounded batches
            ("PUBLISH", keys.pubsub(parent), json.dumps({"add": ids[start : start + ADD_BATCH]}))
            for start in range(0, len(ids), ADD_BATCH)
        ]
        return commands

    @contextmanager
    def _sending(
        self, commands: list[tuple[str | int, ...]]
    ) -> Iterator[list[tuple[str | int, ...]]]:
        """Send ``commands``, run the body, then read their replies (see :meth:`creating`)."""
        payload, replies = pack(commands), len(commands)
        more: list[tuple[str | int, ...]] = []
        with self._creating_lock:
            if self._creating_connection is None:
                pool = self.r.connection_pool
                self._creating_connection = pool.connection_class(**pool.connection_kwargs)
            connection = self._creating_connection

            def send(data: bytes) -> None:
                connection.send_packed_command([data], check_health=False)

            def confirm() -> None:
                owed, self._creating_owed = self._creating_owed, 0
                _read_owed(connection, owed)
                for _ in range(replies):
                    connection.read_response()

            def forget_owed() -> None:  # a fresh connection owes nothing
                self._creating_owed = 0

            _retrying_once(lambda: send(payload), forget_owed)
            try:
                yield more
            finally:
                # sent before reading: the sooner it lands, the rarer an engine starts first
                owed_next = _send_owed(connection, pack(more), len(more)) if more else 0

                def resend() -> None:  # the write is idempotent; the bookkeeping is dropped
                    nonlocal owed_next
                    owed_next = 0
                    send(payload)

                _retrying_once(confirm, resend)
                self._creating_owed = owed_next

    def queued_task_commands(
        self, job_id: str, task: dict[str, Any], since: float
    ) -> list[tuple[str | int, ...]]:
        """Commands recording a Queued job's ipyparallel task for the watchdog.

        ``task`` holds ``msg_id``, ``context`` and ``connection_file``; ``since``
        is when it was submitted (epoch seconds).  The entry goes when the job
        leaves ``Queued`` (:data:`moi.lua.UPDATE`, :data:`moi.lua.CANCEL`).
        """
        entry = json.dumps({**task, "since": since})
        return [
            ("ZADD", keys.QUEUED, repr(since), job_id),
            ("HSET", keys.QUEUED_TASKS, job_id, entry),
        ]

    def queued_due(self, before: float, limit: int) -> list[tuple[str, Any, Any]]:
        """Queued jobs due a check before ``before``: ``(id, task entry, info)`` each.

        The entry and info are ``None`` when missing or unreadable.
        """
        found = self.r.zrangebyscore(keys.QUEUED, "-inf", before, 0, limit)
        ids = [text(i) for i in cast("list[bytes]", found)]
        if not ids:
            return []
        with self.r.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.QUEUED_TASKS, ids)
            pipe.mget([keys.info(i) for i in ids])
            entries, infos = pipe.execute()
        return [(i, _loads(e), decode(raw)) for i, e, raw in zip(ids, entries, infos, strict=True)]

    def check_queued_later(self, job_ids: Iterable[str], when: float) -> None:
        """Move the next check of these Queued jobs to ``when`` (epoch seconds)."""
        mapping = dict.fromkeys(job_ids, when)
        if mapping:
            self.r.zadd(keys.QUEUED, mapping, xx=True)

    def forget_queued(self, job_ids: Iterable[str]) -> None:
        """Drop the task bookkeeping of jobs that are no longer Queued."""
        ids = list(job_ids)
        if ids:
            with self.r.pipeline(transaction=True) as pipe:
                pipe.zrem(keys.QUEUED, *ids)
                pipe.hdel(keys.QUEUED_TASKS, *ids)
                pipe.execute()

    def _create_commands(
        self,
        info: dict[str, Any],
        parent_if_missing: dict[str, Any] | None,
        keep_existing: bool = False,
    ) -> list[tuple[str | int, ...]]:
        ttl, node_id, parent = self.key_timeout, info["id"], info.get("parent")
        keys.check_node_id(node_id)  # no info object may land on one of moi's own keys
        if parent is not None:
            keys.check_node_id(parent, "parent id")
        commands: list[tuple[str | int, ...]] = []
        if parent is not None and parent_if_missing is not None:
            commands.append(
                ("SET", keys.info(parent), json.dumps(parent_if_missing), "EX", ttl, "NX")
            )
        commands.append(
            ("SET", keys.info(node_id), json.dumps(info), "EX", ttl)
            + (("NX",) if keep_existing else ())
        )
        if parent is not None:
            commands += [
                ("SADD", keys.children(parent), node_id),
                ("EXPIRE", keys.children(parent), ttl),
                ("EXPIRE", keys.info(parent), ttl),
                *index_commands(info, time.time(), ttl),
                ("PUBLISH", keys.pubsub(parent), json.dumps({"add": [node_id]})),
            ]
        return commands

    def update(
        self,
        node_id: str,
        fields: dict[str, Any],
        guard: Guard = "any",
        lease: tuple[str, float] | None = None,
        if_missing: dict[str, Any] | None = None,
    ) -> tuple[bool, str]:
        """Merge ``fields`` into a node's info and publish ``update``, atomically.

        Parameters
        ----------
        node_id : str
            Job or group to change.
        fields : dict
            Fields to set; every other field is kept byte for byte.
        guard : {'any', 'live', 'queued', 'final'}
            Apply only when the node is in any state, not finished, queued, or
            (``final``, an engine's own outcome) not finished or failed by the
            watchdog for an expired lease.
        lease : (op, seconds), optional
            ``('add', ttl)`` starts a running job's lease, ``('remove', 0)`` ends it.
        if_missing : dict, optional
            Info object to start from when the node has none yet.

        Returns
        -------
        (applied, previous_status)

        Raises
        ------
        UnknownIdError
            When ``node_id`` names nothing.
        """
        call = update_call(node_id, fields, self.key_timeout, guard, lease, if_missing)
        [(applied, status)] = self.update_calls([call])
        if applied == -1:
            raise UnknownIdError(f"unknown job or group id: {node_id}")
        return applied == 1, status.decode()

    def update_calls(self, calls: list[dict[str, list[Any]]]) -> list[Any]:
        """Run :data:`moi.lua.UPDATE` calls (:func:`update_call`) in one round trip, in order.

        Sent through a connection of the store's own, packed by hand: a third
        of the client's work of going through redis-py's command layer for each
        (what the engines pay twice per job).  A server that lost the script
        (restarted, ``SCRIPT FLUSH``) gets it again and the calls are resent:
        none of them ran.

        Returns
        -------
        list
            Each call's reply, ``[applied, status before]``.
        """
        sha = self._update.sha
        payload = pack(
            [("EVALSHA", sha, len(call["keys"]), *call["keys"], *call["args"]) for call in calls]
        )
        with self._update_lock:
            connection = self._own_connection("_update_connection")
            try:
                try:
                    connection.send_packed_command([payload], check_health=False)
                    replies = [connection.read_response() for _ in calls]
                except NoScriptError:
                    for _ in calls[1:]:  # every call failed alike: read the other replies
                        with contextlib.suppress(NoScriptError):
                            connection.read_response()
                    connection.send_command("SCRIPT", "LOAD", lua.UPDATE, check_health=False)
                    connection.read_response()
                    connection.send_packed_command([payload], check_health=False)
                    replies = [connection.read_response() for _ in calls]
            except BaseException:
                connection.disconnect()  # a reply may be left unread: start afresh next time
                raise
        return replies

    def _own_connection(self, attribute: str) -> Any:
        """A connection of this store's own (made again in a forked child)."""
        owned = getattr(self, attribute)
        if owned is None or owned[0] != os.getpid():
            pool = self.r.connection_pool
            owned = (os.getpid(), pool.connection_class(**pool.connection_kwargs))
            setattr(self, attribute, owned)
        return owned[1]

    def update_and_create(
        self,
        node_id: str,
        fields: dict[str, Any],
        created: list[tuple[dict[str, Any], dict[str, Any]]],
        since: float,
        guard: Guard = "any",
        lease: tuple[str, float] | None = None,
    ) -> tuple[bool, str]:
        """:meth:`update`, and when it applies, create Queued jobs in the same atomic step.

        Each of ``created`` is ``(info, task)``: the new job's info object (its
        parent is an existing group) and its watchdog bookkeeping without a
        ``msg_id`` yet (:meth:`record_task` adds it).  A job whose bookkeeping
        never gets one is failed by the watchdog as lost.
        """
        payload = []
        for info, task in created:
            node_id_new, parent = keys.check_node_id(info["id"]), info["parent"]
            payload.append(
                {
                    "id": keys.info(node_id_new),
                    "info": json.dumps(info),
                    "children": keys.children(parent),
                    "parent": keys.info(parent),
                    "channel": keys.pubsub(parent),
                    "message": json.dumps({"add": [node_id_new]}),
                    "entry": json.dumps({**task, "since": since}),
                    "since": repr(since),
                    "index": keys.jobs_index(parent),
                }
            )
        call = update_call(node_id, fields, self.key_timeout, guard, lease)
        applied, status = self._chain(keys=call["keys"], args=[*call["args"], json.dumps(payload)])
        if applied == -1:
            raise UnknownIdError(f"unknown job or group id: {node_id}")
        return applied == 1, status.decode()

    def record_task(self, job_id: str, task: dict[str, Any], since: float) -> bool:
        """Add the handed-over task of a Queued job to its bookkeeping, if it still has some."""
        entry = json.dumps({**task, "since": since})
        return bool(self._record_task(keys=[keys.QUEUED, keys.QUEUED_TASKS], args=[job_id, entry]))

    def cancel(self, job_id: str, reason: str) -> str:
        """Cancel a queued job or flag a running one; see :data:`moi.lua.CANCEL`."""
        fields = {"status": Status.CANCELLED.value, "date_end": now(), "result": reason}
        outcome = self._cancel(
            keys=[keys.info(job_id), keys.pubsub(job_id), keys.cancel(job_id)],
            args=[job_id, self.key_timeout, *field_args(fields)],
        ).decode()
        if outcome == "missing":
            raise UnknownIdError(f"unknown job id: {job_id}")
        return outcome

    def heartbeat(self, job_id: str, lease_ttl: float) -> bool:
        """Extend a running job's lease; return whether cancelling was asked."""
        return bool(
            self._heartbeat(keys=[keys.LEASES, keys.cancel(job_id)], args=[job_id, lease_ttl])
        )

    def reap(self, reason: str) -> list[str]:
        """Fail every running job whose engine stopped renewing its lease."""
        fields = {"status": Status.FAILED.value, "date_end": now(), "result": reason}
        ids = self._reap(
            keys=[keys.LEASES], args=[self.key_timeout, lua.PUBSUB_SUFFIX, *field_args(fields)]
        )
        return [i.decode() for i in ids]

    def detach(self, parent_id: str, node_id: str) -> bool:
        """Remove ``node_id`` from its parent's children and publish ``remove``."""
        removed = self._detach(
            keys=[
                keys.children(parent_id),
                keys.pubsub(parent_id),
                keys.jobs_index(parent_id),
                keys.groups_index(parent_id),
            ],
            args=[node_id, json.dumps({"remove": [node_id]})],
        )
        return bool(removed)

    def clear_cancel(self, job_id: str) -> None:
        """Forget a cancel request once the job has ended."""
        self.r.delete(keys.cancel(job_id))
