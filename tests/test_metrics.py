"""``GET /metrics`` of the dashboard: Prometheus text, read back by prometheus_client's parser.

A real Redis and cluster (``moi_env``), the real application (``make_app``),
real HTTP and websockets; one ``moi serve --metrics-public`` as a subprocess.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import wait_for_status, wait_until_listening
from tornado.httpclient import HTTPRequest
from tornado.testing import AsyncHTTPTestCase, gen_test
from tornado.web import Application
from tornado.websocket import websocket_connect

from moi import keys, logs, redis_server, runtime
from moi.group import get_id_from_user
from moi.job import python_call, submit
from moi.relay import close_relay
from moi.web import make_app


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape by (name, sorted labels); parsing fails on a malformed one."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


@pytest.mark.usefixtures("moi_env")
class MetricsCase(AsyncHTTPTestCase):
    public = False

    def get_app(self) -> Application:
        self.user = f"metrics-{uuid.uuid4().hex[:8]}"
        self.token = secrets.token_urlsafe(24)
        return make_app(
            self.user, self.token, cookie_secret="metrics-secret", metrics_public=self.public
        )

    def tearDown(self) -> None:
        self.io_loop.run_sync(close_relay)
        self.io_loop.run_sync(logs.close_hub)
        super().tearDown()

    def session_cookie(self) -> str:
        response = self.fetch(f"/?token={self.token}", follow_redirects=False)
        assert response.code == 302
        return response.headers["Set-Cookie"].split(";", 1)[0]

    def scrape(self, **headers: str) -> Any:
        return self.fetch("/metrics", headers=headers, follow_redirects=False)


class TestProtected(MetricsCase):
    def test_without_a_session_or_token_it_is_401(self) -> None:
        response = self.scrape()
        assert response.code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
        assert b"moi_jobs" not in response.body
        assert self.scrape(Authorization="Bearer not-the-token-at-all").code == 401

    def test_a_foreign_host_is_refused_even_with_the_token(self) -> None:
        response = self.scrape(Authorization=f"Bearer {self.token}", Host="evil.example:80")
        assert response.code in (400, 403)

    def test_the_session_sees_jobs_counters_histogram_and_engines(self) -> None:
        parent = get_id_from_user(self.user)
        ok, _, ar1 = submit(None, parent, "ok", None, python_call, "return 1")
        bad, _, ar2 = submit(None, parent, "bad", None, python_call, "raise ValueError()")
        wait_for_status(ok, "Success")
        wait_for_status(bad, "Failed")
        r, field = runtime.redis_client(), keys.stat_field("finished", "default", "Failed")
        deadline = time.monotonic() + 10
        while not r.hget(keys.STATS, field):  # the engines ship their counters every second
            assert time.monotonic() < deadline
            time.sleep(0.05)
        response = self.scrape(Cookie=self.session_cookie())
        assert response.code == 200, response.body
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        got = samples(response.body)
        base = (("context", "default"), ("user", self.user))
        assert got[("moi_jobs", (base[0], ("status", "Success"), base[1]))] == 1
        assert got[("moi_jobs", (base[0], ("status", "Failed"), base[1]))] == 1
        assert got[("moi_jobs_submitted_total", (("context", "default"),))] >= 2
        assert got[("moi_engines", (("context", "default"),))] == 2
        assert ("moi_jobs_running", ()) in got and ("moi_relay_lag_seconds", ()) in got
        inf = got.get(("moi_job_run_seconds_bucket", (("context", "default"), ("le", "+Inf"))))
        count = got.get(("moi_job_run_seconds_count", (("context", "default"),)))
        assert inf is not None and inf == count  # the engines' counters land within a second
        assert got[("moi_subscribed_channels", (("kind", "log"),))] >= 0

    def test_the_login_token_as_bearer_is_accepted(self) -> None:
        response = self.scrape(Authorization=f"Bearer {self.token}")
        assert response.code == 200
        assert ("moi_websockets", ()) in samples(response.body)

    @gen_test(timeout=30)
    async def test_websockets_and_channels_are_counted(self) -> None:
        login = await self.http_client.fetch(
            self.get_url(f"/?token={self.token}"), follow_redirects=False, raise_error=False
        )
        cookie = login.headers["Set-Cookie"].split(";", 1)[0]
        port = self.get_http_port()
        ws = await websocket_connect(
            HTTPRequest(
                f"ws://127.0.0.1:{port}/moi-ws/",
                headers={"Cookie": cookie, "Origin": f"http://127.0.0.1:{port}"},
            )
        )
        ws.write_message('{"get": []}')
        await ws.read_message()  # the tree's first frame: the view is up
        response = await self.http_client.fetch(
            self.get_url("/metrics"), headers={"Cookie": cookie}
        )
        got = samples(response.body)
        assert got[("moi_websockets", ())] >= 1
        assert got[("moi_subscribed_channels", (("kind", "node"),))] >= 1
        ws.close()


class TestPublic(MetricsCase):
    public = True

    def test_public_metrics_need_no_login(self) -> None:
        response = self.scrape()
        assert response.code == 200 and ("moi_jobs_queued", ()) in samples(response.body)


def test_moi_serve_metrics_public_flag(moi_env, tmp_path):
    port = redis_server.free_port()
    env = {**os.environ, "MOI_TOKEN": secrets.token_urlsafe(24)}
    out = tmp_path / "serve.log"

    def serve(*flags: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "moi.cli", "serve", "--port", str(port), *flags],
            env=env,
            stdout=out.open("w"),
            stderr=subprocess.STDOUT,
            cwd="/",
        )

    for flags, expected in (((), 401), (("--metrics-public",), 200)):
        proc = serve(*flags)
        try:
            wait_until_listening(port, proc, out.read_text)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as response:
                    code, body = response.status, response.read()
            except urllib.error.HTTPError as exc:
                code, body = exc.code, b""
            assert code == expected, out.read_text()
            if code == 200:
                assert re.search(rb"^moi_jobs_running ", body, re.M)
        finally:
            proc.terminate()
            proc.wait(10)
    assert runtime.redis_client().ping()
