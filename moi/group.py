"""Groups and users: info objects, the user map, and a live view of a tree.

A user's jobs hang under one group whose uuid ``user-id-map`` records (both
ways).  :class:`Group` is a subscriber's live view of such a tree: it follows
every node under it through the process's shared relay and forwards each
change to a callback, as the websocket handler does for each browser.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

from moi import keys, runtime
from moi.errors import MoiError, UnknownIdError
from moi.status import Status
from moi.store import now, text

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
        Id of the parent group.
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
    """
    if info_type not in ("job", "group"):
        raise MoiError(f"info_type must be 'job' or 'group', not {info_type!r}")
    node_id = new_id() if id is None else id
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

    A user's group id stands for that user (as ``moi userjobs --key`` accepts).
    """
    r = runtime.redis_client()
    found = r.hget(keys.USER_ID_MAP, user)
    if found is not None:
        group_id = text(found)
        if _is_uuid(user) and not _is_uuid(group_id):  # the reverse entry: uuid -> name
            user, group_id = group_id, user
    else:
        candidate = str(uuid4())
        if r.hsetnx(keys.USER_ID_MAP, user, candidate):
            r.hset(keys.USER_ID_MAP, candidate, user)
        group_id = text(r.hget(keys.USER_ID_MAP, user) or candidate)
    if runtime.store().get(group_id) is None:  # new, or its info expired
        info = create_info(user, "group", id=group_id)
        r.set(keys.info(group_id), json.dumps(info), ex=runtime.settings().key_timeout, nx=True)
    return group_id


def get_user_from_id(group_id: str) -> str:
    """Return the user name whose group is ``group_id``.

    Raises
    ------
    UnknownIdError
        When no user has that group.
    """
    found = runtime.redis_client().hget(keys.USER_ID_MAP, group_id)
    if found is None:
        raise UnknownIdError(f"no user has group id {group_id}")
    return text(found)


def find_user_group(key: str) -> str:
    """Group id for ``key``, a user name or a user's group uuid.

    Raises
    ------
    UnknownIdError
        ``Unknown key: <key>`` when it is neither.
    """
    found = runtime.redis_client().hget(keys.USER_ID_MAP, key)
    if found is None:
        raise UnknownIdError(f"Unknown key: {key}")
    value = text(found)
    return value if _is_uuid(value) else key


def users() -> dict[str, str]:
    """All users and their group ids."""
    pairs = runtime.redis_client().hgetall(keys.USER_ID_MAP)
    decoded = {text(k): text(v) for k, v in pairs.items()}
    return {
        name: gid
        for name, gid in decoded.items()
        if _is_uuid(gid) and not _is_uuid(name) and decoded.get(gid) == name
    }


def _is_uuid(text: str) -> bool:
    try:
        UUID(text)
    except ValueError:
        return False
    return True


#: Most ids one request may name.
MAX_IDS = 1000


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

    Notes
    -----
    Only nodes in the tree can be read or changed through a view: any other
    id gets an ``error`` frame, whoever it belongs to.
    """

    def __init__(
        self,
        group_id: str,
        forwarder: Callable[[dict[str, Any]], None],
        relay: Relay | None = None,
        read_only: bool = False,
    ) -> None:
        from moi.relay import get_relay

        self.group_id = group_id
        self.forwarder = forwarder
        self.relay = relay or get_relay()
        self.read_only = read_only
        self.nodes: dict[str, tuple[str | None, str]] = {}  # id -> (parent, type)
        self._closed = False

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
        targets = ids or ([self.group_id] if verb == "get" else [])
        strangers = [i for i in targets if i not in self.nodes]
        if strangers:
            return self.error(f"not in your tree: {', '.join(strangers[:5])}", verb, strangers)
        await handler(targets)

    def error(self, message: str, verb: str | None = None, ids: list[str] | None = None) -> None:
        """Forward an ``error`` frame."""
        self._forward({"error": {"message": message, "action": verb, "ids": ids or []}})

    async def _get(self, ids: list[str]) -> None:
        for node_id in ids:
            infos = await self.relay.store.tree(node_id)
            await self._learn(infos)
            for info in infos:
                self._forward({"get": info})

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
        if info["id"] in self.nodes:
            self._forward({"update": info})

    def on_add(self, parent_id: str, info: dict[str, Any]) -> None:
        """A node was added under a followed group."""
        if parent_id in self.nodes and info["id"] not in self.nodes:
            self._forward({"add": info})
            asyncio.ensure_future(self._adopt(parent_id, info))

    def on_remove(self, parent_id: str, node_id: str, info: dict[str, Any]) -> None:
        """A node was removed from a followed group."""
        if self.nodes.get(node_id, (None,))[0] != parent_id:
            return
        gone = self._subtree(node_id)
        for i in gone:
            self.nodes.pop(i, None)
        self._forward({"remove": info})
        asyncio.ensure_future(self.relay.unfollow(self, gone))

    async def resync(self) -> None:
        """Send the whole tree again (after the relay lost Redis)."""
        before = set(self.nodes)
        infos = await self.relay.store.tree(self.group_id)
        now_ids = {info["id"] for info in infos} | {self.group_id}
        for lost in before - now_ids:
            self.nodes.pop(lost, None)
            self._forward({"remove": {"id": lost}})
        await self._learn(infos)
        for info in infos:
            self._forward({"get": info})

    # -- helpers ------------------------------------------------------------
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
        children: dict[str | None, list[str]] = {}
        for node_id, (parent, _) in self.nodes.items():
            children.setdefault(parent, []).append(node_id)
        found, stack = [], [root]
        while stack:
            node_id = stack.pop()
            found.append(node_id)
            stack.extend(children.get(node_id, ()))
        return found

    def _forward(self, frame: dict[str, Any]) -> None:
        if not self._closed:
            self.forwarder(frame)
