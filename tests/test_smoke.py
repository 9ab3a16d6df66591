"""The shortest path through moi: submit, run, read back."""

from moi import runtime
from moi.job import submit, wait


def _add(a, b, **kwargs):
    return a + b


def test_submit_runs_and_records_success(moi_env, user):
    job_id, parent, ar = submit("default", user, "add", None, _add, 2, 3)
    assert ar.get(timeout=60) == 5
    info = wait(job_id, timeout=30)
    assert info["status"] == "Success" and info["result"] == 5
    assert job_id in runtime.store().children(parent)
