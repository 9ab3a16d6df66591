"""``moi serve``: a Tornado dashboard with the live job panel, and ``make_app``.

Login works like Jupyter's: the server prints a URL carrying a token;
opening it (or pasting the token into ``/login``) starts a session.  The
session lives in a signed cookie bound to this server (its token and
listening port), lasts ``session_hours`` and ends at ``/logout``; without
one every page redirects to ``/login`` and the websocket is refused.
``read_only`` hides and refuses submit, cancel and remove.  Every POST and
the websocket handshake must come from this server's own origin, forms carry
an XSRF token derived from the session, and requests on a loopback address
must name a loopback host: the checks live in :mod:`moi.webauth`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop, PeriodicCallback
from tornado.netutil import bind_sockets

from moi import (
    api,
    auth,
    connection,
    embedded,
    job,
    keys,
    listing,
    nodes,
    runtime,
    watchdog,
    web_watch,
)
from moi.context import resolve
from moi.errors import InvalidUserError, MoiError
from moi.group import create_info, get_id_from_user
from moi.relay import background, get_relay
from moi.status import is_terminal
from moi.store import now, text
from moi.webauth import (
    LOOPBACK_HOSTS,
    SESSION_HOURS,
    Principal,
    ServerConfig,
    Sessions,
    TooManyLogins,
    authenticate,
    check_host,
    check_same_origin,
    check_token,
    check_xsrf,
    host_name,
    local_address,
    log_in_with,
    principal_for_session,
    read_session,
    safe_next,
    same_origin,
    session_cookie,
    set_security_headers,
)
from moi.websocket import MAX_MESSAGE_SIZE, MOIMessageHandler

__all__ = ["ServerConfig", "Principal", "make_app", "serve"]

log = logging.getLogger("moi.web")
_HERE = Path(__file__).parent
#: One thread submits jobs: the ipyparallel client is not thread-safe.
_submitter = job.submitter


# -- pages ------------------------------------------------------------------------------
class BaseHandler(tornado.web.RequestHandler):
    """Host and origin checks, key or token login and the session, shared by every page.

    ``prepare`` finds who the request acts for (:attr:`principal`, from the
    session; its API key is checked on every request, so a revoked key's
    sessions end at once) and whose tree it shows (:attr:`target`: the
    principal's own, or for an admin the ``user`` argument's).
    """

    #: Nonce of this response's inline scripts (see :func:`set_security_headers`).
    csp_nonce: str
    #: Whether POSTs are accepted without a session (login, logout); with one,
    #: every POST needs the session's XSRF token.
    open_without_session = False
    principal: Principal | None = None

    def initialize(self, server: ServerConfig) -> None:
        self.server = server

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.csp_nonce = secrets.token_urlsafe(16)
        set_security_headers(self, self.csp_nonce)

    def current_session(self) -> dict[str, Any] | None:
        """This request's live session, or None."""
        return read_session(self, self.server.sessions)

    def get_current_user(self) -> str | None:
        return self.principal.user if self.principal else None

    @property
    def xsrf_token(self) -> bytes:
        """The session's XSRF token (forms render it; no ``_xsrf`` cookie is used)."""
        session = self.current_session()
        return self.server.sessions.xsrf_token(session).encode() if session else b""

    def check_xsrf_cookie(self) -> None:
        """Refuse POSTs from other origins, and without this session's XSRF token."""
        check_host(self.request, self.server.hosts)
        check_same_origin(self.request)
        session = self.current_session()
        if session is None:
            if self.open_without_session:
                return
            raise tornado.web.HTTPError(403, "not logged in")
        check_xsrf(self, self.server, session)

    async def prepare(self) -> None:
        check_host(self.request, self.server.hosts)
        token = self.get_query_argument("token", None)
        if token is not None and self.token_url_allowed():
            principal = await log_in_with(self, self.server, token)
            if principal is not None:
                self.log_in(principal)
                rest = {k: v[-1] for k, v in self.request.query_arguments.items() if k != "token"}
                query = urlencode({k: v.decode() for k, v in rest.items()})
                self.redirect(self.request.path + (f"?{query}" if query else ""))
                return
        self.principal = await principal_for_session(self.server, self.current_session())
        self.current_user = self.principal.user if self.principal else None

    def token_url_allowed(self) -> bool:
        """Whether a ``?token=`` may log in here.

        On a multi-user server not from a link on another site
        (``Sec-Fetch-Site: cross-site``/``same-site``): anyone with a key could
        otherwise log a victim's browser into their own account (login CSRF)
        and receive what the victim then submits.
        """
        site = self.request.headers.get("Sec-Fetch-Site")
        return not self.server.multi_user or site in (None, "none", "same-origin")

    @property
    def target(self) -> str:
        """Whose tree this request shows and acts on: an admin's ``?user=NAME``, else one's own."""
        assert self.principal is not None
        wanted = self.get_argument("user", None)
        if wanted and self.principal.admin:
            try:
                return keys.check_user_name(wanted)
            except InvalidUserError as exc:
                raise tornado.web.HTTPError(400, str(exc)) from None
        return self.principal.user

    @property
    def read_only(self) -> bool:
        """Whether writes are refused: a read-only server or key."""
        return self.server.read_only or bool(self.principal and self.principal.read_only)

    def refuse_writes(self) -> None:
        """403 on a read-only server or key."""
        if self.read_only:
            raise tornado.web.HTTPError(403, "read-only: writes are refused")

    def log_in(self, principal: Principal) -> None:
        """Start a session: the signed, HttpOnly, SameSite=Strict cookie of this server's port."""
        port = local_address(self.request)[1]
        lifetime = self.server.sessions.lifetime
        self.set_secure_cookie(
            session_cookie(port),
            json.dumps(self.server.sessions.issue(port, principal)),
            expires_days=lifetime / 86400,
            httponly=True,
            samesite="Strict",
            secure=self.request.protocol == "https",
        )

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None))[1]
        if isinstance(error, TooManyLogins):
            self.set_header("Retry-After", str(error.retry_after))
        super().write_error(status_code, **kwargs)

    def get_login_url(self) -> str:
        return "/login"

    async def target_group(self) -> str:
        """The target user's group id; 404 (no user made) for an admin's unknown ``?user=``."""
        if self.target == self.current_user:
            return await asyncio.to_thread(get_id_from_user, self.target)
        found = await asyncio.to_thread(runtime.redis_client().hget, keys.USER_ID_MAP, self.target)
        if found is None:
            raise tornado.web.HTTPError(404, "no user %r", self.target)
        return keys.check_node_id(text(found), "group id")

    def _back(self) -> str:
        """The dashboard of the target user (an admin's ``?user=`` kept)."""
        return "/" if self.target == self.current_user else "/?" + urlencode({"user": self.target})

    async def user_tree(self) -> tuple[str, dict[str, dict[str, Any]]]:
        """The target user's group id and every node of that tree by id."""
        group_id = await self.target_group()
        nodes = await asyncio.to_thread(runtime.store().tree, group_id)
        return group_id, {info["id"]: info for info in nodes}


