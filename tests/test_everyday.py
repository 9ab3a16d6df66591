"""Everyday use (issue 14): what a new user tripped over, outside the browser.

The call description (item 2), ``submit_nouser`` jobs where a user looks
(item 5), readable failures (item 7), the CLI's papercuts and ``--json``
(item 9, issue 12).  Real Redis, real cluster, the CLI as a real process.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import ipyparallel as ipp
import pytest
from support import add, moi_cli, wait_for_status
from test_cli import details

from moi import engine, runtime
from moi.group import get_id_from_user
from moi.job import (
    MAX_CALL_CHARS,
    describe_call,
    python_call,
    submit,
    submit_nouser,
    submit_type,
    system_call,
    wait,
)


# -- job functions (run on the engines) -------------------------------------------------
def fails_in_user_code(depth: int, **kwargs: Any) -> None:
    """Job: raise from a helper of the user's, ``depth`` calls down."""
    if depth:
        fails_in_user_code(depth - 1)
    raise RuntimeError("user code failed")


def count(items: list[Any], **kwargs: Any) -> int:
    """Job: how many items it got."""
    return len(items)


def sets_a_final_status(**kwargs: Any) -> None:
    """Job: ask moi for a status only moi may set (moi refuses it inside engine.py)."""
    kwargs["moi_update_status"]("Success")


def where_am_i(**kwargs: Any) -> str:
    """Job: the engine's working directory."""
    return os.getcwd()


def submitted_id(stdout: str) -> str:
    found = re.search(r"Submitted job id: (\S+)", stdout)
    assert found, stdout
    return found.group(1)


def cli_submit(user: str, *args: str) -> str:
    done = moi_cli("submit", "--user", user, *args)
    assert done.returncode == 0, done.stderr
    return submitted_id(done.stdout + done.stderr)


def gated_python(release: Path, result: str = "'released'") -> str:
    return (
        "import os, time\n"
        "deadline = time.time() + 120\n"
        f"while not os.path.exists({str(release)!r}) and time.time() < deadline:\n"
        "    time.sleep(0.02)\n"
        f"return {result}"
    )


# -- item 2: the call ---------------------------------------------------------------------
def test_info_keeps_a_short_description_of_the_call(moi_env, user):
    parent = get_id_from_user(user)
    job_id, _, ar = submit(None, parent, "adder", None, add, 2, b=3)
    assert ar.get(timeout=60) == 5
    assert runtime.store().require(job_id)["call"] == "add(2, b=3)"

    huge = list(range(10_000))
    job_id, _, ar = submit(None, parent, "big", None, count, huge)
    assert ar.get(timeout=60) == 10_000
    call = runtime.store().require(job_id)["call"]
    assert call == "count([0, 1, 2, 3, ...])" and len(call) <= MAX_CALL_CHARS

    job_id, _, ar = submit(None, parent, "sys", None, system_call, "echo hi")
    ar.get(timeout=60)
    assert runtime.store().require(job_id)["call"] == "echo hi"

    job_id, _, ar = submit_type(None, parent, "typed", "ping", {"ping": "x" * 500})
    ar.get(timeout=60)
    call = runtime.store().require(job_id)["call"]
    assert call.startswith('ping {"ping": "xxx') and len(call) <= MAX_CALL_CHARS


def test_describe_call_survives_a_raising_repr_and_cuts_long_commands():
    class Nasty:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    assert describe_call(add, (Nasty(),), {}).startswith("add(<Nasty")
    long_cmd = "x = 1\n" * 100
    described = describe_call(python_call, (long_cmd,), {})
    assert len(described) == MAX_CALL_CHARS and described.endswith("…")


def test_cli_job_and_userjobs_summary_show_name_and_call(moi_env, user):
    first = cli_submit(user, "--cmd", "return 1", "--name", "first-one", "--block")
    second = cli_submit(user, "--cmd", "echo two", "--cmd-type", "system", "--block")
    shown = moi_cli("job", first)
    assert shown.returncode == 0, shown.stderr
    assert details(shown.stdout)["call"] == "return 1"

    summary = moi_cli("userjobs", "--key", user, "--summary")
    lines = summary.stdout.splitlines()
    assert len(lines) == 2
    assert f"id: {first}\tstatus: Success\tname: first-one\tcall: return 1" in lines[0]
    assert f"id: {second}\tstatus: Success\tname: {user}-cmd-submit\tcall: echo two" in lines[1]


