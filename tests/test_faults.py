"""Faults: dead engines, a dead controller, Redis down, results moi cannot store.

Every test asserts how long the job took to reach its true end after the
fault and prints the figure (``pytest -s`` shows them).  Destructive tests
run on clusters of their own, started here and stopped at the end: context
``fragile`` (conftest, one engine), ``stranding`` (one engine that takes
every task at once, ``TaskScheduler.hwm = 0``) and ``headless`` (one engine;
its controller gets killed).  "Submitter gone" jobs are submitted by a
Python process that exits before the fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import ipyparallel as ipp
import psutil
import pytest
import redis
from support import (
    gated,
    moi_cli,
    process_gone,
    sleeper,
    wait_for_file,
    wait_for_status,
    wait_until_listening,
)

from moi import ctxs, embedded, keys, redis_server, runtime, watchdog
from moi.engine import JobSpec, run_job
from moi.group import create_info
from moi.job import submit, wait, wait_until_received
from moi.status import is_terminal
from moi.store import Store

ENGINE_DEATH_LIMIT = 30.0
QUEUED_LOSS_LIMIT = 60.0
#: Redis outages: longer than the lease and than redis-py's own retries (3, with
#: jittered back-off of up to 2 + 4 + 8 s), which could otherwise bridge them.
OUTAGE = 16.0


# -- job functions (the engines import this module by name) ----------------------
class Unprintable:
    """A result whose ``repr()`` raises."""

    def __repr__(self) -> str:
        raise RuntimeError("this object refuses to be printed")


def returns(kind: str, **kwargs: Any) -> Any:
    """Job: a result neither JSON nor ``repr()`` can hold, or a very large one."""
    if kind == "raising-repr":
        return Unprintable()
    if kind == "huge-int":
        return 10**5000
    if kind == "deep":
        nested: list[Any] = []
        for _ in range(100_000):
            nested = [nested]
        return nested
    return "x" * 50_000_000


def fails_when_released(release: str, **kwargs: Any) -> None:
    """Job: wait for the file ``release``, then raise."""
    gated(release)
    raise ValueError("failed on purpose")


def returns_when_released(release: str, returned: str, **kwargs: Any) -> str:
    """Job: wait for the file ``release``, note in ``returned`` that it returns, return."""
    gated(release)
    Path(returned).write_text("returning")
    return "the true outcome"


# -- helpers ----------------------------------------------------------------------
SUBMIT_AND_EXIT = """
import importlib, json, sys
from moi import ctxs
from moi.job import submit, wait_until_received
ctx, user, plan = ctxs[sys.argv[1]], sys.argv[2], json.loads(sys.argv[3])
ids, ars = [], []
for step in plan:
    module, _, name = step["func"].rpartition(".")
    func = getattr(importlib.import_module(module), name)
    with ctx.bv.temp_flags(after=[ars[i] for i in step.get("after", [])]):
        job_id, _, ar = submit(ctx, user, step["name"], None, func, *step["args"])
    ids.append(job_id)
    ars.append(ar)
for ar in ars:
    wait_until_received(ar, ctx.client)
