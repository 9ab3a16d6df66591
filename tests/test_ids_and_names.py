"""Ids that could name moi's own keys, user names that could name a group, and
control characters that could drive the terminal of whoever reads the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from click.testing import CliRunner
from support import add, gated, moi_cli, snapshot, wait_for_status
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.log import app_log
from tornado.testing import AsyncHTTPTestCase, ExpectLog, gen_test
from tornado.web import Application, create_signed_value
from tornado.websocket import WebSocketClosedError, websocket_connect

from moi import ctxs, keys, runtime
from moi.astore import AsyncStore
from moi.cli import main
from moi.errors import InvalidIdError, InvalidUserError, MoiError, UnknownIdError
from moi.group import create_info, find_user_group, get_id_from_user, get_user_from_id, users
from moi.job import cancel, submit, submit_nouser, wait
from moi.relay import Relay
from moi.websocket import MOIMessageHandler

TITLE = "\x1b]0;pwned\x07"  # OSC: retitles the terminal
CLEAR = "\x1b[2J"  # CSI: clears the screen
EVIL = f"evil {TITLE} {CLEAR} \x9b31m end"  # ... and a C1 CSI
#: ``EVIL`` as the CLI must print it.
SHOWN = "evil \\x1b]0;pwned\\x07 \\x1b[2J \\x9b31m end"


def evil_result(**kwargs: Any) -> str:
    """Job: a result carrying escape sequences."""
    return EVIL


def evil_failure(**kwargs: Any) -> None:
    """Job: a traceback carrying escape sequences."""
    raise ValueError(EVIL)


def evil_status(release: str, **kwargs: Any) -> str:
    """Job: set a status carrying escape sequences, then wait for ``release``."""
    kwargs["moi_update_status"](EVIL)
    return gated(release)


def state(client: redis.Redis) -> dict[str, Any]:
    """Every key and value, plus what ``snapshot`` leaves out about moi's own keys."""
    return {
        "keys": snapshot(client),
        # its type, and that it still expires (the seconds left tick down during a test)
        "user map": (client.type(keys.USER_ID_MAP), client.ttl(keys.USER_ID_MAP) > 0),
        # running jobs come and go, but the leases stay a ZSET (or nothing) without a TTL
        "leases": client.type(keys.LEASES) in (b"zset", b"none") and client.ttl(keys.LEASES) < 0,
    }


def assert_terminal_safe(output: str) -> None:
    """No control character reaches the terminal but newline and tab."""
    raw = sorted({c for c in output if (ord(c) < 32 and c not in "\n\t") or 127 <= ord(c) < 160})
    assert not raw, f"raw control characters {raw!r} in {output!r}"


# -- 1. node ids ------------------------------------------------------------------
BAD_IDS = {
    "the user map": keys.USER_ID_MAP,
    "the leases": keys.LEASES,
    "another moi key": "moi:relay",
    "a children set": "3f1c2b6e-0000-4000-8000-000000000000:children",
    "a channel": "x:pubsub",
    "empty": "",
    "a space": "my group",
    "a tab": "my\tgroup",
    "an escape": f"group{CLEAR}",
    "a no-break space": "my\xa0group",
    "too long": "g" * 129,
}


@pytest.mark.parametrize("what", list(BAD_IDS))
def test_submit_refuses_a_parent_that_cannot_be_a_node(moi_env, what):
    client, cluster = runtime.redis_client(), ctxs["default"].client
    before, sent = state(client), len(cluster.history)
    with pytest.raises(InvalidIdError, match=r"^invalid parent id ") as refused:
        submit("default", BAD_IDS[what], "job", None, add, 1, 2)
    assert "\n" not in str(refused.value) and "\x1b" not in str(refused.value)
    assert state(client) == before
    assert len(cluster.history) == sent  # nothing was handed to the cluster either


@pytest.mark.parametrize("what", ["the user map", "the leases", "a children set", "a tab"])
def test_create_info_and_store_refuse_ids_that_cannot_be_nodes(moi_env, what):
    bad = BAD_IDS[what]
    client = runtime.redis_client()
    before = state(client)
    with pytest.raises(InvalidIdError, match=r"^invalid id "):
        create_info("x", "group", id=bad, store=True)
    with pytest.raises(InvalidIdError, match=r"^invalid parent id "):
        create_info("x", "job", parent=bad, store=True)
    hand_made = {"id": bad, "type": "group", "parent": None, "status": None}
    with pytest.raises(InvalidIdError):
        runtime.store().create(hand_made)
    job = {"id": str(uuid.uuid4()), "type": "job", "parent": bad, "status": "Queued"}
    with pytest.raises(InvalidIdError):
        with runtime.store().creating(job, parent_if_missing=hand_made):
            pass
    with pytest.raises(InvalidIdError, match=r"^invalid job id "):
        cancel(bad)
    assert state(client) == before


