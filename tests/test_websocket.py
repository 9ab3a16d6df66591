"""The websocket protocol against a real Redis: push, ownership, auth, bad input."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
import redis
from support import OwnRedisCase
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.testing import AsyncHTTPTestCase, gen_test
from tornado.web import Application, create_signed_value
from tornado.websocket import WebSocketClientConnection, websocket_connect

from moi import keys, runtime
from moi.group import MAX_IDS, create_info, get_id_from_user
from moi.relay import Relay
from moi.websocket import MAX_MESSAGE_SIZE, MOIMessageHandler

SECRET = "test-secret"
TIMEOUT = 10


def make_tree(user: str, jobs: int = 2) -> tuple[str, list[str]]:
    """A user's group holding ``jobs`` queued jobs, written straight to Redis."""
    group_id = get_id_from_user(user)
    ids = [create_info(f"job {n}", "job", parent=group_id, store=True)["id"] for n in range(jobs)]
    return group_id, ids


def snapshot(ids: list[str]) -> dict[str, Any]:
    """Raw values of the given info objects and children sets, to show nothing changed."""
    r = runtime.redis_client()
    return {i: (r.get(keys.info(i)), sorted(r.smembers(keys.children(i)))) for i in ids}


@pytest.mark.usefixtures("moi_env")
class WebSocketCase(AsyncHTTPTestCase):
    """A tornado app mounting MOIMessageHandler on its own relay."""

    read_only = False

    def get_app(self) -> Application:
        self.relay = Relay(runtime.redis_url(), runtime.settings().key_timeout)
        return Application(
            [(r"/moi-ws/", MOIMessageHandler, {"relay": self.relay, "read_only": self.read_only})],
            cookie_secret=SECRET,
            websocket_max_message_size=MAX_MESSAGE_SIZE,
        )

    def tearDown(self) -> None:
        self.io_loop.run_sync(self.relay.stop)
        super().tearDown()

    async def ws_connect(
        self, user: str | None, origin: str | None = None
    ) -> WebSocketClientConnection:
        headers = {}
        if user is not None:
            cookie = create_signed_value(SECRET, "user", user).decode()
            headers["Cookie"] = f"user={cookie}"
        if origin is not None:
            headers["Origin"] = origin
        url = f"ws://127.0.0.1:{self.get_http_port()}/moi-ws/"
        return await websocket_connect(HTTPRequest(url, headers=headers))

    async def read(self, ws: WebSocketClientConnection) -> dict[str, Any]:
        message = await self.wait_for(ws.read_message())
        assert message is not None, f"connection closed: {ws.close_code} {ws.close_reason}"
        return json.loads(message)

    async def wait_for(self, awaitable: Any) -> Any:
        import asyncio

        return await asyncio.wait_for(awaitable, TIMEOUT)

    async def read_until(
        self, ws: WebSocketClientConnection, verb: str, node_id: str, **fields: Any
    ) -> dict[str, Any]:
        """Read frames until a ``verb`` frame about ``node_id`` with ``fields`` arrives."""
        while True:
            frame = await self.read(ws)
            info = frame.get(verb)
            if (
                isinstance(info, dict)
                and info.get("id") == node_id
                and all(info.get(k) == v for k, v in fields.items())
            ):
                return info

    async def get_tree(self, ws: WebSocketClientConnection, count: int) -> dict[str, dict]:
        await ws.write_message(json.dumps({"get": []}))
        frames = [await self.read(ws) for _ in range(count)]
        assert all("get" in f for f in frames), frames
        return {f["get"]["id"]: f["get"] for f in frames}


