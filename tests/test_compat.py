"""The surface existing users of the original moi import and call."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import ipyparallel as ipp
import pytest
from support import add, gated, processes_mentioning, unconfigured_env, wait_for_status

from moi import keys, runtime
from moi.job import wait


def reports(release: str, **kwargs: Any) -> dict[str, Any]:
    """Job: report a custom status, wait for ``release``, return what moi passed in."""
    kwargs["moi_update_status"]("step 1")
    gated(release)
    return {"context": kwargs["moi_context"], "parent": kwargs["moi_parent_id"]}


def fails(**kwargs: Any) -> None:
    """Job: always raises."""
    raise RuntimeError("dependency exploded")


def stamp(**kwargs: Any) -> float:
    """Job: the time it ran."""
    return time.time()


def test_imports_of_the_original():
    from moi import REDIS_KEY_TIMEOUT, ctx_default, ctxs, moi_js, moi_list_js, r_client
    from moi.group import create_info, get_id_from_user, get_user_from_id
    from moi.job import ctx_default as job_ctx_default
    from moi.job import ctxs as job_ctxs
    from moi.job import submit, submit_nouser, system_call

    assert REDIS_KEY_TIMEOUT == 86400 * 14
    assert job_ctxs is ctxs
    assert all(callable(f) for f in (submit, submit_nouser, system_call, create_info))
    assert all(callable(f) for f in (get_id_from_user, get_user_from_id, moi_js, moi_list_js))
    assert isinstance(ctx_default, str) and ctx_default == job_ctx_default
    assert Path(moi_js()).name == "moi.js" and Path(moi_list_js()).name == "moi_list.js"
    assert hasattr(r_client, "get")


def test_group_class_is_importable():
    from moi.group import Group

    assert callable(Group)


def test_compat_objects_are_live(moi_env):
    from moi import ctx_default, ctxs, r_client

    assert ctx_default == "default"
    assert isinstance(ctxs[ctx_default].bv, ipp.LoadBalancedView)
    assert r_client.ping() is True
    assert set(ctxs) == {"default", "fragile", "offline"}


def test_user_ids_both_ways(moi_env, user):
    from moi.group import create_info, get_id_from_user, get_user_from_id

    group_id = get_id_from_user(user)
    assert get_id_from_user(user) == group_id
    assert get_user_from_id(group_id) == user
    assert runtime.store().require(group_id)["type"] == "group"
    info = create_info("a job", "job", parent=group_id, store=True)
    assert info["status"] == "Queued" and info["context"] == "default"
    assert info["pubsub"] == keys.pubsub(info["id"])
    assert runtime.store().require(info["id"]) == info
    assert info["id"] in runtime.store().children(group_id)


def test_a_group_id_is_a_parent_not_a_user_name(moi_env, user):
    """A group id finds its user's jobs and takes new ones, but never names a user."""
    from moi.errors import InvalidUserError
    from moi.group import find_user_group, get_id_from_user
    from moi.job import submit

    group_id = get_id_from_user(user)
    with pytest.raises(InvalidUserError, match="cannot be UUIDs"):
        get_id_from_user(group_id)
    assert find_user_group(group_id) == find_user_group(user) == group_id
    assert runtime.store().get(user) is None  # no stray group named after the user
    job_id, parent, ar = submit("default", group_id, "add", None, add, 1, 1)
    assert ar.get(timeout=30) == 2 and parent == group_id
    assert job_id in runtime.store().children(group_id)


def test_submit_passes_moi_kwargs_and_custom_status(moi_env, user, tmp_path):
    from moi.job import submit

    release = tmp_path / "release"
    try:
        job_id, parent_id, ar = submit(
            "default", user, "reporter", "/result", reports, str(release)
        )
        assert parent_id == user
        assert isinstance(ar, ipp.AsyncResult)
        info = wait_for_status(job_id, "step 1")
        assert info["date_start"] is not None and info["date_end"] is None
    finally:
        release.touch()
    assert ar.get(timeout=30) == {"context": "default", "parent": user}
    final = wait(job_id, timeout=30)
    assert final["status"] == "Success"
    assert final["url"] == "/result" and final["name"] == "reporter"
    assert final["result"] == {"context": "default", "parent": user}
    # the parent group, unknown before, was created under the given id
    assert runtime.store().require(user)["type"] == "group"


def claims_success(**kwargs: Any) -> str:
    """Job: tries to declare itself finished."""
    kwargs["moi_update_status"]("Success")
    return "never recorded"