def test_error_messages_say_why(moi_env):
    reasons = {
        keys.USER_ID_MAP: "it is one of moi's own keys",
        keys.LEASES: "it is one of moi's own keys",
        "a:children": "an id cannot hold ':'",
        "": "it is empty",
        "a b": "it contains spaces or control characters",
        "g" * 129: "it is longer than 128 characters",
    }
    for bad, reason in reasons.items():
        with pytest.raises(InvalidIdError) as refused:
            keys.check_node_id(bad)
        assert reason in str(refused.value)
    with pytest.raises(InvalidIdError, match="must be a string, not int"):
        keys.check_node_id(42)
    assert issubclass(InvalidIdError, MoiError) and issubclass(InvalidIdError, ValueError)


@pytest.mark.parametrize(
    "good", ["no-user", "3f1c2b6e-0000-4000-8000-000000000000", "group_1.b", "équipe-7", "g" * 128]
)
def test_ids_callers_use_are_still_nodes(moi_env, good):
    assert keys.check_node_id(good) == good
    info = create_info("fine", "job", parent=good, context="default")
    assert info["parent"] == good


def test_submit_nouser_and_a_named_parent_still_work(moi_env, user):
    job_id, parent, ar = submit_nouser(add, 2, 3)
    assert parent == "no-user" and ar.get(timeout=30) == 5
    assert job_id in runtime.store().children("no-user")
    job_id, parent, ar = submit("default", user, "named parent", None, add, 1, 1)
    assert parent == user and ar.get(timeout=30) == 2
    assert runtime.store().require(user)["type"] == "group"


# -- 2. user names and group ids ------------------------------------------------------
def _alice_with_a_job(user: str) -> tuple[str, list[str]]:
    group_id = get_id_from_user(user)
    job = create_info("alice's job", "job", parent=group_id, store=True)
    return group_id, [group_id, job["id"]]


def _tree(ids: list[str]) -> dict[str, Any]:
    r = runtime.redis_client()
    return {i: (r.get(keys.info(i)), r.smembers(keys.children(i)), r.ttl(i) > 0) for i in ids}


def test_a_user_named_as_another_users_group_is_refused(moi_env, user):
    group_id, ids = _alice_with_a_job(user)
    client = runtime.redis_client()
    before, tree = state(client), _tree(ids)
    for name in (group_id, group_id.upper(), f"{{{group_id}}}", group_id.replace("-", "")):
        with pytest.raises(InvalidUserError, match="user names cannot be UUIDs"):
            get_id_from_user(name)
    after = state(client)
    changed = {
        k
        for k in after["keys"].keys() | before["keys"].keys()
        if after["keys"].get(k) != before["keys"].get(k)
    }
    assert after == before and _tree(ids) == tree, changed
    assert get_id_from_user(user) == group_id  # alice herself is unaffected
    assert get_user_from_id(group_id) == user


def test_the_cli_refuses_a_uuid_as_user_and_writes_nothing(moi_env, user):
    group_id, ids = _alice_with_a_job(user)
    client = runtime.redis_client()
    before, tree = state(client), _tree(ids)
    proc = moi_cli("submit", "--user", group_id, "--cmd", "return 1")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == (
        f"Error: invalid user name '{group_id}': user names cannot be UUIDs, which are group "
        "ids; choose another name\n"
    )
    empty = CliRunner().invoke(main, ["submit", "--user", "", "--cmd", "return 1"])
    assert empty.exit_code == 1 and empty.stderr == "Error: a user name cannot be empty\n"
    after = state(client)
    changed = {
        k
        for k in after["keys"].keys() | before["keys"].keys()
        if after["keys"].get(k) != before["keys"].get(k)
    }
    assert after == before and _tree(ids) == tree, changed


def test_the_websocket_refuses_a_uuid_as_user(moi_env, user):
    """Checked through the async store the websocket handler asks for a user's group."""
    group_id, ids = _alice_with_a_job(user)
    client = runtime.redis_client()
    before, tree = state(client), _tree(ids)

    async def user_group(name: str) -> str:
        r = aioredis.from_url(runtime.redis_url())
        try:
            return await AsyncStore(r, runtime.settings().key_timeout).user_group(name)
        finally:
            await r.aclose()

    with pytest.raises(InvalidUserError, match="user names cannot be UUIDs"):
        asyncio.run(user_group(group_id))
    after = state(client)
    changed = {
        k
        for k in after["keys"].keys() | before["keys"].keys()
        if after["keys"].get(k) != before["keys"].get(k)
    }
    assert after == before and _tree(ids) == tree, changed
    assert asyncio.run(user_group(user)) == group_id


