"""Job types and filters (issue 10, items 1-5): plug-ins, built-ins, engines, API, CLI.

The plug-in package ``tests/plugin_pkg`` (types ``square``, ``scratch``,
``not-a-dict``, ``boom`` and the broken ``broken`` in ``moi.jobs``; filters
``double`` and ``trail`` in ``moi.filters``) is installed into this test
environment with pip, where the engines run too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import ipyparallel as ipp
import pytest
from click.testing import CliRunner
from support import moi_cli, snapshot
from test_cli import details, submitted_id

from moi import keys, runtime, types
from moi.cli import BEGIN_ENVIRON, END_ENVIRON, main
from moi.errors import MoiError
from moi.job import submit_type, wait

BUILT_INS = "echo, ping, python, system"


# (fixture plugin: conftest.py)


@pytest.fixture
def typed(moi_env: dict[str, str], plugin: str, user: str) -> str:
    """The plug-in installed and the cluster up; the user's group id (not created yet)."""
    return user


def nothing_written(client: Any, before: dict[str, Any], user: str) -> None:
    assert snapshot(client) == before
    assert client.hget(keys.USER_ID_MAP, user) is None


def batch(environ: str | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("environ", None)
    if environ is not None:
        env["environ"] = environ
    return moi_cli("batch", env=env)


def printed_environ(stdout: str) -> dict[str, Any]:
    """The environ between the BEGIN / END lines (which must each be a whole line)."""
    lines = stdout.splitlines()
    begin, end = lines.index(BEGIN_ENVIRON), lines.index(END_ENVIRON)
    assert end == begin + 2, stdout
    return json.loads(lines[begin + 1])


# -- 1. plug-ins: entry points, run-time registration, filters, refusals --------------
def test_entry_points_are_found_with_their_source(plugin):
    found = types.job_types()
    assert found["square"].source == "entry point moi_test_plugin:square"
    assert found["square"].description == "Set square to n * n."
    assert found["ping"].source == types.BUILT_IN
    assert set(types.filters()) >= {"double", "trail"}
    assert types.filters()["double"].source == "entry point moi_test_plugin:double"


def test_broken_plugin_is_reported_by_name(plugin):
    broken = types.job_types()["broken"]
    assert broken.func is None
    assert "moi_test_plugin.missing:func" in broken.error
    assert "ModuleNotFoundError" in broken.error
    with pytest.raises(MoiError, match=r"job type 'broken' is broken \(entry point "):
        types.run({"job_type": "broken"})
    # the others still work
    assert types.run({"job_type": "square", "n": 3})["square"] == 9


def test_register_and_decorator(plugin):
    name, deco, filt = (f"t-{uuid.uuid4().hex[:6]}" for _ in range(3))

    def triple(environ):
        environ["n"] *= 3
        return environ

    types.register(name, triple, description="Triple n.")

    @types.register(deco)
    def negate(environ):
        """Negate n."""
        environ["n"] = -environ["n"]
        return environ

    @types.register_filter(filt)
    def add_one(environ):
        environ["n"] += 1
        return environ

    try:
        assert negate({"n": 1}) == {"n": -1}  # the decorator returns the function
        assert types.job_types()[name].description == "Triple n."
        assert types.job_types()[deco].description == "Negate n."
        assert types.job_types()[deco].source == types.AT_RUN_TIME
        assert types.run({"job_type": name, "n": 2})["n"] == 6
        final = types.run({"job_type": deco, "n": 2, "prefilters": [filt]})
        assert final["n"] == -3 and final["result"] == "SUCCESS"
    finally:
        types.unregister(name)
        types.unregister(deco)
        types.unregister(filt, "filter")
    with pytest.raises(MoiError, match="unknown job type"):
        types.run({"job_type": name})


def test_filters_run_in_the_order_named(plugin):
    one = types.run(
        {"job_type": "square", "n": 3, "prefilters": ["double", "trail"], "postfilters": ["trail"]}
    )
    assert (one["n"], one["square"], one["trail"]) == (6, 36, [6, 6])
    other = types.run(
        {"job_type": "square", "n": 3, "prefilters": ["trail", "double"], "postfilters": ["double"]}
    )
    assert (other["n"], other["square"], other["trail"]) == (12, 36, [3])


@pytest.mark.parametrize(
    "environ, message",
    [
        ({"job_type": "nope"}, f"unknown job type 'nope'; known: boom, broken, {BUILT_INS[:4]}"),
        ({"job_type": "square", "prefilters": ["nope"]}, "unknown filter 'nope'; known: double"),
        ({"job_type": "square", "postfilters": "double"}, "the environ's postfilters must"),
        ({"n": 1}, "the environ has no job_type"),
        ([1, 2], "the environ must be a JSON object, not an array"),
        ({"job_type": "echo", "x": {1, 2}}, "the environ must hold JSON values only"),
    ],
)
def test_bad_environ_is_refused_locally(plugin, environ, message):
    with pytest.raises(MoiError) as caught:
        types.run(environ)
    assert str(caught.value).startswith(message), caught.value


def test_unknown_names_are_refused_before_anything_is_written(typed):
    client = runtime.redis_client()
    before = snapshot(client)
    with pytest.raises(MoiError) as caught:
        submit_type("default", typed, "j", "nope", {})
    assert str(caught.value) == (
        "unknown job type 'nope'; known: boom, broken, echo, not-a-dict, ping, python, "
        "scratch, square, system"
    )
    with pytest.raises(MoiError, match=r"unknown filter 'zap'; known: double, trail$"):
        submit_type("default", typed, "j", "square", {"n": 1, "postfilters": ["zap"]})
    with pytest.raises(MoiError, match="job type 'broken' is broken"):
        submit_type("default", typed, "j", "broken", {})
    nothing_written(client, before, typed)


# -- 2. built-ins ------------------------------------------------------------------------
def test_builtin_ping_and_echo(plugin):
    assert types.run({"job_type": "ping", "ping": [1, "a"]}) == {
        "job_type": "ping",
        "ping": [1, "a"],
        "pong": [1, "a"],
        "result": "SUCCESS",
    }
    assert types.run({"job_type": "echo", "a": {"b": None}}) == {
        "job_type": "echo",
        "a": {"b": None},
        "result": "SUCCESS",
    }


def test_builtin_python(plugin):
    final = types.run({"job_type": "python", "cmd": "environ['seen'] = 1\nreturn 6 * 7"})
    assert (final["output"], final["seen"], final["result"]) == (42, 1, "SUCCESS")
    failed = types.run({"job_type": "python", "cmd": "return 1 / 0"})
    assert failed["result"] == "FAILURE"
    assert failed["exception"] == "ZeroDivisionError: division by zero"
    assert "ZeroDivisionError" in failed["traceback"]
    unstorable = types.run({"job_type": "python", "cmd": "return object()"})
    assert unstorable["result"] == "FAILURE"
    assert "JSON cannot" in unstorable["exception"] and "output" not in unstorable


def test_builtin_system(plugin):
    final = types.run({"job_type": "system", "cmd": "echo out; echo err >&2"})
    assert (final["stdout"], final["stderr"], final["returncode"]) == ("out\n", "err\n", 0)
    assert final["result"] == "SUCCESS"
    failed = types.run({"job_type": "system", "cmd": "echo partial; exit 3"})
    assert (failed["stdout"], failed["returncode"], failed["result"]) == ("partial\n", 3, "FAILURE")
    assert failed["exception"] == "Failure: the command exited with status 3"
    no_cmd = types.run({"job_type": "system"})
    assert no_cmd["result"] == "FAILURE" and "needs `cmd`" in no_cmd["exception"]


def test_local_run_uses_a_scratch_directory(plugin):
    here = os.getcwd()
    final = types.run({"job_type": "scratch"})
    assert final["files"] == ["left-behind.txt"]
    assert final["cwd"] != here and not os.path.exists(final["cwd"])
    assert os.getcwd() == here


# -- 3 and 4. on the engines, through submit_type --------------------------------------
def finished(job_id: str) -> dict[str, Any]:
    return wait(job_id, timeout=60)


def test_submit_type_success(typed):
    job_id, parent, ar = submit_type("default", typed, "pinger", "ping", {"ping": "hi"})
    assert parent == typed
    assert runtime.store().require(job_id)["job_type"] == "ping"  # from the Queued write on
    environ = ar.get(timeout=60)
    assert environ == {"ping": "hi", "pong": "hi", "job_type": "ping", "result": "SUCCESS"}
    info = finished(job_id)
    assert (info["status"], info["job_type"], info["name"]) == ("Success", "ping", "pinger")
    assert info["result"] == environ
    assert job_id in runtime.store().children(typed)


def test_engine_runs_plugin_with_filters_in_a_scratch_directory(typed):
    job_id, _, ar = submit_type(
        "default", typed, "sq", "square", {"n": 5, "prefilters": ["double"]}
    )
    assert ar.get(timeout=60)["square"] == 100
    job_id, _, ar = submit_type("default", typed, "scratch", "scratch", {})
    final = ar.get(timeout=60)
    assert final["pid"] != os.getpid()  # it ran on an engine
    assert final["files"] == ["left-behind.txt"]
    assert Path(final["cwd"]).name.startswith("moi-job-")
    assert not os.path.exists(final["cwd"])  # removed afterwards (same machine)
    assert finished(job_id)["status"] == "Success"


@pytest.mark.parametrize(
    "job_type, environ, exception",
    [
        ("boom", {"message": "kaput"}, "RuntimeError: kaput"),
        ("not-a-dict", {}, "Failure: job type 'not-a-dict' returned list, not a dict"),
        ("system", {"cmd": "echo so far; exit 4"}, "Failure: the command exited with status 4"),
    ],
)
def test_failing_typed_job(typed, job_type, environ, exception):
    job_id, _, ar = submit_type("default", typed, "bad", job_type, environ)
    with pytest.raises(ipp.error.RemoteError) as caught:
        ar.get(timeout=60)
    assert caught.value.ename == "TypedJobFailed"
    info = finished(job_id)
    assert info["status"] == "Failed" and info["job_type"] == job_type
    result = info["result"]
    assert result["result"] == "FAILURE" and result["job_type"] == job_type
    assert result["exception"].startswith(exception), result
    assert result["traceback"].startswith("Traceback (most recent call last)")
    if job_type == "system":
        assert (result["stdout"], result["returncode"]) == ("so far\n", 4)


def test_type_not_installed_on_the_engine(typed):
    name = f"only-here-{uuid.uuid4().hex[:6]}"
    types.register(name, lambda environ: environ)  # known here, not on the engines
    try:
        job_id, _, ar = submit_type("default", typed, "missing", name, {})
    finally:
        types.unregister(name)
    with pytest.raises(ipp.error.RemoteError):
        ar.get(timeout=60)
    result = finished(job_id)["result"]
    assert result["result"] == "FAILURE"
    assert re.fullmatch(
        rf"MoiError: job type {name} is not installed on engine \d+ \([^:]+:\d+\)",
        result["exception"],
    ), result["exception"]


# -- 5. the CLI --------------------------------------------------------------------------
def test_cli_submit_type_block(typed):
    proc = moi_cli(
        *("submit", "--user", typed, "--type", "square", "--environ", '{"n": 7}', "--block")
    )
    assert proc.returncode == 0, proc.stderr
    job_id = submitted_id(proc.stdout)
    shown = details(proc.stdout)
    assert shown["status"] == "Success" and shown["job_type"] == "square"
    assert shown["name"] == f"{typed}-square-submit"
    environ = json.loads(shown["result"])
    assert environ["square"] == 49 and environ["result"] == "SUCCESS"
    assert runtime.store().require(job_id)["result"] == environ


def test_cli_submit_type_environ_file_and_failure(typed, tmp_path):
    path = tmp_path / "environ.json"
    path.write_text(json.dumps({"message": "from a file"}))
    result = CliRunner().invoke(
        main,
        ["submit", "--user", typed, "--type", "boom", "--environ-file", str(path), "--block"],
    )
    assert result.exit_code == 1, result.output
    shown = details(result.stdout)
    assert shown["status"] == "Failed"
    environ = json.loads(shown["result"])
    assert environ["exception"] == "RuntimeError: from a file"


def test_cli_submit_cmd_type_still_works(typed):
    result = CliRunner().invoke(
        main, ["submit", "--user", typed, "--cmd", "echo hi", "--cmd-type", "system", "--block"]
    )
    assert result.exit_code == 0, result.output
    assert "job_type" not in details(result.stdout)


def test_cli_types_lists_everything(plugin):
    proc = moi_cli("types")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("types:\n") and "\nfilters:\n" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert re.fullmatch(r"  ping +built-in +Answer: set pong to the value of ping\.", rows["ping"])
    assert re.fullmatch(
        r"  square +entry point moi_test_plugin:square +Set square to n \* n\.", rows["square"]
    )
    assert re.fullmatch(
        r"  double +entry point moi_test_plugin:double +Filter: double n\.", rows["double"]
    )
    assert "BROKEN: cannot load moi_test_plugin.missing:func: ModuleNotFoundError" in rows["broken"]
    assert {"echo", "python", "system", "trail", "boom", "scratch"} <= set(rows)


def test_cli_batch(plugin):
    proc = batch(json.dumps({"job_type": "square", "n": 2, "postfilters": ["double"]}))
    assert proc.returncode == 0, proc.stderr
    assert printed_environ(proc.stdout) == {
        "job_type": "square",
        "n": 4,
        "square": 4,
        "postfilters": ["double"],
        "result": "SUCCESS",
    }
    failed = batch(json.dumps({"job_type": "python", "cmd": "print('noise')\nraise KeyError(1)"}))
    assert failed.returncode == 1, failed.stderr
    assert failed.stdout.startswith("noise\n")
    environ = printed_environ(failed.stdout)
    assert environ["result"] == "FAILURE" and environ["exception"] == "KeyError: 1"


#: name -> (how to run it, the error line)
BAD_CLI = {
    "malformed --environ": (
        ["submit", "--type", "echo", "--environ", "{nope"],
        "Error: --environ is not valid JSON: Expecting property name enclosed in double quotes",
    ),
    "non-object --environ": (
        ["submit", "--type", "echo", "--environ", "[1]"],
        "Error: --environ must be a JSON object, not an array",
    ),
    "unknown type": (
        ["submit", "--type", "nope", "--environ", "{}"],
        "Error: unknown job type 'nope'; known: boom, broken, echo,",
    ),
    "unknown filter": (
        ["submit", "--type", "echo", "--environ", '{"prefilters": ["zap"]}'],
        "Error: unknown filter 'zap'; known: double, trail",
    ),
    "broken type": (
        ["submit", "--type", "broken"],
        "Error: job type 'broken' is broken (entry point moi_test_plugin.missing:func)",
    ),
    "missing --environ-file": (
        ["submit", "--type", "echo", "--environ-file", "/nonexistent/environ.json"],
        "Error: cannot read --environ-file /nonexistent/environ.json: ",
    ),
    "--type and --cmd": (
        ["submit", "--type", "echo", "--cmd", "return 1"],
        "Error: give --cmd or --type, not both",
    ),
    "--environ without --type": (
        ["submit", "--cmd", "return 1", "--environ", "{}"],
        "Error: --environ and --environ-file go with --type",
    ),
    "neither --cmd nor --type": (["submit"], "Error: Missing option '--cmd'. (or give --type)"),
}


@pytest.mark.parametrize("case", list(BAD_CLI))
def test_cli_bad_typed_submit(typed, case):
    args, line = BAD_CLI[case]
    client = runtime.redis_client()
    before = snapshot(client)
    proc = moi_cli(*args[:1], "--user", typed, *args[1:])
    assert proc.returncode != 0 and proc.stdout == ""
    assert "Traceback" not in proc.stderr
    errors = [s for s in proc.stderr.splitlines() if s.startswith("Error")]
    assert len(errors) == 1 and errors[0].startswith(line), proc.stderr
    nothing_written(client, before, typed)


@pytest.mark.parametrize(
    "environ, line",
    [
        (None, "Error: the environment variable environ is not set"),
        ("{bad", "Error: $environ is not valid JSON: "),
        ('"text"', "Error: $environ must be a JSON object, not a string"),
        ("{}", "Error: the environ has no job_type"),
        ('{"job_type": "nope"}', "Error: unknown job type 'nope'; known: boom, broken, echo"),
    ],
)
def test_cli_bad_batch(moi_env, plugin, environ, line):
    client = runtime.redis_client()
    before = snapshot(client)
    proc = batch(environ)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith(line) and proc.stderr.count("\n") == 1, proc.stderr
    assert snapshot(client) == before


def test_large_failed_environ_keeps_the_reason(typed, monkeypatch):
    monkeypatch.setenv("MOI_MAX_RESULT_BYTES", "2000")
    cmd = "head -c 5000 /dev/zero | tr '\\0' x; exit 2"
    job_id, _, ar = submit_type("default", typed, "big", "system", {"cmd": cmd})
    with pytest.raises(ipp.error.RemoteError):
        ar.get(timeout=60)
    result = finished(job_id)["result"]
    assert set(result) == {"job_type", "result", "exception", "traceback", "note"}
    assert result["exception"] == "Failure: the command exited with status 2"
    assert "larger than the limit of 2000 bytes" in result["note"]


def test_python_type_reports_the_commands_own_line_numbers():
    """A typed ``python`` job's traceback names the line of ``cmd`` that failed."""
    final = types.execute({"job_type": "python", "cmd": "x = 1\nreturn x / 0"})
    assert final["result"] == "FAILURE"
    assert 'File "<moi-cmd>", line 2' in final["traceback"], final["traceback"]
    assert "return x / 0" in final["traceback"]
    broken = types.execute({"job_type": "python", "cmd": "return (1"})
    assert broken["result"] == "FAILURE"
    assert "line 1" in broken["traceback"], broken["traceback"]