class TestProtocol(WebSocketCase):
    @gen_test(timeout=30)
    async def test_get_returns_the_whole_tree(self) -> None:
        user = f"ws-{uuid.uuid4().hex[:8]}"
        group_id, ids = make_tree(user, 3)
        ws = await self.ws_connect(user)
        tree = await self.get_tree(ws, 4)
        assert set(tree) == {group_id, *ids}
        assert tree[ids[0]]["status"] == "Queued"

    @gen_test(timeout=30)
    async def test_get_of_a_subtree(self) -> None:
        user = f"ws-{uuid.uuid4().hex[:8]}"
        group_id, _ = make_tree(user, 1)
        sub = create_info("sub", "group", parent=group_id, store=True)["id"]
        inner = create_info("inner", "job", parent=sub, store=True)["id"]
        ws = await self.ws_connect(user)
        await ws.write_message(json.dumps({"get": [sub]}))
        got = {(await self.read(ws))["get"]["id"] for _ in range(2)}
        assert got == {sub, inner}

    @gen_test(timeout=30)
    async def test_updates_and_adds_are_pushed(self) -> None:
        user = f"ws-{uuid.uuid4().hex[:8]}"
        group_id, ids = make_tree(user, 1)
        ws = await self.ws_connect(user)
        await self.get_tree(ws, 2)
        runtime.store().update(ids[0], {"status": "Running"})
        assert (await self.read_until(ws, "update", ids[0]))["status"] == "Running"
        new = create_info("late", "job", parent=group_id, store=True)["id"]
        assert (await self.read_until(ws, "add", new))["name"] == "late"
        runtime.store().update(new, {"status": "step 2"})
        await self.read_until(ws, "update", new, status="step 2")

    @gen_test(timeout=30)
    async def test_garbage_written_by_other_programs_is_skipped(self) -> None:
        user = f"ws-{uuid.uuid4().hex[:8]}"
        group_id, ids = make_tree(user, 1)
        r = runtime.redis_client()
        for bad_id, raw in (("bad-json", "{not json"), ("bad-list", "[1, 2]")):
            bad = f"{bad_id}-{uuid.uuid4().hex[:6]}"
            r.set(keys.info(bad), raw, ex=14 * 86400)  # never expires mid-run
            r.sadd(keys.children(group_id), bad)
        ws = await self.ws_connect(user)
        tree = await self.get_tree(ws, 2)  # the group and its one real job
        assert set(tree) == {group_id, ids[0]}
        r.publish(keys.pubsub(group_id), "not json at all")
        r.publish(keys.pubsub(group_id), json.dumps({"add": "not a list", "update": [7]}))
        r.publish(keys.pubsub(ids[0]), json.dumps({"update": [ids[0], "bad-json"]}))
        runtime.store().update(ids[0], {"status": "still relayed"})
        await self.read_until(ws, "update", ids[0], status="still relayed")

    @gen_test(timeout=30)
    async def test_a_new_subgroup_and_its_jobs_are_followed(self) -> None:
        user = f"ws-{uuid.uuid4().hex[:8]}"
        group_id, _ = make_tree(user, 0)
        ws = await self.ws_connect(user)
        await self.get_tree(ws, 1)
        sub = create_info("sub", "group", parent=group_id, store=True)["id"]
        await self.read_until(ws, "add", sub)
        inner = create_info("inner", "job", parent=sub, store=True)["id"]
        await self.read_until(ws, "add", inner)
        runtime.store().update(inner, {"status": "Success"})
        await self.read_until(ws, "update", inner, status="Success")

    @gen_test(timeout=30)
    async def test_remove_detaches_the_node(self) -> None:
        user = f"ws-{uuid.uuid4().hex[:8]}"
        group_id, ids = make_tree(user, 2)
        ws = await self.ws_connect(user)
        await self.get_tree(ws, 3)
        await ws.write_message(json.dumps({"remove": [ids[0]]}))
        await self.read_until(ws, "remove", ids[0])
        assert runtime.store().children(group_id) == {ids[1]}
        runtime.store().update(ids[0], {"status": "Running"})  # no longer followed
        runtime.store().update(ids[1], {"status": "Running"})
        frame = await self.read(ws)
        assert frame["update"]["id"] == ids[1]

    @gen_test(timeout=30)
    async def test_cancel_of_a_queued_job(self) -> None:
        user = f"ws-{uuid.uuid4().hex[:8]}"
        _, ids = make_tree(user, 1)
        ws = await self.ws_connect(user)
        await self.get_tree(ws, 2)
        await ws.write_message(json.dumps({"cancel": ids}))
        await self.read_until(ws, "update", ids[0], status="Cancelled")
        await ws.write_message(json.dumps({"cancel": ids}))
        frame = await self.read(ws)
        assert "already finished" in frame["error"]["message"]

    @gen_test(timeout=30)
    async def test_close_request_closes(self) -> None:
        user = f"ws-{uuid.uuid4().hex[:8]}"
        make_tree(user, 0)
        ws = await self.ws_connect(user)
        await ws.write_message(json.dumps({"close": None}))
        assert await self.wait_for(ws.read_message()) is None
        assert ws.close_code == 1000

    @gen_test(timeout=30)
    async def test_relay_shares_one_subscription_per_node(self) -> None:
        user = f"ws-{uuid.uuid4().hex[:8]}"
        group_id, ids = make_tree(user, 2)
        clients = [await self.ws_connect(user) for _ in range(5)]
        for ws in clients:
            await self.get_tree(ws, 3)
        assert self.relay.channel_count() == 3
        runtime.store().update(ids[1], {"status": "Running"})
        for ws in clients:
            await self.read_until(ws, "update", ids[1], status="Running")
        for ws in clients:
            ws.close()
        other = await self.ws_connect(f"ws-{uuid.uuid4().hex[:8]}")
        await self.get_tree(other, 1)  # only its (new, empty) group is followed now
        assert self.relay.channel_count() == 1

    @gen_test(timeout=30)
    async def test_uuid_nodes_come_through_one_pattern_other_ids_by_channel(self) -> None:
        user = f"ws-{uuid.uuid4().hex[:8]}"
        group_id, ids = make_tree(user, 2)
        ws = await self.ws_connect(user)
        await self.get_tree(ws, 3)
        r = runtime.redis_client()
        assert r.pubsub_numpat() >= 1
        assert dict(r.pubsub_numsub(*map(keys.pubsub, [group_id, *ids]))) == {
            keys.pubsub(i).encode(): 0 for i in [group_id, *ids]
        }  # following 3 uuid nodes costs no channel of their own
        plain = f"plain-{uuid.uuid4().hex[:8]}"  # an id of another shape (as "no-user")
        create_info("plain", "group", parent=group_id, id=plain, store=True)
        await self.read_until(ws, "add", plain)
        deadline = asyncio.get_running_loop().time() + TIMEOUT

        async def subscribers_become(count: int) -> None:
            while r.pubsub_numsub(keys.pubsub(plain))[0][1] != count:
                assert asyncio.get_running_loop().time() < deadline, f"never {count}"
                await asyncio.sleep(0.01)

        await subscribers_become(1)
        inner = create_info("inner", "job", parent=plain, store=True)["id"]
        await self.read_until(ws, "add", inner)
        runtime.store().update(inner, {"status": "Running"})
        await self.read_until(ws, "update", inner, status="Running")
        runtime.store().update(plain, {"name": "renamed"})
        assert (await self.read_until(ws, "update", plain))["name"] == "renamed"
        await ws.write_message(json.dumps({"remove": [plain]}))
        await self.read_until(ws, "remove", plain)
        await subscribers_become(0)

    @gen_test(timeout=60)
    async def test_redis_connections_do_not_grow_with_browsers(self) -> None:
        def relay_connections() -> int:
            clients = runtime.redis_client().client_list()
            return sum(1 for c in clients if c.get("name") == self.relay.name)

        users = [f"ws-{uuid.uuid4().hex[:8]}" for _ in range(40)]
        trees = [make_tree(u, 1) for u in users]
        first = await self.ws_connect(users[0])
        await self.get_tree(first, 2)
        with_one = relay_connections()
        assert with_one >= 2  # the pub/sub connection and a pooled one at least
        others = [await self.ws_connect(u) for u in users[1:]]
        for ws in others:
            await self.get_tree(ws, 2)
        for (_, ids), ws in zip(trees[1:], others, strict=True):
            runtime.store().update(ids[0], {"status": "Running"})
            await self.read_until(ws, "update", ids[0], status="Running")
        assert relay_connections() <= 5  # the relay's pool of 4 and its pub/sub connection
        assert self.relay.channel_count() == 2 * len(users)


