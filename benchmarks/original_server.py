"""The baseline: a websocket handler built the original moi's way.

Every browser gets a Redis connection of its own and subscribes it to the
channel of every node in its tree, one subscription per node per browser.
A tree is read by walking it, one ``SMEMBERS`` per group and one ``GET`` per
node; every message on a channel is answered with one ``GET`` per id in it.
This is kinder to the baseline than the original was: its reads were
blocking calls on the event loop, here they are asynchronous, through a
shared pool of eight connections.  Only what the benchmarks use is here:
``get``, ``add``, ``update`` and ``remove``.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import redis.asyncio as aioredis
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from moi import keys
from moi.store import decode, text

#: Name of the baseline's Redis connections (``CLIENT LIST`` shows them).
CLIENT_NAME = "original-relay"
_reads: aioredis.Redis | None = None


def reads() -> aioredis.Redis:
    """The pool every handler of this process reads info objects through."""
    global _reads
    if _reads is None:
        pool = aioredis.BlockingConnectionPool.from_url(
            os.environ["MOI_REDIS_URL"], max_connections=8, client_name=CLIENT_NAME
        )
        _reads = aioredis.Redis(connection_pool=pool)
    return _reads


async def get_info(node_id: str) -> dict[str, Any] | None:
    """One round trip per node."""
    return decode(await reads().get(keys.info(node_id)))


async def traverse(root_id: str) -> list[dict[str, Any]]:
    """The root and every node under it, one ``GET`` per node."""
    found: list[dict[str, Any]] = []
    queue = [root_id]
    while queue:
        info = await get_info(queue.pop(0))
        if info is None:
            continue
        found.append(info)
        if info.get("type") == "group":
            members = await reads().smembers(keys.children(info["id"]))
            queue.extend(sorted(text(m) for m in members))
    return found


class OriginalHandler(WebSocketHandler):
    """One browser: its own pub/sub connection, one subscription per node."""

    def get_current_user(self) -> str | None:
        return self.get_argument("user", None)

    async def open(self, *args: Any) -> None:
        self.listener: asyncio.Task[None] | None = None
        group = await reads().hget(keys.USER_ID_MAP, self.current_user or "")
        if group is None:
            self.close(4004, "unknown user")
            return
        self.group_id = text(group)
        self.connection = aioredis.Redis.from_url(
            os.environ["MOI_REDIS_URL"], client_name=CLIENT_NAME
        )
        self.pubsub = self.connection.pubsub()
        for info in await traverse(self.group_id):
            await self.pubsub.subscribe(keys.pubsub(info["id"]))
        self.listener = asyncio.ensure_future(self.listen())

    async def on_message(self, message: str | bytes) -> None:
        request = json.loads(message)
        if "get" in request:
            for info in await traverse(self.group_id):
                self.send({"get": info})

    async def listen(self) -> None:
        async for message in self.pubsub.listen():
            if message["type"] != "message":
                continue
            node_id = keys.node_id_of_channel(text(message["channel"]))
            for verb, ids in json.loads(message["data"]).items():
                for child in ids:
                    await self.relay(verb, node_id, child)

    async def relay(self, verb: str, node_id: str, child: str) -> None:
        if verb == "remove":
            await self.pubsub.unsubscribe(keys.pubsub(child))
            self.send({"remove": {"id": child}})
            return
        info = await get_info(child)
        if info is None:
            return
        if verb == "add":
            await self.pubsub.subscribe(keys.pubsub(child))
        self.send({verb: info})

    def send(self, frame: dict[str, Any]) -> None:
        try:
            self.write_message(frame)
        except WebSocketClosedError:
            pass

    def on_close(self) -> None:
        if getattr(self, "listener", None) is not None:
            self.listener.cancel()
            asyncio.ensure_future(self._disconnect())

    async def _disconnect(self) -> None:
        await self.pubsub.aclose()
        await self.connection.aclose()
