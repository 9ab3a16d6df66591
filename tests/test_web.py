"""The dashboard's pages and forms over HTTP (moi.web.make_app, real Redis and cluster).

Bad form input gets a 400 page saying what is wrong and writes nothing;
a read-only server and a missing XSRF token get 403; pages show only the
logged-in user's nodes.
"""

from __future__ import annotations

import json
import re
import secrets
import uuid
from typing import Any
from urllib.parse import urlencode

import pytest
from tornado.httpclient import HTTPResponse
from tornado.testing import AsyncHTTPTestCase
from tornado.web import Application, create_signed_value, decode_signed_value

from moi import runtime
from moi.group import create_info, get_id_from_user
from moi.web import make_app

SECRET = "web-test-secret"


@pytest.mark.usefixtures("moi_env")
class DashboardCase(AsyncHTTPTestCase):
    """A dashboard on a free port; ``session()`` logs in through the token URL like a browser."""

    read_only = False
    session_hours = 12.0
    allowed_hosts: tuple[str, ...] = ()

    def get_app(self) -> Application:
        self.user = f"web-{uuid.uuid4().hex[:8]}"
        self.token = secrets.token_urlsafe(24)
        self._session: tuple[str, str] | None = None
        return make_app(
            self.user,
            self.token,
            self.read_only,
            cookie_secret=SECRET,
            session_hours=self.session_hours,
            allowed_hosts=self.allowed_hosts,
        )

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.get_http_port()}"

    @property
    def cookie_name(self) -> str:
        return f"moi-session-{self.get_http_port()}"

    def log_in(self) -> tuple[str, str]:
        """A new session: its ``Cookie`` header and the XSRF token its forms carry."""
        response = self.fetch(f"/?token={self.token}", follow_redirects=False)
        assert response.code == 302, response.code
        cookie = response.headers["Set-Cookie"].split(";", 1)[0]
        page = self.fetch("/", headers={"Cookie": cookie})
        found = re.search(r'name="_xsrf" value="([^"]+)"', page.body.decode())
        assert page.code == 200 and found, page.code
        return cookie, found.group(1)

    def session(self) -> tuple[str, str]:
        """This test's session (logged in on first use)."""
        if self._session is None:
            self._session = self.log_in()
        return self._session

    def cookies(self) -> str:
        return self.session()[0]

    def payload(self, cookie: str) -> dict[str, Any]:
        """The signed JSON inside a session ``Cookie`` header."""
        value = cookie.split("=", 1)[1].strip('"')
        decoded = decode_signed_value(SECRET, self.cookie_name, value)
        assert decoded is not None
        return json.loads(decoded)

    def forged(self, **changes: Any) -> str:
        """A ``Cookie`` header: this test's session with ``changes``, signed with the secret."""
        payload = {**self.payload(self.cookies()), **changes}
        signed = create_signed_value(SECRET, self.cookie_name, json.dumps(payload)).decode()
        return f"{self.cookie_name}={signed}"

    def post(
        self,
        path: str,
        fields: dict[str, str],
        xsrf: bool = True,
        cookie: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> HTTPResponse:
        """POST a form as the dashboard's own page would (``headers`` override)."""
        token = {"_xsrf": self.session()[1]} if xsrf else {}
        return self.fetch(
            path,
            method="POST",
            body=urlencode({**fields, **token}),
            headers={"Cookie": cookie or self.cookies(), "Origin": self.origin, **(headers or {})},
            follow_redirects=False,
        )

    def tree_ids(self) -> set[str]:
        return {i["id"] for i in runtime.store().tree(get_id_from_user(self.user))}


class TestLogin(DashboardCase):
    def test_token_url_sets_the_cookie_and_strips_the_token(self) -> None:
        response = self.fetch(f"/?token={self.token}", follow_redirects=False)
        assert response.code == 302 and response.headers["Location"] == "/"
        assert re.search(rf"\b{self.cookie_name}=", response.headers["Set-Cookie"])

    def test_wrong_token_and_no_cookie_lead_to_the_login_form(self) -> None:
        response = self.fetch("/?token=wrong", follow_redirects=False)
        assert response.code == 302 and response.headers["Location"].startswith("/login")
        login = self.fetch(
            "/login",
            method="POST",
            body=urlencode({"token": "wrong"}),
            headers={"Origin": self.origin},
        )
        assert login.code == 403 and b"Wrong token." in login.body

    def test_another_users_cookie_is_not_enough(self) -> None:
        response = self.fetch(
            "/", headers={"Cookie": self.forged(user="someone-else")}, follow_redirects=False
        )
        assert response.code == 302 and response.headers["Location"].startswith("/login")


class TestForms(DashboardCase):
    def test_python_that_does_not_compile_is_refused_and_nothing_is_written(self) -> None:
        before = self.tree_ids()
        response = self.post("/submit", {"cmd": "return (", "cmd_type": "python"})
        assert response.code == 400
        assert b"moi-form-error" in response.body and b"compile" in response.body.lower()
        assert self.tree_ids() == before

    def test_bad_type_and_empty_command_are_refused(self) -> None:
        before = self.tree_ids()
        for fields in ({"cmd": "ls", "cmd_type": "perl"}, {"cmd": "  ", "cmd_type": "system"}):
            assert self.post("/submit", fields).code == 400
        assert self.tree_ids() == before

    def test_a_group_with_one_bad_line_writes_no_group(self) -> None:
        before = self.tree_ids()
        for fields in (
            {"group_name": "g", "cmds": "return 1\nreturn (", "cmd_type": "python"},
            {"group_name": "g", "cmds": "ls", "cmd_type": "perl"},
            {"group_name": "g", "cmds": "\n \n", "cmd_type": "system"},
        ):
            response = self.post("/submit-group", fields)
            assert response.code == 400, fields
        assert self.tree_ids() == before

    def test_forms_without_the_xsrf_token_are_refused(self) -> None:
        before = self.tree_ids()
        response = self.post("/submit", {"cmd": "return 1", "cmd_type": "python"}, xsrf=False)
        assert response.code == 403
        assert self.tree_ids() == before

    def test_a_good_command_is_submitted_into_the_users_tree(self) -> None:
        before = self.tree_ids()
        response = self.post("/submit", {"cmd": "return 7", "cmd_type": "python", "name": "n7"})
        assert response.code == 302
        new = self.tree_ids() - before
        assert len(new) == 1
        assert runtime.store().require(new.pop())["name"] == "n7"


class TestReadOnly(DashboardCase):
    read_only = True

    def test_submits_are_refused(self) -> None:
        before = self.tree_ids()
        assert self.post("/submit", {"cmd": "return 1", "cmd_type": "python"}).code == 403
        assert self.post("/submit-group", {"group_name": "g", "cmds": "return 1"}).code == 403
        assert self.tree_ids() == before


class TestPages(DashboardCase):
    def test_job_page_shows_own_jobs_only(self) -> None:
        mine = create_info("my job", "job", parent=get_id_from_user(self.user), store=True)
        other_group = get_id_from_user(f"other-{uuid.uuid4().hex[:6]}")
        theirs = create_info("their job", "job", parent=other_group, store=True)
        headers = {"Cookie": self.cookies()}
        page = self.fetch(f"/job/{mine['id']}", headers=headers)
        assert page.code == 200 and b"my job" in page.body
        assert self.fetch(f"/job/{theirs['id']}", headers=headers).code == 404
        assert self.fetch(f"/group/{mine['id']}", headers=headers).code == 404
