"""The JSON API under /api/v1/ of a real multi-user ``moi serve`` (real HTTP, Redis, cluster).

Two users (alice, bob) and an admin, each with an API key from moi.auth: a
user never reads, lists, cancels, retries or deletes another's job (404, as
for an unknown id); bad bodies get 400/413 and change nothing; failed logins
are rate-limited (429); the OpenAPI document matches the routes; status
callbacks need the job's secret.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from support import sleeper, wait_for_status, wait_until_listening

from moi import (
    api,
    auth,
    connection,
    ctxs,
    job,
    keys,
    listing,
    manager,
    nodes,
    redis_server,
    runtime,
)
from moi.astore import AsyncStore
from moi.group import create_info, get_id_from_user
from moi.store import index_commands

SECRET = "api-test-secret"
TEMPLATES = """
[pinger]
job_type = "ping"
description = "answers its ping"
params = { ping = "from the template" }
"""

pytestmark = pytest.mark.usefixtures("no_leftover_keys")


@contextmanager
def serve_process() -> Iterator[tuple[str, Callable[[], str]]]:
    """A real multi-user ``moi serve`` (no token, keys exist) on a free port: URL and its log."""
    auth.create("server-starter", r=runtime.redis_client())  # with keys, serve is multi-user
    port = redis_server.free_port()
    env = {k: v for k, v in os.environ.items() if k != "MOI_TOKEN"}
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moi.cli", "serve", "--port", str(port)],
            stdout=log,
            stderr=log,
            env=env,
        )

        def output() -> str:
            log.seek(0)
            return log.read()

        try:
            wait_until_listening(port, proc, output)
            deadline = time.monotonic() + 30  # it prints its mode just after it listens
            while "every user with an API key" not in output():
                assert time.monotonic() < deadline and proc.poll() is None, output()
                time.sleep(0.05)
            yield f"http://127.0.0.1:{port}", output
        finally:
            proc.terminate()
            proc.wait(10)


@contextmanager
def running_server() -> Iterator[str]:
    """:func:`serve_process`'s URL."""
    with serve_process() as (url, _):
        yield url


def request(
    url: str,
    method: str,
    path: str,
    key: str | None = None,
    body: Any = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, http.client.HTTPResponse]:
    """One HTTP request; ``(status, decoded JSON answer, response)``."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    sent = {**({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    if data is not None:
        sent.setdefault("Content-Type", "application/json")
    conn.request(method, path, body=data, headers=sent)
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    try:
        decoded = json.loads(payload) if payload else None
    except ValueError:
        decoded = payload.decode(errors="replace")
    return response.status, decoded, response


@pytest.fixture(scope="module")
def templates_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("templates") / "templates.toml"
    path.write_text(TEMPLATES)
    saved = os.environ.get("MOI_TEMPLATES")
    os.environ["MOI_TEMPLATES"] = str(path)
    try:
        yield path
    finally:
        if saved is None:
            os.environ.pop("MOI_TEMPLATES", None)
        else:
            os.environ["MOI_TEMPLATES"] = saved


@pytest.fixture(scope="module")
def url(moi_env: dict[str, str], templates_file: Path) -> Iterator[str]:
    with running_server() as found:
        yield found


class People:
    """Fresh user names and their keys: ``alice``, ``bob``, ``admin``, ``reader`` (read-only)."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        r = runtime.redis_client()
        self.names = {who: f"{who}-{tag}" for who in ("alice", "bob", "admin", "reader")}
        self.keys = {
            "alice": auth.create(self.names["alice"], r=r)[0],
            "bob": auth.create(self.names["bob"], r=r)[0],
            "admin": auth.create(self.names["admin"], admin=True, r=r)[0],
            "reader": auth.create(self.names["reader"], read_only=True, r=r)[0],
        }


@pytest.fixture
def people(moi_env: dict[str, str]) -> People:
    return People()


class Api:
    """Requests to the test server as one of ``people``."""

    def __init__(self, url: str, people: People) -> None:
        self.url, self.people = url, people

    def __call__(
        self, who: str | None, method: str, path: str, body: Any = None, **query: Any
    ) -> tuple[int, Any]:
        key = self.people.keys[who] if who else None
        full = f"/api/v1{path}" + (f"?{urlencode(query)}" if query else "")
        status, answer, _ = request(self.url, method, full, key, body)
        return status, answer

    def ping(self, who: str = "alice", wait: float | None = 60, **fields: Any) -> dict[str, Any]:
        """A finished ping job of ``who``."""
        query = {"wait": wait} if wait is not None else {}
        status, info = self(
            who, "POST", "/jobs", {"type": "ping", "environ": {"ping": 1}, **fields}, **query
        )
        assert status in (200, 201), info
        return info


