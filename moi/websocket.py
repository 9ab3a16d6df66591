"""The websocket endpoint browsers talk to (mount at ``/moi-ws/``).

Client -> server frames: ``{"get": [ids]}`` (empty list: the whole tree),
``{"remove": [ids]}``, ``{"cancel": [ids]}``, ``{"close": null}``, and
``{"batch": true}``.
Server -> client: ``{"get"|"add"|"update"|"remove": info}`` and
``{"error": {"message", "action", "ids"}}``.

Batched frames: a client that sends ``{"batch": true}`` (``moi.js`` does, first
thing after every connect) gets, from then on, ``{"batch": [frame, ...]}``
instead: the same frames, in the same order, at most one message every
:data:`BATCH_DELAY` seconds (a change after a quiet spell leaves at once) or
one per :data:`BATCH_FRAMES` frames or :data:`BATCH_BYTES` bytes, so a tree of
100,000 nodes arrives in a few dozen messages and 500 changes a second in
at most 50.  ``{"batch": false}`` goes back to one frame per message.  A
client that never asks gets exactly the original protocol, one frame per
message.

The user comes from the secure cookie ``user`` (override
:meth:`MOIMessageHandler.get_current_user`); a browser only ever sees and
changes its own user's tree.

Optional: ``{"log": id, "from": n}`` follows a job's output (:mod:`moi.logs`),
answered by ``{"log": {"id", "start", "lines", "next"}}`` frames.

A browser is served at its own pace: a large reply waits while more than
:data:`MAX_BUFFERED` / 4 bytes are queued for it, and a browser that lets
more than :data:`MAX_BUFFERED` bytes pile up (it stopped reading) is dropped
with close code 1013; ``moi.js`` reconnects and asks for its tree again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from functools import partial
from typing import Any

import orjson
from redis.exceptions import RedisError
from tornado.escape import json_encode
from tornado.ioloop import IOLoop
from tornado.web import HTTPError
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from moi import keys, logs
from moi.errors import InvalidUserError
from moi.group import MAX_IDS, READ_BURST, READ_RATE, Group
from moi.relay import Relay, background, get_relay

log = logging.getLogger("moi.websocket")

#: Largest frame a client may send; larger ones close the connection (1009).
MAX_MESSAGE_SIZE = 512 * 1024
#: Most bytes queued for one browser before it is dropped (close code 1013).
MAX_BUFFERED = 8 * 1024 * 1024
#: Longest a large reply waits for a browser to read what is queued before dropping it.
DRAIN_TIMEOUT = 30.0
#: Close code for a browser too slow to keep up ("try again later").
SLOW_CLIENT = 1013
#: Shortest time between two batches to one client (batching clients only).
BATCH_DELAY = 0.02
#: Most frames in one batch; a full batch is sent at once.
BATCH_FRAMES = 2000
#: A batch holding this many bytes is sent at once (large results make large frames).
BATCH_BYTES = 512 * 1024
_VERBS = ("get", "remove", "cancel", "close", "batch")


class MOIMessageHandler(WebSocketHandler):
    """Pushes the current user's job tree and its changes to one browser.

    Parameters (through ``initialize``)
    -----------------------------------
    relay : Relay, optional
        Shared relay; the process's own by default.
    read_only : bool
        Refuse ``remove`` and ``cancel``.
    max_buffered : int
        Bytes that may wait to be sent to this browser before it is dropped
        (:data:`MAX_BUFFERED` by default).
    read_burst, read_rate : int, float
        Nodes one request may read or change, and how fast that allowance
        comes back per second (see :class:`moi.group.Group`).
    """

    def initialize(
        self,
        relay: Relay | None = None,
        read_only: bool = False,
        max_buffered: int = MAX_BUFFERED,
        read_burst: int = READ_BURST,
        read_rate: float = READ_RATE,
    ) -> None:
        self.relay = relay
        self.read_only = read_only
        self.max_buffered = max_buffered
        self.read_burst = read_burst
        self.read_rate = read_rate
        self.view: Group | None = None
        self._buffered = 0  # bytes handed to write_message and not yet written to the socket
        self._room = asyncio.Event()  # set while little is queued
        self._room.set()
        self._done = False  # closed or dropped: nothing more is sent
        self.log_followers: dict[str, logs.LogFollower] = {}  # job id -> its output's follower
        self.batching = False  # the client asked for {"batch": [...]} messages
        self._batch: list[str] = []  # encoded frames waiting to go out in one message
        self._batch_bytes = 0
        self._batch_timer: object | None = None
        self._last_flush = 0.0  # time.monotonic() of the last batch sent

    def get_current_user(self) -> str | None:
        """The user name from the secure cookie ``user`` (see :func:`cookie_user`)."""
        return cookie_user(self.get_secure_cookie("user"))

    def prepare(self) -> None:
        if not self.current_user:
            raise HTTPError(403, "moi websocket: not logged in")
        try:
            keys.check_user_name(self.current_user)
        except InvalidUserError as exc:
            raise HTTPError(403, f"moi websocket: {exc}") from None

    async def open(self, *args: Any) -> None:
        relay = self.relay or get_relay()
        group_id = await relay.store.user_group(self.current_user)
        self.view = Group(
            group_id,
            self.send_frame,
            relay,
            read_only=self.read_only,
            drain=self.drained,
            read_burst=self.read_burst,
            read_rate=self.read_rate,
        )
        await self.view.start()

    async def on_message(self, message: str | bytes) -> None:
        wanted = logs.parse_log_request(message)  # {"log": id, "from": n}: follow a job's output
        if wanted is not None:
            return await self._follow_log(wanted)
        request = parse_request(message)
        if isinstance(request, str):
            self.send_frame({"error": {"message": request, "action": None, "ids": []}})
            return
        verb, ids = request
        if verb == "close":
            self.close(1000, "closed on request")
        elif verb == "batch":
            self.flush_batch()
            self.batching = bool(ids)
        elif self.view is not None:
            try:
                await self.view.action(verb, ids)
            except RedisError as exc:
                log.warning("%s of %d ids failed: %s", verb, len(ids), exc)
                message = f"{verb} failed: the job store is unreachable ({exc}); try again"
                self.send_frame({"error": {"message": message, "action": verb, "ids": ids}})

    async def _follow_log(self, wanted: tuple[str, int | None] | str) -> None:
        error = logs.follow_refusal(wanted, self.view, self.log_followers)
        if error is not None:
            return self.send_frame({"error": {"message": error, "action": "log", "ids": []}})
        assert isinstance(wanted, tuple)
        job_id, start = wanted
        old = self.log_followers.pop(job_id, None)
        if old is not None:
            await old.close()
        if start is not None:  # "from": null stops following
            follower = logs.LogFollower(logs.get_hub(), job_id, self.send_frame, self.drained)
            self.log_followers[job_id] = follower
            try:
                await follower.start(start)
            except RedisError as exc:
                message = f"log failed: the job store is unreachable ({exc}); try again"
                self.send_frame({"error": {"message": message, "action": "log", "ids": [job_id]}})

    def on_close(self) -> None:
        self._done = True
        for follower in self.log_followers.values():
            background(follower.close(), "closing a log follower")
        self._cancel_batch_timer()
        self._batch.clear()
        self._detach_view()
        self._room.set()  # a reply waiting for room ends: the view is closed

    def send_frame(self, frame: dict[str, Any]) -> None:
        """Send one frame; a browser that went away, or lets too much pile up, is dropped."""
        if self._done:
            return
        if self.batching:  # compact (no spaces): a large tree is a tenth smaller
            message = _compact(frame)
            self._batch.append(message)
            self._batch_bytes += _size(message)
            if len(self._batch) >= BATCH_FRAMES or self._batch_bytes >= BATCH_BYTES:
                self.flush_batch()
            elif self._batch_timer is None:
                # the first frame after a quiet spell leaves at once (with whatever the
                # loop adds this turn); later ones wait until BATCH_DELAY after the last batch
                wait = max(0.0, self._last_flush + BATCH_DELAY - time.monotonic())
                self._batch_timer = IOLoop.current().call_later(wait, self.flush_batch)
            return
        self._write(json_encode(frame))  # ASCII: its length is its size in bytes

    def flush_batch(self) -> None:
        """Send the frames gathered so far as one ``{"batch": [...]}`` message."""
        self._cancel_batch_timer()
        if not self._batch or self._done:
            self._batch.clear()
            return
        frames, self._batch = self._batch, []
        self._batch_bytes = 0
        self._last_flush = time.monotonic()
        self._write('{"batch":[' + ",".join(frames) + "]}")

    def _cancel_batch_timer(self) -> None:
        if self._batch_timer is not None:
            IOLoop.current().remove_timeout(self._batch_timer)
            self._batch_timer = None

    def _write(self, message: str) -> None:
        try:
            written = self.write_message(message)
        except WebSocketClosedError:
            return
        size = _size(message)
        self._buffered += size
        written.add_done_callback(partial(self._written, size))
        if self._buffered > self.max_buffered:
            self._drop(f"too slow: more than {self.max_buffered // 1024} KiB waiting to be sent")

    async def drained(self) -> None:
        """Return once little is queued for this browser; drop it after :data:`DRAIN_TIMEOUT`."""
        if self._done or self._buffered <= self.max_buffered // 4:
            return
        self._room.clear()
        try:
            await asyncio.wait_for(self._room.wait(), DRAIN_TIMEOUT)
        except asyncio.TimeoutError:
            self._drop(f"too slow: nothing read for {DRAIN_TIMEOUT:.0f} s")

    def _written(self, size: int, written: asyncio.Future[None]) -> None:
        self._buffered -= size
        if self._buffered <= self.max_buffered // 4:
            self._room.set()
        if not written.cancelled():
            written.exception()  # closed meanwhile: nothing to do, but the error is seen

    def _drop(self, reason: str) -> None:
        if self._done:
            return
        self._done = True
        log.warning("dropping the websocket of user %r: %s", self.current_user, reason)
        self._detach_view()
        self._room.set()
        self.close(SLOW_CLIENT, reason)

    def _detach_view(self) -> None:
        if self.view is not None:
            view, self.view = self.view, None
            background(view.close(), f"closing the view of {view.group_id}")


def _size(message: str) -> int:
    """Bytes ``message`` takes on the wire (UTF-8; orjson leaves non-ASCII unescaped)."""
    return len(message) if message.isascii() else len(message.encode())


def _compact(frame: dict[str, Any]) -> str:
    """``frame`` as JSON without spaces, ``</`` escaped as ``json_encode`` does.

    orjson writes it (a 100,000-node tree's frames in a tenth of the time);
    what it refuses (integers beyond 64 bits) goes through :mod:`json`.
    """
    try:
        text = orjson.dumps(frame).decode()
    except (orjson.JSONEncodeError, TypeError):
        text = json.dumps(frame, separators=(",", ":"))
    return text.replace("</", "<\\/")


def cookie_user(value: bytes | None) -> str | None:
    """The user name a ``user`` cookie value holds, or ``None`` when it holds none.

    Both forms in use are read: a bare name (``alice``, as ``moi serve``
    sets it) and a JSON-encoded one (``"alice"``, as the original moi example
    and qiita set it with ``set_secure_cookie("user", json_encode(name))``).

    Parameters
    ----------
    value : bytes or None
        The cookie's (already verified) value.

    Returns
    -------
    str or None
        The name; ``None`` (refused) for a missing cookie, a value that is
        not UTF-8, a value starting with ``"``, ``[`` or ``{`` that is not one
        JSON string, or a name :func:`moi.keys.check_user_name` refuses
        (empty, control characters, a UUID).
    """
    if not value:
        return None
    try:
        name = value.decode()
    except UnicodeDecodeError:
        return None
    if name[0] in '"[{':  # JSON: only a string names a user
        try:
            name = json.loads(name)
        except (ValueError, RecursionError):
            return None
    try:
        return keys.check_user_name(name)
    except InvalidUserError:
        return None


def parse_request(message: str | bytes) -> tuple[str, list[str]] | str:
    """Validate a client frame: return ``(verb, ids)`` or an error message."""
    try:
        payload = json.loads(message)
    except ValueError:
        return 'not JSON: send an object like {"get": []}'
    except RecursionError:
        return 'nested too deeply: send an object like {"get": []}'
    if not isinstance(payload, dict) or len(payload) != 1:
        return 'a request is an object with exactly one action, like {"get": []}'
    ((verb, ids),) = payload.items()
    if verb not in _VERBS:
        return f"unknown action {verb!r}; use one of {', '.join(_VERBS)}"
    if verb == "close":
        return verb, []
    if verb == "batch":  # on: ["on"], off: []
        if not isinstance(ids, bool):
            return 'batch takes true or false, like {"batch": true}'
        return verb, ["on"] if ids else []
    if isinstance(ids, str):  # the original client sent one id as a string
        ids = [ids]
    if not isinstance(ids, list) or not all(isinstance(i, str) and 0 < len(i) <= 128 for i in ids):
        return f"{verb} takes a list of id strings"
    if len(ids) > MAX_IDS:
        return f"too many ids in one request ({len(ids)}; at most {MAX_IDS})"
    return verb, ids
