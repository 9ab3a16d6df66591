"""Websocket hardening against a real Redis: cookies, amplification, slow clients, resync.

Raw-socket clients (:class:`RawClient`) stand for browsers that stop
reading: they complete the handshake, then read only when told to, through a
small receive buffer, so what the server queues for them stays in the server.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import logging
import os
import socket
import struct
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
import tornado.escape
from support import OwnRedisCase
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.testing import AsyncHTTPTestCase, gen_test
from tornado.web import Application, RequestHandler, create_signed_value
from tornado.websocket import WebSocketClientConnection, websocket_connect

from moi import keys, runtime
from moi.group import create_info, get_id_from_user
from moi.relay import Relay
from moi.store import Store
from moi.websocket import MAX_BUFFERED, MAX_MESSAGE_SIZE, SLOW_CLIENT, MOIMessageHandler

SECRET = "hardening-secret"
TIMEOUT = 10.0


# -- a browser that reads only when told to -----------------------------------------------
class RawClient:
    """A websocket client on a bare socket with a small receive buffer.

    Nothing is read unless :meth:`frame` is called, so a server that keeps
    writing to it fills its own buffers.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, cookie: str, rcvbuf: int = 4096) -> RawClient:
        """Open ``/moi-ws/`` on ``127.0.0.1:port`` with the ``user`` cookie ``cookie``."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # no autotuning
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=rcvbuf)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /moi-ws/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nCookie: user={cookie}\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(head.decode(errors="replace"))
        return cls(reader, writer)

    async def send(self, text: str | bytes) -> None:
        """Send one masked text frame (a binary one for ``bytes``)."""
        data, opcode = (text, 0x2) if isinstance(text, bytes) else (text.encode(), 0x1)
        mask = os.urandom(4)
        size = len(data)
        if size < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
        elif size < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
        masked = bytes(b ^ mask[n % 4] for n, b in enumerate(data))
        self.writer.write(head + mask + masked)
        await self.writer.drain()

    async def frame(self) -> tuple[int, bytes] | None:
        """The next frame as ``(opcode, payload)``; ``None`` at the end of the stream."""
        try:
            first, second = await self.reader.readexactly(2)
            size = second & 0x7F
            if size == 126:
                (size,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif size == 127:
                (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return first & 0x0F, await self.reader.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    async def until_closed(self, timeout: float = TIMEOUT) -> tuple[list[Any], int | None]:
        """Read to the end: the JSON frames and the close code (``None``: no close frame)."""
        frames: list[Any] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = await asyncio.wait_for(self.frame(), max(deadline - time.monotonic(), 0.01))
            if got is None:
                return frames, None
            opcode, payload = got
            if opcode == 0x8:
                return frames, struct.unpack("!H", payload[:2])[0] if payload else None
            frames.append(json.loads(payload))
        raise TimeoutError("the connection did not end")

    def abort(self) -> None:
        """Drop the connection without a closing handshake."""
        self.writer.transport.abort()


# -- helpers ----------------------------------------------------------------------------
def signed(value: str | bytes) -> str:
    """A ``user`` cookie value holding ``value``, signed with the test secret."""
    return create_signed_value(SECRET, "user", value).decode()


def user_name() -> str:
    return f"hard-{uuid.uuid4().hex[:8]}"


def make_tree(user: str, groups: int, jobs: int, pad: int = 0) -> tuple[str, list[str]]:
    """``user``'s group holding ``groups`` groups of ``jobs`` jobs: all ids, groups first.

    ``pad`` characters of padding in each name make every frame about that big.
    """
    group_id = get_id_from_user(user)
    ids = []
    for g in range(groups):
        sub = create_info(f"group {g} " + "g" * pad, "group", parent=group_id, store=True)["id"]
        ids.append(sub)
        for j in range(jobs):
            name = f"job {g}.{j} " + "j" * pad
            ids.append(create_info(name, "job", parent=sub, store=True)["id"])
    return group_id, ids


@contextmanager
def loop_errors(loop: asyncio.AbstractEventLoop) -> Iterator[list[dict[str, Any]]]:
    """Every call of ``loop``'s exception handler ("Task exception was never retrieved", ...)."""
    seen: list[dict[str, Any]] = []
    old = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: seen.append(context))
    try:
        yield seen
    finally:
        gc.collect()  # a task failed and forgotten is reported when it is collected
        loop.set_exception_handler(old)


