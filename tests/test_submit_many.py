"""Many jobs at once: ``moi.job.submit_many`` and ``moi submit --many``.

Real Redis and real clusters (conftest): the default context's two engines,
and ``fragile``'s one engine for the test that kills it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from support import (
    ensure_engine,
    moi_cli,
    process_gone,
    snapshot,
    subscribed,
    wait_for_file,
    wait_for_status,
)

from moi import keys, runtime
from moi.errors import InvalidIdError, MoiError
from moi.group import get_id_from_user
from moi.job import cancel, submit_many


# -- job functions (the engines import this module by name) ----------------------
def square(x: int, **kwargs: Any) -> int:
    """Job: ``x`` squared."""
    return x * x


def fails_on_three(x: int, **kwargs: Any) -> int:
    """Job: ``x``, except that 3 raises."""
    if x == 3:
        raise ValueError("three is not allowed")
    return x


def step(what: tuple[str, str], **kwargs: Any) -> str:
    """Job: ``("gate", file)`` waits for ``file``; ``("touch", file)`` creates it;
    ``("pid", file)`` writes this engine's pid to ``file`` and sleeps."""
    kind, path = what
    if kind == "gate":
        deadline = time.monotonic() + 120
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.02)
        return "released"
    if kind == "touch":
        Path(path).write_text("ran")
        return "touched"
    Path(path).write_text(str(os.getpid()))
    time.sleep(120)
    return "survived"


# -- the Python API -------------------------------------------------------------------
def test_results_come_back_in_input_order_and_every_job_is_tracked(moi_env, user):
    parent = get_id_from_user(user)
    client = runtime.redis_client()
    with subscribed(client, keys.pubsub(parent)) as sub:
        ids, jobs = submit_many(None, parent, "sq", square, range(23), chunksize=4)
        added = json.loads(sub.get_message(timeout=10)["data"])
    assert len(ids) == len(set(ids)) == 23
    assert added == {"add": ids}  # one message announces them all
    assert len(jobs.async_results) == 6  # 23 elements in chunks of 4
    assert jobs.get(timeout=60) == [x * x for x in range(23)]
    seen: list[dict[str, int]] = []
    infos = jobs.wait(timeout=10, progress=seen.append)
    assert seen and all(sum(counts.values()) == 23 for counts in seen)
    assert seen[-1]["Success"] == 23
    assert [info["id"] for info in infos] == ids
    assert [info["result"] for info in infos] == [x * x for x in range(23)]
    assert {info["status"] for info in infos} == {"Success"}
    assert [info["name"] for info in infos] == [f"sq [{i}]" for i in range(23)]
    assert [info["call"] for info in infos] == [f"square({i})" for i in range(23)]
    assert all(info["parent"] == parent and info["date_start"] for info in infos)
    assert runtime.store().children(parent) >= set(ids)
    counts = jobs.counts()
    assert counts["Success"] == 23 and sum(counts.values()) == 23, counts
    assert not client.zrange(keys.LEASES, 0, -1) or not set(ids) & {
        m.decode() for m in client.zrange(keys.LEASES, 0, -1)
    }


def test_every_job_publishes_its_updates(moi_env, user, tmp_path):
    parent = get_id_from_user(user)
    gate = tmp_path / "gate"
    inputs = [("gate", str(gate)), ("touch", str(tmp_path / "a")), ("touch", str(tmp_path / "b"))]
    ids, jobs = submit_many(None, parent, "steps", step, inputs, chunksize=3)
    client = runtime.redis_client()
    with subscribed(client, *(keys.pubsub(i) for i in ids)) as sub:
        wait_for_status(ids[0], "Running")
        gate.write_text("go")
        jobs.wait(timeout=60)
        seen: dict[str, int] = {}
        deadline = time.monotonic() + 10
        while len(seen) < 3 or min(seen.values()) < 2:  # Running and Success each
            message = sub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message is not None:
                job_id = json.loads(message["data"])["update"][0]
                seen[job_id] = seen.get(job_id, 0) + 1
            assert time.monotonic() < deadline, seen
    assert set(seen) == set(ids)


