"""``moi serve`` with API keys: each user sees and acts on their own tree only (issue 11, item 2).

A real dashboard (``make_app(multi_user=True)``) on a free port, real Redis:
two users and an admin log in with keys through the token URL and the login
form; pages, the websocket and the API's bearer door never let one user read,
cancel or remove another's nodes (404 / "not in your tree", as for unknown
ids); a revoked key's sessions end; read-only keys refuse writes; failed
logins are limited per address.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest, HTTPResponse
from tornado.testing import AsyncHTTPTestCase
from tornado.web import Application
from tornado.websocket import WebSocketClientConnection, websocket_connect

from moi import auth, runtime
from moi.errors import MoiError
from moi.group import create_info, get_id_from_user
from moi.relay import close_relay
from moi.web import make_app

SECRET = "multi-user-test-secret"
TIMEOUT = 10


def _job(user: str, name: str) -> str:
    """A Queued job (no task: nothing runs it) in ``user``'s tree; its id."""
    return create_info(name, "job", parent=get_id_from_user(user), store=True)["id"]


@pytest.mark.usefixtures("moi_env")
class MultiUserCase(AsyncHTTPTestCase):
    """A multi-user dashboard; alice, bob, an admin and a read-only key of alice's."""

    def get_app(self) -> Application:
        tag = uuid.uuid4().hex[:8]
        self.alice, self.bob, self.boss = f"alice-{tag}", f"bob-{tag}", f"boss-{tag}"
        self.made: list[str] = []
        self.key = {
            "alice": self.new_key(self.alice),
            "bob": self.new_key(self.bob),
            "admin": self.new_key(self.boss, admin=True),
            "reader": self.new_key(self.alice, read_only=True),
        }
        return make_app(multi_user=True, cookie_secret=SECRET, key_check_seconds=0.2)

    def new_key(self, user: str, **flags: Any) -> str:
        key, info = auth.create(user, note="test_multiuser", **flags)
        self.made.append(info.prefix)
        return key

    def tearDown(self) -> None:
        for prefix in self.made:  # leave no keys: they turn other tests' servers multi-user
            try:
                auth.revoke(prefix)
            except MoiError:
                pass
        self.io_loop.run_sync(close_relay)  # its Redis connections belong to this test's loop
        super().tearDown()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.get_http_port()}"

    def log_in(self, who: str) -> tuple[str, str]:
        """``Cookie`` header and XSRF token of a new session of key ``who``."""
        response = self.fetch(f"/?token={quote(self.key[who])}", follow_redirects=False)
        assert response.code == 302, response.code
        cookie = response.headers["Set-Cookie"].split(";", 1)[0]
        page = self.fetch("/", headers={"Cookie": cookie})
        found = re.search(r'name="_xsrf" value="([^"]+)"', page.body.decode())
        assert page.code == 200 and found
        return cookie, found.group(1)

    def get(self, path: str, cookie: str) -> HTTPResponse:
        return self.fetch(path, headers={"Cookie": cookie}, follow_redirects=False)

    def post(self, path: str, cookie: str, xsrf: str, **fields: str) -> HTTPResponse:
        return self.fetch(
            path,
            method="POST",
            body=urlencode({**fields, "_xsrf": xsrf}),
            headers={"Cookie": cookie, "Origin": self.origin},
            follow_redirects=False,
        )

    def ws(self, cookie: str, query: str = "") -> WebSocketClientConnection:
        url = f"ws://127.0.0.1:{self.get_http_port()}/moi-ws/{query}"
        request = HTTPRequest(url, headers={"Cookie": cookie, "Origin": self.origin})
        return self.io_loop.run_sync(lambda: websocket_connect(request), timeout=TIMEOUT)

    def ask(self, conn: WebSocketClientConnection, frame: dict[str, Any]) -> list[dict[str, Any]]:
        """Send ``frame``; the frames answering it (until a get's whole tree or an error)."""
        conn.write_message(json.dumps(frame))
        frames: list[dict[str, Any]] = []

        async def read() -> None:
            while True:
                message = await conn.read_message()
                assert message is not None, "closed"
                frames.append(json.loads(message))
                if "error" in frames[-1] or "get" in frame or "update" in frames[-1]:
                    return

        self.io_loop.run_sync(read, timeout=TIMEOUT)
        return frames

    def tree_ids(self, conn: WebSocketClientConnection) -> set[str]:
        conn.write_message(json.dumps({"get": []}))
        ids: set[str] = set()

        async def read() -> None:
            while True:
                message = await conn.read_message()
                assert message is not None, "closed"
                frame = json.loads(message)
                if "get" not in frame:
                    continue
                infos = frame["get"] if isinstance(frame["get"], list) else [frame["get"]]
                ids.update(i["id"] for i in infos)
                if len(ids) >= 2:  # the group and its one job
                    return

        self.io_loop.run_sync(read, timeout=TIMEOUT)
        return ids