print(json.dumps(ids))
"""


def submit_and_exit(context: str, user: str, plan: list[dict[str, Any]]) -> list[str]:
    """Submit ``plan``'s jobs from a Python process that exits once the cluster has them."""
    proc = subprocess.run(
        [sys.executable, "-c", SUBMIT_AND_EXIT, context, user, json.dumps(plan)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
        cwd="/",
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ended_after(info: dict[str, Any], since: datetime) -> float:
    """Seconds from ``since`` to the job's recorded end."""
    return (datetime.fromisoformat(info["date_end"]) - since).total_seconds()


def wait_all_ended(job_ids: list[str], timeout: float) -> list[dict[str, Any]]:
    """The final info of every job, waiting at most ``timeout`` seconds in all."""
    deadline = time.monotonic() + timeout
    return [
        wait_for_status(job_id, is_terminal, timeout=max(deadline - time.monotonic(), 0.1))
        for job_id in job_ids
    ]


def wait_for_entry(job_id: str, timeout: float = 10.0) -> None:
    """Block until the watchdog's record of a Queued job's task is in Redis."""
    deadline = time.monotonic() + timeout
    while runtime.store().r.zscore(keys.QUEUED, job_id) is None:
        assert time.monotonic() < deadline, f"no task record for job {job_id}"
        time.sleep(0.01)


def figure(what: str, seconds: float, limit: float) -> None:
    """Print a measured figure and assert it is within ``limit``."""
    print(f"\nFIGURE {what}: {seconds:.1f} s (limit {limit:.0f} s)")
    assert seconds <= limit, f"{what}: {seconds:.1f} s > {limit} s"


def kill(pid: int) -> datetime:
    """SIGKILL ``pid``, wait until it is gone; return when it was killed."""
    at = datetime.now()
    os.kill(pid, signal.SIGKILL)
    assert process_gone(pid, timeout=10)
    return at


def kill_tree(pid: int) -> datetime:
    """SIGKILL ``pid`` and its children (a controller's schedulers outlive it otherwise)."""
    children = psutil.Process(pid).children(recursive=True)
    at = kill(pid)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
        assert process_gone(child.pid, timeout=10)
    return at


def _cluster_state(profile: Path) -> dict[str, Any]:
    try:
        return json.loads((profile / "security" / "cluster-moi.json").read_text())
    except (OSError, ValueError):
        return {}


def _controller_pid(profile: Path) -> int:
    return int(_cluster_state(profile)["controller"]["state"]["pid"])


def _cluster_pids(profile: Path) -> list[int]:
    state = _cluster_state(profile)
    sets = state.get("engines", {}).get("sets", {}).values()
    pids = [e.get("pid") for s in sets for e in s.get("engines", {}).values()]
    return [p for p in [*pids, state.get("controller", {}).get("state", {}).get("pid")] if p]


@contextlib.contextmanager
def own_cluster(profile: Path, engines: int, config: str = "") -> Iterator[Path]:
    """A cluster of its own in ``profile``, gone at the end even if its controller died."""
    profile.mkdir(parents=True, exist_ok=True)
    (profile / "ipcontroller_config.py").write_text(config)
    embedded.start_cluster(profile, engines)
    try:
        yield profile
    finally:
        pids = _cluster_pids(profile)
        with contextlib.suppress(Exception):
            embedded.stop_cluster(profile)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def fault_contexts(moi_env: dict[str, str]) -> Iterator[Path]:
    """Contexts ``stranding`` and ``headless`` configured for this process and its children."""
    state = Path(moi_env["MOI_STATE_DIR"])
    env = {"MOI_CONTEXTS": moi_env["MOI_CONTEXTS"] + ",stranding,headless"}
    for name in ("stranding", "headless"):
        env[f"MOI_CLUSTER_FILE_{name.upper()}"] = str(
            state / "ipython" / f"profile_{name}" / "security" / "ipcontroller-moi-client.json"
        )
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    runtime.reset()
    try:
        yield state / "ipython"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        runtime.reset()


# -- engines dying ----------------------------------------------------------------
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
    killed_at = kill(engine_pid)
    info = wait(job_id, timeout=ENGINE_DEATH_LIMIT + 5)
    assert info["status"] == "Failed"
    assert info["result"] == watchdog.REASON
    figure("engine killed, submitter gone: Failed", ended_after(info, killed_at), 30)


def _start_engine(profile: Path) -> None:
    cluster = ipp.Cluster.from_file(profile_dir=str(profile), cluster_id="moi")
    cluster.start_engines_sync(1)


def test_engine_killed_under_a_job_whose_submitter_is_alive(fragile_cluster, user, tmp_path):
    _start_engine(fragile_cluster)  # the test before killed the only one
    ctxs["fragile"].client.wait_for_engines(1, timeout=60)

    pid_file = tmp_path / "engine.pid"
    job_id, _, ar = submit("fragile", user, "doomed", None, sleeper, 120, str(pid_file))
    engine_pid = int(wait_for_file(pid_file, timeout=60))
    wait_for_status(job_id, "Running")
    killed_at = kill(engine_pid)
    with pytest.raises(ipp.error.RemoteError) as raised:
        ar.get(timeout=ENGINE_DEATH_LIMIT)
    assert raised.value.ename == "EngineError"
    info = wait(job_id, timeout=ENGINE_DEATH_LIMIT)
    assert info["status"] == "Failed"
    # ipyparallel reports the death (about 5 s) before the lease expires (10 s), but
    # on a loaded machine the watchdog may get there first: either reason is right.
    assert len(info["result"]) == 1
    assert info["result"][0].startswith("EngineError: the engine running it died (Engine ") or (
        info["result"][0] == watchdog.REASON
    )
    figure("engine killed, submitter alive: Failed", ended_after(info, killed_at), 30)


def test_engine_killed_with_jobs_queued_on_it_whose_submitter_is_gone(
    fault_contexts, user, tmp_path
):
    pid_file = tmp_path / "engine.pid"
    plan = [{"name": "running", "func": "support.sleeper", "args": [120, str(pid_file)]}]
    plan += [{"name": f"queued-{n}", "func": "support.add", "args": [n, 1]} for n in range(3)]
    with own_cluster(fault_contexts / "profile_stranding", 1, "c.TaskScheduler.hwm = 0\n"):
        job_ids = submit_and_exit("stranding", user, plan)
        engine_pid = int(wait_for_file(pid_file, timeout=60))
        wait_for_status(job_ids[0], "Running")
        queues = ctxs["stranding"].client.queue_status()
        assert queues[0]["tasks"] == 4 and queues["unassigned"] == 0  # all on the engine
        assert {runtime.store().require(i)["status"] for i in job_ids[1:]} == {"Queued"}
        killed_at = kill(engine_pid)
        infos = wait_all_ended(job_ids, QUEUED_LOSS_LIMIT + 10)
    assert infos[0]["status"] == "Failed" and infos[0]["result"] == watchdog.REASON
    for info in infos[1:]:
        assert info["status"] == "Failed" and info["date_start"] is None
        assert info["result"] == watchdog.LOST
        assert info["note"].startswith("EngineError: Engine ")
    figure("engine killed, the job it ran: Failed", ended_after(infos[0], killed_at), 30)
    slowest = max(ended_after(info, killed_at) for info in infos[1:])
    figure("engine killed, the 3 jobs queued on it: all Failed", slowest, QUEUED_LOSS_LIMIT)


def test_controller_killed_with_jobs_running_and_queued(fault_contexts, user, tmp_path):
    pid_file = tmp_path / "engine.pid"
    plan = [{"name": "running", "func": "support.sleeper", "args": [5, str(pid_file)]}]
    plan += [{"name": f"queued-{n}", "func": "support.add", "args": [n, 1]} for n in range(2)]
    with own_cluster(fault_contexts / "profile_headless", 1) as profile:
        job_ids = submit_and_exit("headless", user, plan)
        wait_for_file(pid_file, timeout=60)
        wait_for_status(job_ids[0], "Running")
        assert {runtime.store().require(i)["status"] for i in job_ids[1:]} == {"Queued"}
        killed_at = kill_tree(_controller_pid(profile))
        infos = wait_all_ended(job_ids, QUEUED_LOSS_LIMIT + 10)
    assert infos[0]["status"] == "Success" and infos[0]["result"] == "woke up"  # engine lives on
    for info in infos[1:]:
        assert info["status"] == "Failed" and info["result"] == watchdog.LOST
        assert "has not answered for" in info["note"]
    slowest = max(ended_after(info, killed_at) for info in infos)
    figure("controller killed: every job ended", slowest, QUEUED_LOSS_LIMIT)


# -- what the controller knows ----------------------------------------------------
def test_a_queued_job_the_controller_does_not_know_is_lost(moi_env, user):
    """What a controller that restarted says of the tasks it had."""
    info = create_info("forgotten", "job", parent=user, context="default")
    store = runtime.store()
    store.create(info, parent_if_missing=create_info("unnamed", "group", id=user))
    task = {
        "msg_id": "no-such-task",
        "context": "default",
        "connection_file": moi_env["MOI_CLUSTER_FILE_DEFAULT"],
    }
    since = time.time() - watchdog.GRACE  # submitted a grace period ago
    with store.r.pipeline(transaction=True) as pipe:
        for command in store.queued_task_commands(info["id"], task, since):
            pipe.execute_command(*command)
        pipe.execute()
    recorded_at = datetime.now()
    ended = wait_for_status(info["id"], is_terminal, timeout=30)
    assert ended["status"] == "Failed" and ended["result"] == watchdog.LOST
    assert ended["note"] == "its controller knows no task no-such-task"
    assert store.r.zscore(keys.QUEUED, info["id"]) is None
    assert not store.r.hexists(keys.QUEUED_TASKS, info["id"])
    figure("unknown task: Failed (after its grace period)", ended_after(ended, recorded_at), 15)


def test_a_job_whose_dependency_failed_fails_when_its_submitter_is_gone(moi_env, user, tmp_path):
    release = tmp_path / "release"
    plan = [
        {"name": "A", "func": "test_faults.fails_when_released", "args": [str(release)]},
        {"name": "B", "func": "support.add", "args": [1, 2], "after": [0]},
    ]
    a_id, b_id = submit_and_exit("default", user, plan)
    wait_for_status(a_id, "Running")
    assert runtime.store().require(b_id)["status"] == "Queued"
    released_at = datetime.now()
    release.touch()
    a, b = wait_all_ended([a_id, b_id], QUEUED_LOSS_LIMIT)
    assert a["status"] == "Failed" and "ValueError: failed on purpose" in a["result"][-1]
    assert b["status"] == "Failed" and b["date_start"] is None
    assert b["result"] == [
        "ImpossibleDependency: a job it depends on did not succeed, so it never ran\n"
    ]
    figure("failed dependency, submitter gone: Failed", ended_after(b, released_at), 15)


def test_jobs_waiting_in_a_queue_or_on_dependencies_are_left_alone(moi_env, user, tmp_path):
    release = tmp_path / "release"
    ctx = ctxs["default"]
    blockers = [submit(ctx, user, f"blocker-{n}", None, gated, str(release)) for n in (1, 2)]
    try:
        for job_id, _, _ in blockers:
            wait_for_status(job_id, "Running")
        queued = submit(ctx, user, "queued", None, sleeper, 0)
        with ctx.bv.temp_flags(after=[blockers[0][2]]):
            waiting = submit(ctx, user, "waiting", None, sleeper, 0)
        for job_id, _, ar in (queued, waiting):
            wait_until_received(ar, ctx.client)
            wait_for_entry(job_id)
        eager = watchdog.Reconciler(check_after=0, grace=0)  # looks at once, no grace
        try:
            failed = eager.reconcile(runtime.store())
        finally:
            eager.close()
        assert queued[0] not in failed and waiting[0] not in failed
        for job_id, _, _ in (queued, waiting):
            assert runtime.store().require(job_id)["status"] == "Queued"
    finally:
        release.touch()
    for job_id, _, ar in (*blockers, queued, waiting):
        ar.get(timeout=30)
        assert wait(job_id, timeout=10)["status"] == "Success"
        assert runtime.store().r.zscore(keys.QUEUED, job_id) is None


# -- results moi cannot store -------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("raising-repr", "RuntimeError: this object refuses to be printed"),
        ("huge-int", "ValueError: Exceeds the limit (4300 digits) for integer string"),
        ("deep", "RecursionError: maximum recursion depth exceeded"),
    ],
)
def test_a_result_moi_cannot_store_fails_the_job_with_the_reason(moi_env, user, kind, error):
    plan = [{"name": kind, "func": "test_faults.returns", "args": [kind]}]
    (job_id,) = submit_and_exit("default", user, plan)
    info = wait(job_id, timeout=30)
    assert info["status"] == "Failed"
    assert len(info["result"]) == 1
    assert info["result"][0].startswith("the job returned a result moi cannot store: ")
    assert error in info["result"][0]
    created = datetime.fromisoformat(info["date_created"])
    figure(f"unstorable result ({kind}), submitter gone: Failed", ended_after(info, created), 5)