class LoginHandler(BaseHandler):
    """``/login``: a form asking for the token (protected by the Origin check)."""

    open_without_session = True

    def get(self) -> None:
        next_url = safe_next(self.get_argument("next", "/"))
        self.render("login.html", next=next_url, error=None, multi_user=self.server.multi_user)

    async def post(self) -> None:
        next_url = safe_next(self.get_argument("next", "/"))
        principal = await log_in_with(self, self.server, self.get_argument("token", ""))
        if principal is None:
            self.set_status(403)
            error = "Wrong or revoked key." if self.server.multi_user else "Wrong token."
            self.render("login.html", next=next_url, error=error, multi_user=self.server.multi_user)
            return
        self.log_in(principal)
        self.redirect(next_url)


class LogoutHandler(BaseHandler):
    """``POST /logout``: end the session here and in the browser."""

    open_without_session = True  # an expired session can still clear its cookie

    def post(self) -> None:
        session = self.current_session()
        if session is not None:
            self.server.sessions.revoke(session)
        self.clear_cookie(session_cookie(local_address(self.request)[1]))
        self.redirect("/login")


class NotFoundHandler(BaseHandler):
    """Any other path: 404, with the same headers and Host check as the pages."""

    async def prepare(self) -> None:
        check_host(self.request, self.server.hosts)
        raise tornado.web.HTTPError(404)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code != 404:
            return super().write_error(status_code, **kwargs)
        self.render("error.html", title="Not found", message=f"No page at {self.request.path}.")