class TestTwoUsers(MultiUserCase):
    def test_each_user_sees_their_own_dashboard(self) -> None:
        for who, user in (("alice", self.alice), ("bob", self.bob)):
            page = self.get("/", self.log_in(who)[0]).body.decode()
            assert f'data-group-id="{get_id_from_user(user)}"' in page
            assert f"user: {user}" in page and "moi-user-picker" not in page

    def test_a_token_url_from_another_site_logs_no_one_in(self) -> None:
        url = f"/?token={quote(self.key['bob'])}"
        for site in ("cross-site", "same-site"):
            response = self.fetch(url, headers={"Sec-Fetch-Site": site}, follow_redirects=False)
            assert response.code == 302 and response.headers["Location"].startswith("/login")
            assert "Set-Cookie" not in response.headers
        typed = self.fetch(url, headers={"Sec-Fetch-Site": "none"}, follow_redirects=False)
        assert typed.code == 302 and "Set-Cookie" in typed.headers

    def test_node_pages_of_another_user_are_404_like_unknown_ids(self) -> None:
        mine, theirs = _job(self.alice, "mine"), _job(self.bob, "theirs")
        cookie = self.log_in("alice")[0]
        assert self.get(f"/job/{mine}", cookie).code == 200
        crossed, unknown = self.get(f"/job/{theirs}", cookie), self.get("/job/no-such", cookie)
        assert crossed.code == unknown.code == 404
        def shown(response: HTTPResponse, asked: str) -> str:  # the page, the id asked aside
            body = re.sub(r'nonce="[^"]*"', "", response.body.decode())
            return body.replace(asked, "<id>")

        assert shown(crossed, theirs) == shown(unknown, "no-such")  # nothing tells them apart
        group = get_id_from_user(self.bob)
        assert self.get(f"/group/{group}", cookie).code == 404
        # a non-admin's ?user= is ignored: still only alice's tree
        assert self.get(f"/job/{theirs}?user={self.bob}", cookie).code == 404
        page = self.get(f"/?user={self.bob}", cookie).body.decode()
        assert f'data-group-id="{get_id_from_user(self.alice)}"' in page

    def test_the_websocket_never_reads_or_changes_another_users_nodes(self) -> None:
        mine, theirs = _job(self.alice, "mine"), _job(self.bob, "theirs")
        conn = self.ws(self.log_in("alice")[0], f"?user={quote(self.bob)}")
        assert self.tree_ids(conn) == {get_id_from_user(self.alice), mine}
        for verb in ("cancel", "remove", "get"):
            (frame,) = self.ask(conn, {verb: [theirs]})
            assert frame["error"]["message"] == f"not in your tree: {theirs}", frame
        info = runtime.store().require(theirs)
        assert info["status"] == "Queued"
        assert theirs in runtime.store().children(get_id_from_user(self.bob))
        frames = self.ask(conn, {"cancel": [mine]})
        assert frames[-1]["update"]["status"] == "Cancelled"
        conn.close()

    def test_users_submit_into_their_own_tree(self) -> None:
        cookie, xsrf = self.log_in("bob")
        before = {i["id"] for i in runtime.store().tree(get_id_from_user(self.alice))}
        response = self.post("/submit", cookie, xsrf, cmd="return 1", name="bobs")
        assert response.code == 302
        names = [i["name"] for i in runtime.store().tree(get_id_from_user(self.bob))]
        assert "bobs" in names
        assert {i["id"] for i in runtime.store().tree(get_id_from_user(self.alice))} == before