class Records(logging.Handler):
    """Log records of one logger, with an event set by the first that matches ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.text = text
        self.records: list[logging.LogRecord] = []
        self.matched = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if self.text in record.getMessage():
            self.matched.set()


@contextmanager
def captured(name: str, text: str) -> Iterator[Records]:
    handler = Records(text)
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


class OriginalLogin(RequestHandler):
    """Logs in exactly as the original moi example and qiita did."""

    def get(self) -> None:
        name = self.get_argument("name")
        self.set_secure_cookie("user", tornado.escape.json_encode(name))


class SmallBuffers(MOIMessageHandler):
    """moi's handler with a small kernel send buffer, so a stalled reader backs up quickly."""

    def open(self, *args: Any) -> Any:
        assert self.ws_connection is not None and self.ws_connection.stream is not None
        self.ws_connection.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        return super().open(*args)


@pytest.mark.usefixtures("moi_env")
class HardeningCase(AsyncHTTPTestCase):
    """An app with the original login handler and moi's websocket on its own relay."""

    limits: dict[str, Any] = {}

    def get_app(self) -> Application:
        self.relay = Relay(runtime.redis_url(), runtime.settings().key_timeout)
        return Application(
            [
                (r"/moi-ws/", SmallBuffers, {"relay": self.relay, **self.limits}),
                (r"/login", OriginalLogin),
            ],
            cookie_secret=SECRET,
            websocket_max_message_size=MAX_MESSAGE_SIZE,
        )

    def tearDown(self) -> None:
        self.io_loop.run_sync(self.relay.stop)
        super().tearDown()

    async def ws_connect(self, cookie: str) -> WebSocketClientConnection:
        url = f"ws://127.0.0.1:{self.get_http_port()}/moi-ws/"
        return await websocket_connect(HTTPRequest(url, headers={"Cookie": f"user={cookie}"}))

    async def read(self, ws: WebSocketClientConnection) -> dict[str, Any]:
        message = await asyncio.wait_for(ws.read_message(), TIMEOUT)
        assert message is not None, f"connection closed: {ws.close_code} {ws.close_reason}"
        return json.loads(message)

    async def reply(self, ws: WebSocketClientConnection, limit: int) -> list[dict[str, Any]]:
        """Frames up to the error frame answering a sentinel request (at most ``limit``)."""
        await ws.write_message(json.dumps({"get": ["sentinel-not-in-the-tree"]}))
        frames = []
        while "error" not in (frame := await self.read(ws)):
            frames.append(frame)
            assert len(frames) <= limit, f"more than {limit} frames for one request"
        assert "sentinel" in frame["error"]["message"], frame
        return frames


