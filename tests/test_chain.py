"""Job chaining (issue 10, items 6-9): a running job asks for the next jobs.

Real Redis, real clusters (``default``; ``fragile`` for the engine killed in
the middle of a chain).  Every wait is on an event, with a timeout.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import pytest
from click.testing import CliRunner
from support import ensure_engine, moi_cli, wait_for_status

from moi import keys, runtime, watchdog
from moi.chain import jobs
from moi.cli import main
from moi.group import create_info, get_id_from_user
from moi.job import submit, submit_type, wait
from moi.status import is_terminal
from moi.store import now

CHAIN_TIMEOUT = 90.0


# -- job functions (imported by the engines from this module) ----------------------------
def ask_for_double(n: int, moi_chain: Any, **kwargs: Any) -> str:
    moi_chain(double, n, name="double")
    return "asked"


def double(n: int, **kwargs: Any) -> int:
    return 2 * n


def python_then_typed(x: int, moi_chain: Any, **kwargs: Any) -> str:
    """Job 1 of three kinds: passes ``x`` on in a typed python job's environ."""
    cmd = (
        "environ['chain'] = [{'cmd': 'echo got=$X', 'env': {'X': str(environ['x'] * 3)},"
        " 'name': 'third'}]\n"
        "return environ['x'] * 3"
    )
    moi_chain("python", environ={"cmd": cmd, "x": x + 1}, name="second")
    return "first"


def forever(moi_chain: Any, **kwargs: Any) -> str:
    moi_chain(forever)
    return "again"


def slow_then_chain(seconds: float, moi_chain: Any, **kwargs: Any) -> str:
    time.sleep(seconds)
    moi_chain(double, 1)
    return "late"


def bad_moi_chain(how: str, moi_chain: Any, **kwargs: Any) -> None:
    calls = {
        "not callable": lambda: moi_chain(42),
        "unknown type": lambda: moi_chain("no-such-type", environ={}),
        "args to a type": lambda: moi_chain("ping", 1),
        "environ to a function": lambda: moi_chain(double, environ={"a": 1}),
        "env not strings": lambda: moi_chain(double, 1, env={"A": 1}),
    }
    calls[how]()


class KillOnPickle:
    """Kills the process that pickles it: the engine, when it hands the next job over."""

    def __reduce__(self) -> Any:
        os.kill(os.getpid(), signal.SIGKILL)
        return (KillOnPickle, ())


def dies_while_handing_over(moi_chain: Any, **kwargs: Any) -> str:
    moi_chain(double, KillOnPickle(), name="never handed over")
    return "asked"


# -- helpers ---------------------------------------------------------------------------------
def last_of_chain(first_id: str) -> dict[str, Any]:
    return wait(first_id, timeout=CHAIN_TIMEOUT, chain=True)


def reason(info: dict[str, Any]) -> str:
    result = info["result"]
    return "".join(result) if isinstance(result, list) else json.dumps(result)


# -- item 6 and 8: asking, data passing, same parent, chained_from ---------------------------
def test_a_function_chains_a_function_with_its_arguments(moi_env, user):
    parent = get_id_from_user(user)
    first, _, _ = submit(None, parent, "first", None, ask_for_double, 21)
    last = last_of_chain(first)
    assert last["status"] == "Success" and last["result"] == 42
    assert last["name"] == "double" and last["chained_from"] == first
    assert last["parent"] == parent
    assert last["chain"] == {"root": first, "index": 1}
    asker = runtime.store().require(first)
    assert asker["status"] == "Success" and asker["chained_to"] == [last["id"]]
    assert {first, last["id"]} <= runtime.store().children(parent)


def test_three_kinds_pass_data_along(moi_env, user):
    """python function -> typed python job (environ) -> system command (env)."""
    parent = get_id_from_user(user)
    first, _, _ = submit(None, parent, "first", None, python_then_typed, 13)
    last = last_of_chain(first)
    chain = jobs(first)
    assert [info["name"] for info in chain] == ["first", "second", "third"]
    second = chain[1]
    assert second["job_type"] == "python" and second["result"]["output"] == 42
    assert last["id"] == chain[2]["id"] and last["chained_from"] == second["id"]
    assert last["status"] == "Success"
    assert last["result"][0] == "got=42\n"