class StaticHandler(tornado.web.StaticFileHandler):
    """``/static/``: the scripts and styles, with the pages' security headers."""

    def set_default_headers(self) -> None:
        super().set_default_headers()
        set_security_headers(self)


class DashboardHandler(BaseHandler):
    """``/``: the live panel, counts by status and the submit forms."""

    @tornado.web.authenticated
    async def get(self) -> None:
        await self.show()

    async def show(self, error: str | None = None, status: int = 200) -> None:
        target = self.target
        group_id = await self.target_group()
        admin = self.principal is not None and self.principal.admin
        users = await asyncio.to_thread(_user_names) if admin else []
        self.set_status(status)
        self.render(
            "dashboard.html",
            user=target,
            group_id=group_id,
            read_only=self.read_only,
            error=error,
            users=users,
            viewing_other=target != self.current_user,
        )


class SubmitHandler(DashboardHandler):
    """``POST /submit``: one python or system command as a job."""

    @tornado.web.authenticated
    async def post(self) -> None:
        self.refuse_writes()
        cmd, cmd_type = self.get_argument("cmd", ""), self.get_argument("cmd_type", "python")
        name = self.get_argument("name", "") or f"{self.target}-web-submit"
        try:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(
                _submitter, submit_command, self.target, cmd, cmd_type, name, None
            )
        except MoiError as exc:
            await self.show(error=str(exc), status=400)
            return
        self.redirect(self._back())


class SubmitGroupHandler(DashboardHandler):
    """``POST /submit-group``: a new group holding one job per command line."""

    @tornado.web.authenticated
    async def post(self) -> None:
        self.refuse_writes()
        name = self.get_argument("group_name", "") or "unnamed group"
        cmd_type = self.get_argument("cmd_type", "python")
        cmds = [c for c in self.get_argument("cmds", "").splitlines() if c.strip()]
        try:
            if not cmds:
                raise MoiError("give at least one command, one per line")
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(_submitter, submit_group, self.target, name, cmds, cmd_type)
        except MoiError as exc:
            await self.show(error=str(exc), status=400)
            return
        self.redirect(self._back())


#: Info fields the job page leaves out (internal, or shown elsewhere on it).
HIDDEN_FIELDS = frozenset({"pubsub", "type", "result", "name", "status", "call"})
#: The statuses a group page counts, in its order; a job's own status text counts as Running.
COUNTED = ("Queued", "Running", "Success", "Failed", "Cancelled")


