"""Templates, the job manager and status callbacks (issue 11, items 6-8; real Redis and cluster).

Templates come from a TOML file and from the entry points of the test plug-in
package (``plugin-square``, a dict; ``plugin-list``, a callable returning a
list).  A manager's job starts ``Pending``, runs once on ``execute()``, and is
never shown to another user; callbacks need the job's secret and never
reopen a finished job.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from support import subscribed, wait_for_message, wait_for_status

from moi import keys, manager, runtime, watchdog
from moi.context import resolve
from moi.errors import MoiError, UnknownIdError
from moi.group import get_id_from_user
from moi.manager import CallbackError, CallbackSecretError, JobFinishedError, JobManager
from moi.status import Status, is_terminal

# (fixture plugin: conftest.py)


@pytest.fixture
def toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A templates file named by MOI_TEMPLATES."""
    path = tmp_path / "templates.toml"
    path.write_text(
        """
[seven-squared]
job_type = "square"
description = "7 * 7"
params = { n = 7, label = "from the file" }

[echo-this]
job_type = "echo"
params = { said = "hello" }

[tell]
job_type = "python"
description = "writes the callback URL it sees to the file `out`"
params = { cmd = "open(environ['out'], 'w').write(environ['callback_url'])" }
"""
    )
    monkeypatch.setenv("MOI_TEMPLATES", str(path))
    return path


@pytest.fixture
def jm(moi_env: dict[str, str], plugin: str, toml: Path) -> JobManager:
    return JobManager()


# -- templates --------------------------------------------------------------------------
def test_templates_come_from_the_toml_file_and_the_entry_points(jm: JobManager, toml: Path) -> None:
    found = manager.templates()
    assert found["seven-squared"].job_type == "square"
    assert found["seven-squared"].params == {"n": 7, "label": "from the file"}
    assert found["seven-squared"].source == str(toml)
    assert found["plugin-square"].params == {"n": 3}
    assert found["plugin-square"].source == "entry point moi_test_plugin:SQUARE_TEMPLATE"
    assert found["plugin-ping"].job_type == "ping"
    assert found["plugin-ping"].source == "entry point moi_test_plugin:templates"