# -- item 5: submit_nouser ------------------------------------------------------------------
def test_submit_nouser_jobs_show_where_the_no_user_user_looks(moi_env):
    job_id, parent, ar = submit_nouser(add, 20, 22)
    assert parent == "no-user" and ar.get(timeout=60) == 42
    # the dashboard of `moi serve` (user no-user) follows this tree
    tree = runtime.store().tree(get_id_from_user("no-user"))
    assert job_id in {info["id"] for info in tree}

    listed = moi_cli("userjobs", "--key", "no-user", "--summary")
    assert listed.returncode == 0, listed.stderr
    assert f"id: {job_id}\tstatus: Success" in listed.stdout

    group = moi_cli("job", "--job-id", "no-user")
    assert group.returncode == 0, group.stderr
    assert details(group.stdout)["type"] == "group"
    assert details(group.stdout)["parent"] == get_id_from_user("no-user")


# -- item 7: failures ------------------------------------------------------------------------
def test_failed_command_keeps_exit_code_stdout_and_stderr(moi_env, user):
    parent = get_id_from_user(user)
    cmd = "echo to-out; echo to-err >&2; exit 3"
    job_id, _, ar = submit(None, parent, "failing", None, system_call, cmd)
    with pytest.raises(ipp.error.RemoteError, match="CommandFailed"):
        ar.get(timeout=60)
    info = wait(job_id, timeout=30)
    assert info["status"] == "Failed"
    result = info["result"]
    assert result["exit_code"] == 3
    assert result["stdout"] == "to-out\n" and result["stderr"] == "to-err\n"
    assert "exit code: 3" in "".join(result["traceback"])
    assert "engine.py" not in "".join(result["traceback"])

    shown = moi_cli("job", job_id)  # the CLI shows it as a traceback, as before
    assert "Failed to execute: " + cmd in shown.stdout and "exit code: 3" in shown.stdout


def test_tracebacks_start_with_the_users_frames(moi_env, user):
    parent = get_id_from_user(user)
    job_id, _, _ = submit(None, parent, "deep", None, fails_in_user_code, 2)
    lines = wait(job_id, timeout=60)["result"]
    text = "".join(lines)
    assert lines[0] == "Traceback (most recent call last):\n"
    assert "test_everyday.py" in lines[1] and "fails_in_user_code" in lines[1]
    assert "moi/engine.py" not in text and "moi/job.py" not in text
    assert text.endswith("RuntimeError: user code failed\n")

    # moi's frames the user's code called into stay: they say what was refused
    job_id, _, _ = submit(None, parent, "final", None, sets_a_final_status)
    text = "".join(wait(job_id, timeout=60)["result"])
    assert text.index("sets_a_final_status") < text.index("moi/engine.py")
    assert "in run_job" not in text


def test_python_commands_report_the_users_line_numbers(moi_env, user):
    refused = moi_cli("submit", "--user", user, "--cmd", "x = = 5")
    assert refused.returncode != 0
    assert "(line 1)" in refused.stderr, refused.stderr

    job_id = cli_submit(user, "--cmd", "x = 1\ny = x / 0\nreturn y")
    lines = wait(job_id, timeout=60)["result"]
    assert lines[1].startswith('  File "<moi-cmd>", line 2, in _moi_cmd\n    y = x / 0\n')
    assert not any("python_call" in line for line in lines)

    job_id = cli_submit(user, "--cmd", "return 1 / 0")
    assert 'File "<moi-cmd>", line 1, in _moi_cmd' in "".join(wait(job_id, timeout=60)["result"])


def test_an_error_inside_moi_keeps_every_frame():
    with pytest.raises(ValueError) as caught:
        engine.update_status(None, "some-job", "Success")  # type: ignore[arg-type]
    exc = caught.value
    exc.__traceback__ = exc.__traceback__.tb_next  # as on an engine: moi's own frames only
    text = "".join(engine.format_failure(exc))
    assert text.startswith("Traceback (most recent call last):\n")
    assert "moi/engine.py" in text and "in update_status" in text


# -- item 9: the CLI -------------------------------------------------------------------------
def test_job_cancel_and_chain_take_the_id_as_an_argument_too(moi_env, user, tmp_path):
    job_id = cli_submit(user, "--cmd", "return 7", "--block")
    for args in (["job", job_id], ["job", "--job-id", job_id], ["job", job_id, "--job-id", job_id]):
        done = moi_cli(*args)
        assert done.returncode == 0, done.stderr
        assert details(done.stdout)["id"] == job_id
    chain = moi_cli("chain", job_id)
    assert chain.returncode == 0 and chain.stdout.startswith(job_id), chain.stderr

    other = "3f1c2b6e-0000-4000-8000-000000000000"
    both = moi_cli("job", job_id, "--job-id", other)
    assert both.returncode == 2 and "give the job id once" in both.stderr
    neither = moi_cli("job")
    assert neither.returncode == 2 and "give the job id: as ID or with --job-id" in neither.stderr

    release = tmp_path / "release"
    running = cli_submit(user, "--cmd", gated_python(release))
    try:
        wait_for_status(running, "Running", timeout=60)
        done = moi_cli("cancel", running)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"Job {running}: Cancelled"
    finally:
        release.touch()


