"""Zero setup: nothing configured, moi starts its own Redis and cluster once, and keeps data."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import psutil
from support import moi_cli, unconfigured_env

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def _quiet(call, *args):
    try:
        return call(*args)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def redis_servers(state: Path) -> list[psutil.Process]:
    """Redis or Valkey servers of ``state`` (they rename themselves; the cwd is their dir)."""
    return [
        p
        for p in psutil.process_iter(["name", "status"])
        if any(n in (p.info["name"] or "") for n in ("redis-server", "valkey-server"))
        and p.info["status"] != psutil.STATUS_ZOMBIE
        and _quiet(p.cwd) == str(state / "redis")
    ]


def controllers(state: Path) -> list[psutil.Process]:
    """ipyparallel controllers of the embedded cluster (not their scheduler children)."""
    profile = str(state / "ipython" / "profile_moi")
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(p.info["cmdline"] or ())
        if "ipyparallel.controller" not in cmdline or p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if (_quiet(p.environ) or {}).get("IPP_PROFILE_DIR") != profile:
            continue
        parent = _quiet(p.parent)
        if parent is None or "ipyparallel.controller" not in " ".join(_quiet(parent.cmdline) or ()):
            found.append(p)
    return found


def mine(state: Path) -> list[psutil.Process]:
    """Every live process the embedded services of ``state`` run as."""
    found = redis_servers(state)
    known = {p.pid for p in found}
    for p in psutil.process_iter(["status"]):
        if p.info["status"] == psutil.STATUS_ZOMBIE or p.pid in known:
            continue
        env = _quiet(p.environ) or {}
        if env.get("MOI_STATE_DIR") == str(state) or env.get("IPP_PROFILE_DIR", "").startswith(
            str(state)
        ):
            found.append(p)
    return found


def wait_until_gone(procs: list[psutil.Process], timeout: float = 30) -> list[psutil.Process]:
    """Processes still alive after ``timeout`` seconds."""
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return [p for p in alive if _quiet(p.status) not in (None, psutil.STATUS_ZOMBIE)]


def status_rows(stdout: str) -> dict[str, list[str]]:
    return {line.split("\t")[0]: line.split("\t")[1:] for line in stdout.splitlines()}


def test_zero_setup_starts_once_runs_jobs_and_persists(tmp_path):
    state = tmp_path / "state"
    env = unconfigured_env(state, MOI_ENGINES="1", IPYTHONDIR=str(tmp_path / "ipython"))
    env.pop("MOI_KEY_TIMEOUT", None)
    try:
        ups = [
            subprocess.Popen(
                [sys.executable, "-m", "moi.cli", "up"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd="/",
            )
            for _ in range(2)
        ]
        outputs = [p.communicate(timeout=240) for p in ups]
        assert [p.returncode for p in ups] == [0, 0], outputs
        stderr = "".join(err for _, err in outputs)
        assert stderr.count("moi: started Redis (") == 1, stderr
        assert stderr.count("moi: started a local ipyparallel cluster with 1 engines") == 1
        assert "Traceback" not in stderr
        started_by = [n for n, (_, err) in enumerate(outputs) if "moi: started" in err]
        assert len(started_by) == 1, "one `moi up` started everything, the other reused it"
        for out, _ in outputs:
            rows = status_rows(out)
            assert rows["redis"][0] == "running" and rows["cluster"][0] == "running, 1 engines"
        assert len(redis_servers(state)) == 1
        assert len(controllers(state)) == 1

        status = moi_cli("status", env=env)
        assert status.returncode == 0 and status.stderr == ""
        rows = status_rows(status.stdout)
        assert rows["redis"][0] == "running"
        assert rows["cluster"][0] == "running, 1 engines"
        assert rows["watchdog"][0] == "running"
        assert rows["contexts"] == ["default", "default: default", "-"]

        submitted = moi_cli("submit", "--cmd", "x = 5; return x + 10", "--block", env=env)
        assert submitted.returncode == 0, submitted.stderr
        assert "moi: started" not in submitted.stderr  # reused what the first `up` started
        job_id = re.match(rf"Submitted job id: ({UUID})", submitted.stdout).group(1)
        assert "status\t\t: Success" in submitted.stdout
        assert "result\t\t: 15" in submitted.stdout

        shown = moi_cli("job", "--job-id", job_id, env=env)
        assert shown.returncode == 0 and "result\t\t: 15" in shown.stdout

        services = mine(state)
        assert len(services) >= 4  # redis, controller, engine, watchdog
        down = moi_cli("down", env=env)
        assert down.returncode == 0, down.stderr
        assert down.stdout.strip() == "stopped: watchdog, cluster, redis"
        assert wait_until_gone(services) == []
        rows = status_rows(moi_cli("status", env=env).stdout)
        assert [rows[k][0] for k in ("redis", "cluster", "watchdog")] == ["stopped"] * 3

        again = moi_cli("up", env=env, timeout=240)
        assert again.returncode == 0, again.stderr
        assert "moi: started Redis" in again.stderr
        shown = moi_cli("job", "--job-id", job_id, env=env)
        assert shown.returncode == 0, shown.stderr
        assert "status\t\t: Success" in shown.stdout and "result\t\t: 15" in shown.stdout
    finally:
        leftovers = mine(state)
        moi_cli("down", env=env)
        for p in wait_until_gone(leftovers, timeout=20):
            p.kill()  # only processes serving this test's own state directory
    assert wait_until_gone(mine(state), timeout=10) == []