class TestOwnership(WebSocketCase):
    @gen_test(timeout=30)
    async def test_other_users_nodes_are_refused_and_unchanged(self) -> None:
        me, them = f"ws-{uuid.uuid4().hex[:8]}", f"ws-{uuid.uuid4().hex[:8]}"
        make_tree(me, 1)
        their_group, their_ids = make_tree(them, 1)
        before = snapshot([their_group, *their_ids])
        ws = await self.ws_connect(me)
        for verb in ("get", "remove", "cancel"):
            await ws.write_message(json.dumps({verb: their_ids}))
            frame = await self.read(ws)
            assert frame["error"]["action"] == verb
            assert "not in your tree" in frame["error"]["message"]
        await ws.write_message(json.dumps({"get": [their_group]}))
        assert "error" in await self.read(ws)
        assert snapshot([their_group, *their_ids]) == before

    @gen_test(timeout=30)
    async def test_an_add_naming_another_users_node_is_not_taken_in(self) -> None:
        me, them = f"ws-{uuid.uuid4().hex[:8]}", f"ws-{uuid.uuid4().hex[:8]}"
        my_group, my_ids = make_tree(me, 1)
        _, their_ids = make_tree(them, 1)
        ws = await self.ws_connect(me)
        await self.get_tree(ws, 2)
        # what a job's code could publish on its own user's group channel
        runtime.redis_client().publish(keys.pubsub(my_group), json.dumps({"add": their_ids}))
        runtime.store().update(my_ids[0], {"status": "Running"})  # a marker after it
        while True:
            frame = await self.read(ws)
            assert "add" not in frame, frame
            if frame.get("update", {}).get("id") == my_ids[0]:
                break
        await ws.write_message(json.dumps({"get": their_ids}))
        assert "not in your tree" in (await self.read(ws))["error"]["message"]

    @gen_test(timeout=30)
    async def test_root_cannot_be_removed(self) -> None:
        user = f"ws-{uuid.uuid4().hex[:8]}"
        group_id, _ = make_tree(user, 1)
        ws = await self.ws_connect(user)
        await ws.write_message(json.dumps({"remove": [group_id]}))
        assert "cannot be removed" in (await self.read(ws))["error"]["message"]