def field_text(value: Any) -> str:
    """An info field as the job page shows it: text as is, nothing for null, JSON otherwise."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def format_seconds(seconds: float) -> str:
    """``< 0.1 s``, ``4.2 s``, ``42 s``, ``3 min 07 s``, ``2 h 05 min`` (as moi_page.js does)."""
    if seconds < 0.1:
        return "< 0.1 s"
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole // 60 % 60:02d} min"


def duration_text(info: dict[str, Any]) -> str:
    """How long a job ran (so far, while it runs); nothing when it never started."""
    from datetime import datetime

    try:
        start = datetime.fromisoformat(info["date_start"]) if info.get("date_start") else None
        end = datetime.fromisoformat(info["date_end"]) if info.get("date_end") else None
    except (TypeError, ValueError):
        return ""
    if start is None or info.get("type") == "group":
        return ""
    return format_seconds(((end or datetime.now()) - start).total_seconds())


def counts_text(children: list[dict[str, Any]]) -> str:
    """``3 jobs: 2 Success, 1 Failed`` for a group's children (and ``, 1 group``)."""
    jobs = [c for c in children if c.get("type") != "group"]
    by_status = dict.fromkeys(COUNTED, 0)
    for child in jobs:
        status = child.get("status")
        by_status[status if status in by_status else "Running"] += 1
    parts = [f"{count} {status}" for status, count in by_status.items() if count]
    text = f"{len(jobs)} job{'s' if len(jobs) != 1 else ''}"
    text += ": " + ", ".join(parts) if parts else ""
    groups = len(children) - len(jobs)
    return text + (f", {groups} group{'s' if groups != 1 else ''}" if groups else "")


def page_result(info: dict[str, Any]) -> str:
    """A job's result as its page shows it: a traceback joined, JSON for data."""
    result = info.get("result")
    failed = is_terminal(info.get("status")) and info["status"] != "Success"
    if isinstance(result, str) or failed:
        return job.result_text(info)
    return json.dumps(result, indent=2)


class NodeHandler(BaseHandler):
    """``/job/<id>`` and ``/group/<id>``: one node of the user's tree, kept live by moi_page.js.

    An id not in the user's tree gets the error page (404).
    """

    @tornado.web.authenticated
    async def get(self, kind: str, node_id: str) -> None:
        group_id, nodes = await self.user_tree()
        info = nodes.get(node_id)
        if info is None or info.get("type") != kind:
            self.set_status(404)
            self.render(
                "error.html",
                title=f"No such {kind}",
                message=f"There is no {kind} {node_id} among the jobs of {self.target}: "
                "it may have been removed, or have expired.",
            )
            return
        page = {
            "user": self.target,
            "info": info,
            "group_id": group_id,
            "read_only": self.read_only,
            "server_now": now(),
        }
        if kind == "job":
            fields = sorted(k for k in info if k not in HIDDEN_FIELDS)
            self.render(
                "job.html",
                fields=fields,
                result_text=page_result(info),
                done=is_terminal(info.get("status")),
                duration=duration_text(info),
                field_text=field_text,
                **page,
            )
        else:
            children = [n for n in nodes.values() if n.get("parent") == node_id]
            children.sort(key=lambda n: n.get("date_created") or "")
            self.render(
                "group.html",
                children=children,
                counts=counts_text(children),
                duration_of=duration_text,
                **page,
            )


class NodesHandler(BaseHandler):
    """``/nodes``: each context's engines, what each runs now, its queue (refreshes itself).

    A job another user runs shows as "another user's job", without id or name
    (an admin sees them all).
    """

    #: Seconds between two refreshes of the page.
    refresh = 3

    @tornado.web.authenticated
    async def get(self) -> None:
        contexts = await asyncio.to_thread(nodes.listing)
        if not (self.principal and self.principal.admin):
            _, mine = await self.user_tree()
            for context in contexts:
                for engine in context["engines"]:
                    running = engine.get("running")
                    if running and running.get("id") not in mine:
                        engine["running"] = {"id": None, "name": "another user's job"}
        query = "" if self.target == self.current_user else "?" + urlencode({"user": self.target})
        self.render("nodes.html", contexts=contexts, refresh=self.refresh, query=query)