class TestAdmin(MultiUserCase):
    def test_an_admin_picks_any_user(self) -> None:
        theirs = _job(self.bob, "theirs")
        get_id_from_user(self.alice)
        cookie = self.log_in("admin")[0]
        page = self.get("/", cookie).body.decode()
        assert "moi-user-picker" in page
        assert f'<option value="{self.alice}"' in page and f'<option value="{self.bob}"' in page
        page = self.get(f"/?user={quote(self.bob)}", cookie).body.decode()
        assert f'data-group-id="{get_id_from_user(self.bob)}"' in page
        assert f'data-user="{self.bob}"' in page
        assert self.get(f"/job/{theirs}?user={quote(self.bob)}", cookie).code == 200
        assert self.get(f"/job/{theirs}", cookie).code == 404  # not in the admin's own tree
        nobody = f"nobody-{uuid.uuid4().hex[:6]}"
        assert self.get(f"/?user={nobody}", cookie).code == 404
        assert runtime.redis_client().hget("user-id-map", nobody) is None  # no user made
        conn = self.ws(cookie, f"?user={quote(self.bob)}")
        assert self.tree_ids(conn) == {get_id_from_user(self.bob), theirs}
        frames = self.ask(conn, {"cancel": [theirs]})
        assert frames[-1]["update"]["status"] == "Cancelled"
        conn.close()
        with pytest.raises(HTTPClientError) as refused:  # the socket makes no user either
            self.ws(cookie, f"?user={nobody}")
        assert refused.value.code == 404
        assert runtime.redis_client().hget("user-id-map", nobody) is None


class TestRevokedAndReadOnly(MultiUserCase):
    def test_a_revoked_keys_sessions_stop_working(self) -> None:
        cookie = self.log_in("alice")[0]
        conn = self.ws(cookie)
        assert self.get("/", cookie).code == 200
        auth.revoke(self.made[0])
        response = self.get("/", cookie)
        assert response.code == 302 and response.headers["Location"].startswith("/login")

        async def closed() -> None:
            while await conn.read_message() is not None:
                pass

        self.io_loop.run_sync(closed, timeout=TIMEOUT)
        assert conn.close_code == 1008 and conn.close_reason == "API key revoked"
        with pytest.raises(HTTPClientError) as refused:
            self.ws(cookie)
        assert refused.value.code == 403
        again = self.fetch(f"/?token={quote(self.key['alice'])}", follow_redirects=False)
        assert "Set-Cookie" not in again.headers

    def test_a_programs_bearer_socket_shows_its_tree_until_the_key_is_revoked(self) -> None:
        mine, theirs = _job(self.alice, "mine"), _job(self.bob, "theirs")
        url = f"ws://127.0.0.1:{self.get_http_port()}/moi-ws/"

        def bearer(key: str) -> WebSocketClientConnection:  # no cookie, no Origin: a program
            request = HTTPRequest(url, headers={"Authorization": f"Bearer {key}"})
            return self.io_loop.run_sync(lambda: websocket_connect(request), timeout=TIMEOUT)

        conn = bearer(self.key["alice"])
        assert self.tree_ids(conn) == {get_id_from_user(self.alice), mine}
        assert theirs not in self.tree_ids(conn)
        with pytest.raises(HTTPClientError) as refused:
            bearer("moi_00000000_not-a-key")
        assert refused.value.code == 403
        auth.revoke(self.made[0])

        async def closed() -> None:
            while await conn.read_message() is not None:
                pass

        self.io_loop.run_sync(closed, timeout=TIMEOUT)
        assert conn.close_code == 1008 and conn.close_reason == "API key revoked"

    def test_a_read_only_key_refuses_every_write(self) -> None:
        mine = _job(self.alice, "mine")
        cookie, xsrf = self.log_in("reader")
        page = self.get("/", cookie).body.decode()
        assert 'id="moi-submit-form"' not in page and 'data-read-only="true"' in page
        assert self.post("/submit", cookie, xsrf, cmd="return 1").code == 403
        assert self.post("/submit-group", cookie, xsrf, group_name="g", cmds="return 1").code == 403
        conn = self.ws(cookie)
        for verb in ("cancel", "remove"):
            (frame,) = self.ask(conn, {verb: [mine]})
            assert "read-only" in frame["error"]["message"]
        assert runtime.store().require(mine)["status"] == "Queued"
        assert mine in runtime.store().children(get_id_from_user(self.alice))
        conn.close()

    def test_bearer_keys_authenticate_api_requests_until_revoked(self) -> None:
        def types(key: str | None) -> int:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            return self.fetch("/api/v1/types", headers=headers).code

        assert types(None) == 401
        assert types(self.key["bob"]) == 200
        auth.revoke(self.made[1])
        assert types(self.key["bob"]) == 401


