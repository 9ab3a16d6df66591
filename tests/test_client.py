"""moi.client.Client and the CLI's --server mode against a real multi-user ``moi serve``."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import moi_cli, wait_for_status
from test_api import People, running_server

from moi import auth, runtime
from moi.client import AuthError, Client, JobFinishedError
from moi.context import resolve
from moi.errors import MoiError, UnknownIdError
from moi.group import get_id_from_user

pytestmark = pytest.mark.usefixtures("no_leftover_keys")


@pytest.fixture(scope="module")
def url(moi_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("client-templates") / "templates.toml"
    path.write_text('[pinger]\njob_type = "ping"\nparams = { ping = "templated" }\n')
    os.environ["MOI_TEMPLATES"] = str(path)
    try:
        with running_server() as found:
            yield found
    finally:
        os.environ.pop("MOI_TEMPLATES", None)


@pytest.fixture
def people(moi_env: dict[str, str]) -> People:
    return People()


@pytest.fixture
def alice(url: str, people: People) -> Client:
    return Client(url, people.keys["alice"])


@pytest.fixture
def bob(url: str, people: People) -> Client:
    return Client(url, people.keys["bob"])


def test_submit_wait_get_and_list(alice: Client) -> None:
    info = alice.submit(type="ping", environ={"ping": 5}, name="five")
    assert info["status"] in ("Queued", "Running", "Success") and info["name"] == "five"
    done = alice.wait(info["id"], timeout=60)
    assert done["status"] == "Success" and done["result"]["pong"] == 5
    assert alice.get(info["id"]) == done
    other = alice.submit(cmd="return 6", wait=60)
    assert other["status"] == "Success" and other["result"] == 6
    page = alice.list(limit=1)
    assert [j["id"] for j in page["jobs"]] == [other["id"]] and page["next"]
    rest = alice.list(limit=1, cursor=page["next"])
    assert [j["id"] for j in rest["jobs"]] == [info["id"]]
    assert [j["id"] for j in alice.list(type="ping")["jobs"]] == [info["id"]]


def test_another_users_job_is_unknown_through_every_verb(alice: Client, bob: Client) -> None:
    info = alice.submit(type="ping", environ={}, wait=60)
    for verb in (bob.get, bob.log, bob.cancel, bob.retry, bob.remove, bob.run):
        with pytest.raises(UnknownIdError, match="no job"):
            verb(info["id"])
    assert bob.list()["jobs"] == []
    assert alice.get(info["id"])["status"] == "Success"  # nothing changed


def test_a_jobs_output_through_the_log_endpoint(alice: Client) -> None:
    cmd = "for i in range(5):\n    print('line', i)\nreturn 'done'"
    info = alice.submit(cmd=cmd, wait=60)
    assert info["status"] == "Success", info
    whole = alice.log(info["id"])
    assert whole["lines"] == [f"line {i}" for i in range(5)]
    assert whole["start"] == 0 and whole["next"] == whole["total"] == 5
    part = alice.log(info["id"], start=3, limit=1)
    assert part["lines"] == ["line 3"] and part["next"] == 4
    with pytest.raises(MoiError, match="from must be"):
        alice.log(info["id"], start=-1)


def test_cancel_retry_remove_and_run(alice: Client) -> None:
    slow = alice.submit(cmd="import time; time.sleep(60)")
    wait_for_status(slow["id"], "Running")
    assert alice.cancel(slow["id"])["outcome"] == "requested"
    assert alice.wait(slow["id"], timeout=60)["status"] == "Cancelled"
    with pytest.raises(JobFinishedError, match="finished"):
        alice.cancel(slow["id"])
    again = alice.retry(slow["id"])
    assert again["retry_of"] == slow["id"]
    alice.cancel(again["id"])
    pending = alice.submit(template="pinger", pending=True)
    assert pending["status"] == "Pending"
    alice.run(pending["id"])
    assert alice.wait(pending["id"], timeout=60)["result"]["pong"] == "templated"
    alice.remove(pending["id"])
    with pytest.raises(UnknownIdError):
        alice.get(pending["id"])


def test_types_templates_nodes_and_health(alice: Client) -> None:
    assert "ping" in {t["name"] for t in alice.types()}
    assert "pinger" in [t["name"] for t in alice.templates()]
    contexts = {c["context"]: c for c in alice.nodes()}
    assert contexts["default"]["reachable"] and len(contexts["default"]["engines"]) == 2
    health = alice.health()
    assert health["redis"] == "ok" and health["contexts"]["offline"] == "not ok"


def test_errors_are_mois_own(url: str, people: People, alice: Client) -> None:
    with pytest.raises(AuthError, match="key"):
        Client(url, "moi_00000000_" + "z" * 43).list()
    with pytest.raises(MoiError, match="unknown template"):
        alice.submit(template="nope")
    with pytest.raises(MoiError, match="cannot reach"):
        Client("http://127.0.0.1:9", people.keys["alice"], timeout=5).list()
    with pytest.raises(MoiError, match="http"):
        Client("ftp://example.org", "k")
    reader = Client(url, people.keys["reader"])
    with pytest.raises(AuthError, match="read-only"):
        reader.submit(type="ping")
    assert people.keys["alice"] not in repr(alice)


# -- the CLI's --server mode ------------------------------------------------------------
def _env(url: str | None, key: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MOI_SERVER", "MOI_KEY")}
    if url:
        env["MOI_SERVER"] = url
    if key:
        env["MOI_KEY"] = key
    return env


def test_cli_submits_and_shows_through_the_server(url: str, people: People) -> None:
    env = _env(None, people.keys["alice"])
    done = moi_cli(
        "--server", url, "submit", "--type", "ping", "--environ", '{"ping": 1}', "--block", env=env
    )
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.split("Submitted job id: ", 1)[1].split()[0]
    assert "'pong': 1" in done.stdout or '"pong": 1' in done.stdout
    assert "status: Success" in done.stderr
    shown = moi_cli("job", "--job-id", job_id, env=_env(url, people.keys["alice"]))
    assert shown.returncode == 0 and job_id in shown.stdout and "Success" in shown.stdout
    theirs = moi_cli("job", "--job-id", job_id, env=_env(url, people.keys["bob"]))
    assert theirs.returncode == 1 and f"no job {job_id}" in theirs.stderr
    assert runtime.store().require(job_id)["parent"] == get_id_from_user(people.names["alice"])


def test_cli_server_mode_needs_a_key_from_the_environment_or_a_file(
    url: str, people: People, tmp_path: Path
) -> None:
    missing = moi_cli("--server", url, "nodes", env=_env(None, None))
    assert missing.returncode == 1 and "MOI_KEY" in missing.stderr
    key_file = tmp_path / "key"
    key_file.write_text(people.keys["alice"] + "\n")
    key_file.chmod(0o600)
    done = moi_cli("--server", url, "--key-file", str(key_file), "nodes", env=_env(None, None))
    assert done.returncode == 0 and "context default" in done.stdout, done.stderr
    key_file.chmod(0o644)
    shared = moi_cli("--server", url, "--key-file", str(key_file), "nodes", env=_env(None, None))
    assert shared.returncode == 1 and str(key_file) in shared.stderr
    local_only = moi_cli("userjobs", "--key", "x", env=_env(url, people.keys["alice"]))
    assert local_only.returncode == 2 and "--server" in local_only.stderr
    auth.revoke(auth.prefix_of(people.keys["alice"]), r=runtime.redis_client())
    revoked = moi_cli("nodes", env=_env(url, people.keys["alice"]))
    assert revoked.returncode == 1 and "key" in revoked.stderr


def test_moi_nodes_lists_the_local_engines(moi_env: dict[str, str]) -> None:
    resolve(None).client.wait_for_engines(2, timeout=120)  # both registered, first
    # a new process connects to the controller and asks each engine where it runs: a
    # busy CI machine once listed no engine within the default 5 s
    done = moi_cli("nodes", "--timeout", "60", env=_env(None, None))
    assert done.returncode == 0, done.stderr
    default = done.stdout.split("context default", 1)[1].split("\ncontext ", 1)[0]
    assert "\treachable" in default.splitlines()[0], done.stdout
    engines = [line for line in default.splitlines() if line.startswith("  ") and "\t" in line]
    assert len([e for e in engines if not e.strip().startswith("engine")]) == 2  # its two
    assert "context offline" in done.stdout and "unreachable" in done.stdout


def test_cli_cancels_retries_and_lists_types_through_the_server(
    url: str, people: People, alice: Client
) -> None:
    env = _env(url, people.keys["alice"])
    slow = alice.submit(cmd="import time; time.sleep(60)")
    wait_for_status(slow["id"], "Running")
    done = moi_cli("cancel", "--job-id", slow["id"], env=env)
    assert done.returncode == 0 and f"Job {slow['id']}: Cancelled" in done.stdout, done.stderr
    again = moi_cli("retry", "--job-id", slow["id"], env=env)
    assert again.returncode == 0, again.stderr
    new_id = again.stdout.split("Submitted job id: ", 1)[1].split()[0]
    assert alice.get(new_id)["retry_of"] == slow["id"]
    alice.cancel(new_id)
    types = moi_cli("types", env=env)
    assert types.returncode == 0 and "ping\tbuilt-in" in types.stdout
    templates = moi_cli("templates", env=env)
    assert templates.returncode == 0 and "pinger\tping" in templates.stdout


# -- moi --server URL watch: the live view over the server's websocket, as a key -------
def test_remote_watch_json_shows_ones_own_jobs_only(url: str, people: People) -> None:
    mine = Client(url, people.keys["alice"]).submit(type="ping", environ={}, wait=60)
    theirs = Client(url, people.keys["bob"]).submit(type="ping", environ={}, wait=60)
    done = moi_cli("--server", url, "watch", "--json", env=_env(None, people.keys["alice"]))
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    finished = {job["id"] for job in seen["finished"]}
    assert mine["id"] in finished and theirs["id"] not in finished
    assert seen["group_id"] == get_id_from_user(people.names["alice"])
    assert seen["counts"].get("Success", 0) == seen["jobs"] >= 1
    refused = moi_cli("--server", url, "watch", "--json", env=_env(None, "moi_00000000_nope"))
    assert refused.returncode == 1 and "the key was refused" in refused.stderr


def test_remote_watch_follows_changes_live(url: str, people: People) -> None:
    import time

    from moi.cli.watch import RemoteTree

    tree = RemoteTree(url, people.keys["alice"])
    try:
        with tree.following():
            before = len(tree.jobs())
            job = Client(url, people.keys["alice"]).submit(type="ping", environ={"ping": 2})
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                tree.poll(0.5)
                if tree.nodes.get(job["id"], {}).get("status") == "Success":
                    break
            assert tree.nodes[job["id"]]["status"] == "Success"
            assert len(tree.jobs()) == before + 1
    finally:
        tree.close()