def test_an_unstorable_result_fails_the_async_result_too(moi_env, user):
    job_id, _, ar = submit("default", user, "huge-int", None, returns, "huge-int")
    with pytest.raises(ipp.error.RemoteError) as raised:
        ar.get(timeout=30)
    assert raised.value.ename == "UnstorableResult"  # dependents do not run on it
    assert wait(job_id, timeout=10)["result"][0].startswith("the job returned a result moi")


def test_a_large_result_is_kept_by_ipyparallel_not_redis(moi_env, user):
    pings: list[float] = []
    done = threading.Event()
    client = redis.Redis.from_url(moi_env["MOI_REDIS_URL"])

    def ping() -> None:
        while not done.is_set():
            started = time.perf_counter()
            client.ping()
            pings.append(time.perf_counter() - started)
            time.sleep(0.005)

    pinger = threading.Thread(target=ping, daemon=True)
    pinger.start()
    try:
        job_id, _, ar = submit("default", user, "50 MB", None, returns, "large")
        info = wait(job_id, timeout=60)
    finally:
        done.set()
        pinger.join(10)
    assert info["status"] == "Success"
    assert info["result"] == (
        "result of 50000002 bytes is larger than the limit of 1048576 bytes; "
        "it is kept by ipyparallel: use the AsyncResult"
    )
    assert len(client.get(job_id)) < 10_000
    assert ar.get(timeout=60) == "x" * 50_000_000
    slowest = max(pings) * 1e3
    print(f"\nFIGURE 50 MB result: {len(pings)} PINGs while it ran, slowest {slowest:.1f} ms")
    assert max(pings) < 0.25