# -- 1. the original cookie format ----------------------------------------------------------
class TestCookie(HardeningCase):
    @gen_test(timeout=30)
    async def test_original_json_cookie_binds_the_real_user(self) -> None:
        name = user_name()
        group_id, ids = make_tree(name, 1, 2)
        login = await self.http_client.fetch(self.get_url(f"/login?name={name}"))
        cookie = login.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
        assert self.get_secure_cookie_value(cookie) == f'"{name}"'.encode()  # quoted, as then
        ws = await self.ws_connect(cookie)
        await ws.write_message(json.dumps({"get": []}))
        frames = await self.reply(ws, 10)
        assert {f["get"]["id"] for f in frames} == {group_id, *ids}
        r = runtime.redis_client()
        assert r.hget(keys.USER_ID_MAP, f'"{name}"') is None  # no phantom user

    def get_secure_cookie_value(self, cookie: str) -> bytes | None:
        from tornado.web import decode_signed_value

        return decode_signed_value(SECRET, "user", cookie)

    @gen_test(timeout=30)
    async def test_malformed_cookies_are_refused_and_create_no_user(self) -> None:
        bad: list[str | bytes] = [
            '{"name": "alice"}',
            '["alice"]',
            '""',
            '"al\\u0000ice"',
            "al\x01ice",
            '"unterminated',
            str(uuid.uuid4()),
            json.dumps(str(uuid.uuid4())),
            b"\xff\xfealice",
            "[" * 10_000,
        ]
        r = runtime.redis_client()
        before = r.hlen(keys.USER_ID_MAP)
        codes = []
        for value in bad:
            try:
                ws = await self.ws_connect(signed(value))
            except HTTPClientError as refused:
                codes.append(refused.code)
            else:
                ws.close()
                codes.append(101)
        assert codes == [403] * len(bad), list(zip(bad, codes, strict=True))
        assert r.hlen(keys.USER_ID_MAP) == before
        for value in bad:
            field = value.decode(errors="replace") if isinstance(value, bytes) else value
            assert r.hget(keys.USER_ID_MAP, field) is None

    @gen_test(timeout=30)
    async def test_bare_name_cookie_still_works(self) -> None:
        name = user_name()
        group_id, ids = make_tree(name, 0, 0)
        ws = await self.ws_connect(signed(name))
        await ws.write_message(json.dumps({"get": []}))
        assert [f["get"]["id"] for f in await self.reply(ws, 5)] == [group_id]


# -- 2. amplification -------------------------------------------------------------------------
class TestAmplification(HardeningCase):
    @gen_test(timeout=60)
    async def test_repeated_ids_are_read_once(self) -> None:
        name = user_name()
        group_id, ids = make_tree(name, 25, 12)  # 326 nodes with the root
        ws = await self.ws_connect(signed(name))
        await ws.write_message(json.dumps({"get": [group_id] * 1000}))
        frames = await self.reply(ws, 326)
        assert sorted(f["get"]["id"] for f in frames) == sorted([group_id, *ids])

    @gen_test(timeout=60)
    async def test_nodes_inside_a_requested_subtree_are_sent_once(self) -> None:
        name = user_name()
        group_id, ids = make_tree(name, 3, 4)
        sub, job_in_sub = ids[0], ids[1]
        ws = await self.ws_connect(signed(name))
        await ws.write_message(json.dumps({"get": [job_in_sub, sub, group_id, sub, job_in_sub]}))
        frames = await self.reply(ws, 16)
        assert sorted(f["get"]["id"] for f in frames) == sorted([group_id, *ids])
        await ws.write_message(json.dumps({"get": [job_in_sub, sub]}))
        assert sorted(f["get"]["id"] for f in await self.reply(ws, 5)) == sorted(ids[:5])

    @gen_test(timeout=30)
    async def test_deeply_nested_frames_get_an_error(self) -> None:
        name = user_name()
        group_id, _ = make_tree(name, 0, 0)
        ws = await self.ws_connect(signed(name))
        for frame in ("[" * 200_000, '{"get": ' + "[" * 100_000, "{" + '"a":{' * 60_000):
            await ws.write_message(frame)
            reply = await self.read(ws)
            assert "error" in reply, reply
        await ws.write_message(json.dumps({"get": []}))
        assert [f["get"]["id"] for f in await self.reply(ws, 5)] == [group_id]