@pytest.mark.parametrize("name", ["", "bell\x07", f"clear{CLEAR}", "tab\tbed", "c1\x9b", "nl\n"])
def test_empty_names_and_names_with_control_characters_are_refused(moi_env, name):
    client = runtime.redis_client()
    before = state(client)
    with pytest.raises(InvalidUserError):
        get_id_from_user(name)
    assert state(client) == before


@pytest.mark.parametrize("name", ["alice", "Jane Doe", "jane@example.org", "moi:ops", "émile"])
def test_ordinary_names_still_make_users(moi_env, name):
    name = f"{name}-{uuid.uuid4().hex[:6]}"
    group_id = get_id_from_user(name)
    assert str(uuid.UUID(group_id)) == group_id and get_id_from_user(name) == group_id
    assert get_user_from_id(group_id) == name
    assert find_user_group(name) == find_user_group(group_id) == group_id
    assert users()[name] == group_id
    assert runtime.store().require(group_id)["name"] == name


def test_lookups_tell_names_from_group_ids(moi_env, user):
    group_id, _ = _alice_with_a_job(user)
    r = runtime.redis_client()
    # a user name is not a group id
    with pytest.raises(UnknownIdError, match=f"no user has group id {user}"):
        get_user_from_id(user)
    # a user named as a UUID, left by an older moi or another program: neither way resolves
    named, its_group = str(uuid.uuid4()), str(uuid.uuid4())
    # a reverse entry claiming alice's name for a group that is not hers
    forged = str(uuid.uuid4())
    r.hset(keys.USER_ID_MAP, mapping={named: its_group, its_group: named, forged: user})
    try:
        for key in (named, its_group):
            with pytest.raises(UnknownIdError, match=f"Unknown key: {key}"):
                find_user_group(key)
            with pytest.raises(UnknownIdError):
                get_user_from_id(key)
        with pytest.raises(UnknownIdError):
            get_user_from_id(forged)
        with pytest.raises(UnknownIdError):
            find_user_group(forged)
        assert named not in users() and users()[user] == group_id
        assert find_user_group(user) == find_user_group(group_id) == group_id
    finally:
        r.hdel(keys.USER_ID_MAP, named, its_group, forged)


def test_a_group_id_in_the_map_that_is_a_moi_key_is_refused(moi_env, user):
    r = runtime.redis_client()
    r.hset(keys.USER_ID_MAP, user, keys.LEASES)  # written by some other program
    before = state(r)
    try:
        with pytest.raises(InvalidIdError, match="one of moi's own keys"):
            get_id_from_user(user)
        with pytest.raises(InvalidIdError, match="one of moi's own keys"):
            find_user_group(user)
        assert state(r) == before
    finally:
        r.hdel(keys.USER_ID_MAP, user)


@pytest.mark.usefixtures("moi_env")
class TestWebsocketUser(AsyncHTTPTestCase):
    """A browser whose (app-chosen) user name is another user's group id."""

    def get_app(self) -> Application:
        self.relay = Relay(runtime.redis_url(), runtime.settings().key_timeout)
        return Application(
            [(r"/moi-ws/", MOIMessageHandler, {"relay": self.relay})], cookie_secret="s"
        )

    def tearDown(self) -> None:
        self.io_loop.run_sync(self.relay.stop)
        super().tearDown()

    @gen_test(timeout=30)
    async def test_sees_nothing_of_the_other_users_tree(self) -> None:
        group_id, ids = _alice_with_a_job(f"ws-{uuid.uuid4().hex[:8]}")
        before = _tree(ids)
        cookie = create_signed_value("s", "user", group_id).decode()
        url = f"ws://127.0.0.1:{self.get_http_port()}/moi-ws/"
        with ExpectLog(app_log, ".*", required=False):
            try:
                ws = await websocket_connect(HTTPRequest(url, headers={"Cookie": f"user={cookie}"}))
            except HTTPClientError:  # refused outright: just as good
                return
            with contextlib.suppress(WebSocketClosedError):
                await ws.write_message(json.dumps({"get": []}))
            message = await asyncio.wait_for(ws.read_message(), 10)
        assert message is None, f"the server answered {message!r}"  # it closed the connection
        assert _tree(ids) == before


