"""Live output: captured on real engines, kept capped in Redis, followed by CLI and websockets.

Jobs run on the session's real cluster (``moi_env``); what they print is read
back from Redis through :func:`moi.logs.read_lines`, from ipyparallel's own
``ar.stdout``, from the CLI as a subprocess, and over a real websocket.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import ipyparallel as ipp
import pytest
from support import moi_cli, subscribed, wait_for_file, wait_for_status
from tornado.httpclient import HTTPRequest
from tornado.testing import AsyncHTTPTestCase, gen_test
from tornado.web import Application, create_signed_value
from tornado.websocket import WebSocketClientConnection, websocket_connect

from moi import keys, logs, runtime
from moi.group import get_id_from_user
from moi.job import python_call, submit, submit_type, system_call
from moi.relay import Relay
from moi.websocket import MOIMessageHandler


def run_python(user: str, cmd: str, name: str = "printer") -> tuple[str, Any]:
    job_id, _, ar = submit(None, get_id_from_user(user), name, None, python_call, cmd)
    return job_id, ar


def set_capture(value: str | None) -> None:
    """On an engine: set (or with ``None`` unset) ``MOI_LOG_CAPTURE``."""
    if value is None:
        os.environ.pop("MOI_LOG_CAPTURE", None)
    else:
        os.environ["MOI_LOG_CAPTURE"] = value


def kept(job_id: str, start: int = 0, limit: int | None = None) -> logs.LogSlice:
    return logs.read_lines_sync(runtime.redis_client(), job_id, start, limit)


def test_print_is_kept_and_still_reaches_ar_stdout(moi_env, user):
    job_id, ar = run_python(user, "for i in range(5):\n    print('line', i)\nreturn 7")
    assert ar.get(timeout=60) == 7
    wait_for_status(job_id, "Success")
    got = kept(job_id)
    assert got["lines"] == [f"line {i}" for i in range(5)]
    assert (got["start"], got["next"], got["total"]) == (0, 5, 5)
    assert ar.wait_for_output(30) and "line 4" in ar.stdout  # teed, not stolen


def test_stderr_and_an_unfinished_last_line_are_kept(moi_env, user):
    cmd = "import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.stdout.write('tail')"
    job_id, ar = run_python(user, cmd)
    ar.get(timeout=60)
    wait_for_status(job_id, "Success")
    assert kept(job_id)["lines"] == ["out", "err", "tail"]
    assert ar.wait_for_output(30)
    assert ar.stdout == "out\ntail" and ar.stderr == "err\n"


def test_a_system_command_streams_line_by_line(moi_env, user, tmp_path):
    release = tmp_path / "release"
    cmd = f"echo first; echo oops >&2; while [ ! -e {release} ]; do sleep 0.02; done; echo last"
    job_id, _, ar = submit(None, get_id_from_user(user), "sys", None, system_call, cmd)
    sub = subscribed(runtime.redis_client(), keys.log_channel(job_id))
    seen: list[str] = []
    deadline = time.monotonic() + 30
    while {"first", "oops"} - set(seen):  # both arrive while the command still runs
        assert time.monotonic() < deadline, seen
        message = sub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        if message is not None:
            seen += json.loads(message["data"])["lines"]
    assert runtime.store().require(job_id)["status"] == "Running"
    release.write_text("go")
    stdout, stderr, code = ar.get(timeout=60)
    assert (stdout, stderr, code) == ("first\nlast\n", "oops\n", 0)  # still collected as before
    wait_for_status(job_id, "Success")
    assert sorted(kept(job_id)["lines"]) == ["first", "last", "oops"]


def test_typed_jobs_output_is_kept(moi_env, user):
    parent = get_id_from_user(user)
    sys_id, _, ar1 = submit_type(None, parent, "t1", "system", {"cmd": "echo typed system"})
    py_id, _, ar2 = submit_type(None, parent, "t2", "python", {"cmd": "print('typed python')"})
    ar1.get(timeout=60)
    ar2.get(timeout=60)
    wait_for_status(sys_id, "Success")
    wait_for_status(py_id, "Success")
    assert kept(sys_id)["lines"] == ["typed system"]
    assert kept(py_id)["lines"] == ["typed python"]


def test_the_line_cap_keeps_the_last_lines_and_numbers_them(moi_env, user):
    total = logs.MAX_LINES + 2_000
    job_id, ar = run_python(user, f"for i in range({total}):\n    print('n', i)")
    ar.get(timeout=120)
    wait_for_status(job_id, "Success")
    got = kept(job_id)
    assert len(got["lines"]) == logs.MAX_LINES
    assert got["start"] == 2_000 and got["lines"][0] == "n 2000"
    assert got["lines"][-1] == f"n {total - 1}" and got["total"] == total
    part = kept(job_id, start=total - 3, limit=2)
    assert part["lines"] == [f"n {total - 3}", f"n {total - 2}"] and part["next"] == total - 1


def test_the_byte_cap_keeps_at_most_one_mib(moi_env, user):
    job_id, ar = run_python(user, "for i in range(300):\n    print(str(i).ljust(8000, 'x'))")
    ar.get(timeout=120)
    wait_for_status(job_id, "Success")
    r = runtime.redis_client()
    lines = r.lrange(keys.log(job_id), 0, -1)
    size = sum(len(line) for line in lines)
    assert size <= logs.MAX_BYTES and int(r.hget(keys.log_meta(job_id), "bytes")) == size
    assert len(lines) == logs.MAX_BYTES // 8000 and lines[-1].startswith(b"299")
    assert kept(job_id)["start"] == 300 - len(lines)


def test_a_line_longer_than_the_limit_is_cut(moi_env, user):
    job_id, ar = run_python(user, f"print('y' * {logs.MAX_LINE * 3})")
    ar.get(timeout=60)
    wait_for_status(job_id, "Success")
    (line,) = kept(job_id)["lines"]
    assert line.endswith(logs.CUT) and len(line) == logs.MAX_LINE + len(logs.CUT)


def test_log_keys_expire_with_the_job(moi_env, user):
    job_id, ar = run_python(user, "print('hello')")
    ar.get(timeout=60)
    wait_for_status(job_id, "Success")
    r = runtime.redis_client()
    timeout = runtime.settings().key_timeout
    for key in (keys.log(job_id), keys.log_meta(job_id)):
        assert 0 < r.ttl(key) <= timeout
    assert abs(r.ttl(keys.log(job_id)) - r.ttl(keys.info(job_id))) <= 5


def test_a_flood_of_lines_is_published_in_few_batches(moi_env, user):
    job_id, _, ar = submit(
        None,
        get_id_from_user(user),
        "flood",
        None,
        python_call,
        "import time\ntime.sleep(0.5)\nfor i in range(100_000):\n    print(i)",
    )  # the sleep: time to subscribe before the first line
    sub = subscribed(runtime.redis_client(), keys.log_channel(job_id))
    ar.get(timeout=120)
    wait_for_status(job_id, "Success")
    messages = []
    while (message := sub.get_message(ignore_subscribe_messages=True, timeout=1)) is not None:
        messages.append(json.loads(message["data"]))
    assert len(messages) < 1_000, len(messages)  # not one publish per line
    # in order; lines written faster than they ship are skipped past the cap, never reordered
    ends = [m["start"] + len(m["lines"]) for m in messages]
    assert all(a <= m["start"] for a, m in zip(ends, messages[1:], strict=False))
    assert ends[-1] == 100_000 and messages[-1]["lines"][-1] == "99999"
    assert kept(job_id)["lines"] == [str(i) for i in range(90_000, 100_000)]
    assert ar.wait_for_output(30)  # every line still reached ipyparallel, in order
    assert ar.stdout == "".join(f"{i}\n" for i in range(100_000))


def test_a_forked_child_writes_to_the_original_streams(moi_env, user, tmp_path):
    seen = tmp_path / "child"
    cmd = (
        "import os, sys\npid = os.fork()\nif pid == 0:\n"
        f"    open({str(seen)!r}, 'w').write(type(sys.stdout).__name__)\n    os._exit(0)\n"
        "os.waitpid(pid, 0)\nreturn type(sys.stdout).__name__"
    )
    job_id, ar = run_python(user, cmd)
    assert ar.get(timeout=60) == "_Tee"  # the job's own process is captured...
    assert seen.read_text() == "OutStream"  # ...a child, which nothing drains, is not


def test_capture_can_be_turned_off_on_the_engine(moi_env, user):
    from moi import ctxs

    dview = ctxs["default"].client[:]
    dview.apply_sync(set_capture, "0")
    try:
        job_id, ar = run_python(user, "print('unseen')")
        ar.get(timeout=60)
    finally:
        dview.apply_sync(set_capture, None)
    wait_for_status(job_id, "Success")
    assert ar.wait_for_output(30)
    assert kept(job_id)["lines"] == [] and "unseen" in ar.stdout


def test_finished_jobs_are_counted(moi_env, user):
    r = runtime.redis_client()
    field = keys.stat_field("finished", "default", "Failed")
    before = int(r.hget(keys.STATS, field) or 0)
    job_id, ar = run_python(user, "raise ValueError('no')")
    with pytest.raises(ipp.error.RemoteError):
        ar.get(timeout=60)
    deadline = time.monotonic() + 10
    while int(r.hget(keys.STATS, field) or 0) <= before:
        assert time.monotonic() < deadline, "the finished counter did not move"
        time.sleep(0.05)
    assert int(r.hget(keys.STATS, keys.stat_field("submitted", "default")) or 0) >= 1


def test_read_lines_refuses_bad_arguments(moi_env):
    r = runtime.redis_client()
    with pytest.raises(ValueError, match="start"):
        logs.read_lines_sync(r, "some-job", -1)
    with pytest.raises(ValueError, match="limit"):
        logs.read_lines_sync(r, "some-job", 0, -2)
    with pytest.raises(Exception, match="one of moi's own keys"):
        logs.read_lines_sync(r, "moi:stats")
    assert logs.read_lines_sync(r, "never-ran")["lines"] == []


# -- moi logs -------------------------------------------------------------------------
def test_moi_logs_prints_the_kept_lines(moi_env, user):
    job_id, ar = run_python(user, "print('one')\nprint('\\x1b[2Jtwo')")
    ar.get(timeout=60)
    wait_for_status(job_id, "Success")
    done = moi_cli("logs", job_id)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "one\n\\x1b[2Jtwo\n"  # escape sequences shown, not obeyed
    assert moi_cli("logs", "--job-id", job_id).stdout == done.stdout


def test_moi_logs_of_an_unknown_job_says_so(moi_env):
    done = moi_cli("logs", "--job-id", "1b4e28ba-2fa1-11d2-883f-0016d3cca427")
    assert done.returncode == 1 and "unknown job" in done.stderr
    bad = moi_cli("logs", "not an id")
    assert bad.returncode != 0 and "malformed job id" in bad.stderr


@pytest.mark.parametrize(("ending", "code"), [("return 1", 0), ("raise SystemExit(3)", 1)])
def test_moi_logs_follow_until_the_job_ends(moi_env, user, tmp_path, ending, code):
    release = tmp_path / "release"
    cmd = (
        "import os, time\nprint('before', flush=True)\n"
        f"while not os.path.exists({str(release)!r}):\n    time.sleep(0.02)\n"
        f"print('after')\n{ending}"
    )
    job_id, _ = run_python(user, cmd)
    wait_for_status(job_id, "Running")
    out = tmp_path / "out"
    with out.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moi.cli", "logs", "-f", job_id],
            stdout=sink,
            stderr=subprocess.PIPE,
            text=True,
            cwd="/",
        )
        try:
            assert wait_for_file(out).startswith("before\n")
            assert proc.poll() is None  # still following
            release.write_text("go")
            assert proc.wait(60) == code, proc.stderr.read() if proc.stderr else ""
        finally:
            if proc.poll() is None:
                proc.kill()
    assert out.read_text() == "before\nafter\n"


def test_moi_logs_follow_of_a_cancelled_job_exits_2(moi_env, user, tmp_path):
    job_id, _ = run_python(user, "import time\nprint('zz', flush=True)\ntime.sleep(60)")
    wait_for_status(job_id, "Running")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moi.cli", "logs", "-f", job_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "zz\n"
        assert moi_cli("cancel", "--job-id", job_id).returncode == 0
        assert proc.wait(60) == 2
    finally:
        if proc.poll() is None:
            proc.kill()


# -- the websocket message ----------------------------------------------------------
SECRET = "logs-test-secret"


@pytest.mark.usefixtures("moi_env")
class LogSocketCase(AsyncHTTPTestCase):
    """``{"log": id, "from": n}`` on MOIMessageHandler, against real engines."""

    def get_app(self) -> Application:
        self.relay = Relay(runtime.redis_url(), runtime.settings().key_timeout)
        return Application(
            [(r"/moi-ws/", MOIMessageHandler, {"relay": self.relay})], cookie_secret=SECRET
        )

    def tearDown(self) -> None:
        self.io_loop.run_sync(self.relay.stop)
        self.io_loop.run_sync(logs.close_hub)
        super().tearDown()

    async def connect(self, user: str) -> WebSocketClientConnection:
        cookie = create_signed_value(SECRET, "user", user).decode()
        url = f"ws://127.0.0.1:{self.get_http_port()}/moi-ws/"
        return await websocket_connect(HTTPRequest(url, headers={"Cookie": f"user={cookie}"}))

    async def frame(self, ws: WebSocketClientConnection, verb: str) -> dict[str, Any]:
        while True:
            message = await asyncio.wait_for(ws.read_message(), 30)
            assert message is not None, "connection closed"
            frame = json.loads(message)
            if verb in frame:
                return frame[verb]

    @gen_test(timeout=60)
    async def test_following_stops_and_starts_again_from_a_line(self) -> None:
        user = f"ws-{os.urandom(4).hex()}"
        job_id, ar = await asyncio.to_thread(run_python, user, "print('a')\nprint('b')")
        await asyncio.to_thread(wait_for_status, job_id, "Success")
        ws = await self.connect(user)
        ws.write_message(json.dumps({"log": job_id}))  # "from" defaults to 0
        assert (await self.frame(ws, "log"))["lines"] == ["a", "b"]
        ws.write_message(json.dumps({"log": job_id, "from": None}))
        ws.write_message(json.dumps({"log": job_id, "from": 1}))
        again = await self.frame(ws, "log")
        assert (again["start"], again["lines"], again["next"]) == (1, ["b"], 2)
        ws.write_message(json.dumps({"log": job_id, "from": 0, "extra": 1}))
        assert "follow a job's output" in (await self.frame(ws, "error"))["message"]
        ws.close()

    @gen_test(timeout=90)
    async def test_a_job_s_lines_arrive_from_the_kept_ones_then_live(self) -> None:
        user, release = f"ws-{os.urandom(4).hex()}", Path(f"/tmp/moi-log-{os.urandom(4).hex()}")
        cmd = (
            "import os, time\nfor i in range(3):\n    print('early', i)\n"
            f"while not os.path.exists({str(release)!r}):\n    time.sleep(0.02)\n"
            "print('late')"
        )
        job_id, ar = await asyncio.to_thread(run_python, user, cmd)
        await asyncio.to_thread(wait_for_status, job_id, "Running")
        while (await asyncio.to_thread(kept, job_id))["total"] < 3:
            await asyncio.sleep(0.02)
        ws = await self.connect(user)
        ws.write_message(json.dumps({"log": job_id, "from": 1}))
        first = await self.frame(ws, "log")
        assert first == {"id": job_id, "start": 1, "lines": ["early 1", "early 2"], "next": 3}
        release.write_text("go")
        try:
            assert (await self.frame(ws, "log"))["lines"] == ["late"]
        finally:
            release.unlink()
        ws.close()

    @gen_test(timeout=60)
    async def test_another_user_s_job_is_refused(self) -> None:
        owner, stranger = f"own-{os.urandom(4).hex()}", f"oth-{os.urandom(4).hex()}"
        job_id, ar = await asyncio.to_thread(run_python, owner, "print('secret')")
        await asyncio.to_thread(wait_for_status, job_id, "Success")
        ws = await self.connect(stranger)
        ws.write_message(json.dumps({"log": job_id, "from": 0}))
        error = await self.frame(ws, "error")
        assert "not in your tree" in error["message"] and error["action"] == "log"
        ws.write_message(json.dumps({"log": job_id, "from": "x"}))
        assert "from must be" in (await self.frame(ws, "error"))["message"]
        ws.write_message(json.dumps({"get": []}))  # the socket still works
        assert (await self.frame(ws, "get"))["id"] == get_id_from_user(stranger)
        ws.close()


# -- the Log view in a real browser -------------------------------------------------------
@pytest.fixture
def log_page(page, server) -> tuple[Any, Any]:
    """A logged-in page of ``moi serve`` for ``user`` (fixtures: conftest.py)."""
    page.goto(server.login_url)
    return page, server


def test_the_log_view_shows_lines_live(log_page, user, tmp_path):
    from playwright.sync_api import expect

    page, server = log_page
    release = tmp_path / "go"
    cmd = (
        "import os, time\nfor i in range(3):\n    print('hello', i, '<b>x</b>')\n"
        f"while not os.path.exists({str(release)!r}):\n    time.sleep(0.02)\n"
        "print('after release')"
    )
    job_id, _ = run_python(user, cmd)
    wait_for_status(job_id, "Running")
    page.goto(f"{server.base}/log/{job_id}")
    lines = page.locator(".moi-log-lines")
    expect(lines).to_contain_text("hello 2 <b>x</b>")  # as text, never HTML
    assert page.locator(".moi-log-lines b").count() == 0
    release.write_text("go")
    expect(lines).to_contain_text("after release")
    assert lines.inner_text().splitlines() == [
        *(f"hello {i} <b>x</b>" for i in range(3)),
        "after release",
    ]


def test_the_log_view_caps_what_it_keeps(log_page, user):
    from playwright.sync_api import expect

    page, server = log_page
    job_id, ar = run_python(user, "for i in range(9000):\n    print('n', i)")
    ar.get(timeout=60)
    wait_for_status(job_id, "Success")
    page.goto(f"{server.base}/log/{job_id}")
    lines = page.locator(".moi-log-lines")
    expect(lines).to_contain_text("n 8999")
    shown = lines.inner_text().splitlines()
    assert len(shown) == 5000 and shown[0] == "n 4000" and shown[-1] == "n 8999"
    assert page.evaluate("document.querySelector('[data-moi-log]').moiLog.lineCount") == 5000


def test_another_user_s_log_page_is_404(log_page, moi_env):
    page, server = log_page
    other = f"other-{os.urandom(4).hex()}"
    job_id, ar = run_python(other, "print('theirs')")
    ar.get(timeout=60)
    response = page.goto(f"{server.base}/log/{job_id}")
    assert response is not None and response.status == 404
    assert "theirs" not in page.content()