class TestAuth(WebSocketCase):
    @gen_test(timeout=30)
    async def test_no_cookie_is_refused(self) -> None:
        with pytest.raises(HTTPClientError) as caught:
            await self.ws_connect(None)
        assert caught.value.code == 403

    @gen_test(timeout=30)
    async def test_forged_cookie_is_refused(self) -> None:
        url = f"ws://127.0.0.1:{self.get_http_port()}/moi-ws/"
        with pytest.raises(HTTPClientError) as caught:
            await websocket_connect(HTTPRequest(url, headers={"Cookie": "user=admin"}))
        assert caught.value.code == 403

    @gen_test(timeout=30)
    async def test_cross_site_origin_is_refused(self) -> None:
        user = f"ws-{uuid.uuid4().hex[:8]}"
        with pytest.raises(HTTPClientError) as caught:
            await self.ws_connect(user, origin="http://evil.example")
        assert caught.value.code == 403
        ws = await self.ws_connect(user, origin=f"http://127.0.0.1:{self.get_http_port()}")
        await ws.write_message(json.dumps({"get": []}))
        assert "get" in await self.read(ws)


class TestBadInput(WebSocketCase):
    BAD = [
        ("not json", "not JSON"),
        ("[1, 2]", "exactly one action"),
        ('{"get": [], "remove": []}', "exactly one action"),
        ('{"explode": []}', "unknown action"),
        ('{"get": 5}', "list of id strings"),
        ('{"remove": [1, 2]}', "list of id strings"),
        ('{"cancel": {"a": 1}}', "list of id strings"),
        ('{"get": [""]}', "list of id strings"),
        (json.dumps({"cancel": [str(uuid.uuid4()) for _ in range(10_000)]}), "too many ids"),
    ]

    @gen_test(timeout=60)
    async def test_each_bad_frame_gets_an_error_and_changes_nothing(self) -> None:
        user = f"ws-{uuid.uuid4().hex[:8]}"
        group_id, ids = make_tree(user, 2)
        before = snapshot([group_id, *ids])
        dbsize = runtime.redis_client().dbsize()
        ws = await self.ws_connect(user)
        for frame, expected in self.BAD:
            await ws.write_message(frame)
            reply = await self.read(ws)
            assert expected in reply["error"]["message"], (frame[:40], reply)
        assert MAX_IDS < 10_000
        tree = await self.get_tree(ws, 3)  # the connection still works
        assert set(tree) == {group_id, *ids}
        assert snapshot([group_id, *ids]) == before
        assert runtime.redis_client().dbsize() == dbsize

    @gen_test(timeout=60)
    async def test_oversized_frame_closes_only_that_client(self) -> None:
        user = f"ws-{uuid.uuid4().hex[:8]}"
        group_id, ids = make_tree(user, 1)
        bystander = await self.ws_connect(user)
        await self.get_tree(bystander, 2)
        ws = await self.ws_connect(user)
        await ws.write_message(json.dumps({"get": ["x" * (1024 * 1024)]}))
        assert await self.wait_for(ws.read_message()) is None
        assert ws.close_code == 1009
        runtime.store().update(ids[0], {"status": "still served"})
        await self.read_until(bystander, "update", ids[0], status="still served")