class DashboardSocket(MOIMessageHandler):
    """The websocket: a live session of this dashboard only, from its own origin.

    Shows the session's user's tree (an admin's: ``?user=NAME``'s), read-only
    for a read-only key or server.  Closes (1008) when the session is revoked
    (logout) or expires, or its API key is revoked (checked every
    ``key_check_seconds``).
    """

    def initialize(self, server: ServerConfig, **kwargs: Any) -> None:  # type: ignore[override]
        super().initialize(read_only=server.read_only)
        self.server = server
        self.session: dict[str, Any] | None = None
        self.bearer: dict[str, Any] | None = None  # user and key prefix of a Bearer handshake
        self.principal: Principal | None = None
        self._stop_watching: list[Callable[[], None]] = []

    def get_current_user(self) -> str | None:
        return None  # set by prepare, from the session and its key

    async def prepare(self) -> None:  # type: ignore[override]
        check_host(self.request, self.server.hosts)
        if "Authorization" in self.request.headers:
            # a program, not a page (``moi --server URL watch``): a browser's WebSocket
            # cannot send this header, so no page of another site can make such a
            # handshake and the Origin check is not needed; the key is checked instead
            self.principal = await authenticate(self, self.server)
            if self.principal is not None and self.principal.key_prefix:
                self.bearer = {"user": self.principal.user, "key": self.principal.key_prefix}
        else:
            check_same_origin(self.request)
            self.session = read_session(self, self.server.sessions)
            self.principal = await principal_for_session(self.server, self.session)
        if self.principal is not None:
            self.read_only = self.server.read_only or self.principal.read_only
            wanted = self.get_query_argument("user", None)
            if wanted and self.principal.admin:
                await _check_known_user(wanted)
            self.current_user = wanted if wanted and self.principal.admin else self.principal.user
        super().prepare()

    def check_origin(self, origin: str) -> bool:
        return same_origin(origin, self.request)

    async def open(self, *args: Any) -> None:
        if self.session is not None:
            self.watch_session(self.session)
        elif self.bearer is not None:
            self._watch_key()
        await super().open(*args)

    def watch_session(self, session: dict[str, Any]) -> None:
        """Close this socket when ``session`` is revoked or expires, or its key is revoked."""
        sessions = self.server.sessions
        loop = IOLoop.current()
        expiry = loop.call_later(
            max(0.0, sessions.remaining(session)), self.close, 1008, "session expired"
        )
        unwatch = sessions.on_revoke(session, lambda: self.close(1008, "logged out"))
        self._stop_watching = [lambda: loop.remove_timeout(expiry), unwatch]
        if self.server.multi_user:
            self._watch_key()

    def _watch_key(self) -> None:
        """Close this socket (1008) once its API key is revoked (checked periodically)."""
        check = PeriodicCallback(self._check_key, self.server.key_check_seconds * 1000)
        check.start()
        self._stop_watching.append(check.stop)

    async def _check_key(self) -> None:
        try:
            still = await principal_for_session(self.server, self.session or self.bearer)
        except Exception as exc:  # noqa: BLE001 -- Redis away: check again next time
            log.warning("checking a websocket's API key failed: %s", exc)
            return
        if still is None:
            self.close(1008, "API key revoked")

    def on_close(self) -> None:
        for stop in self._stop_watching:
            stop()
        self._stop_watching = []
        super().on_close()


async def _check_known_user(name: str) -> None:
    """400 for a name no user can have, 404 for one moi does not know (nothing is created)."""
    try:
        keys.check_user_name(name)
    except InvalidUserError as exc:
        raise tornado.web.HTTPError(400, str(exc)) from None
    known = await asyncio.to_thread(runtime.redis_client().hexists, keys.USER_ID_MAP, name)
    if not known:
        raise tornado.web.HTTPError(404, f"no user {name!r}")


def _user_names() -> list[str]:
    """Every user name moi knows (for an admin's user picker)."""
    names = [text(n) for n in runtime.redis_client().hkeys(keys.USER_ID_MAP)]
    return sorted(n for n in names if not keys.is_uuid(n))