class TestSessionOnTheApi(MultiUserCase):
    def test_a_sessions_api_writes_need_its_xsrf_token(self) -> None:
        mine = _job(self.alice, "mine")
        cookie, xsrf = self.log_in("alice")

        def cancel(**headers: str) -> HTTPResponse:
            return self.fetch(
                f"/api/v1/jobs/{mine}/cancel",
                method="POST",
                body="",
                headers={"Cookie": cookie, "Origin": self.origin, **headers},
            )

        assert cancel().code == 403
        assert cancel(**{"X-Xsrftoken": "0" * 64}).code == 403
        assert runtime.store().require(mine)["status"] == "Queued"
        assert cancel(**{"X-Xsrftoken": xsrf}).code == 200
        assert runtime.store().require(mine)["status"] == "Cancelled"
        reads = self.fetch(f"/api/v1/jobs/{mine}", headers={"Cookie": cookie})
        assert reads.code == 200 and json.loads(reads.body)["id"] == mine


class TestWatchingPages(MultiUserCase):
    """``/log/<id>`` and ``/metrics`` follow the key's user, like every other page."""

    def test_log_pages_show_only_ones_own_jobs(self) -> None:
        mine, theirs = _job(self.alice, "alice-log"), _job(self.bob, "bob-log")
        cookie, _ = self.log_in("alice")
        assert self.get(f"/log/{mine}", cookie).code == 200
        assert self.get(f"/log/{theirs}", cookie).code == 404
        admin, _ = self.log_in("admin")
        assert self.get(f"/log/{theirs}", admin).code == 200
        auth.revoke(self.made[0])  # alice's key
        assert self.get(f"/log/{mine}", cookie).code == 302  # back to the login page

    def test_metrics_take_a_session_or_an_api_key_and_count_ones_own_jobs(self) -> None:
        _job(self.alice, "alice-metrics")
        assert self.fetch("/metrics").code == 401
        bearer = {"Authorization": f"Bearer {self.key['alice']}"}
        response = self.fetch("/metrics", headers=bearer)
        assert response.code == 200, response.code
        body = response.body.decode()
        assert f'user="{self.alice}"' in body and f'user="{self.bob}"' not in body
        auth.revoke(self.made[0])
        assert self.fetch("/metrics", headers=bearer).code == 401


class TestLoginLimit(MultiUserCase):
    def test_failed_logins_are_limited_per_address(self) -> None:
        def form(key: str) -> HTTPResponse:
            return self.fetch(
                "/login",
                method="POST",
                body=urlencode({"token": key}),
                headers={"Origin": self.origin},
                follow_redirects=False,
            )

        wrong = self.key["alice"][:-4] + "AAAA"
        for _ in range(10):
            response = form(wrong)
            assert response.code == 403 and "Wrong or revoked key." in response.body.decode()
        locked = form(self.key["alice"])
        assert locked.code == 429 and int(locked.headers["Retry-After"]) > 0
        assert self.fetch(f"/?token={quote(self.key['bob'])}", follow_redirects=False).code == 429
        bearer = {"Authorization": f"Bearer {self.key['bob']}"}
        assert self.fetch("/api/v1/types", headers=bearer).code == 429


