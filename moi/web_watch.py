"""The watching pages of ``moi serve``: ``/metrics`` and ``/log/<job id>``.

Both are guarded like the rest of the dashboard (:mod:`moi.webauth`): the
``Host`` check, and a session; ``/metrics`` also takes the login token as
``Authorization: Bearer <token>`` (what a Prometheus scrape config sends),
and is open to all with ``moi serve --metrics-public``.  :func:`moi.web.make_app`
mounts them.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

import tornado.web

from moi import logs, metrics
from moi.astore import AsyncStore
from moi.context import _clients as connected_clients
from moi.relay import get_relay
from moi.webauth import TooManyLogins, check_host, read_session, set_security_headers

#: Most ancestors walked up from a job to find whose it is.
MAX_DEPTH = 64


class WatchHandler(tornado.web.RequestHandler):
    """The dashboard's checks: Host, security headers, the session."""

    csp_nonce: str

    def initialize(self, server: Any) -> None:
        self.server = server  # moi.web.ServerConfig

    def set_default_headers(self) -> None:
        self.csp_nonce = secrets.token_urlsafe(16)
        set_security_headers(self, self.csp_nonce)

    def prepare(self) -> None:
        check_host(self.request, self.server.hosts)

    def get_current_user(self) -> str | None:
        session = read_session(self, self.server.sessions)
        return session["user"] if session else None

    def get_login_url(self) -> str:
        return "/login"


class MetricsHandler(WatchHandler):
    """``GET /metrics``: Prometheus text format (:mod:`moi.metrics`)."""

    def initialize(self, server: Any, public: bool = False) -> None:  # type: ignore[override]
        super().initialize(server)
        self.public = public

    async def get(self) -> None:
        if not (self.public or self.current_user or self._bearer_ok()):
            self.set_status(401)
            self.set_header("WWW-Authenticate", 'Bearer realm="moi"')
            self.finish("401: log in, or send Authorization: Bearer <the login token>\n")
            return
        relay = get_relay()
        group_id = await relay.store.user_group(self.server.user)
        snapshot = await metrics.gather(
            relay.client, self.server.user, group_id, relay, logs.current_hub(), engines()
        )
        self.set_header("Content-Type", metrics.CONTENT_TYPE)
        self.write(metrics.render(snapshot))

    def _bearer_ok(self) -> bool:
        header = self.request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return False
        client = self.request.remote_ip or ""
        wait = self.server.limiter.retry_after(client)
        if wait:
            raise TooManyLogins(wait)
        if hmac.compare_digest(header[7:].strip().encode(), self.server.token.encode()):
            return True
        self.server.limiter.failed(client)
        return False


def engines() -> dict[str, int]:
    """Engines per context, for the contexts this process is connected to."""
    # the ids the client has seen register: reading them asks nothing of the controller
    return {name: len(client._ids) for name, client in list(connected_clients.items())}


class LogPageHandler(WatchHandler):
    """``/log/<job id>``: one job's output, live (``moi_log.js``)."""

    @tornado.web.authenticated
    async def get(self, job_id: str) -> None:
        relay = get_relay()
        group_id = await relay.store.user_group(self.server.user)
        info = await owned_job(relay.store, group_id, job_id)
        if info is None:
            raise tornado.web.HTTPError(404, f"no job {job_id} in your tree")
        self.render("log.html", user=self.server.user, info=info)


async def owned_job(store: AsyncStore, group_id: str, job_id: str) -> dict[str, Any] | None:
    """The info of ``job_id`` if it is a job under ``group_id``, else ``None``."""
    found = await store.get_many([job_id])
    if not found or found[0].get("type") != "job":
        return None
    node = found[0]
    for _ in range(MAX_DEPTH):
        parent = node.get("parent")
        if parent == group_id:
            return found[0]
        if not isinstance(parent, str):
            return None
        above = await store.get_many([parent])
        if not above:
            return None
        node = above[0]
    return None
