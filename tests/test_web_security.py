"""The dashboard against other local users and other sites or ports in the same browser.

Real HTTP and websockets against ``make_app`` (Tornado's test server) and
against ``moi serve`` run as a process; real Redis and cluster (``moi_env``).

1. the token: not on the command line (a warning), from ``$MOI_TOKEN`` or a
   private ``--token-file``, 16 characters at least;
2. sessions: bound to the server's token and port, 12 h, ``/logout``,
   Content-Security-Policy and friends on every page;
3. CSRF: ``Origin`` (port included) and ``Sec-Fetch-Site`` on every POST and
   websocket handshake, XSRF tokens derived from the session;
4. DNS rebinding (loopback ``Host`` names only) and login rate limits;
5. the login's ``next`` stays on this site.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from click.testing import CliRunner
from support import wait_until_listening
from test_web import SECRET, DashboardCase
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.web import create_signed_value
from tornado.websocket import WebSocketClientConnection, websocket_connect

from moi import redis_server
from moi.cli import main
from moi.errors import MoiError
from moi.web import make_app
from moi.webauth import LoginLimiter, Sessions, TokenError

TIMEOUT = 10
TOKEN = "a-long-enough-token-0123456789"


# -- helpers ------------------------------------------------------------------------------
class SecurityCase(DashboardCase):
    """Websocket helpers over :class:`test_web.DashboardCase`."""

    def ws_headers(self, cookie: str | None = None, **extra: str) -> dict[str, str]:
        """Headers of a websocket handshake from the dashboard's own page."""
        return {"Cookie": cookie or self.cookies(), "Origin": self.origin, **extra}

    def ws_open(self, headers: dict[str, str]) -> WebSocketClientConnection:
        url = f"ws://127.0.0.1:{self.get_http_port()}/moi-ws/"
        return self.io_loop.run_sync(
            lambda: websocket_connect(HTTPRequest(url, headers=headers)), timeout=TIMEOUT
        )

    def ws_refused(self, headers: dict[str, str]) -> int:
        """The HTTP status refusing a handshake with ``headers`` (fails if it opens)."""
        try:
            conn = self.ws_open(headers)
        except HTTPClientError as exc:
            return exc.code
        conn.close()
        raise AssertionError("the websocket opened")

    def ws_closed(self, conn: WebSocketClientConnection) -> tuple[int | None, str | None]:
        """Read until the server closes ``conn`` (at most TIMEOUT s); its close code and reason."""

        async def drain() -> None:
            while await conn.read_message() is not None:
                pass

        self.io_loop.run_sync(drain, timeout=TIMEOUT)
        return conn.close_code, conn.close_reason

    def page_status(self, cookie: str) -> int:
        """200 if ``cookie`` opens the dashboard, 302 (to the login) if not."""
        return self.fetch("/", headers={"Cookie": cookie}, follow_redirects=False).code

    def log_in_form(self, token: str, headers: dict[str, str] | None = None, **fields: str) -> Any:
        """POST the login form from the dashboard's own origin (``headers`` override)."""
        return self.fetch(
            "/login",
            method="POST",
            body=urlencode({"token": token, **fields}),
            headers={"Origin": self.origin, **(headers or {})},
            follow_redirects=False,
        )


@dataclass
class Served:
    """A running ``moi serve`` process."""

    port: int
    proc: subprocess.Popen[bytes]
    stderr: Path

    def get(self, path: str, cookie: str | None = None, **headers: str) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        conn.request("GET", path, headers={**headers, **({"Cookie": cookie} if cookie else {})})
        response = conn.getresponse()
        response.read()
        conn.close()
        return response

    def log_in(self, token: str) -> str | None:
        """The ``Cookie`` header the token URL sets, or None if it set none."""
        found = self.get(f"/?token={quote(token)}").getheader("Set-Cookie")
        return found.split(";", 1)[0] if found else None

    def warnings(self) -> str:
        return self.stderr.read_text(errors="replace")