@pytest.fixture
def call(url: str, people: People) -> Api:
    return Api(url, people)


def error_of(answer: Any) -> str:
    assert isinstance(answer, dict) and set(answer) == {"error"}, answer
    return answer["error"]["message"]


# -- submitting ------------------------------------------------------------------------
def test_submit_a_typed_job_answers_201_then_waits_for_it(call: Api) -> None:
    status, info = call("alice", "POST", "/jobs", {"type": "ping", "environ": {"ping": 7}})
    assert (
        status == 201
        and info["job_type"] == "ping"
        and info["status"] in ("Queued", "Running", "Success")
    )
    done = wait_for_status(info["id"], "Success")
    assert done["result"]["pong"] == 7
    assert done["parent"] == get_id_from_user(call.people.names["alice"])


def test_wait_answers_the_final_info_or_202_while_it_runs(call: Api) -> None:
    info = call.ping(wait=60)
    assert info["status"] == "Success" and info["result"]["pong"] == 1
    status, slow = call(
        "alice", "POST", "/jobs", {"cmd": "import time; time.sleep(30)", "name": "slow"}, wait=0.2
    )
    assert status == 202 and slow["status"] in ("Queued", "Running")
    assert call("alice", "POST", f"/jobs/{slow['id']}/cancel")[0] == 200


def test_submit_a_system_command_and_a_named_job(call: Api) -> None:
    status, info = call(
        "alice", "POST", "/jobs", {"cmd": "echo hi", "cmd_type": "system", "name": "hello"}, wait=60
    )
    assert status == 200 and info["name"] == "hello" and info["status"] == "Success"
    assert info["result"][0] == "hi\n"


def test_a_sweep_submits_one_tracked_job_per_input(call: Api) -> None:
    body = {"cmd": "return x.upper()", "inputs": ["a", "b", "c"], "name": "sweep"}
    status, answer = call("alice", "POST", "/jobs", body)
    assert status == 201, answer
    jobs = answer["jobs"]
    assert [j["name"] for j in jobs] == ["sweep [0]", "sweep [1]", "sweep [2]"]
    finals = [call("alice", "GET", f"/jobs/{j['id']}", wait=60)[1] for j in jobs]
    assert [f["result"] for f in finals] == ["A", "B", "C"]
    assert call("bob", "GET", f"/jobs/{jobs[0]['id']}")[0] == 404
    listed = call("alice", "GET", "/jobs", name="sweep")[1]["jobs"]  # indexed as they were made
    assert [j["id"] for j in listed] == [j["id"] for j in jobs[::-1]]
    status, answer = call("alice", "POST", "/jobs", {**body, "inputs": ["d"]}, wait=5)
    assert status == 400 and "wait does not go with inputs" in error_of(answer)


def test_submit_from_a_template_and_run_a_pending_one(call: Api) -> None:
    status, info = call("alice", "POST", "/jobs", {"template": "pinger", "params": {}}, wait=60)
    assert status == 200 and info["status"] == "Success", info
    assert info["result"]["pong"] == "from the template"
    status, pending = call(
        "alice", "POST", "/jobs", {"template": "pinger", "params": {"ping": 3}, "pending": True}
    )
    assert status == 201 and pending["status"] == "Pending"
    assert call("bob", "POST", f"/jobs/{pending['id']}/run")[0] == 404
    status, ran = call("alice", "POST", f"/jobs/{pending['id']}/run")
    assert status == 200 and ran["status"] != "Pending"
    assert wait_for_status(pending["id"], "Success")["result"]["pong"] == 3
    status, answer = call("alice", "POST", f"/jobs/{pending['id']}/run")
    assert status == 409 and "Pending" in error_of(answer)