# -- Redis down ------------------------------------------------------------------------
@pytest.fixture
def private_redis(moi_env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A Redis server of its own (stopped and restarted by the test) and a watchdog on it.

    Jobs run on the session's ``default`` cluster (``moi_env``), told to use this server.
    """
    server = {"port": redis_server.free_port(), "dir": tmp_path / "redis"}
    server["proc"] = redis_server.start_redis_server(server["dir"], server["port"])
    server["url"] = redis_server.redis_url(server["port"])
    dog = subprocess.Popen(
        [sys.executable, "-m", "moi.watchdog"],
        env={**os.environ, "MOI_REDIS_URL": server["url"]},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield server
    finally:
        dog.terminate()
        dog.wait(10)
        server["proc"].terminate()
        server["proc"].wait(10)


def _job_on(server: dict[str, Any]) -> tuple[Store, str, functools.partial[Any]]:
    """A Queued job in ``server``'s Redis, and its engine-side wrapper (``run_job``)."""
    store = Store(redis.Redis.from_url(server["url"]), 3600)
    info = create_info("outage", "job", parent="g", context="default")
    store.create(info, parent_if_missing=create_info("unnamed", "group", id="g"))
    spec = JobSpec(
        id=info["id"],
        redis_url=server["url"],
        key_timeout=3600,
        context="default",
        parent="g",
        info=info,
        max_result_bytes=1 << 20,
    )
    return store, info["id"], functools.partial(run_job, spec)


def _wait_on(store: Store, job_id: str, accept: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with store.r.pubsub(ignore_subscribe_messages=True) as sub:
        sub.subscribe(keys.pubsub(job_id))
        while True:
            info = store.require(job_id)
            if accept(info["status"]):
                return info
            assert time.monotonic() < deadline, f"job {job_id} is still {info['status']}"
            sub.get_message(timeout=0.5)


def _restart(server: dict[str, Any]) -> tuple[datetime, float]:
    """Start ``server`` again on its port and data; return when (wall clock, monotonic)."""
    server["proc"] = redis_server.start_redis_server(server["dir"], server["port"])
    return datetime.now(), time.monotonic()


def test_a_job_that_ends_while_redis_is_down_records_its_true_outcome(private_redis, tmp_path):
    release, returned = tmp_path / "release", tmp_path / "returned"
    store, job_id, wrapped = _job_on(private_redis)
    ar = ctxs["default"].bv.apply_async(wrapped, returns_when_released, str(release), str(returned))
    _wait_on(store, job_id, lambda s: s == "Running", 30)
    private_redis["proc"].terminate()
    private_redis["proc"].wait(10)
    release.touch()
    wait_for_file(returned, timeout=30)  # the job returned: its final write is failing now
    time.sleep(OUTAGE)  # the outage outlasts the lease: the watchdog will find it expired
    back_at, back = _restart(private_redis)
    first = _wait_on(store, job_id, is_terminal, 30)  # the watchdog waits for the engine
    info = _wait_on(store, job_id, lambda status: status == "Success", 30)
    landed = time.monotonic() - back
    assert first["status"] == "Success"
    assert info["result"] == "the true outcome"
    assert datetime.fromisoformat(info["date_end"]) < back_at  # when it really ended
    assert ar.get(timeout=60) == "the true outcome"
    figure(f"final write after a {OUTAGE:.0f} s Redis outage: landed", landed, 15)


def test_a_job_that_starts_while_redis_is_down_runs_once_it_is_back(private_redis):
    store, job_id, wrapped = _job_on(private_redis)
    private_redis["proc"].terminate()
    private_redis["proc"].wait(10)
    ar = ctxs["default"].bv.apply_async(wrapped, sleeper, 0)
    ar.wait_for_send(10)
    time.sleep(OUTAGE)  # the engine has the task and cannot write Running
    assert not ar.ready()
    back_at, _ = _restart(private_redis)
    assert ar.get(timeout=60) == "woke up"
    info = _wait_on(store, job_id, is_terminal, 30)
    assert info["status"] == "Success" and info["date_start"] is not None
    figure(
        f"Running write after a {OUTAGE:.0f} s Redis outage: done", ended_after(info, back_at), 15
    )


# -- Redis killed under running jobs and watching browsers -----------------------------
WATCHERS = 10
OUTAGE_JOBS = 20
#: Seconds Redis stays dead once a job has ended: relay and engines must notice and retry.
OUTAGE_UNDER_WATCH = 5.0


class Watcher:
    """A websocket client of the server under test, noting the final status of each job."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.final: dict[str, str] = {}

    async def run(self) -> None:
        while (message := await self.ws.read_message()) is not None:
            frame = json.loads(message)
            for verb in ("get", "update", "add"):
                info = frame.get(verb)
                if isinstance(info, dict) and is_terminal(info.get("status")):
                    self.final[info["id"]] = info["status"]


def _ws_server(url: str, log: Path) -> tuple[int, subprocess.Popen[bytes]]:
    """moi's websocket handler in its own process, on the Redis at ``url``."""
    port = redis_server.free_port()
    script = Path(__file__).with_name("test_faults_ws.py")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(script), "serve", str(port), str(8 << 20)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MOI_REDIS_URL": url},
        )
    wait_until_listening(port, proc, log.read_text)
    return port, proc


def test_redis_killed_under_running_jobs_and_watching_browsers(private_redis, tmp_path):
    """kill -9 of Redis while 20 jobs run or wait and 10 browsers watch: nothing is lost."""
    from test_faults_ws import connect

    server, release = private_redis, tmp_path / "release"
    store = Store(redis.Redis.from_url(server["url"]), 3600)
    group = create_info("outage user", "group")
    store.create(group)
    store.r.hset(keys.USER_ID_MAP, mapping={"outage-user": group["id"], group["id"]: "outage-user"})
    jobs = []
    for n in range(OUTAGE_JOBS):
        info = create_info(f"outage {n}", "job", parent=group["id"], context="default")
        store.create(info)
        spec = JobSpec(
            id=info["id"],
            redis_url=server["url"],
            key_timeout=3600,
            context="default",
            parent=group["id"],
            info=info,
            max_result_bytes=1 << 20,
        )
        jobs.append((info["id"], functools.partial(run_job, spec)))
    port, ws_proc = _ws_server(server["url"], tmp_path / "ws.log")

    async def campaign() -> tuple[float, float]:
        watchers = []
        for _ in range(WATCHERS):
            ws = await connect(port, "outage-user", OUTAGE_JOBS + 1)
            watchers.append(Watcher(ws))
        readers = [asyncio.ensure_future(w.run()) for w in watchers]
        bv = ctxs["default"].bv
        ars = [
            bv.apply_async(wrapped, returns_when_released, str(release), str(tmp_path / f"r{n}"))
            for n, (_, wrapped) in enumerate(jobs)
        ]
        await asyncio.to_thread(_wait_on, store, jobs[0][0], lambda s: s == "Running", 30)
        killed = time.monotonic()
        os.kill(server["proc"].pid, signal.SIGKILL)
        server["proc"].wait(10)
        release.touch()
        await asyncio.to_thread(wait_for_file, tmp_path / "r0", 30)  # it ended while Redis was down
        await asyncio.sleep(OUTAGE_UNDER_WATCH)  # the outage itself: the fault's length
        _, back = await asyncio.to_thread(_restart, server)
        for ar in ars:
            assert await asyncio.to_thread(ar.get, 120) == "the true outcome"
        ended = {}
        for job_id, _ in jobs:
            info = await asyncio.to_thread(_wait_on, store, job_id, is_terminal, 60)
            ended[job_id] = info["status"]
        assert set(ended.values()) == {"Success"}, ended  # the true outcome, every one
        everyone = {job_id: "Success" for job_id, _ in jobs}
        deadline = time.monotonic() + 60
        while any(w.final != everyone for w in watchers):
            assert time.monotonic() < deadline, [len(w.final) for w in watchers]
            await asyncio.sleep(0.05)
        delivered = time.monotonic() - back
        for w in watchers:
            w.ws.close()
        await asyncio.gather(*readers, return_exceptions=True)
        return back - killed, delivered

    try:
        down, delivered = asyncio.run(campaign())
    finally:
        ws_proc.terminate()
        ws_proc.wait(10)
    assert store.get(group["id"]) is not None
    assert len(store.get_many([job_id for job_id, _ in jobs])) == OUTAGE_JOBS  # 0 lost
    print(
        f"\nFIGURE Redis kill -9 under {OUTAGE_JOBS} jobs and {WATCHERS} browsers: down "
        f"{down:.1f} s; every final status in Redis and at all {WATCHERS} browsers "
        f"({WATCHERS * OUTAGE_JOBS} of {WATCHERS * OUTAGE_JOBS}) {delivered:.1f} s after "
        "Redis was back; 0 info objects lost"
    )
    assert delivered <= 60


def test_submit_while_redis_is_down_fails_at_once_and_clearly(moi_env, user):
    """No job is left Queued by a submit that could not reach Redis: it fails, in one line."""
    dead = redis_server.redis_url(redis_server.free_port())
    client = ctxs["default"].client
    tasks_before = len(client.hub_history())
    started = time.monotonic()
    done = moi_cli(
        "submit", "--user", user, "--cmd", "return 1", env={**os.environ, "MOI_REDIS_URL": dead}
    )
    took = time.monotonic() - started
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach Redis" in lines[0], done.stderr
    assert len(client.hub_history()) == tasks_before  # nothing was handed to the cluster
    figure("submit with Redis down: failed", took, 30)
