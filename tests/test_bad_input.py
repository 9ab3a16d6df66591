"""Bad CLI input: one clear line on stderr, a non-zero exit, no traceback, nothing written."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from support import moi_cli, snapshot

from moi import keys, redis_server, runtime
from moi.cli import main

UNKNOWN = "4d7e9a10-2b3c-4d5e-8f90-a1b2c3d4e5f6"

#: name -> (arguments, exit code, the stderr line)
CASES = {
    "unknown context": (
        ["submit", "--user", "{user}", "--cmd", "return 1", "--context", "nowhere"],
        1,
        "Error: unknown context 'nowhere'; configured: default, fragile, offline",
    ),
    "malformed job id": (
        ["job", "--job-id", "12345"],
        1,
        "Error: malformed job id '12345': expected a UUID",
    ),
    "unknown job id": (
        ["job", "--job-id", UNKNOWN],
        1,
        f"Error: unknown job or group id: {UNKNOWN}",
    ),
    "unknown user": (["userjobs", "--key", "{user}"], 1, "Error: Unknown key: {user}"),
    "python that does not compile": (
        ["submit", "--user", "{user}", "--cmd", "return (1 +"],
        1,
        "Error: the Python command does not compile: '(' was never closed (line 1)",
    ),
    "no cluster for a configured context": (
        ["submit", "--user", "{user}", "--cmd", "return 1", "--context", "offline"],
        1,
        "Error: no cluster reachable for context 'offline': no connection file ",
    ),
    "bad cmd-type": (
        ["submit", "--user", "{user}", "--cmd", "ls", "--cmd-type", "perl"],
        2,
        "Error: Invalid value for '--cmd-type': 'perl' is not one of 'python', 'system'.",
    ),
    "missing cmd": (["submit", "--user", "{user}"], 2, "Error: Missing option '--cmd'."),
    "cancel of a malformed id": (
        ["cancel", "--job-id", "x"],
        1,
        "Error: malformed job id 'x': expected a UUID",
    ),
}


def _check(code: int, stdout: str, stderr: str, expected_code: int, line: str) -> None:
    assert code == expected_code, stderr
    assert "Traceback" not in stderr + stdout
    assert stdout == ""
    errors = [s for s in stderr.splitlines() if s.startswith("Error")]
    assert len(errors) == 1 and errors[0].startswith(line), stderr
    if expected_code == 1:  # a moi error: that one line and nothing else
        assert stderr.count("\n") == 1, stderr


@pytest.mark.parametrize("how", ["in-process", "subprocess"])
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_cleanly(moi_env, user, case, how):
    args, code, line = CASES[case]
    args = [a.format(user=user) for a in args]
    line = line.format(user=user)
    client = runtime.redis_client()
    before = snapshot(client)
    if how == "in-process":
        result = CliRunner().invoke(main, args)
        assert not isinstance(result.exception, Exception) or isinstance(
            result.exception, SystemExit
        ), result.exception
        _check(result.exit_code, result.stdout, result.stderr, code, line)
    else:
        proc = moi_cli(*args)
        _check(proc.returncode, proc.stdout, proc.stderr, code, line)
    assert snapshot(client) == before
    assert client.hget(keys.USER_ID_MAP, user) is None


def test_unreachable_redis_is_one_line(moi_env, tmp_path):
    port = redis_server.free_port()  # nothing listens there
    env = dict(moi_env, MOI_REDIS_URL=f"redis://127.0.0.1:{port}/0")
    proc = moi_cli("users", env={**os.environ, **env})
    _check(proc.returncode, proc.stdout, proc.stderr, 1, "Error: cannot reach Redis: ")
    assert str(port) in proc.stderr


def test_missing_ini_file_is_one_line(moi_env, tmp_path):
    missing = tmp_path / "nope.ini"
    proc = moi_cli("users", env={**os.environ, "MOI_CONFIG_FP": str(missing)})
    _check(proc.returncode, proc.stdout, proc.stderr, 1, "Error: MOI_CONFIG_FP names ")
    assert re.search(re.escape(str(missing)) + ".*does not exist", proc.stderr)


def _submit_with_cluster_file(user: str, content: str, tmp_path) -> None:
    path = tmp_path / "ipcontroller-client.json"
    path.write_text(content)
    client = runtime.redis_client()
    before = snapshot(client)
    proc = moi_cli(
        *("submit", "--user", user, "--cmd", "return 1", "--context", "offline"),
        env={**os.environ, "MOI_CLUSTER_FILE_OFFLINE": str(path)},
    )
    _check(proc.returncode, proc.stdout, proc.stderr, 1, "Error: no cluster reachable for ")
    assert "context 'offline'" in proc.stderr
    assert snapshot(client) == before
    assert client.hget(keys.USER_ID_MAP, user) is None


def test_stale_connection_file_is_one_line(moi_env, user, tmp_path):
    """The file of a controller that is gone (say, before a reboot): nobody answers."""
    real = json.loads(Path(moi_env["MOI_CLUSTER_FILE_DEFAULT"]).read_text())
    port = redis_server.free_port()
    stale = {
        k: port if isinstance(v, int) and not isinstance(v, bool) else v for k, v in real.items()
    }
    _submit_with_cluster_file(user, json.dumps(stale), tmp_path)


@pytest.mark.parametrize("content", ["not json {", "{}", "[1, 2]"])
def test_garbled_connection_file_is_one_line(moi_env, user, tmp_path, content):
    _submit_with_cluster_file(user, content, tmp_path)