def test_submit_under_a_group_of_ones_own_only(call: Api) -> None:
    alice_group = get_id_from_user(call.people.names["alice"])
    group = create_info("batch", "group", parent=alice_group, store=True)
    info = call.ping(parent=group["id"])
    assert info["parent"] == group["id"]
    status, answer = call("bob", "POST", "/jobs", {"type": "ping", "parent": group["id"]})
    assert status == 404 and group["id"] in error_of(answer)
    status, tree = call("alice", "GET", f"/groups/{group['id']}")
    assert status == 200 and {n["id"] for n in tree["nodes"]} == {group["id"], info["id"]}
    assert call("bob", "GET", f"/groups/{group['id']}")[0] == 404
    status, whole = call("alice", "GET", f"/groups/{alice_group}")  # one's own root group
    assert status == 200 and info["id"] in {n["id"] for n in whole["nodes"]}
    assert call("bob", "GET", f"/groups/{alice_group}")[0] == 404
    listed = call("alice", "GET", "/jobs", limit=10)[1]["jobs"]
    assert info["id"] in {j["id"] for j in listed}  # jobs of subgroups are listed too


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"type": "no-such-type", "environ": {}}, "no-such-type"),
        ({"template": "no-such-template"}, "no-such-template"),
        ({"type": "ping", "environ": []}, "environ"),
        ({"type": 3}, "type"),
        ({"cmd": "return (", "cmd_type": "python"}, "compile"),
        ({"cmd": "ls", "cmd_type": "perl"}, "cmd_type"),
        ({"type": "ping", "cmd": "ls"}, "exactly one"),
        ({}, "exactly one"),
        ({"type": "ping", "colour": "red"}, "colour"),
        ({"type": "ping", "name": 5}, "name"),
        ([1, 2], "JSON object"),
        ({"type": "ping", "environ": {}, "inputs": ["a"]}, "inputs go with cmd"),
        ({"cmd": "return x", "inputs": []}, "inputs is empty"),
        ({"cmd": "return x", "inputs": "abc"}, "list of strings"),
        ({"cmd": "return x", "inputs": [1, 2]}, "list of strings"),
        ({"cmd": "return x", "inputs": ["a"] * 10_001}, "at most 10,000"),
    ],
)
def test_bad_bodies_get_400_and_write_nothing(call: Api, body: Any, needle: str) -> None:
    before = call("alice", "GET", "/jobs")[1]["jobs"]
    status, answer = call("alice", "POST", "/jobs", body)
    assert status == 400 and needle in error_of(answer)
    assert call("alice", "GET", "/jobs")[1]["jobs"] == before


def test_a_body_that_is_not_json_gets_400(url: str, people: People) -> None:
    for raw in (b"{nope", b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000):
        status, answer, _ = request(url, "POST", "/api/v1/jobs", people.keys["alice"], raw=raw)
        assert status == 400 and "not JSON" in error_of(answer), raw[:10]


def test_a_2_mb_body_is_refused_before_it_is_read(url: str, people: People) -> None:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.putrequest("POST", "/api/v1/jobs")
    conn.putheader("Authorization", f"Bearer {people.keys['alice']}")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(2 * 1024 * 1024))
    conn.endheaders(b'{"type": "ping", "environ": {"pad": "')  # most of it never sent
    response = conn.getresponse()
    assert response.status == 413
    assert "bytes" in error_of(json.loads(response.read()))
    conn.close()


# -- reading and listing ------------------------------------------------------------------
def test_get_a_job_and_unknown_or_other_users_ids_alike_404(call: Api) -> None:
    info = call.ping()
    assert call("alice", "GET", f"/jobs/{info['id']}") == (200, info)
    theirs = call("bob", "GET", f"/jobs/{info['id']}")
    unknown = call("bob", "GET", f"/jobs/{uuid.uuid4()}")
    assert theirs[0] == unknown[0] == 404
    assert error_of(theirs[1]) == f"no job {info['id']}"
    assert error_of(unknown[1]).startswith("no job ")
    assert call("alice", "GET", "/jobs/user-id-map")[0] == 404