@contextmanager
def moi_serve(tmp_path: Path, *args: str, port: int | None = None, **env: str) -> Iterator[Served]:
    """``moi serve ARGS`` on a free port (or ``port``) while the block runs.

    ``env`` is added to the environment, which otherwise has no ``$MOI_TOKEN``.
    """
    port = port or redis_server.free_port()
    out, err = tmp_path / f"serve-{port}.out", tmp_path / f"serve-{port}-{time.time_ns()}.err"
    environ = {k: v for k, v in os.environ.items() if k != "MOI_TOKEN"} | env
    with out.open("ab") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moi.cli", "serve", "--port", str(port), *args],
            stdout=stdout,
            stderr=stderr,
            env=environ,
            cwd="/",
        )
    try:
        wait_until_listening(port, proc, lambda: out.read_text() + err.read_text())
        yield Served(port, proc, err)
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def refusing(moi_env: dict[str, str]) -> Iterator[list[str]]:
    """``moi serve`` options on a port already taken: a check that lets a bad token through
    fails fast ("cannot listen") instead of serving."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        yield ["serve", "--port", str(taken.getsockname()[1])]


def private_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


# -- 1. the token -------------------------------------------------------------------------
def test_token_on_the_command_line_still_works_and_warns_about_ps(moi_env, user, tmp_path):
    with moi_serve(tmp_path, "--user", user, "--token", TOKEN) as served:
        assert served.log_in(TOKEN) is not None
    assert "visible to other users" in served.warnings()
    assert "MOI_TOKEN" in served.warnings() and "--token-file" in served.warnings()


def test_token_from_the_environment_or_a_private_file_gives_no_warning(moi_env, user, tmp_path):
    with moi_serve(tmp_path, "--user", user, MOI_TOKEN=TOKEN) as served:
        assert served.log_in(TOKEN) is not None
    assert served.warnings() == ""

    from_file = "token-from-the-file-0123456789"
    path = private_file(tmp_path / "token", f"{from_file}\n")
    with moi_serve(tmp_path, "--user", user, "--token-file", str(path), MOI_TOKEN=TOKEN) as served:
        assert served.log_in(from_file) is not None  # the file wins over $MOI_TOKEN
        assert served.log_in(TOKEN) is None
    assert served.warnings() == ""


def test_token_files_open_to_others_or_not_regular_are_refused(tmp_path, refusing):
    readable = private_file(tmp_path / "readable", TOKEN, 0o640)
    writable = private_file(tmp_path / "writable", TOKEN, 0o602)
    empty = private_file(tmp_path / "empty", "")
    link = tmp_path / "link"
    link.symlink_to(private_file(tmp_path / "target", TOKEN))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    for path, says in (
        (readable, "chmod 600"),
        (writable, "chmod 600"),
        (fifo, "regular file"),
        (link, "symbolic link"),
        (empty, "empty"),
        (tmp_path / "missing", "No such file"),
    ):
        result = CliRunner().invoke(main, [*refusing, "--token-file", str(path)])
        assert result.exit_code == 1, (path, result.output)
        assert says in result.output and "Traceback" not in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_short_tokens_and_two_token_sources_are_refused(tmp_path, refusing):
    for args, env in (
        (["--token", "short"], {}),
        ([], {"MOI_TOKEN": "fifteen-chars!!"}),
        (["--token-file", str(private_file(tmp_path / "t", "short"))], {}),
    ):
        result = CliRunner().invoke(main, [*refusing, *args], env=env)
        assert result.exit_code == 1, result.output
        assert "at least 16" in result.output, result.output
    both = ["--token", TOKEN, "--token-file", str(private_file(tmp_path / "u", TOKEN))]
    result = CliRunner().invoke(main, [*refusing, *both])
    assert result.exit_code == 2 and "not both" in result.output, result.output


def test_make_app_refuses_short_tokens():
    for token in ("", "short", "x" * 15):
        with pytest.raises(TokenError, match="at least 16"):
            make_app("u", token, cookie_secret=SECRET)
    assert issubclass(TokenError, ValueError) and issubclass(TokenError, MoiError)
    assert make_app("u", "x" * 16, cookie_secret=SECRET).settings["moi_token"] == "x" * 16


# -- 2. sessions --------------------------------------------------------------------------
class TestSessions(SecurityCase):
    def test_the_cookie_is_httponly_strict_and_lasts_twelve_hours(self) -> None:
        response = self.fetch(f"/?token={self.token}", follow_redirects=False)
        (header,) = response.headers.get_list("Set-Cookie")
        assert header.startswith(f"{self.cookie_name}=")
        assert "HttpOnly" in header and "SameSite=Strict" in header
        expires = parsedate_to_datetime(re.search(r"expires=([^;]+)", header).group(1))
        assert abs(expires.timestamp() - (time.time() + 12 * 3600)) < 300
        payload = self.payload(header.split(";", 1)[0])
        assert set(payload) == {"user", "sid", "iat", "fp"} and payload["user"] == self.user
        assert self.token not in header and self.token not in str(payload)

    def test_sessions_expire_after_twelve_hours(self) -> None:
        now = int(time.time())
        assert self.page_status(self.forged(iat=now - 11 * 3600)) == 200
        assert self.page_status(self.forged(iat=now - 12 * 3600 - 60)) == 302
        assert self.page_status(self.forged(iat=now + 3600)) == 302  # not from the future
        assert self.ws_refused(self.ws_headers(self.forged(iat=now - 13 * 3600))) == 403

    def test_a_cookie_for_another_token_or_port_is_refused(self) -> None:
        port = self.get_http_port()
        own = Sessions(self.user, self.token, SECRET)
        assert self.payload(self.cookies())["fp"] == own.fingerprint(port)
        assert self.page_status(self.cookies()) == 200
        other_token = Sessions(self.user, "another-token-0123456789", SECRET)
        assert self.page_status(self.forged(fp=other_token.fingerprint(port))) == 302
        assert self.page_status(self.forged(fp=own.fingerprint(port + 1))) == 302
        assert self.page_status(self.forged(sid=7)) == 302  # malformed
        assert self.page_status(self.forged(iat="0")) == 302
        assert self.page_status(self.forged(extra=1)) == 302

    def test_the_old_user_cookie_logs_nobody_in(self) -> None:
        legacy = f"user={create_signed_value(SECRET, 'user', self.user).decode()}"
        assert self.page_status(legacy) == 302
        assert self.ws_refused(self.ws_headers(legacy)) == 403

    def test_logout_revokes_the_session_and_clears_the_cookie(self) -> None:
        cookie, xsrf = self.session()
        other_cookie, _ = self.log_in()
        page = self.fetch("/", headers={"Cookie": cookie}).body.decode()
        form = re.search(r'<form method="post" action="/logout"[^>]*>\s*(<input[^>]*>)', page)
        assert form and f'value="{xsrf}"' in form.group(1)  # the header's logout button

        response = self.post("/logout", {})
        assert response.code == 302 and response.headers["Location"] == "/login"
        cleared = response.headers["Set-Cookie"]
        assert cleared.startswith(f'{self.cookie_name}=""')
        expires = parsedate_to_datetime(re.search(r"expires=([^;]+)", cleared).group(1))
        assert expires.timestamp() < time.time()
        assert self.page_status(cookie) == 302
        assert self.ws_refused(self.ws_headers(cookie)) == 403
        assert self.post("/submit", {"cmd": "return 1"}).code == 403
        assert self.page_status(other_cookie) == 200  # other sessions live on

    def test_logout_needs_the_sessions_xsrf_token_and_origin(self) -> None:
        assert self.post("/logout", {}, xsrf=False).code == 403
        other = "http://127.0.0.1:1"
        assert self.post("/logout", {}, headers={"Origin": other}).code == 403
        assert self.page_status(self.cookies()) == 200

    def test_logout_and_expiry_close_open_websockets(self) -> None:
        conn = self.ws_open(self.ws_headers())
        assert self.post("/logout", {}).code == 302
        assert self.ws_closed(conn) == (1008, "logged out")

        self._session = self.log_in()
        almost_over = int(time.time()) - 12 * 3600 + 2  # one or two seconds left
        conn = self.ws_open(self.ws_headers(self.forged(iat=almost_over)))
        assert self.ws_closed(conn) == (1008, "session expired")

    def test_every_response_carries_the_security_headers(self) -> None:
        cookie = {"Cookie": self.cookies()}
        port = self.get_http_port()
        responses = {
            "/": self.fetch("/", headers=cookie),
            "/login": self.fetch("/login"),
            "missing job": self.fetch("/job/nope", headers=cookie),
            "no such page": self.fetch("/nope"),
            "refused post": self.post("/submit", {}, xsrf=False),
            "static": self.fetch("/static/moi.js"),
        }
        for what, response in responses.items():
            headers = response.headers
            assert headers.get("X-Content-Type-Options") == "nosniff", what
            if what == "static":
                continue
            csp = headers.get("Content-Security-Policy", "")
            for directive in (
                "default-src 'self'",
                "frame-ancestors 'none'",
                "base-uri 'none'",
                "form-action 'self'",
                "object-src 'none'",
                f"connect-src 'self' ws://127.0.0.1:{port} wss://127.0.0.1:{port}",
            ):
                assert directive in csp, (what, csp)
            assert headers.get("X-Frame-Options") == "DENY", what
            assert headers.get("Referrer-Policy") == "same-origin", what

    def test_inline_scripts_carry_the_nonce_of_their_response(self) -> None:
        nonces = []
        for _ in range(2):
            response = self.fetch("/", headers={"Cookie": self.cookies()})
            nonce = re.search(r"'nonce-([^']+)'", response.headers["Content-Security-Policy"])
            assert nonce
            nonces.append(nonce.group(1))
            inline = re.findall(r"<script(?![^>]*\bsrc=)([^>]*)>", response.body.decode())
            assert inline and all(f'nonce="{nonce.group(1)}"' in attrs for attrs in inline)
        assert nonces[0] != nonces[1]


class TestShortSessions(SecurityCase):
    session_hours = 0.5

    def test_session_hours_sets_the_lifetime(self) -> None:
        now = int(time.time())
        assert self.page_status(self.forged(iat=now - 20 * 60)) == 200
        assert self.page_status(self.forged(iat=now - 40 * 60)) == 302
        response = self.fetch(f"/?token={self.token}", follow_redirects=False)
        expires = re.search(r"expires=([^;]+)", response.headers["Set-Cookie"]).group(1)
        assert abs(parsedate_to_datetime(expires).timestamp() - (time.time() + 1800)) < 300


def test_a_session_works_only_on_the_server_and_token_that_issued_it(moi_env, user, tmp_path):
    other_token = "the-other-token-0123456789"
    with moi_serve(tmp_path, "--user", user, MOI_TOKEN=TOKEN) as first:
        cookie = first.log_in(TOKEN)
        assert cookie and first.get("/", cookie).status == 200
        with moi_serve(tmp_path, "--user", user, MOI_TOKEN=TOKEN) as second:  # same state dir
            assert second.get("/", cookie).status == 302
            renamed = cookie.replace(f"-{first.port}=", f"-{second.port}=")
            assert second.get("/", renamed).status == 302
    with moi_serve(tmp_path, "--user", user, port=first.port, MOI_TOKEN=other_token) as changed:
        assert changed.get("/", cookie).status == 302  # the token changed
    with moi_serve(tmp_path, "--user", user, port=first.port, MOI_TOKEN=TOKEN) as same:
        assert same.get("/", cookie).status == 200  # a restart with the same token and port


class TestBehindProxy(SecurityCase):
    """Behind a TLS reverse proxy (``moi serve --behind-proxy``: Tornado's ``xheaders``)."""

    def get_httpserver_options(self) -> dict[str, Any]:
        return {"xheaders": True}

    def test_https_origin_secure_cookie_and_per_client_limits(self) -> None:
        https = {"X-Forwarded-Proto": "https"}
        response = self.fetch(f"/?token={self.token}", headers=https, follow_redirects=False)
        assert "Secure" in response.headers["Set-Cookie"]
        origin = f"https://127.0.0.1:{self.get_http_port()}"
        assert self.log_in_form(self.token, {**https, "Origin": origin}).code == 302
        assert self.log_in_form(self.token, https).code == 403  # an http:// origin
        for n in range(10):
            assert self.log_in_form(f"wrong-{n}", {"X-Real-IP": "192.0.2.1"}).code == 403
        assert self.log_in_form(self.token, {"X-Real-IP": "192.0.2.1"}).code == 429
        assert self.log_in_form(self.token, {"X-Real-IP": "192.0.2.2"}).code == 302


def test_serve_behind_proxy_trusts_forwarded_headers_only_when_asked(moi_env, user, tmp_path):
    https = {"X-Forwarded-Proto": "https"}
    with moi_serve(tmp_path, "--user", user, "--behind-proxy", MOI_TOKEN=TOKEN) as served:
        assert "Secure" in served.get(f"/?token={TOKEN}", **https).getheader("Set-Cookie")
    with moi_serve(tmp_path, "--user", user, MOI_TOKEN=TOKEN) as served:
        assert "Secure" not in served.get(f"/?token={TOKEN}", **https).getheader("Set-Cookie")


# -- 3. CSRF from other origins -------------------------------------------------------------
class TestCrossOrigin(SecurityCase):
    def refused_everywhere(self, headers: dict[str, str]) -> None:
        before = self.tree_ids()
        assert self.post("/submit", {"cmd": "return 1"}, headers=headers).code == 403, headers
        assert self.post("/submit-group", {"cmds": "return 1"}, headers=headers).code == 403
        assert self.post("/logout", {}, headers=headers).code == 403
        login = self.log_in_form(self.token, headers)
        assert login.code == 403 and "Set-Cookie" not in login.headers, headers
        assert self.ws_refused(self.ws_headers(**headers)) == 403, headers
        assert self.tree_ids() == before and self.page_status(self.cookies()) == 200

    def test_requests_from_other_origins_are_refused(self) -> None:
        port = self.get_http_port()
        for origin in (
            f"http://127.0.0.1:{port + 1}",  # another port on the same host
            f"http://localhost:{port}",
            f"https://127.0.0.1:{port}",
            "http://127.0.0.1",
            "http://evil.example",
            "null",
            f"http://127.0.0.1:{port}/path",
        ):
            self.refused_everywhere({"Origin": origin})

    def test_cross_site_and_same_site_fetches_are_refused(self) -> None:
        for site in ("same-site", "cross-site"):
            self.refused_everywhere({"Sec-Fetch-Site": site})

    def test_requests_without_an_origin_are_refused(self) -> None:
        before = self.tree_ids()
        cookie, xsrf = self.session()
        response = self.fetch(
            "/submit",
            method="POST",
            body=urlencode({"cmd": "return 1", "_xsrf": xsrf}),
            headers={"Cookie": cookie},
            follow_redirects=False,
        )
        assert response.code == 403
        assert self.ws_refused({"Cookie": cookie}) == 403
        assert self.tree_ids() == before

    def test_same_origin_requests_pass(self) -> None:
        same = {"Sec-Fetch-Site": "same-origin"}
        response = self.post("/submit", {"cmd": "return 1", "name": "same"}, headers=same)
        assert response.code == 302
        self.ws_open(self.ws_headers(**same)).close()
        assert self.log_in_form(self.token, same).code == 302

    def test_a_planted_xsrf_cookie_does_not_help(self) -> None:
        before = self.tree_ids()
        planted = "2|abcdef12|0123456789abcdef0123456789abcdef|1700000000"
        for token in (planted, "0123456789abcdef0123456789abcdef"):
            cookie = f"{self.cookies()}; _xsrf={token}"
            response = self.fetch(
                "/submit",
                method="POST",
                body=urlencode({"cmd": "return 1", "_xsrf": token}),
                headers={"Cookie": cookie, "Origin": self.origin},
                follow_redirects=False,
            )
            assert response.code == 403
        assert self.tree_ids() == before

    def test_the_xsrf_token_of_another_session_is_refused(self) -> None:
        before = self.tree_ids()
        mine, other = self.session(), self.log_in()
        assert mine[1] != other[1]
        fields = {"cmd": "return 1", "_xsrf": other[1]}
        assert self.post("/submit", fields, xsrf=False).code == 403
        assert self.tree_ids() == before
        assert self.post("/submit", {"cmd": "return 1"}).code == 302


# -- 4. DNS rebinding and guessing ------------------------------------------------------------
class TestHostNames(SecurityCase):
    allowed_hosts = ("moi.lab.example",)

    def host_status(self, host: str, path: str = "/login") -> int:
        return self.fetch(path, headers={"Host": host}, follow_redirects=False).code

    def test_loopback_and_allowed_names_are_accepted(self) -> None:
        port = self.get_http_port()
        for host in (
            "localhost",
            f"localhost:{port}",
            "127.0.0.1",
            f"127.0.0.1:{port}",
            "[::1]",
            f"[::1]:{port}",
            "::1",
            f"LocalHost:{port}",
            f"moi.lab.example:{port}",
        ):
            assert self.host_status(host) == 200, host

    def test_other_names_are_refused_on_pages_forms_and_the_websocket(self) -> None:
        port = self.get_http_port()
        cookie = self.cookies()
        for host in (f"evil.example:{port}", "evil.example", "127.0.0.2", "localhost."):
            assert self.host_status(host) == 403, host
            assert self.host_status(host, f"/?token={self.token}") == 403, host
            assert self.fetch("/", headers={"Host": host, "Cookie": cookie}).code == 403
            assert self.fetch("/nope", headers={"Host": host}).code == 403
            origin = {"Host": host, "Origin": f"http://{host}"}
            assert self.log_in_form(self.token, origin).code == 403, host
            assert self.ws_refused(self.ws_headers(**origin)) == 403, host


class TestLoginLimit(SecurityCase):
    def locked_out(self, response: Any) -> None:
        assert response.code == 429, response.code
        assert 1 <= int(response.headers["Retry-After"]) <= 60
        assert "Set-Cookie" not in response.headers

    def test_ten_failed_logins_lock_the_address_out_even_for_the_right_token(self) -> None:
        for n in range(10):
            assert self.log_in_form(f"wrong-{n}").code == 403
        self.locked_out(self.log_in_form(self.token))
        self.locked_out(self.fetch(f"/?token={self.token}", follow_redirects=False))
        assert self.log_in_form("wrong again").code == 429

    def test_failed_token_urls_count_too(self) -> None:
        for n in range(9):
            response = self.fetch(f"/?token=wrong-{n}", follow_redirects=False)
            assert response.code == 302 and "/login" in response.headers["Location"]
        assert self.log_in_form("one more").code == 403
        self.locked_out(self.fetch(f"/?token={self.token}", follow_redirects=False))

    def test_right_tokens_are_not_counted(self) -> None:
        for _ in range(12):
            assert self.log_in_form(self.token).code == 302


def test_a_lockout_ends_when_the_oldest_failure_is_a_minute_old():
    now = [1000.0]
    limiter = LoginLimiter(clock=lambda: now[0])
    for _ in range(10):
        assert limiter.retry_after("a") == 0
        limiter.failed("a")
        now[0] += 1
    assert limiter.retry_after("a") == 50  # failures at 1000..1009, now 1010
    assert limiter.retry_after("b") == 0  # per address
    now[0] = 1059.5
    assert limiter.retry_after("a") == 1
    now[0] = 1060.0  # the first failure is a minute old: nine remain
    assert limiter.retry_after("a") == 0
    limiter.failed("a")
    assert limiter.retry_after("a") == 1  # the second failure (1001) ages out next
    now[0] = 2000.0
    assert limiter.retry_after("a") == 0 and "a" not in limiter.failures


# -- 5. where the login sends you --------------------------------------------------------------
class TestNext(SecurityCase):
    UNSAFE = (
        "/\\evil.example",
        "/%5Cevil.example",
        "/%5cevil.example",
        "/%2F%2Fevil.example",
        "/%2f/evil.example",
        "/%09/evil.example",
        "/\t/evil.example",
        "/\n/evil.example",
        "/ /evil.example",
        "//evil.example",
        "///evil.example",
        "\\\\evil.example",
        "https://evil.example/",
        "javascript:alert(1)",
        "job/x",
        "/job/x\\",
        "/job/%00x",
        "",
    )

    def test_unsafe_next_urls_become_the_dashboard(self) -> None:
        for unsafe in self.UNSAFE:
            response = self.log_in_form(self.token, next=unsafe)
            assert response.code == 302 and response.headers["Location"] == "/", repr(unsafe)
            page = self.fetch(f"/login?{urlencode({'next': unsafe})}").body.decode()
            assert 'name="next" value="/"' in page, repr(unsafe)

    def test_paths_on_this_site_are_kept(self) -> None:
        for safe in ("/", "/job/abc-1", "/group/g?x=1&y=2", "/job/a%2Db"):
            response = self.log_in_form(self.token, next=safe)
            assert response.headers["Location"] == safe, safe