class TestAllowance(HardeningCase):
    limits = {"read_burst": 1000, "read_rate": 20.0}

    @gen_test(timeout=60)
    async def test_reads_beyond_the_allowance_get_an_error(self) -> None:
        name = user_name()
        group_id, ids = make_tree(name, 25, 12)  # 326 nodes
        ws = await self.ws_connect(signed(name))
        for _ in range(3):  # 978 of the 1000 nodes allowed at once
            await ws.write_message(json.dumps({"get": []}))
            assert len(await self.reply(ws, 326)) == 326
        await ws.write_message(json.dumps({"get": []}))
        refused = await self.read(ws)
        assert "per second" in refused["error"]["message"], refused
        assert refused["error"]["action"] == "get"
        await ws.write_message(json.dumps({"get": [ids[-1]]}))  # one more node: still allowed
        assert [f["get"]["id"] for f in await self.reply(ws, 1)] == [ids[-1]]

    @gen_test(timeout=60)
    async def test_cancel_counts_against_the_allowance(self) -> None:
        name = user_name()
        _, ids = make_tree(name, 1, 20)
        ws = await self.ws_connect(signed(name))
        await ws.write_message(json.dumps({"get": []}))
        await self.reply(ws, 22)
        for _ in range(60):  # 20 ids each: 1200 > 1000 + a few seconds' refill
            await ws.write_message(json.dumps({"cancel": ids[1:]}))
            errors = [f["error"]["message"] for f in await self.replies(ws)]
            if any("per second" in e for e in errors):
                return
        raise AssertionError("1200 cancels were all accepted")

    async def replies(self, ws: WebSocketClientConnection) -> list[dict[str, Any]]:
        """Error frames up to the one answering a sentinel request."""
        await ws.write_message(json.dumps({"get": ["sentinel-not-in-the-tree"]}))
        errors = []
        while "sentinel" not in json.dumps(frame := await self.read(ws)):
            if "error" in frame:
                errors.append(frame)
        return errors


class TestRequestCap(HardeningCase):
    limits = {"read_burst": 300}

    @gen_test(timeout=60)
    async def test_a_request_larger_than_the_cap_gets_an_error(self) -> None:
        name = user_name()
        _, ids = make_tree(name, 25, 12)  # 326 nodes
        ws = await self.ws_connect(signed(name))
        await ws.write_message(json.dumps({"get": []}))
        refused = await self.read(ws)
        assert "at most 300 per request" in refused["error"]["message"], refused
        await ws.write_message(json.dumps({"get": [ids[0]]}))
        assert len(await self.reply(ws, 13)) == 13


# -- 2. back-pressure -----------------------------------------------------------------------
class TestBackPressure(HardeningCase):
    limits = {"max_buffered": 128 * 1024}

    @gen_test(timeout=60)
    async def test_a_big_reply_goes_at_the_readers_pace(self) -> None:
        name = user_name()
        group_id, ids = make_tree(name, 25, 12, pad=1500)  # ~500 KB of frames > 128 KiB
        raw = await RawClient.connect(self.get_http_port(), signed(name))
        await raw.send(json.dumps({"get": []}))
        assert (await raw.frame()) is not None
        await asyncio.sleep(0.5)  # a slow reader: the rest waits in the server meanwhile
        await raw.send(json.dumps({"close": None}))
        frames, code = await raw.until_closed()
        assert code == 1000, code  # not dropped
        assert len(frames) == 325

    @gen_test(timeout=90)
    async def test_a_client_that_stops_reading_is_dropped(self) -> None:
        name = user_name()
        group_id, _ = make_tree(name, 0, 0)
        job = create_info("busy", "job", parent=group_id, store=True)["id"]
        loop = asyncio.get_running_loop()
        with captured("moi.websocket", "dropping") as log, loop_errors(loop) as errors:
            bystander = await self.ws_connect(signed(name))
            await bystander.write_message(json.dumps({"get": []}))
            await self.reply(bystander, 2)
            statuses: list[str] = []
            reading = asyncio.ensure_future(self._statuses(bystander, job, statuses))
            stalled = [await RawClient.connect(self.get_http_port(), signed(name)) for _ in "ab"]
            sent = await self._update_until(job, log.matched)
            assert log.matched.is_set(), f"not dropped after {sent} updates of ~4 KB"
            stalled[1].abort()  # gone with writes pending: their failures must be handled
            frames, code = await stalled[0].until_closed()
            assert code == SLOW_CLIENT and frames, (code, len(frames))
            # the last step reaches the bystander (written before the next change, so a
            # busy relay cannot fold the two into one update)
            deadline = time.monotonic() + TIMEOUT
            while f"step {sent}" not in statuses:
                assert time.monotonic() < deadline, statuses[-3:]
                await asyncio.sleep(0.01)
            runtime.store().update(job, {"status": "after the drop"})
            await asyncio.wait_for(reading, TIMEOUT)  # the bystander was never dropped
            steps = [int(s.split()[1]) for s in statuses[:-1]]  # coalesced, never reordered
            assert steps == sorted(steps) and steps[-1] == sent, statuses[-3:]
            bystander.close()
            stalled[0].abort()
        assert [e["message"] for e in errors] == []
        assert sent < 20 * 128 * 1024 // 4096  # dropped soon after the cap, not much later

    async def _statuses(self, ws: WebSocketClientConnection, job: str, seen: list[str]) -> None:
        """Collect ``job``'s statuses from update frames until "after the drop"."""
        while not seen or seen[-1] != "after the drop":
            info = (await self.read(ws)).get("update", {})
            if info.get("id") == job:
                seen.append(info["status"])

    async def _update_until(self, job: str, done: asyncio.Event, most: int = 2000) -> int:
        store = runtime.store()
        for n in range(1, most + 1):
            await asyncio.to_thread(store.update, job, {"status": f"step {n}", "pad": "p" * 4000})
            if done.is_set():
                return n
            await asyncio.sleep(0)  # let the relay forward it
        return most