class TestNodesPage(MultiUserCase):
    def test_the_nodes_page_shows_engines_and_hides_other_users_jobs(self) -> None:
        import tempfile
        from pathlib import Path

        from support import gated, wait_for_status

        from moi.job import submit

        release = Path(tempfile.mkdtemp()) / "release"
        job_id, _, _ = submit(
            None, get_id_from_user(self.alice), "alices-long-job", None, gated, str(release)
        )
        try:
            wait_for_status(job_id, "Running")
            mine = self.get("/nodes", self.log_in("alice")[0])
            assert mine.code == 200
            body = mine.body.decode()
            assert "Context default" in body and "alices-long-job" in body
            assert f"/job/{job_id}" in body and 'http-equiv="refresh"' in body
            theirs = self.get("/nodes", self.log_in("bob")[0]).body.decode()
            assert "another user&#x27;s job" in theirs
            assert job_id not in theirs and "alices-long-job" not in theirs
            everyone = self.get("/nodes", self.log_in("admin")[0]).body.decode()
            assert "alices-long-job" in everyone
        finally:
            release.touch()
        assert wait_for_status(job_id, lambda s: s in ("Success", "Failed"))["status"] == "Success"


# -- the real thing in a real browser: moi serve as a process, headless Chromium ------------
@pytest.fixture
def keys_of(moi_env: dict[str, str]) -> Any:
    """Make keys (``keys_of(user, admin=...)``); revoked at the end of the test."""
    made: list[str] = []

    def make(user: str, **flags: Any) -> str:
        key, info = auth.create(user, **flags)
        made.append(info.prefix)
        return key

    yield make
    for prefix in made:
        try:
            auth.revoke(prefix)
        except MoiError:
            pass


def test_an_admin_picks_a_user_in_a_real_browser(
    keys_of: Any, tmp_path: Any, browser: Any
) -> None:
    import subprocess
    import sys

    from playwright.sync_api import expect
    from support import wait_until_listening

    from moi import redis_server

    tag = uuid.uuid4().hex[:8]
    alice, bob = f"alice-{tag}", f"bob-{tag}"
    alices, bobs = _job(alice, "alices-job"), _job(bob, "bobs-job")
    admin_key, alice_key = keys_of(f"boss-{tag}", admin=True), keys_of(alice)
    port = redis_server.free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moi.cli", "serve", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd="/",
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_listening(port, proc, log.read_text)
        admin = browser.new_context().new_page()
        admin.goto(f"{base}/login")
        admin.fill("input[name=token]", admin_key)
        admin.click("button[type=submit]")
        expect(admin).to_have_url(f"{base}/")
        admin.select_option("#moi-user-picker select", bob)
        admin.click("#moi-user-picker button")
        panel = admin.locator("#moi-panel")
        expect(panel.locator(f'[data-id="{bobs}"]')).to_have_count(1, timeout=30_000)
        expect(panel.locator(".moi-connection")).to_have_attribute("data-state", "open")
        assert panel.locator(f'[data-id="{alices}"]').count() == 0
        panel.locator(f'[data-id="{bobs}"] a', has_text="bobs-job").first.click()
        expect(admin.locator("h1")).to_contain_text("bobs-job")

        person = browser.new_context().new_page()
        person.goto(f"{base}/login")
        person.fill("input[name=token]", alice_key)
        person.click("button[type=submit]")
        mine = person.locator("#moi-panel")
        expect(mine.locator(f'[data-id="{alices}"]')).to_have_count(1, timeout=30_000)
        assert mine.locator(f'[data-id="{bobs}"]').count() == 0
        assert person.locator("#moi-user-picker").count() == 0
    finally:
        for context in browser.contexts:
            context.close()
        proc.terminate()
        proc.wait(10)