def test_wait_shows_a_job_submitted_earlier_like_block(moi_env, user, tmp_path):
    release = tmp_path / "release"
    job_id = cli_submit(user, "--cmd", gated_python(release, "'waited'"))
    waiter = subprocess.Popen(
        [sys.executable, "-m", "moi.cli", "wait", job_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    try:
        wait_for_status(job_id, "Running", timeout=60)
    finally:
        release.touch()
    out, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, err
    assert re.search(r"status: Queued\n.*status: Running\n.*status: Success\n", err, re.S), err
    assert details(out)["result"] == "waited"

    failed = cli_submit(user, "--cmd", "return 1 / 0")
    done = moi_cli("wait", "--job-id", failed)
    assert done.returncode == 1 and details(done.stdout)["status"] == "Failed"


def test_json_for_scripts(moi_env, user, tmp_path):
    submitted = moi_cli("submit", "--user", user, "--cmd", "return [1, 2]", "--block", "--json")
    assert submitted.returncode == 0, submitted.stderr
    final = json.loads(submitted.stdout)
    assert final["result"] == [1, 2] and final["call"] == "return [1, 2]"
    assert "Submitted job id" in submitted.stderr
    job_id = final["id"]

    no_block = moi_cli("submit", "--user", user, "--cmd", "return 3", "--json")
    later = json.loads(no_block.stdout)["id"]
    assert wait(later, timeout=60)["result"] == 3

    assert json.loads(moi_cli("job", job_id, "--json").stdout)["status"] == "Success"
    assert json.loads(moi_cli("wait", later, "--json").stdout)["result"] == 3
    full = json.loads(moi_cli("userjobs", "--key", user, "--json").stdout)
    assert [info["id"] for info in full] == [job_id, later]
    short = json.loads(moi_cli("userjobs", "--key", user, "--summary", "--json").stdout)
    assert short[0] == {
        "date_created": final["date_created"],
        "id": job_id,
        "status": "Success",
        "name": f"{user}-cmd-submit",
        "call": "return [1, 2]",
    }
    assert json.loads(moi_cli("users", "--json").stdout)[user] == get_id_from_user(user)
    chain = json.loads(moi_cli("chain", job_id, "--json").stdout)
    assert [info["id"] for info in chain] == [job_id] and chain[0]["duration"].endswith(" s")
    status = json.loads(moi_cli("status", "--json").stdout)
    assert {row["part"] for row in status} >= {"redis", "cluster", "contexts"}
    kinds = json.loads(moi_cli("types", "--json").stdout)
    assert "ping" in {t["name"] for t in kinds["types"]}

    release = tmp_path / "release"
    running = cli_submit(user, "--cmd", gated_python(release))
    try:
        wait_for_status(running, "Running", timeout=60)
        cancelled = json.loads(moi_cli("cancel", running, "--json").stdout)
        assert cancelled == {"id": running, "outcome": "requested", "status": "Cancelled"}
    finally:
        release.touch()


def test_serve_on_port_zero_picks_a_free_port_and_prints_it(moi_env):
    proc = subprocess.Popen(
        [sys.executable, "-m", "moi.cli", "serve", "--port", "0"],
        env={**os.environ, "MOI_TOKEN": "a-token-for-this-test-only"},  # single-user
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd="/",
    )
    try:
        assert proc.stdout is not None
        seen = ""
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            while "token=" not in seen and selector.select(timeout=60):
                line = proc.stdout.readline()
                if not line:
                    break
                seen += line
        found = re.search(r"http://127\.0\.0\.1:(\d+)/\?token=(\S+)", seen)
        assert found, seen
        port = int(found.group(1))
        assert port != 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=30) as page:
            assert page.status == 200
    finally:
        proc.terminate()
        proc.wait(10)


def test_shell_completion_script_is_printed(moi_env):
    done = subprocess.run(
        [str(Path(sys.executable).parent / "moi")],
        env={**os.environ, "_MOI_COMPLETE": "bash_source"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert "complete -o nosort -F _moi_completion moi" in done.stdout, done.stderr
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert 'eval "$(_MOI_COMPLETE=bash_source moi)"' in readme  # documented as it works
    assert "`moi cancel ID [--wait/--no-wait]`" in readme


# -- item 10 stays fixed ---------------------------------------------------------------------
def test_engines_work_in_the_state_directory_not_the_users(moi_env, user):
    """A ``moi/`` folder in the user's directory must not shadow the package on the engines."""
    job_id, _, ar = submit(None, get_id_from_user(user), "cwd", None, where_am_i)
    profile = Path(moi_env["MOI_STATE_DIR"]) / "ipython" / "profile_default"
    assert Path(ar.get(timeout=60)).resolve() == profile.resolve()
    assert Path(os.getcwd()).resolve() != profile.resolve()