def test_a_typed_job_chains_through_its_environ(moi_env, user):
    environ = {"ping": 1, "chain": [{"type": "ping", "environ": {"ping": "two"}}]}
    first, _, _ = submit_type(None, get_id_from_user(user), "ping 1", "ping", environ)
    last = last_of_chain(first)
    assert last["job_type"] == "ping" and last["name"] == "ping"
    assert last["result"]["pong"] == "two" and last["result"]["result"] == "SUCCESS"


def test_a_command_chains_by_printing_a_line(moi_env, user):
    line = 'MOI-CHAIN {"cmd": "echo $GREETING", "env": {"GREETING": "hello"}, "name": "greet"}'
    cmd = f"echo before; echo '{line}'; echo after"
    proc = moi_cli("submit", "--user", user, "--cmd", cmd, "--cmd-type", "system", "--block")
    assert proc.returncode == 0, proc.stderr
    assert "next job of the chain:" in proc.stderr and "greet" in proc.stderr
    assert "hello" in proc.stdout  # the details printed are the last job's
    assert "name\t\t: greet" in proc.stdout


def test_the_system_type_chains_by_printing_a_line(moi_env, user):
    line = 'MOI-CHAIN {"type": "ping", "environ": {"ping": "from shell"}}'
    environ = {"cmd": f"echo '{line}'"}
    first, _, _ = submit_type(None, get_id_from_user(user), "shell", "system", environ)
    last = last_of_chain(first)
    assert last["result"]["pong"] == "from shell"


# -- item 7: handed over by the engine; submitter gone; engine killed ------------------------
def test_a_chain_started_with_no_block_runs_to_its_end(moi_env, user):
    cmd = "moi_chain('ping', environ={'ping': 7}, name='after'); return 1"
    proc = moi_cli("submit", "--user", user, "--cmd", cmd, "--no-block")
    assert proc.returncode == 0, proc.stderr  # the submitting process has exited
    first = proc.stdout.split("Submitted job id: ", 1)[1].strip()
    last = last_of_chain(first)
    assert last["status"] == "Success" and last["result"]["pong"] == 7
    assert runtime.store().r.zscore(keys.QUEUED, last["id"]) is None


def test_an_engine_killed_between_two_jobs_leaves_nothing_queued(fragile_cluster, user):
    ensure_engine(fragile_cluster)
    try:
        first, _, _ = submit(
            "fragile", get_id_from_user(user), "dies", None, dies_while_handing_over
        )
        asker = wait_for_status(first, is_terminal, timeout=60)
        assert asker["status"] == "Success"  # written with the next job, in one step
        (next_id,) = asker["chained_to"]
        timeout = watchdog.GRACE + 3 * watchdog.RECONCILE_INTERVAL + 15
        lost = wait_for_status(next_id, is_terminal, timeout=timeout)
        assert lost["status"] == "Failed" and lost["result"] == watchdog.LOST
        assert first in lost["note"] and "never handed it to the cluster" in lost["note"]
        assert runtime.store().r.zscore(keys.QUEUED, next_id) is None
    finally:
        ensure_engine(fragile_cluster)  # the next tests need one


def test_a_chained_job_written_but_never_handed_over_is_failed(moi_env, user):
    """What an engine killed right after the atomic step leaves: the watchdog settles it."""
    store = runtime.store()
    asker = create_info("asker", "job", parent=user, context="default")
    asker["status"] = "Running"
    store.create(asker, parent_if_missing=create_info("unnamed", "group", id=user))
    following = create_info("next", "job", parent=user, context="default")
    following["chained_from"] = asker["id"]
    task = {
        "context": "default",
        "connection_file": moi_env["MOI_CLUSTER_FILE_DEFAULT"],
        "chained_from": asker["id"],
    }
    fields = {"status": "Success", "date_end": now(), "chained_to": [following["id"]]}
    since = time.time() - watchdog.GRACE  # asked a grace period ago
    applied, before = store.update_and_create(asker["id"], fields, [(following, task)], since)
    assert applied and before == "Running"
    assert following["id"] in store.children(user)
    assert store.require(following["id"])["status"] == "Queued"
    lost = wait_for_status(following["id"], is_terminal, timeout=30)
    assert lost["status"] == "Failed" and lost["result"] == watchdog.LOST
    assert not store.r.hexists(keys.QUEUED_TASKS, following["id"])