def test_list_newest_first_with_filters_and_a_cursor(call: Api) -> None:
    made = [call.ping(name=f"job-{n}") for n in range(5)]
    failed = call(
        "alice", "POST", "/jobs", {"cmd": "raise ValueError('no')", "name": "broken"}, wait=60
    )[1]
    assert failed["status"] == "Failed"
    status, page = call("alice", "GET", "/jobs", limit=3)
    assert status == 200 and [j["id"] for j in page["jobs"]] == [
        failed["id"],
        made[4]["id"],
        made[3]["id"],
    ]
    rest = call("alice", "GET", "/jobs", limit=3, cursor=page["next"])[1]
    assert [j["id"] for j in rest["jobs"]] == [made[2]["id"], made[1]["id"], made[0]["id"]]
    if rest["next"] is not None:
        assert call("alice", "GET", "/jobs", limit=3, cursor=rest["next"])[1]["jobs"] == []
    assert [j["id"] for j in call("alice", "GET", "/jobs", status="Failed")[1]["jobs"]] == [
        failed["id"]
    ]
    assert [j["id"] for j in call("alice", "GET", "/jobs", name="JOB-3")[1]["jobs"]] == [
        made[3]["id"]
    ]
    assert len(call("alice", "GET", "/jobs", type="ping")[1]["jobs"]) == 5
    since = call("alice", "GET", "/jobs", since=time.time() + 3600)[1]
    assert since == {"jobs": [], "next": None}
    assert call("bob", "GET", "/jobs")[1] == {"jobs": [], "next": None}


def test_a_tree_written_by_moi_1_0_is_listed_after_a_server_start(people: People) -> None:
    r = runtime.redis_client()
    root = get_id_from_user(people.names["alice"])
    group = create_info("old batch", "group", parent=root)
    made = [create_info(f"old {n}", "job", parent=group["id"]) for n in range(3)]
    for n, info in enumerate([group, *made]):  # written as 1.0 did: no creation indexes
        info["date_created"] = f"2026-01-0{n + 1} 10:00:00.000000"
        r.set(keys.info(info["id"]), json.dumps(info), ex=3600 * 24 * 14)
        r.sadd(keys.children(info["parent"]), info["id"])
    r.delete(keys.indexed(root))
    newest_first = [info["id"] for info in made[::-1]]
    with running_server() as url:
        call = Api(url, people)
        deadline = time.monotonic() + 60  # the server indexes older trees as it starts
        while [j["id"] for j in call("alice", "GET", "/jobs")[1]["jobs"]] != newest_first:
            assert time.monotonic() < deadline, call("alice", "GET", "/jobs")
            time.sleep(0.05)
    assert r.exists(keys.indexed(root))
    assert r.zscore(keys.jobs_index(group["id"]), made[0]["id"]) == datetime(
        2026, 1, 2, 10
    ).timestamp()
    assert asyncio.run(_reindex(root)) == 0  # done once: entries kept, none added twice


async def _reindex(root: str) -> int:
    client = connection.async_client(runtime.redis_url())
    try:
        return await listing.reindex(AsyncStore(client, 3600), root)
    finally:
        await client.aclose()


def test_list_refuses_bad_parameters(call: Api) -> None:
    bad = ["limit=1001", "limit=0", "limit=x", "cursor=nope", "cursor=nan~x", "since=soon"]
    bad += ["since=nan", "since=inf", "since=-1e999", "limit=nan"]
    for query in bad:
        name, value = query.split("=")
        status, answer = call("alice", "GET", "/jobs", **{name: value})
        assert status == 400 and error_of(answer), query
    since = datetime.now().isoformat()  # an ISO date works
    assert call("alice", "GET", "/jobs", since=since)[0] == 200


def test_list_pages_through_same_time_jobs_without_loss(call: Api) -> None:
    group = get_id_from_user(call.people.names["alice"])
    store = runtime.store()
    ids = [f"same-{uuid.uuid4().hex[:8]}-{n}" for n in range(7)]
    with store.r.pipeline() as pipe:
        # the keys live as long as moi's own: none may expire while a later test compares
        for job_id in ids:
            info = {**create_info(job_id, "job", parent=group, id=job_id), "status": "Success"}
            pipe.set(keys.info(job_id), json.dumps(info), ex=store.key_timeout)
            pipe.sadd(keys.children(group), job_id)
            for command in index_commands(info, 1000.0, store.key_timeout):
                pipe.execute_command(*command)
        pipe.execute()
    seen: list[str] = []
    cursor = None
    while True:
        query = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = call("alice", "GET", "/jobs", **query)[1]
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == sorted(ids, reverse=True)


def test_admin_lists_and_reads_any_users_jobs(call: Api) -> None:
    info = call.ping("bob")
    listed = call("admin", "GET", "/jobs", user=call.people.names["bob"])[1]["jobs"]
    assert [j["id"] for j in listed] == [info["id"]]
    assert call("admin", "GET", f"/jobs/{info['id']}")[0] == 200
    status, answer = call("alice", "GET", "/jobs", user=call.people.names["bob"])
    assert status == 403 and "admin" in error_of(answer)
    nobody = f"nobody-{uuid.uuid4().hex[:8]}"
    assert call("admin", "GET", "/jobs", user=nobody)[0] == 404
    assert runtime.redis_client().hget(keys.USER_ID_MAP, nobody) is None  # no user was made
    bobs_group = get_id_from_user(call.people.names["bob"])  # user-id-map maps it back too
    assert call("admin", "GET", "/jobs", user=bobs_group)[0] == 404  # not a 500


