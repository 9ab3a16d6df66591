"""The websocket endpoint browsers talk to (mount at ``/moi-ws/``).

Client -> server frames: ``{"get": [ids]}`` (empty list: the whole tree),
``{"remove": [ids]}``, ``{"cancel": [ids]}``, ``{"close": null}``.
Server -> client: ``{"get"|"add"|"update"|"remove": info}`` and
``{"error": {"message", "action", "ids"}}``.  The user comes from the secure
cookie ``user`` (override :meth:`MOIMessageHandler.get_current_user`); a
browser only ever sees and changes its own user's tree.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from tornado.web import HTTPError
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from moi.group import MAX_IDS, Group
from moi.relay import Relay, get_relay

log = logging.getLogger("moi.websocket")

#: Largest frame a client may send; larger ones close the connection (1009).
MAX_MESSAGE_SIZE = 512 * 1024
_VERBS = ("get", "remove", "cancel", "close")
#: Views being closed; held so their tasks are not collected half-way.
_closing: set[asyncio.Task[None]] = set()


class MOIMessageHandler(WebSocketHandler):
    """Pushes the current user's job tree and its changes to one browser.

    Parameters (through ``initialize``)
    -----------------------------------
    relay : Relay, optional
        Shared relay; the process's own by default.
    read_only : bool
        Refuse ``remove`` and ``cancel``.
    """

    def initialize(self, relay: Relay | None = None, read_only: bool = False) -> None:
        self.relay = relay
        self.read_only = read_only
        self.view: Group | None = None

    def get_current_user(self) -> str | None:
        """The user name from the secure cookie ``user``."""
        cookie = self.get_secure_cookie("user")
        return cookie.decode() if cookie else None

    def prepare(self) -> None:
        if not self.current_user:
            raise HTTPError(403, "moi websocket: not logged in")

    async def open(self, *args: Any) -> None:
        relay = self.relay or get_relay()
        group_id = await relay.store.user_group(self.current_user)
        self.view = Group(group_id, self.send_frame, relay, read_only=self.read_only)
        await self.view.start()

    async def on_message(self, message: str | bytes) -> None:
        request = parse_request(message)
        if isinstance(request, str):
            self.send_frame({"error": {"message": request, "action": None, "ids": []}})
            return
        verb, ids = request
        if verb == "close":
            self.close(1000, "closed on request")
        elif self.view is not None:
            await self.view.action(verb, ids)

    def on_close(self) -> None:
        if self.view is not None:
            view, self.view = self.view, None
            task = asyncio.ensure_future(view.close())
            _closing.add(task)
            task.add_done_callback(_closing.discard)

    def send_frame(self, frame: dict[str, Any]) -> None:
        """Send one frame; a browser that went away is simply dropped."""
        try:
            self.write_message(frame)
        except WebSocketClosedError:
            pass


def parse_request(message: str | bytes) -> tuple[str, list[str]] | str:
    """Validate a client frame: return ``(verb, ids)`` or an error message."""
    try:
        payload = json.loads(message)
    except ValueError:
        return 'not JSON: send an object like {"get": []}'
    if not isinstance(payload, dict) or len(payload) != 1:
        return 'a request is an object with exactly one action, like {"get": []}'
    ((verb, ids),) = payload.items()
    if verb not in _VERBS:
        return f"unknown action {verb!r}; use one of {', '.join(_VERBS)}"
    if verb == "close":
        return verb, []
    if isinstance(ids, str):  # the original client sent one id as a string
        ids = [ids]
    if not isinstance(ids, list) or not all(isinstance(i, str) and 0 < len(i) <= 128 for i in ids):
        return f"{verb} takes a list of id strings"
    if len(ids) > MAX_IDS:
        return f"too many ids in one request ({len(ids)}; at most {MAX_IDS})"
    return verb, ids