def test_a_failing_element_fails_alone(moi_env, user):
    parent = get_id_from_user(user)
    ids, jobs = submit_many(None, parent, "some fail", fails_on_three, range(6), chunksize=6)
    infos = jobs.wait(timeout=60)
    assert [info["status"] for info in infos] == ["Success"] * 3 + ["Failed"] + ["Success"] * 2
    assert "ValueError: three is not allowed" in "".join(infos[3]["result"])
    assert [infos[i]["result"] for i in (0, 1, 2, 4, 5)] == [0, 1, 2, 4, 5]
    with pytest.raises(MoiError, match=f"1 of 6 jobs did not succeed; the first, {ids[3]}"):
        jobs.get(timeout=10)


def test_cancel_of_one_queued_element_skips_it_only(moi_env, user, tmp_path):
    parent = get_id_from_user(user)
    gate, skipped, after = tmp_path / "gate", tmp_path / "skipped", tmp_path / "after"
    inputs = [("gate", str(gate)), ("touch", str(skipped)), ("touch", str(after))]
    ids, jobs = submit_many(None, parent, "cancel one", step, inputs, chunksize=3)
    wait_for_status(ids[0], "Running")
    assert cancel(ids[1]) == "cancelled"
    gate.write_text("go")
    infos = jobs.wait(timeout=60)
    assert [info["status"] for info in infos] == ["Success", "Cancelled", "Success"]
    assert not skipped.exists() and after.read_text() == "ran"
    assert jobs.async_results[0].get(1)[1][0] is False  # reported as not run


def test_cancel_of_the_running_element_interrupts_it_and_the_chunk_goes_on(moi_env, user, tmp_path):
    parent = get_id_from_user(user)
    pid_file, after = tmp_path / "pid", tmp_path / "after"
    inputs = [("pid", str(pid_file)), ("touch", str(after))]
    ids, jobs = submit_many(None, parent, "cancel running", step, inputs, chunksize=2)
    wait_for_file(pid_file, timeout=60)
    wait_for_status(ids[0], "Running")
    assert cancel(ids[0]) == "requested"
    infos = jobs.wait(timeout=60)
    assert [info["status"] for info in infos] == ["Cancelled", "Success"]
    assert after.read_text() == "ran"
    assert not runtime.redis_client().exists(keys.cancel(ids[0]))


