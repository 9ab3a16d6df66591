"""Cancelling jobs: queued ones never run, running ones are interrupted, finished ones stay."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import ipyparallel as ipp
import pytest
from click.testing import CliRunner
from support import add, gated, process_gone, sleeper, touch, wait_for_file, wait_for_status

from moi import keys, runtime
from moi.cli import main
from moi.engine import HEARTBEAT_INTERVAL
from moi.errors import MoiError, UnknownIdError
from moi.job import cancel, submit, system_call, wait


def test_queued_job_is_cancelled_and_never_runs(moi_env, user, tmp_path):
    release, side_effect = tmp_path / "release", tmp_path / "side-effect"
    blockers = [submit("default", user, f"blocker-{n}", None, gated, str(release)) for n in (1, 2)]
    try:
        for job_id, _, _ in blockers:
            wait_for_status(job_id, "Running")
        victim_id, _, victim_ar = submit("default", user, "victim", None, touch, str(side_effect))
        assert runtime.store().require(victim_id)["status"] == "Queued"
        assert cancel(victim_id) == "cancelled"
        info = runtime.store().require(victim_id)
        assert info["status"] == "Cancelled"
        assert info["date_end"] is not None and info["date_start"] is None
    finally:
        release.touch()
    for _, _, ar in blockers:
        assert ar.get(timeout=30) == "released"
    with pytest.raises(ipp.error.RemoteError) as raised:
        victim_ar.get(timeout=30)  # the engine got it, and refused to run it
    assert raised.value.ename == "JobCancelled"
    assert not side_effect.exists()
    assert wait(victim_id, timeout=5)["status"] == "Cancelled"


def test_running_python_job_is_interrupted(moi_env, user, tmp_path):
    job_id, _, ar = submit("default", user, "sleeper", None, sleeper, 60)
    wait_for_status(job_id, "Running")
    assert cancel(job_id) == "requested"
    info = wait(job_id, timeout=10)
    assert info["status"] == "Cancelled"
    assert any("KeyboardInterrupt" in line for line in info["result"])
    with pytest.raises(ipp.error.RemoteError) as raised:
        ar.get(timeout=10)
    assert raised.value.ename == "JobCancelled"
    assert not runtime.redis_client().exists(f"{job_id}:cancel")
    # the engine survived and takes work again
    jobs = [submit("default", user, f"after-{n}", None, add, n, 1) for n in range(4)]
    assert [ar.get(timeout=30) for _, _, ar in jobs] == [1, 2, 3, 4]


def stubborn(marker: str, release: str, **kwargs: Any) -> str:
    """Job: swallows the cancel's interrupt and goes on until ``release`` exists."""
    try:
        gated(release)
    except KeyboardInterrupt:
        Path(marker).write_text("interrupted")
        gated(release)
        return "ignored the cancel"
    return "never interrupted"


def test_a_job_that_ignores_the_cancel_keeps_its_lease(moi_env, user, tmp_path):
    marker, release = tmp_path / "marker", tmp_path / "release"
    r = runtime.redis_client()
    try:
        job_id, _, ar = submit(
            "default", user, "stubborn", None, stubborn, str(marker), str(release)
        )
        wait_for_status(job_id, "Running")
        assert cancel(job_id) == "requested"
        wait_for_file(marker, timeout=10)
        interrupted_lease = r.zscore(keys.LEASES, job_id)
        deadline = time.monotonic() + 5 * HEARTBEAT_INTERVAL
        while r.zscore(keys.LEASES, job_id) == interrupted_lease:  # the engine is alive
            assert time.monotonic() < deadline, "the lease was not renewed after the interrupt"
            time.sleep(0.05)
        assert runtime.store().require(job_id)["status"] == "Running"
    finally:
        release.touch()
    assert ar.get(timeout=30) == "ignored the cancel"
    info = wait(job_id, timeout=10)
    assert info["status"] == "Success" and info["result"] == "ignored the cancel"
    assert r.zscore(keys.LEASES, job_id) is None
    assert not r.exists(keys.cancel(job_id))


def test_running_system_call_is_killed(moi_env, user, tmp_path):
    pid_file = tmp_path / "pid"
    job_id, _, ar = submit(
        "default", user, "sleep", None, system_call, f"echo $$ > {pid_file}; exec sleep 60"
    )
    pid = int(wait_for_file(pid_file))
    wait_for_status(job_id, "Running")
    assert cancel(job_id) == "requested"
    assert wait(job_id, timeout=10)["status"] == "Cancelled"
    assert process_gone(pid, timeout=5), f"sleep (pid {pid}) outlived its cancelled job"
    with pytest.raises(ipp.error.RemoteError):
        ar.get(timeout=10)


def test_cancel_from_the_cli(moi_env, user):
    job_id, _, _ = submit("default", user, "sleeper", None, sleeper, 60)
    wait_for_status(job_id, "Running")
    result = CliRunner().invoke(main, ["cancel", "--job-id", job_id])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"Job {job_id}: Cancelled"
    assert f"Asked the engine to stop job {job_id}" in result.stderr
    assert runtime.store().require(job_id)["status"] == "Cancelled"


def test_cancelling_a_finished_job_is_an_error_and_changes_nothing(moi_env, user):
    job_id, _, ar = submit("default", user, "add", None, add, 1, 2)
    assert ar.get(timeout=30) == 3
    before = wait(job_id, timeout=30)
    with pytest.raises(MoiError, match="already finished \\(Success\\)"):
        cancel(job_id)
    result = CliRunner().invoke(main, ["cancel", "--job-id", job_id])
    assert result.exit_code == 1
    assert result.stderr == f"Error: job {job_id} has already finished (Success)\n"
    assert runtime.store().require(job_id) == before
    assert not runtime.redis_client().exists(f"{job_id}:cancel")


def test_cancelling_unknown_or_malformed_ids(moi_env, user):
    unknown = "0b9a3c1e-5d2f-4a6b-8c7d-9e0f1a2b3c4d"
    with pytest.raises(UnknownIdError):
        cancel(unknown)
    result = CliRunner().invoke(main, ["cancel", "--job-id", unknown])
    assert result.exit_code == 1
    assert result.stderr == f"Error: unknown job or group id: {unknown}\n"
    result = CliRunner().invoke(main, ["cancel", "--job-id", "not-a-uuid"])
    assert result.exit_code == 1
    assert result.stderr == "Error: malformed job id 'not-a-uuid': expected a UUID\n"
    assert not runtime.redis_client().exists(unknown, f"{unknown}:cancel", "not-a-uuid:cancel")


def test_cancelling_a_group_is_refused(moi_env, user):
    job_id, parent, ar = submit("default", user, "add", None, add, 1, 1)
    ar.get(timeout=30)
    with pytest.raises(MoiError, match="is a group"):
        cancel(parent)
    assert wait(job_id, timeout=10)["status"] == "Success"