def test_default_cap_is_eight_mebibytes() -> None:
    assert MAX_BUFFERED == 8 * 1024 * 1024


# -- 3. resync after Redis comes back ---------------------------------------------------------
class TestResyncAfterRedisRestart(OwnRedisCase):
    """A view resyncs when its Redis restarts, even when the first attempt fails.

    Its own server on its own port (the session Redis is shared by every
    test), restarted as tests/test_websocket.py does: stopped (SIGTERM) with
    append-only persistence, then a new server on the same port and data.
    The relay's pooled connections are still those of the old server when
    the views resync, so the first attempt fails ("Connection closed by
    server") and has to be made again.
    """

    cookie_secret = SECRET

    @gen_test(timeout=60)
    async def test_resync_retries_until_it_succeeds(self) -> None:
        store = Store(redis.Redis.from_url(self.url), 3600)
        group = {"id": "resync-group", "type": "group", "parent": None, "status": None}
        store.r.set(keys.info(group["id"]), json.dumps(group))
        store.r.hset(keys.USER_ID_MAP, mapping={"alice": group["id"], group["id"]: "alice"})
        store.create({"id": "quiet-job", "type": "job", "parent": group["id"], "status": "Queued"})
        store.create({"id": "loud-job", "type": "job", "parent": group["id"], "status": "Queued"})
        url = f"ws://127.0.0.1:{self.get_http_port()}/moi-ws/"
        headers = {"Cookie": f"user={signed('alice')}"}
        ws = await websocket_connect(HTTPRequest(url, headers=headers))
        await ws.write_message(json.dumps({"get": []}))
        for _ in range(3):
            assert "get" in json.loads(await asyncio.wait_for(ws.read_message(), TIMEOUT))

        # a change whose message the relay misses (published while it was away)
        quiet = {**store.require("quiet-job"), "status": "changed while away"}
        store.r.set(keys.info("quiet-job"), json.dumps(quiet))
        loop = asyncio.get_running_loop()
        with loop_errors(loop) as errors, captured("moi", "resync of") as log:
            generation = self.relay.generation
            await asyncio.to_thread(self.restart_redis)
            while self.relay.generation <= generation:
                await asyncio.sleep(0.02)
            frame = await self._frames_until(ws, "quiet-job", "changed while away", 30)
            assert "get" in frame  # sent by the resync
            store = Store(redis.Redis.from_url(self.url), 3600)
            store.update("loud-job", {"status": "after restart"})
            await self._frames_until(ws, "loud-job", "after restart", TIMEOUT)
            ws.close()
        assert [e["message"] for e in errors] == []
        assert log.matched.is_set(), "the first resync worked: the retry was not exercised"
        assert [r.getMessage() for r in log.records if r.levelno >= logging.ERROR] == []

    async def _frames_until(
        self, ws: WebSocketClientConnection, node_id: str, status: str, timeout: float
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"{node_id} never showed {status!r}"
            frame = json.loads(await asyncio.wait_for(ws.read_message(), left))
            info = frame.get("update") or frame.get("get") or {}
            if info.get("id") == node_id and info.get("status") == status:
                return frame