@pytest.mark.parametrize(
    ("func", "inputs", "message"),
    [
        (square, 5, "must be an iterable"),
        (square, None, "must be an iterable"),
        (square, "abc", "must be an iterable"),
        (square, [], "no inputs"),
        (square, iter(()), "no inputs"),
        ("square", [1, 2], "func must be callable"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(moi_env, user, func, inputs, message):
    parent = get_id_from_user(user)
    client = runtime.redis_client()
    before = snapshot(client)
    with pytest.raises(MoiError, match=message):
        submit_many(None, parent, "bad", func, inputs)
    assert snapshot(client) == before


def test_a_bad_chunksize_or_parent_is_refused_before_anything_is_written(moi_env, user):
    parent = get_id_from_user(user)
    client = runtime.redis_client()
    before = snapshot(client)
    for size in (0, -2, 1.5, True):
        with pytest.raises(MoiError, match="chunksize must be a positive whole number"):
            submit_many(None, parent, "bad", square, [1], chunksize=size)
    with pytest.raises(InvalidIdError):
        submit_many(None, "moi:leases", "bad", square, [1])
    assert snapshot(client) == before


# -- a dead engine ----------------------------------------------------------------------
def test_an_engine_killed_mid_chunk_leaves_no_element_running(fragile_cluster, user, tmp_path):
    ensure_engine(fragile_cluster)  # a fault test before may have killed the only one
    parent = get_id_from_user(user)
    pid_file = tmp_path / "pid"
    inputs = [
        ("touch", str(tmp_path / "a")),
        ("pid", str(pid_file)),
        ("touch", str(tmp_path / "c")),
    ]
    ids, jobs = submit_many("fragile", parent, "doomed", step, inputs, chunksize=3)
    engine_pid = int(wait_for_file(pid_file, timeout=60))
    wait_for_status(ids[1], "Running")
    os.kill(engine_pid, signal.SIGKILL)
    assert process_gone(engine_pid)
    infos = jobs.wait(timeout=60)
    assert [info["status"] for info in infos] == ["Success", "Failed", "Failed"]
    assert not (tmp_path / "c").exists()
    leases = {m.decode() for m in runtime.redis_client().zrange(keys.LEASES, 0, -1)}
    assert not leases & set(ids)


# -- the command line ----------------------------------------------------------------
def _ids(stdout: str) -> list[str]:
    return [line.split(": ", 1)[1] for line in stdout.splitlines() if line.startswith("Submitted")]


def test_cli_many_runs_python_on_each_line_of_a_file(moi_env, user, tmp_path):
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("alpha\nbeta\n\ngamma\n")  # the blank line is no input
    proc = moi_cli(
        "submit", "--user", user, "--cmd", "return x.upper()", "--many", str(inputs), "--block"
    )
    assert proc.returncode == 0, proc.stderr
    ids = _ids(proc.stdout)
    assert len(ids) == 3
    infos = runtime.store().get_many(ids)
    assert [i["result"] for i in sorted(infos, key=lambda i: ids.index(i["id"]))] == [
        "ALPHA",
        "BETA",
        "GAMMA",
    ]
    assert "Success 3" in proc.stderr and "3 of 3 jobs succeeded" in proc.stderr
    assert f"{ids[1]}\tSuccess\tBETA" in proc.stdout
    calls = {f"return x.upper()  <- {x!r}" for x in ("alpha", "beta", "gamma")}
    assert {i["call"] for i in infos} == calls


def test_cli_many_reads_stdin_and_exits_non_zero_when_a_job_failed(moi_env, user):
    cmd = 'test "{}" != bad && echo "got $MOI_INPUT"'
    proc = subprocess_with_input(
        ["submit", "--user", user, "--cmd-type", "system", "--cmd", cmd, "--many", "-", "--block"],
        "one two\nbad\nthree\n",
    )
    assert proc.returncode == 1, proc.stderr
    ids = _ids(proc.stdout)
    infos = {i["id"]: i for i in runtime.store().get_many(ids)}
    assert [infos[i]["status"] for i in ids] == ["Success", "Failed", "Success"]
    assert infos[ids[0]]["result"][0] == "got one two\n"
    assert "2 of 3 jobs succeeded" in proc.stderr and "Failed 1" in proc.stderr


def test_cli_many_without_block_returns_once_submitted(moi_env, user, tmp_path):
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("1\n2\n")
    proc = moi_cli("submit", "--user", user, "--cmd", "return int(x) * 10", "--many", str(inputs))
    assert proc.returncode == 0, proc.stderr
    ids = _ids(proc.stdout)
    assert [wait_for_status(i, "Success")["result"] for i in ids] == [10, 20]


def test_cli_many_refuses_an_empty_file_and_typed_jobs(moi_env, user, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    client = runtime.redis_client()
    before = snapshot(client)
    proc = moi_cli("submit", "--user", user, "--cmd", "return x", "--many", str(empty))
    assert proc.returncode != 0 and "holds no input lines" in proc.stderr
    proc = moi_cli("submit", "--user", user, "--type", "echo", "--many", str(empty))
    assert proc.returncode != 0 and "--many goes with --cmd" in proc.stderr
    assert snapshot(client) == before


def subprocess_with_input(args: list[str], stdin: str) -> Any:
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "moi.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
        cwd="/",
    )


def test_the_progress_line_shows_job_statuses_as_plain_text():
    from rich.text import Text

    from moi.cli.many import describe

    hostile = {"Success": 2, "[link=https://evil.example]click[/link]": 1, "\x1b]0;owned\x07": 1}
    shown = Text.from_markup(describe(hostile))
    assert shown.plain == (
        "Success 2 · [link=https://evil.example]click[/link] 1 · \\x1b]0;owned\\x07 1"
    )
    assert not shown.spans  # no link, no style came from the job's text


def test_a_large_sweep_is_announced_in_bounded_add_messages(moi_env, user):
    parent = get_id_from_user(user)
    with subscribed(runtime.redis_client(), keys.pubsub(parent)) as sub:
        ids, jobs = submit_many(None, parent, "sweep", square, range(2500))
        batches = [json.loads(sub.get_message(timeout=10)["data"])["add"] for _ in range(3)]
    assert [len(batch) for batch in batches] == [1000, 1000, 500]
    assert [i for batch in batches for i in batch] == ids
    assert jobs.get(timeout=120) == [x * x for x in range(2500)]
