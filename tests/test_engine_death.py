"""A job whose engine dies ends Failed with a reason, whether or not its submitter is alive.

Uses the disposable ``fragile`` cluster (one engine): the engine killed here
stays dead, so the second test starts a new one first.
"""

from __future__ import annotations

import os
import signal
import time

import ipyparallel as ipp
import pytest
from support import moi_cli, process_gone, sleeper, wait_for_file, wait_for_status

from moi import ctxs, watchdog
from moi.job import submit, wait


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    assert process_gone(pid, timeout=10)


def test_engine_killed_under_a_job_whose_submitter_is_gone(fragile_cluster, user, tmp_path):
    pid_file = tmp_path / "engine.pid"
    cmd = (
        "import os, time\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "time.sleep(120)\n"
        "return 'survived'"
    )
    proc = moi_cli("submit", "--context", "fragile", "--user", user, "--cmd", cmd, "--no-block")
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.split("Submitted job id: ", 1)[1].strip()
    engine_pid = int(wait_for_file(pid_file, timeout=60))
    assert engine_pid != os.getpid()
    running = wait_for_status(job_id, "Running")
    assert running["context"] == "fragile"
    killed_at = time.monotonic()
    _kill(engine_pid)
    info = wait(job_id, timeout=30)
    assert info["status"] == "Failed"
    assert info["result"] == watchdog.REASON
    assert info["date_end"] is not None
    assert time.monotonic() - killed_at < 30


def _start_engine(profile) -> None:
    cluster = ipp.Cluster.from_file(profile_dir=str(profile), cluster_id="moi")
    cluster.start_engines_sync(1)


def test_engine_killed_under_a_job_whose_submitter_is_alive(fragile_cluster, user, tmp_path):
    _start_engine(fragile_cluster)  # the first test killed the only one
    ctxs["fragile"].client.wait_for_engines(1, timeout=60)

    pid_file = tmp_path / "engine.pid"
    job_id, _, ar = submit("fragile", user, "doomed", None, sleeper, 120, str(pid_file))
    engine_pid = int(wait_for_file(pid_file, timeout=60))
    wait_for_status(job_id, "Running")
    killed_at = time.monotonic()
    _kill(engine_pid)
    with pytest.raises(ipp.error.RemoteError) as raised:
        ar.get(timeout=30)
    assert raised.value.ename == "EngineError"
    info = wait(job_id, timeout=30)
    assert info["status"] == "Failed"
    assert time.monotonic() - killed_at < 30
    # ipyparallel reports the death (about 5 s) before the lease expires (10 s), but
    # on a loaded machine the watchdog may get there first: either reason is right.
    assert len(info["result"]) == 1
    assert info["result"][0].startswith("EngineError: the engine running it died (Engine ") or (
        info["result"][0] == watchdog.REASON
    )