class TestReadOnly(WebSocketCase):
    read_only = True

    @gen_test(timeout=30)
    async def test_remove_and_cancel_are_refused(self) -> None:
        user = f"ws-{uuid.uuid4().hex[:8]}"
        group_id, ids = make_tree(user, 1)
        before = snapshot([group_id, *ids])
        ws = await self.ws_connect(user)
        for verb in ("remove", "cancel"):
            await ws.write_message(json.dumps({verb: ids}))
            assert "read-only" in (await self.read(ws))["error"]["message"]
        assert snapshot([group_id, *ids]) == before
        assert len(await self.get_tree(ws, 2)) == 2


class TestRedisRestart(OwnRedisCase):
    """A relay on its own Redis server survives that server's restart."""

    cookie_secret = SECRET

    @gen_test(timeout=60)
    async def test_views_resubscribe_and_resync(self) -> None:
        import asyncio

        from moi.store import Store

        store = Store(redis.Redis.from_url(self.url), 3600)
        group = {"id": "restart-group", "type": "group", "parent": None, "status": None}
        store.r.set(keys.info(group["id"]), json.dumps(group))
        store.r.hset(keys.USER_ID_MAP, mapping={"alice": group["id"], group["id"]: "alice"})
        store.create(
            {"id": "restart-job", "type": "job", "parent": group["id"], "status": "Queued"}
        )
        cookie = create_signed_value(SECRET, "user", "alice").decode()
        url = f"ws://127.0.0.1:{self.get_http_port()}/moi-ws/"
        ws = await websocket_connect(HTTPRequest(url, headers={"Cookie": f"user={cookie}"}))
        await ws.write_message(json.dumps({"get": []}))
        for _ in range(2):
            assert "get" in json.loads(await asyncio.wait_for(ws.read_message(), TIMEOUT))

        generation = self.relay.generation
        await asyncio.to_thread(self.restart_redis)
        await asyncio.wait_for(self._wait_reconnected(generation), TIMEOUT)
        store = Store(redis.Redis.from_url(self.url), 3600)
        store.update("restart-job", {"status": "after restart"})
        while True:  # resync frames first, then the update
            frame = json.loads(await asyncio.wait_for(ws.read_message(), TIMEOUT))
            info = frame.get("update") or frame.get("get") or {}
            if info.get("id") == "restart-job" and info.get("status") == "after restart":
                break

    async def _wait_reconnected(self, generation: int) -> None:
        import asyncio

        while self.relay.generation <= generation:
            await asyncio.sleep(0.02)