def test_the_default_templates_file_is_in_the_config_directory(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert manager.templates_file(env) == tmp_path / "moi" / "templates.toml"
    (tmp_path / "moi").mkdir()
    (tmp_path / "moi" / "templates.toml").write_text('[mine]\njob_type = "ping"\n')
    assert manager.templates(env)["mine"].job_type == "ping"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[x\njob_type = 1", "not valid TOML"),
        ("[x]\nparams = {a = 1}\n", "job_type must be a type's name"),
        ('[x]\njob_type = "ping"\nparms = {a = 1}\n', "unknown field(s) parms"),
        ('[x]\njob_type = "ping"\nparams = 3\n', "params must be a table"),
    ],
)
def test_a_bad_templates_file_is_refused_with_a_clear_message(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "t.toml"
    path.write_text(text)
    with pytest.raises(MoiError, match=message.replace("(", r"\(").replace(")", r"\)")):
        manager.templates({"MOI_TEMPLATES": str(path)})


def test_a_missing_moi_templates_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(MoiError, match="does not exist"):
        manager.templates({"MOI_TEMPLATES": str(tmp_path / "nope.toml")})


# -- Pending, execute, cancel -------------------------------------------------------------
def test_create_job_saves_a_pending_job_in_the_users_tree_and_announces_it(
    jm: JobManager, user: str
) -> None:
    group_id = get_id_from_user(user)
    with subscribed(runtime.redis_client(), keys.pubsub(group_id)) as sub:
        job = jm.create_job("sq", user, "seven-squared", n=4)
        assert json.loads(wait_for_message(sub)["data"]) == {"add": [job.id]}
    info = runtime.store().get(job.id)
    assert info is not None and info["status"] == "Pending" == job.status
    assert info["template"] == "seven-squared" and info["job_type"] == "square"
    assert info["environ"] == {"n": 4, "label": "from the file", "job_type": "square"}
    assert info["parent"] == group_id
    assert job.id in {i["id"] for i in runtime.store().tree(group_id)}


def test_execute_runs_the_pending_job_with_the_same_id(jm: JobManager, user: str) -> None:
    job = jm.create_job("sq", user, "seven-squared", n=5)
    job.execute()
    info = wait_for_status(job.id, is_terminal)
    assert info["status"] == "Success", info
    assert job.result["square"] == 25 and job.result["label"] == "from the file"
    assert job.status == "Success" and info["job_type"] == "square"


def test_a_template_from_an_entry_point_runs(jm: JobManager, user: str) -> None:
    job = jm.create_job("plug", user, "plugin-square")
    job.execute()
    assert wait_for_status(job.id, is_terminal)["result"]["square"] == 9


def test_execute_runs_a_job_once_only(jm: JobManager, user: str) -> None:
    job = jm.create_job("once", user, "echo-this")
    assert resolve(None).bv is not None  # the view exists before the threads race for the job
    outcomes: list[str] = []

    def run() -> None:
        try:
            jm.get_job(job.id, user=user).execute()
            outcomes.append("ran")
        except JobFinishedError:
            outcomes.append("refused")

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["ran", "refused", "refused"]
    assert wait_for_status(job.id, is_terminal)["status"] == "Success"
    with pytest.raises(JobFinishedError, match="not Pending"):
        job.execute()


def test_cancelling_a_pending_job_ends_it_without_running(jm: JobManager, user: str) -> None:
    job = jm.create_job("never", user, "echo-this")
    assert job.cancel() == "cancelled"
    assert job.status == "Cancelled" and job.info["date_start"] is None
    with pytest.raises(JobFinishedError):
        job.execute()
    assert runtime.store().require(job.id)["date_start"] is None
    with pytest.raises(JobFinishedError, match="already finished"):
        job.cancel()


def test_a_pending_job_is_not_failed_by_the_watchdog_and_wait_waits(
    jm: JobManager, user: str
) -> None:
    from moi.job import wait

    job = jm.create_job("idle", user, "echo-this")
    watchdog.sweep(runtime.store())
    watchdog.Reconciler(check_after=0, grace=0).reconcile(runtime.store())
    with pytest.raises(TimeoutError, match="still Pending"):
        wait(job.id, timeout=1.5)
    assert job.status == "Pending"


def test_save_changes_a_pending_job_only(jm: JobManager, user: str) -> None:
    job = jm.create_job("edit", user, "seven-squared")
    job.save(n=6, name="edited")
    assert job.info["environ"]["n"] == 6 and job.info["name"] == "edited"
    job.execute()
    assert wait_for_status(job.id, is_terminal)["result"]["square"] == 36
    with pytest.raises(JobFinishedError):
        job.save(n=1)


def test_bad_template_and_params_write_nothing(jm: JobManager, user: str) -> None:
    before = len(runtime.store().tree(get_id_from_user(user)))
    with pytest.raises(MoiError, match="unknown template 'nope'; known: .*seven-squared"):
        jm.create_job("x", user, "nope")
    with pytest.raises(MoiError, match="JSON values"):
        jm.create_job("x", user, "echo-this", bad=object())
    assert len(runtime.store().tree(get_id_from_user(user))) == before


def test_a_manager_on_a_redis_url_makes_users_and_jobs_there(
    moi_env: dict[str, str], plugin: str, toml: Path, user: str
) -> None:
    jm = JobManager(moi_env["MOI_REDIS_URL"])
    assert jm.store is not runtime.store()
    job = jm.create_job("by-url", user, "echo-this")
    group = jm.user_group(user, create=False)
    assert group is not None and runtime.store().require(group)["name"] == user
    assert job.id in runtime.store().children(group)
    assert [j.id for j in jm.list_jobs(user=user)] == [job.id]


# -- users never see each other's jobs ------------------------------------------------------
def test_list_and_get_never_cross_users(jm: JobManager, user: str) -> None:
    other = user + "-other"
    mine = jm.create_job("a", user, "echo-this")
    theirs = jm.create_job("b", other, "echo-this")
    assert [j.id for j in jm.list_jobs(user=user)] == [mine.id]
    assert [j.id for j in jm.list_jobs(user=other)] == [theirs.id]
    assert {mine.id, theirs.id} <= {j.id for j in jm.list_jobs()}
    assert jm.get_job(mine.id, user=user).id == mine.id
    with pytest.raises(UnknownIdError) as crossed:
        jm.get_job(theirs.id, user=user)
    with pytest.raises(UnknownIdError) as unknown:
        jm.get_job("no-such-job", user=user)
    assert str(crossed.value) == f"unknown job id: {theirs.id}"
    assert str(unknown.value) == "unknown job id: no-such-job"
    mine.cancel()
    assert [j.id for j in jm.list_jobs(user=user, status="Cancelled")] == [mine.id]
    assert jm.list_jobs(user=user, status="Pending") == []


def test_delete_detaches_the_job(jm: JobManager, user: str) -> None:
    job = jm.create_job("gone", user, "echo-this")
    job.delete()
    assert job.id not in {i["id"] for i in runtime.store().tree(get_id_from_user(user))}
    assert jm.list_jobs(user=user) == []
    with pytest.raises(UnknownIdError):
        jm.get_job(job.id, user=user)


# -- status callbacks ------------------------------------------------------------------------
def _secret(url: str) -> str:
    return parse_qs(urlsplit(url).query)["secret"][0]


def test_callback_url_carries_a_secret_stored_hashed(jm: JobManager, user: str) -> None:
    job = jm.create_job("cb", user, "echo-this")
    url = jm.get_job_status_callback_url("https://moi.example.org/", job.id)
    assert url.startswith(f"https://moi.example.org/api/v1/callback/{job.id}?secret=")
    secret = _secret(url)
    stored = {s.decode() for s in runtime.redis_client().smembers(keys.callback_secrets(job.id))}
    assert stored == {hashlib.sha256(secret.encode()).hexdigest()}
    with pytest.raises(UnknownIdError):
        jm.get_job_status_callback_url("https://x", "no-such-job")


def test_callbacks_update_the_job_and_a_wrong_secret_changes_nothing(
    jm: JobManager, user: str
) -> None:
    job = jm.create_job("cb", user, "echo-this")
    secret = _secret(jm.get_job_status_callback_url("http://h", job.id))
    before = runtime.redis_client().get(job.id)
    for wrong in ("", "x" * 43, secret[:-1] + ("A" if secret[-1] != "A" else "B")):
        with pytest.raises(CallbackSecretError):
            jm.apply_callback(job.id, wrong, "Success", {"hacked": True})
    with pytest.raises(CallbackSecretError):
        jm.apply_callback("no-such-job", secret, "Success")
    assert runtime.redis_client().get(job.id) == before
    with pytest.raises(CallbackError):
        jm.apply_callback(job.id, secret, "Queued")
    with pytest.raises(CallbackError):
        jm.apply_callback(job.id, secret, "bad\x1b[2J")
    group = get_id_from_user(user)
    with subscribed(runtime.redis_client(), keys.pubsub(job.id)) as sub:
        info = jm.apply_callback(job.id, secret, "Running on slurm")
        assert json.loads(wait_for_message(sub)["data"]) == {"update": [job.id]}
    assert info["status"] == "Running on slurm" and info["parent"] == group
    info = jm.apply_callback(job.id, secret, "Success", {"answer": 42})
    assert info["status"] == "Success" and info["result"] == {"answer": 42} and info["date_end"]
    final = runtime.redis_client().get(job.id)
    with pytest.raises(JobFinishedError, match="already finished"):
        jm.apply_callback(job.id, secret, "Failed", "late")
    assert runtime.redis_client().get(job.id) == final


def test_a_job_sees_its_own_callback_url_and_nobody_reads_it(
    jm: JobManager, user: str, toml: Path
) -> None:
    jm = JobManager(public_url="http://moi.test:8886")
    out = toml.with_name("seen-url")
    job = jm.create_job("sees", user, "tell", out=str(out))
    assert "callback_url" not in job.environ  # a read-only key reads the info object
    job.execute()
    info = wait_for_status(job.id, is_terminal)
    assert info["status"] == "Success", info
    url = out.read_text()  # what the job saw, written where only the test looks
    assert url.startswith(f"http://moi.test:8886/api/v1/callback/{job.id}?secret=")
    assert jm.check_secret(job.id, _secret(url))
    stored = runtime.redis_client().get(job.id)
    assert stored is not None and _secret(url).encode() not in stored  # nor in the result
    assert Status.PENDING.value == "Pending" and not is_terminal("Pending")
