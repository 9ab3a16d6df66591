"""The job-tree operations a server needs, on ``redis.asyncio``.

Same Lua scripts and keys as :class:`moi.store.Store`; only what the
websocket side uses: tree reads, batched gets, cancel and detach.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis

from moi import keys, lua
from moi.status import Status
from moi.store import TREE_LIMIT, decode, decode_all, field_args, now, text


class AsyncStore:
    """Asynchronous access to the job tree for the relay and websocket handlers.

    Parameters
    ----------
    client : redis.asyncio.Redis
    key_timeout : int
        Seconds after which written keys expire.
    """

    def __init__(self, client: aioredis.Redis, key_timeout: int) -> None:
        self.r = client
        self.key_timeout = key_timeout
        self._tree = client.register_script(lua.TREE)
        self._cancel = client.register_script(lua.CANCEL)
        self._detach = client.register_script(lua.DETACH)

    async def get_many(self, ids: Iterable[str]) -> list[dict[str, Any]]:
        """Info objects of ``ids`` that exist, in one MGET."""
        ids = list(ids)
        if not ids:
            return []
        raws = await self.r.mget([keys.info(i) for i in ids])
        return decode_all(raws)

    async def tree(self, root_id: str) -> list[dict[str, Any]]:
        """``root_id`` and every node under it, breadth first, in one round trip."""
        raws = await self._tree(keys=[root_id], args=[lua.CHILDREN_SUFFIX, TREE_LIMIT])
        return decode_all(raws)

    async def cancel(self, job_id: str) -> str:
        """Cancel a job; see :data:`moi.lua.CANCEL` for the outcomes."""
        fields = {
            "status": Status.CANCELLED.value,
            "date_end": now(),
            "result": "Cancelled before it started",
        }
        outcome = await self._cancel(
            keys=[keys.info(job_id), keys.pubsub(job_id), keys.cancel(job_id)],
            args=[job_id, self.key_timeout, *field_args(fields)],
        )
        return outcome.decode()

    async def detach(self, parent_id: str, node_id: str) -> bool:
        """Remove ``node_id`` from its parent and publish ``remove``."""
        removed = await self._detach(
            keys=[
                keys.children(parent_id),
                keys.pubsub(parent_id),
                keys.jobs_index(parent_id),
                keys.groups_index(parent_id),
            ],
            args=[node_id, json.dumps({"remove": [node_id]})],
        )
        return bool(removed)

    async def in_tree(self, info: dict[str, Any], root: str) -> bool:
        """Whether the node ``info`` hangs under group ``root``.

        Each parent on the way up must still list the node below it as a
        child: a removed (detached) node is in nobody's tree.
        """
        node = info
        for _ in range(1000):
            parent = node.get("parent")
            if not isinstance(parent, str):
                return False
            if not await self.r.sismember(keys.children(parent), node["id"]):
                return False
            if parent == root:
                return True
            above = decode(await self.r.get(keys.info(parent)))
            if above is None:
                return False
            node = above
        return False

    async def user_group(self, user: str) -> str:
        """Group id of ``user``, creating the user on first sight.

        Like :func:`moi.group.get_id_from_user`, refuses a name that cannot be
        a user's (a UUID, which would read as another user's group id).
        """
        keys.check_user_name(user)
        found = await self.r.hget(keys.USER_ID_MAP, user)
        if found is not None:
            return keys.check_node_id(text(found), f"group id (user-id-map[{user!r}])")
        from moi.group import get_id_from_user

        return await asyncio.to_thread(get_id_from_user, user)