# -- changing -------------------------------------------------------------------------------
def test_cancel_a_running_job_then_409_once_finished(call: Api) -> None:
    status, info = call("alice", "POST", "/jobs", {"cmd": "import time; time.sleep(60)"})
    wait_for_status(info["id"], "Running")
    assert call("bob", "POST", f"/jobs/{info['id']}/cancel")[0] == 404
    status, answer = call("alice", "POST", f"/jobs/{info['id']}/cancel")
    assert status == 200 and answer["outcome"] == "requested"
    wait_for_status(info["id"], "Cancelled")
    status, answer = call("alice", "POST", f"/jobs/{info['id']}/cancel")
    assert status == 409 and "finished" in error_of(answer)


def test_retry_runs_the_same_input_again_linked_by_retry_of(call: Api) -> None:
    first = call("alice", "POST", "/jobs", {"type": "ping", "environ": {"ping": "again"}}, wait=60)[
        1
    ]
    assert call("bob", "POST", f"/jobs/{first['id']}/retry")[0] == 404
    status, again = call("alice", "POST", f"/jobs/{first['id']}/retry", wait=60)
    assert status == 200 and again["id"] != first["id"] and again["retry_of"] == first["id"]
    assert again["result"]["pong"] == "again" and again["parent"] == first["parent"]


def test_retry_a_template_job_made_in_python_and_refuse_an_unknown_input(call: Api) -> None:
    made = manager.JobManager().create_job("made here", call.people.names["alice"], "pinger")
    made.execute()
    wait_for_status(made.id, "Success")
    status, again = call("alice", "POST", f"/jobs/{made.id}/retry", wait=60)
    assert status == 200 and again["retry_of"] == made.id
    assert again["result"]["pong"] == "from the template"
    group = get_id_from_user(call.people.names["alice"])
    job_id, _, ar = job.submit(None, group, "a function", None, sleeper, 0)
    wait_for_status(job_id, "Success")
    status, answer = call("alice", "POST", f"/jobs/{job_id}/retry")
    assert status == 400 and "not known" in error_of(answer)


def test_delete_detaches_the_job(call: Api) -> None:
    info = call.ping()
    assert call("bob", "DELETE", f"/jobs/{info['id']}")[0] == 404
    assert call("alice", "DELETE", f"/jobs/{info['id']}") == (200, {"removed": info["id"]})
    assert call("alice", "GET", f"/jobs/{info['id']}")[0] == 404
    assert info["id"] not in {j["id"] for j in call("alice", "GET", "/jobs")[1]["jobs"]}


# -- keys ------------------------------------------------------------------------------------
def test_no_wrong_or_revoked_keys_get_401(call: Api, url: str) -> None:
    assert call(None, "GET", "/jobs")[0] == 401
    status, answer, response = request(url, "GET", "/api/v1/jobs", "moi_00000000_" + "x" * 43)
    assert status == 401 and "key" in error_of(answer)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert call("alice", "GET", "/jobs")[0] == 200
    auth.revoke(auth.prefix_of(call.people.keys["alice"]), r=runtime.redis_client())
    assert call("alice", "GET", "/jobs")[0] == 401


def test_read_only_keys_read_but_never_write(call: Api) -> None:
    assert call("reader", "GET", "/jobs")[0] == 200
    status, answer = call("reader", "POST", "/jobs", {"type": "ping"})
    assert status == 403 and "read-only" in error_of(answer)
    assert call("reader", "GET", "/jobs")[1]["jobs"] == []


def test_failed_logins_are_rate_limited_per_address(
    moi_env: dict[str, str], people: People
) -> None:
    with running_server() as url:
        for _ in range(10):
            status, answer, _ = request(url, "GET", "/api/v1/jobs", "moi_00000000_" + "y" * 43)
            assert status == 401, (status, answer)
        status, answer, response = request(url, "GET", "/api/v1/jobs", people.keys["alice"])
        assert status == 429 and int(response.headers["Retry-After"]) > 0
        assert error_of(answer)