# -- item 8: limits -------------------------------------------------------------------------
def test_a_chain_past_its_length_fails_the_asking_job(moi_env, user, monkeypatch):
    monkeypatch.setenv("MOI_CHAIN_MAX", "3")
    first, _, _ = submit(None, get_id_from_user(user), "forever", None, forever)
    last = last_of_chain(first)
    assert last["status"] == "Failed" and last["chain"]["index"] == 2
    assert "MOI_CHAIN_MAX" in reason(last) and "chained_to" not in last
    assert len(jobs(first)) == 3


def test_a_chain_past_its_time_fails_the_asking_job(moi_env, user, monkeypatch):
    monkeypatch.setenv("MOI_CHAIN_TIMEOUT", "0.2")
    first, _, _ = submit(None, get_id_from_user(user), "slow", None, slow_then_chain, 0.5)
    info = last_of_chain(first)
    assert info["id"] == first and info["status"] == "Failed"
    assert "MOI_CHAIN_TIMEOUT" in reason(info) and "chained_to" not in info


def test_a_bad_limit_is_refused_before_anything_is_written(moi_env, user, monkeypatch):
    monkeypatch.setenv("MOI_CHAIN_MAX", "many")
    with pytest.raises(Exception, match="MOI_CHAIN_MAX must be a positive number"):
        submit(None, get_id_from_user(user), "x", None, double, 1)


# -- bad input: a clear reason on the asking job ------------------------------------------
@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("not callable", "moi_chain wants a function or a job type's name"),
        ("unknown type", "unknown job type"),
        ("args to a type", "takes the environ only"),
        ("environ to a function", "environ= goes with a job type's name"),
        ("env not strings", "env must map names to strings"),
    ],
)
def test_a_bad_moi_chain_call_fails_the_job(moi_env, user, how, expected):
    first, _, _ = submit(None, get_id_from_user(user), how, None, bad_moi_chain, how)
    info = wait(first, timeout=CHAIN_TIMEOUT)
    assert info["status"] == "Failed" and expected in reason(info)
    assert "chained_to" not in info


@pytest.mark.parametrize(
    ("chain", "expected"),
    [
        ("not a list", "chain must be a list of requests"),
        ([42], "must be a JSON object"),
        ([{"type": "ping", "cmd": "true"}], "exactly one"),
        ([{"cmd": "true", "environ": {}}], '"environ" goes with "type"'),
        ([{"type": "ping", "colour": "red"}], "unknown fields"),
    ],
)
def test_a_bad_chain_in_an_environ_fails_the_typed_job(moi_env, user, chain, expected):
    first, _, _ = submit_type(None, get_id_from_user(user), "bad", "echo", {"chain": chain})
    info = wait(first, timeout=CHAIN_TIMEOUT)
    assert info["status"] == "Failed" and expected in reason(info)
    assert "chained_to" not in info


def test_a_malformed_printed_line_fails_the_command(moi_env, user):
    cmd = "echo 'MOI-CHAIN {not json'"
    proc = moi_cli("submit", "--user", user, "--cmd", cmd, "--cmd-type", "system", "--block")
    assert proc.returncode == 1
    assert "malformed chain request line" in proc.stdout


# -- item 9: waiting on a chain, and `moi chain` ------------------------------------------
def test_wait_on_a_chain_reports_each_job_and_moi_chain_lists_them(moi_env, user):
    seen: list[tuple[str, str]] = []
    first, _, _ = submit(None, get_id_from_user(user), "first", None, ask_for_double, 5)
    last = wait(
        first,
        timeout=CHAIN_TIMEOUT,
        chain=True,
        on_change=lambda info: seen.append((info["id"], info["status"])),
    )
    assert last["result"] == 10
    assert (first, "Success") in seen and (last["id"], "Success") in seen
    assert wait(first, timeout=CHAIN_TIMEOUT)["id"] == first  # without chain=True: that job
    out = CliRunner().invoke(main, ["chain", "--job-id", last["id"]])
    assert out.exit_code == 0, out.output
    lines = out.output.strip().splitlines()
    assert [line.split("\t")[:3] for line in lines] == [
        [first, "first", "Success"],
        [last["id"], "double", "Success"],
    ]
    assert all(line.split("\t")[3].endswith(" s") for line in lines)