def check_command(cmd: str, cmd_type: str) -> None:
    """Raise :class:`MoiError` unless ``cmd`` can be submitted as a ``cmd_type`` job."""
    if cmd_type not in ("python", "system"):
        raise MoiError(f"cmd_type must be python or system, not {cmd_type!r}")
    if not cmd.strip():
        raise MoiError("the command is empty")
    if cmd_type == "python":
        job.check_python(cmd)


def submit_command(user: str, cmd: str, cmd_type: str, name: str, parent_id: str | None) -> str:
    """Validate and submit one command for ``user`` (under ``parent_id`` or the user's group)."""
    check_command(cmd, cmd_type)
    return _submit_checked(cmd, cmd_type, name, parent_id or get_id_from_user(user))


def _submit_checked(cmd: str, cmd_type: str, name: str, parent_id: str) -> str:
    func = job.python_call if cmd_type == "python" else job.system_call
    job_id, _, _ = job.submit(None, parent_id, name, None, func, cmd)
    return job_id


def submit_group(user: str, name: str, cmds: list[str], cmd_type: str) -> str:
    """Create a group under ``user``'s tree holding one job per command; return its id."""
    for cmd in cmds:
        check_command(cmd, cmd_type)
    if not resolve(None).client.ids:  # reach the cluster before writing the group
        raise MoiError("the default context has no engines yet; try again in a moment")
    group = create_info(name, "group", parent=get_id_from_user(user), store=True)
    for n, cmd in enumerate(cmds, 1):
        _submit_checked(cmd, cmd_type, f"{name} #{n}", group["id"])
    return group["id"]


def load_cookie_secret(state_dir: Path) -> str:
    """The cookie secret kept in the state directory (sessions still end with the token)."""
    embedded.check_state_dir(state_dir)  # a planted directory's secret would forge logins
    path = state_dir / "cookie_secret"
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return connection.read_private_text(path).strip()


def make_app(
    user: str = "no-user",
    token: str | None = None,
    read_only: bool = False,
    cookie_secret: str | None = None,
    session_hours: float = SESSION_HOURS,
    allowed_hosts: Iterable[str] = (),
    metrics_public: bool = False,
    multi_user: bool = False,
    key_check_seconds: float = 30.0,
) -> tornado.web.Application:
    """Build the dashboard application.

    Parameters
    ----------
    user : str
        Whose jobs the dashboard shows and submits (single-user server).
    token : str, optional
        Login token, at least 16 characters; a random one when omitted (read it
        from ``app.settings['moi_token']``).
    read_only : bool
        Hide and refuse submit, cancel and remove.
    cookie_secret : str, optional
        Secret signing the session cookie; kept in the state directory by default.
    session_hours : float
        How long a login lasts.
    allowed_hosts : iterable of str
        Host names accepted besides the loopback ones on requests reaching a
        loopback address (e.g. the name a reverse proxy forwards).
    metrics_public : bool
        Serve ``/metrics`` without a session or token.
    multi_user : bool
        People log in with their API keys (``moi keys create``) and each sees
        their own tree, admins every tree; ``user`` and ``token`` are not used
        to log in.
    key_check_seconds : float
        How often an open websocket checks that its API key still exists.

    Returns
    -------
    tornado.web.Application

    Raises
    ------
    moi.webauth.TokenError
        If ``token`` is shorter than 16 characters (a :class:`MoiError` and ``ValueError``).
    MoiError
        If ``session_hours`` is not positive.
    """
    if not session_hours > 0:
        raise MoiError(f"session_hours must be positive, not {session_hours!r}")
    token = check_token(token) if token is not None else secrets.token_urlsafe(24)
    secret = cookie_secret or load_cookie_secret(runtime.settings().state_dir)
    server = ServerConfig(
        user=user,
        token=token,
        sessions=Sessions(
            user, token, secret, lifetime=session_hours * 3600, multi_user=multi_user
        ),
        read_only=read_only,
        hosts=LOOPBACK_HOSTS | {host_name(h) for h in allowed_hosts},
        multi_user=multi_user,
        key_check_seconds=key_check_seconds,
    )
    page = {"server": server}
    return tornado.web.Application(
        [
            (r"/", DashboardHandler, page),
            (r"/login", LoginHandler, page),
            (r"/logout", LogoutHandler, page),
            (r"/submit", SubmitHandler, page),
            (r"/submit-group", SubmitGroupHandler, page),
            (r"/(job|group)/([A-Za-z0-9_.:-]{1,128})", NodeHandler, page),
            (r"/nodes", NodesHandler, page),
            (r"/moi-ws/", DashboardSocket, page),
            (r"/metrics", web_watch.MetricsHandler, {**page, "public": metrics_public}),
            (r"/log/([A-Za-z0-9_.-]{1,128})", web_watch.LogPageHandler, page),
            *api.handlers(server),
        ],
        template_path=str(_HERE / "templates"),
        static_path=str(_HERE / "static"),
        static_handler_class=StaticHandler,
        default_handler_class=NotFoundHandler,
        default_handler_args=page,
        cookie_secret=secret,
        xsrf_cookies=True,  # makes Tornado call BaseHandler.check_xsrf_cookie on POSTs
        websocket_max_message_size=MAX_MESSAGE_SIZE,
        moi_token=token,
    )


