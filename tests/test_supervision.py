"""The embedded services are supervised: Redis comes back on its socket, engines are replaced,
and a full disk never splits moi between two Redis servers.

Each test runs its own embedded services under a fresh state directory and
injects the fault (``kill -9``, a full tmpfs) on processes it started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from support import moi_cli, unconfigured_env
from test_embedded import mine, redis_servers

from moi import connection, embedded, keys
from moi.group import create_info
from moi.store import Store


def _wait(predicate, timeout: float, what: str) -> float:
    """Seconds until ``predicate()`` holds; fail after ``timeout``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what} not within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - start


def _redis_pid(state: Path) -> int:
    return json.loads((state / "redis.json").read_text()).get("pid", 0)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs (to fill up); needs root, which CI has."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mount = tmp_path / "small"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:  # root without CAP_SYS_ADMIN (some containers)
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount
    finally:
        for proc in mine(mount / "state"):
            proc.kill()
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path) -> None:
    """Write until the filesystem holding ``directory`` is full."""
    with open(directory / "filler", "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass


def test_redis_killed_comes_back_on_its_socket_and_clients_follow(tmp_path):
    state = tmp_path / "state"
    url = embedded.ensure_redis(state)
    try:
        store = Store(connection.client(url), 3600)
        info = create_info("before the kill", "job", parent="sup-user")
        store.create(info)
        os.kill(_redis_pid(state), signal.SIGKILL)
        started = time.monotonic()
        assert embedded.supervise(state, 0) == ["redis"]
        took = time.monotonic() - started
        print(f"\nRedis kill -9 -> answering again after supervise: {took:.2f} s")
        assert store.get(info["id"]) == info  # acknowledged writes survive (append-only)
        assert keys.info(info["id"]) in {k.decode() for k in store.r.keys("*")}
        assert embedded.embedded_url(state) == url
        assert len(redis_servers(state)) == 1
        assert embedded.supervise(state, 0) == []  # nothing to do when all is well
    finally:
        embedded.stop_redis(state)


def test_a_full_disk_before_first_use_is_one_clear_line(tmpfs):
    state = tmpfs / "state"
    state.mkdir(mode=0o700)
    _fill(tmpfs)
    done = moi_cli("up", env=unconfigured_env(state, MOI_ENGINES="1"), timeout=120)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "disk full or read-only" in lines[0] or "No space left" in lines[0], lines
    assert redis_servers(state) == []


def test_a_disk_filling_up_never_starts_a_second_server(tmpfs):
    state = tmpfs / "state"
    url = embedded.ensure_redis(state)
    first = _redis_pid(state)
    client = connection.client(url)
    _fill(tmpfs)
    with pytest.raises(redis.ResponseError, match="MISCONF|No space|OOM"):
        for n in range(2000):  # the append-only file hits the full disk
            client.set(f"k{n}", "x" * 4096)
    assert embedded.ensure_redis(state) == url  # alive but failing: reused, not replaced
    assert [p.pid for p in redis_servers(state)] == [first]
    status = moi_cli("status", env=unconfigured_env(state))
    assert status.returncode == 0 and status.stdout.startswith("redis\trunning"), status


def _engines(state: Path) -> list[int]:
    return embedded._engine_pids(embedded.cluster_state(state))


def test_the_watchdog_restarts_redis_engines_and_the_controller(tmp_path):
    """Faults on the embedded services, each healed by the watchdog alone; jobs run after each."""
    state = tmp_path / "state"
    env = unconfigured_env(state, MOI_ENGINES="1", IPYTHONDIR=str(tmp_path / "ipython"))
    submit = ("submit", "--cmd", "import os; return os.getcwd()", "--block")
    try:
        assert moi_cli("up", env=env, timeout=240).returncode == 0
        healed = {}

        os.kill(_redis_pid(state), signal.SIGKILL)
        dead = _redis_pid(state)
        healed["redis"] = _wait(
            lambda: _redis_pid(state) != dead and len(redis_servers(state)) == 1,
            30,
            "Redis restarted by the watchdog",
        )

        (engine,) = _engines(state)
        os.kill(engine, signal.SIGKILL)
        healed["engine"] = _wait(
            lambda: len(_engines(state)) == 1 and engine not in _engines(state),
            60,
            "a new engine",
        )

        controller = embedded.cluster_state(state)["controller"]["state"]["pid"]
        (old_engine,) = _engines(state)
        os.kill(controller, signal.SIGKILL)
        healed["controller"] = _wait(
            lambda: (
                (embedded.cluster_state(state) or {})
                .get("controller", {})
                .get("state", {})
                .get("pid")
                not in (None, controller)
                and len(_engines(state)) == 1
            ),
            90,
            "a new controller with its engine",
        )
        _wait(lambda: not embedded.pid_alive(old_engine), 30, "the orphaned engine stopped")
        print(
            "\nhealed by the watchdog: "
            + ", ".join(f"{what} in {took:.1f} s" for what, took in healed.items())
        )
        done = moi_cli(*submit, env=env, timeout=180)
        assert done.returncode == 0, done.stderr
        # engines run in the state directory, never in the caller's (a `moi/` there shadows moi)
        assert f"result\t\t: {state}" in done.stdout, done.stdout
    finally:
        moi_cli("down", env=env, timeout=120)
        for proc in mine(state):
            proc.kill()


def test_down_asks_then_ends_running_and_queued_jobs(tmp_path):
    state = tmp_path / "state"
    env = unconfigured_env(state, MOI_ENGINES="1", IPYTHONDIR=str(tmp_path / "ipython"))
    try:
        ids = []
        for _ in range(2):  # one runs on the only engine, the other waits behind it
            done = moi_cli("submit", "--cmd", "import time; time.sleep(120)", env=env, timeout=240)
            assert done.returncode == 0, done.stderr
            ids.append(done.stdout.split()[-1])
        refused = subprocess.run(
            [sys.executable, "-m", "moi.cli", "down"],
            input="n\n",
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert refused.returncode == 1 and "2 job(s) still running or queued" in refused.stderr
        assert redis_servers(state), "nothing was stopped"
        forced = moi_cli("down", "--force", env=env, timeout=120)
        assert forced.returncode == 0 and "ended 2 job(s)" in forced.stderr, forced.stderr
        for job_id in ids:
            shown = moi_cli("job", "--job-id", job_id, env=env, timeout=120)
            assert "status\t\t: Failed" in shown.stdout, shown.stdout
            assert "stopped by moi down" in shown.stdout
    finally:
        moi_cli("down", "--force", env=env, timeout=120)
        for proc in mine(state):
            proc.kill()
