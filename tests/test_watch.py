"""``moi watch``: driven in a real pseudo-terminal (pexpect) against real Redis and engines."""

from __future__ import annotations

import json
import os
import sys

import pexpect
import pytest
from support import gated, moi_cli, wait_for_status

from moi.group import get_id_from_user
from moi.job import submit


def spawn_watch(user: str) -> pexpect.spawn:
    return pexpect.spawn(
        sys.executable,
        ["-m", "moi.cli", "watch", "--user", user],
        env={**os.environ, "TERM": "xterm-256color"},
        dimensions=(40, 160),
        timeout=30,
        cwd="/",
    )


def test_watch_shows_counts_updates_live_and_q_quits(moi_env, user, tmp_path):
    parent = get_id_from_user(user)
    first, _, ar = submit(None, parent, "first-job", None, lambda **kw: 1)
    wait_for_status(first, "Success")
    watch = spawn_watch(user)
    try:
        watch.expect("Success 1")
        watch.expect("Running 0")
        release = tmp_path / "release"
        second, _, _ = submit(None, parent, "gated-job", None, gated, str(release))
        watch.expect("Running 1")  # pushed: no key pressed, no poll of the tree
        watch.expect("gated-job")
        release.write_text("go")
        watch.expect("Success 2")
        watch.send("q")
        watch.expect(pexpect.EOF)
    finally:
        watch.close(force=True)
    assert watch.exitstatus == 0, watch.before


def test_watch_json_prints_one_snapshot(moi_env, user, tmp_path):
    parent = get_id_from_user(user)
    release = tmp_path / "release"
    running, _, _ = submit(None, parent, "\x1b[2Jrunning", None, gated, str(release))
    wait_for_status(running, "Running")
    try:
        done = moi_cli("watch", "--user", user, "--json")
    finally:
        release.write_text("go")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["user"] == user and data["counts"] == {"Running": 1}
    (job,) = data["running"]
    assert job["id"] == running and job["name"] == "\x1b[2Jrunning" and job["elapsed"] >= 0
    assert data["finished"] == []


def test_watch_without_a_terminal_says_to_use_json(moi_env, user):
    done = moi_cli("watch", "--user", user)
    assert done.returncode == 2 and "--json" in done.stderr


@pytest.mark.parametrize("name", ["\x1b]2;owned\x07job"])
def test_watch_shows_job_names_as_text(moi_env, user, name):
    parent = get_id_from_user(user)
    job_id, _, _ = submit(None, parent, name, None, lambda **kw: 1)
    wait_for_status(job_id, "Success")
    watch = spawn_watch(user)
    try:
        watch.expect(r"\\x1b\]2;owned\\x07job")  # escaped, not sent to the terminal
        watch.send("q")
        watch.expect(pexpect.EOF)
    finally:
        watch.close(force=True)
    assert watch.exitstatus == 0