def test_the_dashboard_session_works_with_its_xsrf_token(url: str, people: People) -> None:
    status, _, response = request(url, "GET", f"/?token={people.keys['alice']}")
    cookie = response.headers["Set-Cookie"].split(";", 1)[0]
    page = request(url, "GET", "/", headers={"Cookie": cookie})[1]
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page).group(1)
    assert request(url, "GET", "/api/v1/jobs", headers={"Cookie": cookie})[0] == 200
    body = {"type": "ping", "environ": {}}
    origin = {"Cookie": cookie, "Origin": url}
    assert request(url, "POST", "/api/v1/jobs", body=body, headers=origin)[0] == 403
    status, info, _ = request(
        url, "POST", "/api/v1/jobs", body=body, headers={**origin, "X-Xsrftoken": xsrf}
    )
    assert status == 201 and info["job_type"] == "ping"


# -- the rest ----------------------------------------------------------------------------------
def test_types_and_templates(call: Api) -> None:
    types = {t["name"]: t for t in call("alice", "GET", "/types")[1]}
    assert {"ping", "echo", "python", "system"} <= set(types) and types["ping"]["error"] is None
    templates = call("alice", "GET", "/templates")[1]
    assert {
        "name": "pinger",
        "job_type": "ping",
        "params": {"ping": "from the template"},
        "description": "answers its ping",
    } in templates
    assert call(None, "GET", "/types")[0] == 401


def test_nodes_lists_engines_and_the_job_each_runs(call: Api) -> None:
    status, info = call(
        "alice", "POST", "/jobs", {"cmd": "import time; time.sleep(60)", "name": "napping"}
    )
    wait_for_status(info["id"], "Running")
    try:
        status, answer = call("alice", "GET", "/nodes")
        contexts = {c["context"]: c for c in answer["contexts"]}
        default = contexts["default"]
        assert default["reachable"] and default["controller"]
        assert len(default["engines"]) == 2
        for engine in default["engines"]:
            assert engine["host"] and isinstance(engine["pid"], int) and engine["queue"] >= 0
        running = [e["running"] for e in default["engines"] if e["running"]]
        assert {"id": info["id"], "name": "napping"} in running
        seen_by_bob = call("bob", "GET", "/nodes")[1]["contexts"]
        engines = [e for c in seen_by_bob for e in c["engines"]]
        assert info["id"] not in json.dumps(seen_by_bob) and "napping" not in json.dumps(
            seen_by_bob
        )
        assert {"id": None, "name": api.OTHERS_JOB} in [e["running"] for e in engines]
        as_admin = json.dumps(call("admin", "GET", "/nodes")[1])
        assert info["id"] in as_admin
        assert (
            not contexts["offline"]["reachable"] and "unreachable" in contexts["offline"]["error"]
        )
    finally:
        call("alice", "POST", f"/jobs/{info['id']}/cancel")


def test_health_is_open_and_says_only_ok_or_not(call: Api) -> None:
    status, answer = call(None, "GET", "/health")
    assert status == 503  # the offline context is configured but never started
    assert answer["redis"] == "ok" and answer["contexts"]["default"] == "ok"
    assert answer["contexts"]["offline"] == "not ok" and answer["ok"] is False


