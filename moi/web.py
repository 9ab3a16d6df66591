"""``moi serve``: a Tornado dashboard with the live job panel, and ``make_app``.

Login works like Jupyter's: the server prints a URL carrying a token;
opening it sets the secure cookie ``user`` (the same cookie the websocket
reads), and without it every page redirects to ``/login`` and the websocket
is refused.  ``read_only`` hides and refuses submit, cancel and remove.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import tornado.web
from tornado.ioloop import PeriodicCallback

from moi import job, runtime, watchdog
from moi.context import resolve
from moi.errors import MoiError
from moi.group import create_info, get_id_from_user
from moi.status import is_terminal
from moi.websocket import MAX_MESSAGE_SIZE, MOIMessageHandler

_HERE = Path(__file__).parent
#: One thread submits jobs: the ipyparallel client is not thread-safe.
_submitter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moi-submit")


@dataclass(frozen=True)
class ServerConfig:
    """What a dashboard serves: whose jobs, behind which token, writable or not."""

    user: str
    token: str
    read_only: bool = False


class BaseHandler(tornado.web.RequestHandler):
    """Token login and the current user, shared by every page."""

    def initialize(self, server: ServerConfig) -> None:
        self.server = server

    def get_current_user(self) -> str | None:
        cookie = self.get_secure_cookie("user")
        user = cookie.decode() if cookie else None
        return user if user == self.server.user else None

    def prepare(self) -> None:
        token = self.get_query_argument("token", None)
        if token is not None and self.token_ok(token):
            self.log_in()
            rest = {k: v[-1] for k, v in self.request.query_arguments.items() if k != "token"}
            query = urlencode({k: v.decode() for k, v in rest.items()})
            self.redirect(self.request.path + (f"?{query}" if query else ""))

    def token_ok(self, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self.server.token.encode())

    def log_in(self) -> None:
        self.set_secure_cookie("user", self.server.user, httponly=True, samesite="Strict")

    def get_login_url(self) -> str:
        return "/login"

    async def user_tree(self) -> tuple[str, dict[str, dict[str, Any]]]:
        """The user's group id and every node of the user's tree by id."""
        group_id = await asyncio.to_thread(get_id_from_user, self.server.user)
        nodes = await asyncio.to_thread(runtime.store().tree, group_id)
        return group_id, {info["id"]: info for info in nodes}


class LoginHandler(BaseHandler):
    """``/login``: a form asking for the token."""

    def get(self) -> None:
        self.render("login.html", next=_safe_next(self.get_argument("next", "/")), error=None)

    def post(self) -> None:
        next_url = _safe_next(self.get_argument("next", "/"))
        if not self.token_ok(self.get_argument("token", "")):
            self.set_status(403)
            self.render("login.html", next=next_url, error="Wrong token.")
            return
        self.log_in()
        self.redirect(next_url)


class DashboardHandler(BaseHandler):
    """``/``: the live panel, counts by status and the submit forms."""

    @tornado.web.authenticated
    async def get(self) -> None:
        await self.show()

    async def show(self, error: str | None = None, status: int = 200) -> None:
        group_id = await asyncio.to_thread(get_id_from_user, self.server.user)
        self.set_status(status)
        self.render(
            "dashboard.html",
            user=self.server.user,
            group_id=group_id,
            read_only=self.server.read_only,
            error=error,
        )


class SubmitHandler(DashboardHandler):
    """``POST /submit``: one python or system command as a job."""

    @tornado.web.authenticated
    async def post(self) -> None:
        if self.server.read_only:
            raise tornado.web.HTTPError(403, "read-only server")
        cmd, cmd_type = self.get_argument("cmd", ""), self.get_argument("cmd_type", "python")
        name = self.get_argument("name", "") or f"{self.server.user}-web-submit"
        try:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(
                _submitter, submit_command, self.server.user, cmd, cmd_type, name, None
            )
        except MoiError as exc:
            await self.show(error=str(exc), status=400)
            return
        self.redirect("/")


class SubmitGroupHandler(DashboardHandler):
    """``POST /submit-group``: a new group holding one job per command line."""

    @tornado.web.authenticated
    async def post(self) -> None:
        if self.server.read_only:
            raise tornado.web.HTTPError(403, "read-only server")
        name = self.get_argument("group_name", "") or "unnamed group"
        cmd_type = self.get_argument("cmd_type", "python")
        cmds = [c for c in self.get_argument("cmds", "").splitlines() if c.strip()]
        try:
            if not cmds:
                raise MoiError("give at least one command, one per line")
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(
                _submitter, submit_group, self.server.user, name, cmds, cmd_type
            )
        except MoiError as exc:
            await self.show(error=str(exc), status=400)
            return
        self.redirect("/")


class NodeHandler(BaseHandler):
    """``/job/<id>`` and ``/group/<id>``: one node of the user's tree."""

    @tornado.web.authenticated
    async def get(self, kind: str, node_id: str) -> None:
        _, nodes = await self.user_tree()
        info = nodes.get(node_id)
        if info is None or info.get("type") != kind:
            raise tornado.web.HTTPError(404, f"no {kind} {node_id} in your tree")
        if kind == "job":
            self.render(
                "job.html",
                user=self.server.user,
                info=info,
                result_text=job.result_text(info),
                done=is_terminal(info.get("status")),
            )
        else:
            children = [n for n in nodes.values() if n.get("parent") == node_id]
            children.sort(key=lambda n: n.get("date_created") or "")
            self.render("group.html", user=self.server.user, info=info, children=children)