def start_watchdog() -> PeriodicCallback:
    """Sweep expired leases from the server's loop (the server owns the never-stuck rule)."""

    async def sweep() -> None:
        try:
            await asyncio.to_thread(watchdog.sweep, runtime.store())
        except Exception as exc:  # noqa: BLE001 -- keep serving whatever Redis does
            watchdog.log.warning("sweep failed: %s", exc)

    callback = PeriodicCallback(sweep, watchdog.SWEEP_INTERVAL * 1000)
    callback.start()
    return callback


async def serve(
    host: str,
    port: int,
    user: str,
    token: str | None,
    read_only: bool,
    session_hours: float = SESSION_HOURS,
    allowed_hosts: Iterable[str] = (),
    behind_proxy: bool = False,
    metrics_public: bool = False,
    multi_user: bool | None = None,
) -> None:
    """Run the dashboard until cancelled, printing its login URL.

    ``behind_proxy`` trusts ``X-Forwarded-For``/``X-Forwarded-Proto`` (a
    reverse proxy terminating TLS): client addresses for the login limit and
    the ``https`` origin come from them.  ``multi_user`` (by default: no
    ``token`` given and API keys exist) serves every user with a key.
    """
    if multi_user is None:
        multi_user = token is None and await asyncio.to_thread(auth.any_keys)
    if multi_user and user != "no-user":
        log.warning("--user %r is not used: each person logs in with their own API key", user)
    app = make_app(
        user=user,
        token=token,
        read_only=read_only,
        session_hours=session_hours,
        allowed_hosts=allowed_hosts,
        metrics_public=metrics_public,
        multi_user=multi_user,
    )
    sockets = bind_sockets(port, address=host)
    port = sockets[0].getsockname()[1]  # the one picked when asked for port 0
    server = HTTPServer(app, xheaders=behind_proxy)
    server.add_sockets(sockets)
    start_watchdog()
    # trees written by moi 1.0 get their creation indexes, so GET /api/v1/jobs lists them
    background(listing.reindex_users(get_relay().store), "indexing older jobs")
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else f"[{host}]" if ":" in host else host
    if multi_user:
        print(
            f"moi serve: every user with an API key, at http://{shown}:{port}/login "
            "(make keys with moi keys create --user NAME)",
            flush=True,
        )
    else:
        print(
            f"moi serve: jobs of user {user!r} at "
            f"http://{shown}:{port}/?token={app.settings['moi_token']}",
            flush=True,
        )
    try:
        await asyncio.Event().wait()
    finally:
        server.stop()