def test_a_job_cannot_set_a_final_status_itself(moi_env, user):
    from moi.job import submit

    job_id, _, ar = submit("default", user, "liar", None, claims_success)
    with pytest.raises(ipp.error.RemoteError) as raised:
        ar.get(timeout=30)
    assert raised.value.ename == "ValueError"
    info = wait(job_id, timeout=30)
    assert info["status"] == "Failed"
    assert "moi sets the final status itself" in "".join(info["result"])
    assert runtime.redis_client().zscore(keys.LEASES, job_id) is None


def test_an_argument_that_cannot_be_sent_fails_the_job_at_once(moi_env, user):
    from moi.job import submit

    with pytest.raises(TypeError, match="pickle"):
        submit("default", user, "unsendable", None, add, threading.Lock(), 1)
    (job_id,) = runtime.store().children(user)
    info = runtime.store().require(job_id)
    assert info["status"] == "Failed" and info["date_end"] is not None
    assert "cannot pickle" in info["result"][-1]


def test_submit_nouser(moi_env):
    from moi.job import submit_nouser

    job_id, parent_id, ar = submit_nouser(add, 40, 2)
    assert parent_id == "no-user"
    assert ar.get(timeout=30) == 42
    assert wait(job_id, timeout=30)["result"] == 42
    assert job_id in runtime.store().children("no-user")


def test_dag_runs_after_its_dependency(moi_env, user, tmp_path):
    from moi import ctxs
    from moi.job import submit

    release = tmp_path / "release"
    try:
        a_id, _, ar_a = submit("default", user, "A", None, gated, str(release))
        with ctxs["default"].bv.temp_flags(after=[ar_a], block=False):
            b_id, _, ar_b = submit(ctxs["default"], user, "B", None, stamp)
        wait_for_status(a_id, "Running")
        assert runtime.store().require(b_id)["status"] == "Queued"
    finally:
        release.touch()
    assert ctxs["default"].bv.wait([ar_a, ar_b], timeout=60)
    a, b = wait(a_id, timeout=10), wait(b_id, timeout=10)
    assert a["status"] == b["status"] == "Success"
    assert datetime.fromisoformat(b["date_start"]) >= datetime.fromisoformat(a["date_end"])


def test_dag_with_failed_dependency_ends_failed(moi_env, user):
    from moi import ctxs
    from moi.job import submit

    a_id, _, ar_a = submit("default", user, "A", None, fails)
    with ctxs["default"].bv.temp_flags(after=[ar_a], block=False):
        b_id, _, ar_b = submit("default", user, "B", None, stamp)
    with pytest.raises(ipp.error.RemoteError):
        ar_a.get(timeout=30)
    with pytest.raises(Exception):  # noqa: B017 -- ipyparallel's dependency error
        ar_b.get(timeout=30)
    b = wait(b_id, timeout=30)
    assert b["status"] == "Failed"
    assert b["date_start"] is None and b["date_end"] is not None
    assert b["result"] == [
        "ImpossibleDependency: a job it depends on did not succeed, so it never ran\n"
    ]
    assert wait(a_id, timeout=10)["status"] == "Failed"


def test_bv_wait_on_many(moi_env, user):
    from moi import ctxs
    from moi.job import submit

    jobs = [submit("default", user, f"add-{n}", None, add, n, n) for n in range(6)]
    assert ctxs["default"].bv.wait([ar for _, _, ar in jobs], timeout=60)
    infos = [runtime.store().require(job_id) for job_id, _, _ in jobs]
    assert [i["result"] for i in infos] == [2 * n for n in range(6)]
    assert {i["status"] for i in infos} == {"Success"}


IMPORT_ONLY = """
import moi, moi.job, moi.group, moi.cli
from moi import r_client, ctxs, ctx_default, REDIS_KEY_TIMEOUT, moi_js, moi_list_js
from moi.job import submit, submit_nouser, system_call
print(ctx_default, sorted(ctxs), repr(r_client))
"""


def test_import_does_no_io(tmp_path):
    state = tmp_path / "state"
    env = unconfigured_env(state, IPYTHONDIR=str(tmp_path / "ipython"))
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_ONLY], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("default ['default']")
    assert proc.stderr == ""
    assert not state.exists()
    assert not (tmp_path / "ipython").exists()
    assert processes_mentioning(str(state)) == []


def test_import_does_not_connect_to_configured_redis(tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        env = unconfigured_env(tmp_path / "state", MOI_REDIS_URL=f"redis://127.0.0.1:{port}/0")
        proc = subprocess.run(
            [sys.executable, "-c", IMPORT_ONLY], env=env, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever connected
    assert not (tmp_path / "state").exists()