class DashboardSocket(MOIMessageHandler):
    """The websocket, bound to the dashboard's single user."""

    def initialize(self, server: ServerConfig, **kwargs: Any) -> None:  # type: ignore[override]
        super().initialize(read_only=server.read_only)
        self.server = server

    def get_current_user(self) -> str | None:
        user = super().get_current_user()
        return user if user == self.server.user else None


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


def _safe_next(url: str) -> str:
    return url if url.startswith("/") and not url.startswith("//") else "/"


def load_cookie_secret(state_dir: Path) -> str:
    """The cookie secret kept in the state directory, so logins survive restarts."""
    path = state_dir / "cookie_secret"
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path.read_text().strip()


def make_app(
    user: str = "no-user",
    token: str | None = None,
    read_only: bool = False,
    cookie_secret: str | None = None,
) -> tornado.web.Application:
    """Build the dashboard application.

    Parameters
    ----------
    user : str
        Whose jobs the dashboard shows and submits.
    token : str, optional
        Login token; a random one when omitted (read it from ``app.settings['moi_token']``).
    read_only : bool
        Hide and refuse submit, cancel and remove.
    cookie_secret : str, optional
        Secret signing the ``user`` cookie; kept in the state directory by default.

    Returns
    -------
    tornado.web.Application
    """
    server = ServerConfig(user=user, token=token or secrets.token_urlsafe(24), read_only=read_only)
    page = {"server": server}
    return tornado.web.Application(
        [
            (r"/", DashboardHandler, page),
            (r"/login", LoginHandler, page),
            (r"/submit", SubmitHandler, page),
            (r"/submit-group", SubmitGroupHandler, page),
            (r"/(job|group)/([A-Za-z0-9_.:-]{1,128})", NodeHandler, page),
            (r"/moi-ws/", DashboardSocket, page),
        ],
        template_path=str(_HERE / "templates"),
        static_path=str(_HERE / "static"),
        cookie_secret=cookie_secret or load_cookie_secret(runtime.settings().state_dir),
        xsrf_cookies=True,
        websocket_max_message_size=MAX_MESSAGE_SIZE,
        moi_token=server.token,
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


async def serve(host: str, port: int, user: str, token: str | None, read_only: bool) -> None:
    """Run the dashboard until cancelled, printing its login URL."""
    app = make_app(user=user, token=token, read_only=read_only)
    server = app.listen(port, address=host)
    start_watchdog()
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
    print(
        f"moi serve: jobs of user {user!r} at http://{shown}:{port}/?token={app.settings['moi_token']}",
        flush=True,
    )
    try:
        await asyncio.Event().wait()
    finally:
        server.stop()