# -- 3. what the CLI prints ---------------------------------------------------------------
def test_printable_escapes_control_characters_only():
    from moi.cli import printable

    assert printable(EVIL) == SHOWN
    assert printable("a\nb\tc\rd\x00\x7f") == "a\\x0ab\\x09c\\x0dd\\x00\\x7f"
    assert printable("a\nb\tc\rd", multiline=True) == "a\nb\tc\\x0dd"
    assert printable("émile 日本 <b> \\x1b") == "émile 日本 <b> \\x1b"
    assert printable(None) == "None"


def test_job_and_userjobs_print_escape_sequences_as_text(moi_env, user, tmp_path):
    group_id = get_id_from_user(user)
    ok_id, _, ok = submit("default", group_id, EVIL, None, evil_result)
    bad_id, _, _ = submit("default", group_id, EVIL, None, evil_failure)
    release = tmp_path / "release"
    busy_id, _, _ = submit("default", group_id, "busy", None, evil_status, str(release))
    try:
        assert ok.get(timeout=30) == EVIL
        wait(bad_id, timeout=30)
        wait_for_status(busy_id, EVIL)
        outputs = {}
        for label, args in {
            "ok": ["job", "--job-id", ok_id],
            "failed": ["job", "--job-id", bad_id],
            "userjobs": ["userjobs", "--key", user],
            "summary": ["userjobs", "--key", user, "--summary"],
        }.items():
            in_process = CliRunner().invoke(main, args)
            proc = moi_cli(*args)
            assert in_process.exit_code == proc.returncode == 0, proc.stderr
            assert in_process.stdout == proc.stdout
            assert_terminal_safe(proc.stdout + proc.stderr)
            outputs[label] = proc.stdout
    finally:
        release.touch()
    ok_lines = outputs["ok"].splitlines()
    assert f"name\t\t: {SHOWN}" in ok_lines and f"result\t\t: {SHOWN}" in ok_lines
    failed = outputs["failed"].split("result\t\t: ", 1)[1]
    assert failed.startswith("Traceback (most recent call last):\n")  # the lines stay lines
    assert f"ValueError: {SHOWN}" in failed.splitlines()
    assert f"\tid: {busy_id}\tstatus: {SHOWN}" in outputs["summary"].splitlines()[-1]
    assert outputs["userjobs"].count(f"name\t\t: {SHOWN}") == 2


def _lines(stream: Any, out: queue.Queue) -> None:
    for line in stream:
        out.put(line)


def test_block_status_lines_print_escape_sequences_as_text(moi_env, user, tmp_path):
    release = tmp_path / "release"
    cmd = (
        "import os, time\n"
        f"moi_update_status({EVIL!r})\n"
        "deadline = time.monotonic() + 60\n"
        f"while not os.path.exists({str(release)!r}) and time.monotonic() < deadline:\n"
        "    time.sleep(0.02)\n"
        f"return {EVIL!r}"
    )
    args = ["submit", "--user", user, "--name", EVIL, "--cmd", cmd, "--block"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moi.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=_lines, args=(proc.stderr, lines), daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while not any("status: evil" in line for line in seen):
            seen.append(lines.get(timeout=max(0.01, deadline - time.monotonic())))
        release.touch()  # the custom status has been printed: let the job end
        proc.wait(timeout=60)
        reader.join(timeout=10)
        stdout = proc.stdout.read()
    finally:
        release.touch()
        if proc.poll() is None:
            proc.kill()
    while not lines.empty():
        seen.append(lines.get())
    stderr = "".join(seen)
    assert proc.returncode == 0, stderr
    assert_terminal_safe(stdout + stderr)
    statuses = [
        line.rstrip("\n").split("  status: ", 1)[1] for line in seen if "  status: " in line
    ]
    assert statuses[-2:] == [SHOWN, "Success"], stderr
    assert f"name\t\t: {SHOWN}" in stdout.splitlines()
    assert f"result\t\t: {SHOWN}" in stdout.splitlines()


def test_users_and_errors_print_escape_sequences_as_text(moi_env):
    name, group_id = f"{EVIL}-{uuid.uuid4().hex[:6]}", str(uuid.uuid4())
    r = runtime.redis_client()
    r.hset(keys.USER_ID_MAP, mapping={name: group_id, group_id: name})  # another program's user
    try:
        proc = moi_cli("users")
        assert proc.returncode == 0, proc.stderr
        assert_terminal_safe(proc.stdout)
        assert f"{SHOWN}-{name[-6:]}\t{group_id}" in proc.stdout.splitlines()
    finally:
        r.hdel(keys.USER_ID_MAP, name, group_id)
    unknown = moi_cli("userjobs", "--key", f"nobody{CLEAR}")
    assert unknown.returncode == 1
    assert unknown.stderr == "Error: Unknown key: nobody\\x1b[2J\n"
