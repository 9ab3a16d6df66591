"""The watching pages of ``moi serve``: ``/metrics`` and ``/log/<job id>``.

Both are guarded like the rest of the dashboard (:mod:`moi.webauth`): the
``Host`` check, and a session or ``Authorization: Bearer`` with an API key
(or a single-user server's login token: what a Prometheus scrape config
sends); ``/metrics`` is open to all with ``moi serve --metrics-public``.  :func:`moi.web.make_app`
mounts them.
"""

from __future__ import annotations

import secrets
from typing import Any

import tornado.web

from moi import logs, metrics
from moi.context import _clients as connected_clients
from moi.relay import get_relay
from moi.webauth import (
    Principal,
    ServerConfig,
    TooManyLogins,
    authenticate,
    check_host,
    set_security_headers,
)


class WatchHandler(tornado.web.RequestHandler):
    """The dashboard's checks: Host, security headers, and who asks.

    Who asks comes from :func:`moi.webauth.authenticate`: a session (its API
    key checked again, so a revoked key's sessions stop here too) or
    ``Authorization: Bearer`` with an API key or a single-user server's token.
    """

    csp_nonce: str
    principal: Principal | None = None

    def initialize(self, server: ServerConfig) -> None:
        self.server = server

    def set_default_headers(self) -> None:
        self.csp_nonce = secrets.token_urlsafe(16)
        set_security_headers(self, self.csp_nonce)

    async def prepare(self) -> None:
        check_host(self.request, self.server.hosts)
        self.principal = await authenticate(self, self.server)
        self.current_user = self.principal.user if self.principal else None

    def get_login_url(self) -> str:
        return "/login"

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None))[1]
        if isinstance(error, TooManyLogins):
            self.set_header("Retry-After", str(error.retry_after))
        super().write_error(status_code, **kwargs)


class MetricsHandler(WatchHandler):
    """``GET /metrics``: Prometheus text format (:mod:`moi.metrics`)."""

    def initialize(self, server: ServerConfig, public: bool = False) -> None:  # type: ignore[override]
        super().initialize(server)
        self.public = public

    async def get(self) -> None:
        if not (self.public or self.principal):
            self.set_status(401)
            self.set_header("WWW-Authenticate", 'Bearer realm="moi"')
            self.finish("401: log in, or send Authorization: Bearer <API key or login token>\n")
            return
        user = self.principal.user if self.principal else self.server.user
        relay = get_relay()
        group_id = await relay.store.user_group(user)
        snapshot = await metrics.gather(
            relay.client, user, group_id, relay, logs.current_hub(), engines()
        )
        self.set_header("Content-Type", metrics.CONTENT_TYPE)
        self.write(metrics.render(snapshot))


def engines() -> dict[str, int]:
    """Engines per context, for the contexts this process is connected to."""
    # the ids the client has seen register: reading them asks nothing of the controller
    return {name: len(client._ids) for name, client in list(connected_clients.items())}


class LogPageHandler(WatchHandler):
    """``/log/<job id>``: one job's output, live (``moi_log.js``); only one's own jobs.

    An admin may open any job's log.
    """

    @tornado.web.authenticated
    async def get(self, job_id: str) -> None:
        assert self.principal is not None
        store = get_relay().store
        found = await store.get_many([job_id])
        info = found[0] if found and found[0].get("type") == "job" else None
        if info is not None and not self.principal.admin:
            group_id = await store.user_group(self.principal.user)
            info = info if await store.in_tree(info, group_id) else None
        if info is None:
            raise tornado.web.HTTPError(404, f"no job {job_id} in your tree")
        self.render("log.html", user=self.principal.user, info=info)