def test_the_openapi_document_matches_the_routes(call: Api, url: str) -> None:
    status, doc = call(None, "GET", "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    routes: set[tuple[str, str]] = set()
    for spec in api.handlers(None):  # type: ignore[arg-type]
        pattern, handler = spec.regex.pattern.rstrip("$"), spec.handler_class
        path = re.sub(r"\(\[A-Za-z0-9_\.-\]\{1,128\}\)", "{}", pattern).replace("\\", "")
        for method in ("get", "post", "delete", "put", "patch"):
            if getattr(handler, method) is not getattr(api.ApiHandler, method):
                routes.add((path, method))
    documented = {
        (re.sub(r"\{\w+\}", "{}", path), method)
        for path, ops in doc["paths"].items()
        for method in ops
    }
    assert routes == documented
    refs = re.findall(r'"\$ref": "#/components/schemas/(\w+)"', json.dumps(doc))
    assert refs and set(refs) <= set(doc["components"]["schemas"])
    info = call.ping()  # a real answer has what the Info schema requires
    assert set(doc["components"]["schemas"]["Info"]["required"]) <= set(info)
    for path, ops in doc["paths"].items():  # each documented route answers (not a 404 page)
        probe = path.replace("{job_id}", "x").replace("{group_id}", "x")
        status, answer = call(
            "alice", "GET" if "get" in ops else "POST", probe.removeprefix("/api/v1")
        )
        assert status != 404 or "no " in error_of(answer), path


def test_callbacks_need_the_jobs_secret(call: Api, url: str) -> None:
    pending = call("alice", "POST", "/jobs", {"template": "pinger", "pending": True})[1]
    callback = manager.JobManager().get_job_status_callback_url(url, pending["id"])
    path = callback.removeprefix(url)
    wrong = re.sub(r"secret=[^&]+", "secret=wrong", path)
    status, answer, _ = request(url, "POST", wrong + "&status=Working")
    assert status == 403 and error_of(answer)
    assert runtime.store().require(pending["id"])["status"] == "Pending"
    status, answer, _ = request(url, "GET", path + "&status=Working")
    assert (status, answer) == (200, {"success": True})
    assert runtime.store().require(pending["id"])["status"] == "Working"
    form = urlencode({"status": "Success", "result": json.dumps({"answer": 42})})
    status, answer, _ = request(
        url,
        "POST",
        path,
        raw=form.encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert (status, answer) == (200, {"success": True})
    done = runtime.store().require(pending["id"])
    assert done["status"] == "Success" and done["result"] == {"answer": 42}
    status, answer, _ = request(url, "POST", path + "&status=Failed")
    assert status == 409 and runtime.store().require(pending["id"])["status"] == "Success"
    other = request(url, "POST", f"/api/v1/callback/{uuid.uuid4()}?secret=x&status=Working")
    assert other[0] == 403


def test_the_access_log_never_shows_a_callback_secret(moi_env: dict[str, str]) -> None:
    pending = manager.JobManager().create_job("logged", "logger", "pinger")
    with serve_process() as (url, output):
        callback = manager.JobManager().get_job_status_callback_url(url, pending.id)
        path = callback.removeprefix(url)
        assert request(url, "POST", path + "&status=Success")[0] == 200
        assert request(url, "POST", path + "&status=Failed")[0] == 409  # logged as a warning
        secret = path.split("secret=", 1)[1]
        deadline = time.monotonic() + 10
        while f"/api/v1/callback/{pending.id}" not in output() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert f"409 POST /api/v1/callback/{pending.id} (127.0.0.1)" in output()
        assert secret not in output()


def test_a_controller_that_never_answers_is_unreachable_within_the_limit(
    moi_env: dict[str, str],
) -> None:
    real = json.loads(Path(moi_env["MOI_CLUSTER_FILE_DEFAULT"]).read_text())
    silent = {k: redis_server.free_port() if isinstance(v, int) else v for k, v in real.items()}
    fake = Path(moi_env["MOI_CLUSTER_FILE_OFFLINE"])
    fake.parent.mkdir(parents=True, exist_ok=True)
    fake.write_text(json.dumps(silent))  # ports nobody listens on: requests go unanswered
    try:
        start = time.monotonic()
        found = {c["context"]: c for c in nodes.listing(timeout=1.0)}
        assert time.monotonic() - start < 8
        offline = found["offline"]
        assert not offline["reachable"] and "did not answer within 1 s" in offline["error"]
        assert found["default"]["reachable"] and len(found["default"]["engines"]) == 2
    finally:
        fake.unlink()


def test_busy_engines_show_their_job_and_are_asked_where_they_run_once(
    moi_env: dict[str, str], user: str
) -> None:
    parent = get_id_from_user(user)
    busy = [job.submit(None, parent, f"busy {n}", None, sleeper, 60)[0] for n in range(2)]
    try:
        for job_id in busy:
            wait_for_status(job_id, "Running")
        nodes._where.clear()  # as if the engines had never been asked
        for _ in range(3):
            found = {c["context"]: c for c in nodes.listing(timeout=0.5)}
        engines = found["default"]["engines"]
        assert sorted(e["running"]["id"] for e in engines) == sorted(busy)
        for engine in engines:  # from the running job's info: engine N (host:pid)
            assert engine["host"] and isinstance(engine["pid"], int)
        client = ctxs["default"].client
        queued = client.queue_status()
        assert all(queued[e["id"]]["queue"] <= 1 for e in engines), queued  # one question each
    finally:
        for job_id in busy:
            job.cancel(job_id)
        for job_id in busy:
            wait_for_status(job_id, "Cancelled")
