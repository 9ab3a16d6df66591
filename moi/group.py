"""Groups and users: info objects, the user map, and a live view of a tree.

A user's jobs hang under one group whose uuid ``user-id-map`` records (both
ways).  User names are never UUIDs, so an entry's field says which way it
goes: a UUID field is a group id (-> its user), any other a user name (-> its
group id).  :class:`Group` is a subscriber's live view of such a tree: it follows
every node under it through the process's shared relay and forwards each
change to a callback, as the websocket handler does for each browser.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

from redis.exceptions import RedisError

from moi import keys, runtime
from moi.errors import MoiError, UnknownIdError
from moi.status import Status
from moi.store import TREE_LIMIT, now, text

if TYPE_CHECKING:
    from moi.relay import Relay


_random = bytearray()
_random_lock = threading.Lock()
os.register_at_fork(after_in_child=_random.clear)  # a forked child must not reuse ids


def new_id() -> str:
    """A new random (version 4) uuid, like ``uuid4()`` but reading the OS's
    randomness 4 KiB at a time instead of once per id."""
    with _random_lock:
        if len(_random) < 16:
            _random.extend(os.urandom(4096))
        chunk = bytes(_random[:16])
        del _random[:16]
    return str(UUID(bytes=chunk, version=4))


def create_info(
    name: str,
    info_type: str,
    url: str | None = None,
    parent: str | None = None,
    id: str | None = None,
    context: str | None = None,
    store: bool = False,
) -> dict[str, Any]:
    """Build (and with ``store=True`` save) the info object of a job or group.

    Parameters
    ----------
    name : str
        Human readable name.
    info_type : {'job', 'group'}
    url : str, optional
        Where the node's result can be seen.
    parent : str, optional
        Id of the parent group (see :func:`moi.keys.check_node_id`).
    id : str, optional
        Id to use; a new uuid4 by default.
    context : str, optional
        Context name; the default context when omitted.
    store : bool
        Save it in Redis (and add it to its parent's children) now.

    Returns
    -------
    dict
        The info object.

    Raises
    ------
    InvalidIdError
        When ``id`` or ``parent`` cannot name a node (one of moi's own keys,
        say); nothing is written.
    """
    if info_type not in ("job", "group"):
        raise MoiError(f"info_type must be 'job' or 'group', not {info_type!r}")
    node_id = new_id() if id is None else keys.check_node_id(id)
    if parent is not None:
        keys.check_node_id(parent, "parent id")
    info = {
        "id": node_id,
        "name": name,
        "type": info_type,
        "pubsub": keys.pubsub(node_id),
        "url": url,
        "parent": parent,
        "context": context or runtime.settings().default_context,
        "status": Status.QUEUED.value if info_type == "job" else None,
        "result": None,
        "date_created": now(),
        "date_start": None,
        "date_end": None,
    }
    if store:
        runtime.store().create(info)
    return info


def get_id_from_user(user: str) -> str:
    """Return the group id of ``user``, creating the user's group on first use.

    Parameters
    ----------
    user : str
        A user name: not empty, no control characters, and not a UUID (a
        UUID is a group id; see :func:`moi.keys.check_user_name`).

    Returns
    -------
    str
        The user's group id.

    Raises
    ------
    InvalidUserError
        When ``user`` cannot be a user name; nothing is written.
    """
    keys.check_user_name(user)
    r = runtime.redis_client()
    group_id = _group_of(user)
    if group_id is None:
        candidate = str(uuid4())
        if r.hsetnx(keys.USER_ID_MAP, user, candidate):
            r.hset(keys.USER_ID_MAP, candidate, user)
        group_id = _group_of(user) or candidate
    if runtime.store().get(group_id) is None:  # new, or its info expired
        info = create_info(user, "group", id=group_id)
        r.set(keys.info(group_id), json.dumps(info), ex=runtime.settings().key_timeout, nx=True)
    return group_id


def get_user_from_id(group_id: str) -> str:
    """Return the user name whose group is ``group_id``.

    Parameters
    ----------
    group_id : str
        A user's group id (a UUID).

    Returns
    -------
    str
        The user name.

    Raises
    ------
    UnknownIdError
        When no user has that group (a user name is not a group id).
    """
    user = _user_of(group_id)
    if user is None:
        raise UnknownIdError(f"no user has group id {group_id}")
    return user


def find_user_group(key: str) -> str:
    """Group id for ``key``, a user name or a user's group uuid.

    Raises
    ------
    UnknownIdError
        ``Unknown key: <key>`` when it is neither.
    """
    if keys.is_uuid(key):
        if _user_of(key) is not None:
            return key
    else:
        group_id = _group_of(key)
        if group_id is not None:
            return group_id
    raise UnknownIdError(f"Unknown key: {key}")


def users() -> dict[str, str]:
    """All users and their group ids."""
    pairs = runtime.redis_client().hgetall(keys.USER_ID_MAP)
    decoded = {text(k): text(v) for k, v in pairs.items()}
    return {
        name: gid
        for name, gid in decoded.items()
        if keys.is_uuid(gid) and not keys.is_uuid(name) and decoded.get(gid) == name
    }


def _group_of(user: str) -> str | None:
    """The group id ``user-id-map`` gives user name ``user`` (``None``: no such user)."""
    found = runtime.redis_client().hget(keys.USER_ID_MAP, user)
    if found is None:
        return None
    return keys.check_node_id(text(found), f"group id (user-id-map[{user!r}])")


def _user_of(group_id: str) -> str | None:
    """The user whose group is ``group_id``: a UUID, named by both entries of the pair."""
    if not keys.is_uuid(group_id):
        return None
    r = runtime.redis_client()
    found = r.hget(keys.USER_ID_MAP, group_id)
    if found is None or keys.is_uuid(user := text(found)):
        return None
    back = r.hget(keys.USER_ID_MAP, user)
    return user if back is not None and text(back) == group_id else None


#: Most ids one request may name.
MAX_IDS = 1000
#: Nodes one view may read or change at once (a tree read counts each node it returns).
READ_BURST = TREE_LIMIT
#: Nodes per second by which that allowance comes back.
READ_RATE = 20_000.0
#: Longest pause between two attempts to resync a view.
RESYNC_MAX_DELAY = 5.0

log = logging.getLogger("moi.group")


class _Allowance:
    """A token bucket: ``burst`` nodes at once, refilled at ``rate`` nodes per second."""

    def __init__(self, burst: int, rate: float) -> None:
        self.burst, self.rate = burst, rate
        self.tokens, self.stamp = float(burst), time.monotonic()

    def take(self, cost: int) -> float | None:
        """Spend ``cost``; ``None`` when done, else the seconds to wait before it could be."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if cost <= self.tokens:
            self.tokens -= cost
            return None
        return (cost - self.tokens) / self.rate


class Group:
    """A live view of the tree under ``group_id``, forwarding changes as frames.

    Parameters
    ----------
    group_id : str
        Root of the tree (a user's group).
    forwarder : callable
        Called with each frame, a dict such as ``{"update": info}`` or
        ``{"error": {...}}``.
    relay : Relay, optional
        The shared relay; the process's own by default.
    read_only : bool
        Refuse ``remove`` and ``cancel``.
    drain : async callable, optional
        Awaited after each frame of a reply (``get``, resync), so that the
        receiver takes a large tree at its own pace (the websocket's returns
        at once unless much is queued for its browser).
    read_burst : int
        Most nodes one request may read (``get``) or change (``remove``,
        ``cancel``); :data:`READ_BURST` by default.
    read_rate : float
        Nodes per second by which that allowance comes back; a request
        asking for more than is left gets an ``error`` frame instead.

    Notes
    -----
    Only nodes in the tree can be read or changed through a view: any other
    id gets an ``error`` frame, whoever it belongs to.  A request names each
    node once: repeated ids count once, and a ``get`` of a node inside
    another requested node's subtree is answered by that subtree.
    """

    def __init__(
        self,
        group_id: str,
        forwarder: Callable[[dict[str, Any]], None],
        relay: Relay | None = None,
        read_only: bool = False,
        drain: Callable[[], Awaitable[None]] | None = None,
        read_burst: int = READ_BURST,
        read_rate: float = READ_RATE,
    ) -> None:
        from moi.relay import get_relay

        self.group_id = group_id
        self.forwarder = forwarder
        self.relay = relay or get_relay()
        self.read_only = read_only
        self.drain = drain
        self.nodes: dict[str, tuple[str | None, str]] = {}  # id -> (parent, type)
        self._closed = False
        self._allowance = _Allowance(read_burst, read_rate)
        self._replies: list[dict[str, dict[str, Any]]] = []  # infos of replies being sent

    async def start(self) -> None:
        """Learn the tree and follow every node in it."""
        infos = await self.relay.store.tree(self.group_id)
        self.nodes[self.group_id] = (None, "group")
        await self._learn(infos)
        await self.relay.follow(self, [self.group_id])
        if self._closed:  # the browser left while we were starting
            await self.relay.unfollow(self, [self.group_id])

    async def close(self) -> None:
        """Stop following; no frame is forwarded after this."""
        self._closed = True
        await self.relay.unfollow(self, list(self.nodes))
        self.nodes.clear()

    async def action(self, verb: str, ids: list[str]) -> None:
        """Carry out a client request: ``get``, ``remove`` or ``cancel`` of ``ids``."""
        handler = {"get": self._get, "remove": self._remove, "cancel": self._cancel}.get(verb)
        if handler is None:
            return self.error(f"unknown action {verb!r}; use get, remove, cancel or close", verb)
        if verb != "get" and self.read_only:
            return self.error(f"{verb} refused: this server is read-only", verb)
        targets = list(dict.fromkeys(ids)) or ([self.group_id] if verb == "get" else [])
        strangers = [i for i in targets if i not in self.nodes]
        if strangers:
            return self.error(f"not in your tree: {', '.join(strangers[:5])}", verb, strangers)
        if verb == "get":
            targets = self._outermost(targets)
        refusal = self._over_allowance(verb, targets)
        if refusal is not None:
            return self.error(refusal, verb, targets)
        await handler(targets)

    def error(self, message: str, verb: str | None = None, ids: list[str] | None = None) -> None:
        """Forward an ``error`` frame."""
        self._forward({"error": {"message": message, "action": verb, "ids": ids or []}})

    async def _get(self, ids: list[str]) -> None:
        for node_id in ids:
            if self._closed:
                return
            await self._reply("get", await self.relay.store.tree(node_id))

    async def _remove(self, ids: list[str]) -> None:
        if self.group_id in ids:
            return self.error("the root of your tree cannot be removed", "remove", [self.group_id])
        for node_id in ids:
            parent = self.nodes[node_id][0]
            if parent is not None:
                await self.relay.store.detach(parent, node_id)

    async def _cancel(self, ids: list[str]) -> None:
        groups = [i for i in ids if self.nodes[i][1] != "job"]
        if groups:
            return self.error("only jobs can be cancelled", "cancel", groups)
        for job_id in ids:
            outcome = await self.relay.store.cancel(job_id)
            if outcome.startswith("finished:"):
                self.error(f"job already finished ({outcome.split(':', 1)[1]})", "cancel", [job_id])

    # -- relay callbacks ----------------------------------------------------
    def on_update(self, info: dict[str, Any]) -> None:
        """A followed node changed."""
        for reply in self._replies:  # a reply still being sent carries the newest info
            if info["id"] in reply:
                reply[info["id"]] = info
        if info["id"] in self.nodes:
            self._forward({"update": info})

    def on_add(self, parent_id: str, info: dict[str, Any]) -> None:
        """A node was added under a followed group (and says so itself)."""
        if (
            parent_id in self.nodes
            and info["id"] not in self.nodes
            and info.get("parent") == parent_id  # not a node named on a channel not its own
        ):
            self._forward({"add": info})
            self._background(self._adopt(parent_id, info), f"following new node {info['id']}")

    def on_remove(self, parent_id: str, node_id: str, info: dict[str, Any]) -> None:
        """A node was removed from a followed group."""
        if self.nodes.get(node_id, (None,))[0] != parent_id:
            return
        gone = self._subtree(node_id)
        for i in gone:
            self.nodes.pop(i, None)
        self._forward({"remove": info})
        self._background(self.relay.unfollow(self, gone), f"unfollowing removed node {node_id}")

    async def resync(self) -> None:
        """Send the whole tree again (after the relay lost Redis).

        Retries, waiting longer each time (at most :data:`RESYNC_MAX_DELAY`),
        until it succeeds or the view is closed: pooled connections may still
        be those of the Redis that went away, and a restarted Redis may refuse
        reads while it loads its data.
        """
        delay = 0.1
        while not self._closed:
            try:
                return await self._resync_once()
            except (RedisError, OSError) as exc:
                log.warning("resync of %s failed (%s); retry in %.1f s", self.group_id, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESYNC_MAX_DELAY)

    # -- helpers ------------------------------------------------------------
    async def _resync_once(self) -> None:
        infos = await self.relay.store.tree(self.group_id)
        now_ids = {info["id"] for info in infos} | {self.group_id}
        lost = set(self.nodes) - now_ids
        for node_id in lost:
            self.nodes.pop(node_id, None)
            self._forward({"remove": {"id": node_id}})
        await self.relay.unfollow(self, list(lost))
        await self._reply("get", infos)

    async def _reply(self, verb: str, infos: list[dict[str, Any]]) -> None:
        """Learn ``infos`` and forward each as a ``verb`` frame, at the receiver's pace."""
        latest = {info["id"]: info for info in infos}
        self._replies.append(latest)
        try:
            await self._learn(infos)
            for node_id in list(latest):
                if self._closed:
                    return
                self._forward({verb: latest[node_id]})
                if self.drain is not None:
                    await self.drain()
        finally:
            self._replies.remove(latest)

    def _outermost(self, ids: list[str]) -> list[str]:
        """``ids`` without those inside another one's subtree (already part of its reply)."""
        wanted = set(ids)
        return [i for i in ids if not wanted.intersection(self._ancestors(i))]

    def _ancestors(self, node_id: str) -> set[str]:
        found: set[str] = set()
        parent = self.nodes[node_id][0]
        while parent is not None and parent in self.nodes and parent not in found:
            found.add(parent)  # (a cycle written by some other program ends here)
            parent = self.nodes[parent][0]
        return found

    def _over_allowance(self, verb: str, ids: list[str]) -> str | None:
        """Why a request touching ``ids`` is refused now, or ``None`` (then it is charged)."""
        cost = self._tree_size(ids) if verb == "get" else len(ids)
        if cost > self._allowance.burst:
            return f"{verb} of {cost} nodes refused: at most {self._allowance.burst} per request"
        wait = self._allowance.take(cost)
        if wait is None:
            return None
        return (
            f"{verb} of {cost} nodes refused: at most {self._allowance.rate:.0f} nodes per "
            f"second; try again in {wait:.1f} s"
        )

    def _tree_size(self, roots: list[str]) -> int:
        """Nodes in the subtrees under ``roots`` (disjoint), as far as this view knows."""
        children = self._children()
        count, stack = 0, list(roots)
        while stack:
            count += 1
            stack.extend(children.get(stack.pop(), ()))
        return count

    def _children(self) -> dict[str | None, list[str]]:
        children: dict[str | None, list[str]] = {}
        for node_id, (parent, _) in self.nodes.items():
            children.setdefault(parent, []).append(node_id)
        return children

    def _background(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        from moi.relay import background

        background(coro, what)

    async def _adopt(self, parent_id: str, info: dict[str, Any]) -> None:
        """Follow a node just added, then read it again: nothing between is lost."""
        if self._closed:
            return
        node_id = info["id"]
        self.nodes[node_id] = (parent_id, info.get("type", "job"))
        await self.relay.follow(self, [node_id])
        fresh = await self.relay.store.tree(node_id)
        for later in fresh:
            if later["id"] == node_id:
                if later != info:
                    self._forward({"update": later})
            elif later["id"] not in self.nodes:
                self._forward({"add": later})
        await self._learn([n for n in fresh if n["id"] != node_id])

    async def _learn(self, infos: list[dict[str, Any]]) -> None:
        new = [i["id"] for i in infos if i["id"] not in self.nodes]
        for info in infos:
            if info["id"] != self.group_id:
                self.nodes[info["id"]] = (info.get("parent"), info.get("type", "job"))
        if new and not self._closed:
            await self.relay.follow(self, new)

    def _subtree(self, root: str) -> list[str]:
        children = self._children()
        found, stack = [], [root]
        while stack:
            node_id = stack.pop()
            found.append(node_id)
            stack.extend(children.get(node_id, ()))
        return found

    def _forward(self, frame: dict[str, Any]) -> None:
        if not self._closed:
            self.forwarder(frame)
