"""The original moi's command-line scenario, in-process (CliRunner) and as real processes."""

from __future__ import annotations

import queue
import re
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from click.testing import CliRunner
from support import gated, moi_cli, wait_for_status

from moi import keys, runtime
from moi.cli import main
from moi.job import submit, wait

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
SUMMARY = re.compile(
    rf"^date: (?P<date>[^\t]+)\tid: (?P<id>{UUID})\tstatus: (?P<status>[^\t]+)"
    r"\tname: (?P<name>[^\t]*)\tcall: (?P<call>.*)$"
)


def submitted_id(stdout: str) -> str:
    """The id in the ``Submitted job id: <uuid>`` line, which must be the first line."""
    match = re.match(rf"Submitted job id: ({UUID})\n", stdout)
    assert match, stdout
    return match.group(1)


def details(stdout: str) -> dict[str, str]:
    """Parse the ``********** id **********`` block; ``result`` keeps its continuation lines."""
    block = stdout[stdout.index("**********") :]
    header, *lines = block.rstrip("\n").split("\n")
    fields: dict[str, str] = {"header": header}
    key = None
    for line in lines:
        match = re.match(r"^(\w+)\t{1,2}: (.*)$", line)
        if match and key != "result":
            key = match.group(1)
            fields[key] = match.group(2)
        else:
            assert key == "result", f"stray line {line!r} in {stdout!r}"
            fields[key] += "\n" + line
    return fields


def statuses(stderr: str) -> list[str]:
    """Statuses the CLI reported on stderr while blocking."""
    return re.findall(r"status: (.+)$", stderr, re.M)


def group_of(user: str) -> str:
    found = runtime.redis_client().hget(keys.USER_ID_MAP, user)
    assert found is not None, f"user {user} has no group"
    return found.decode()


def assert_success_block(stdout: str, stderr: str, user: str) -> None:
    job_id = submitted_id(stdout)
    info = details(stdout)
    assert info["header"] == f"********** {job_id} **********"
    assert info["status"] == "Success"
    assert info["result"] == "15"
    assert info["id"] == job_id
    assert info["name"] == f"{user}-cmd-submit"
    assert info["parent"] == group_of(user)
    assert info["context"] == "default"
    assert info["type"] == "job" and info["url"] == "None"
    assert info["pubsub"] == f"{job_id}:pubsub"
    assert info["date_created"] <= info["date_start"] <= info["date_end"]
    seen = statuses(stderr)
    assert seen and seen[-1] == "Success", stderr
    order = ["Queued", "Running", "Success"]
    assert [order.index(s) for s in seen] == sorted({order.index(s) for s in seen}), seen
    assert job_id in runtime.store().children(group_of(user))


def test_python_success_block_in_process(moi_env, user):
    result = CliRunner().invoke(
        main, ["submit", "--user", user, "--cmd", "x = 5; return x + 10", "--block"]
    )
    assert result.exit_code == 0, result.output
    assert_success_block(result.stdout, result.stderr, user)


def test_python_success_block_subprocess(moi_env, user):
    proc = moi_cli("submit", "--user", user, "--cmd", "x = 5; return x + 10", "--block")
    assert proc.returncode == 0, proc.stderr
    assert_success_block(proc.stdout, proc.stderr, user)
    assert "Traceback" not in proc.stderr
    # a job quicker than one look still shows its start, from date_start, in order
    shown = re.findall(r"^(\S+ \S+)  status: (\w+)$", proc.stderr, re.MULTILINE)
    assert [status for _, status in shown] == ["Queued", "Running", "Success"], proc.stderr
    info = runtime.store().require(re.search(r"id: (\S+)", proc.stdout).group(1))
    assert [when for when, _ in shown] == [
        info["date_created"],
        info["date_start"],
        info["date_end"],
    ]


def _lines(stream, out: queue.Queue) -> None:
    for line in stream:
        out.put(line)


def _expect_line(lines: queue.Queue, pattern: str, seen: list[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not any(pattern in line for line in seen):
        seen.append(lines.get(timeout=max(0.01, deadline - time.monotonic())))


def test_block_reports_every_status_change(moi_env, user, tmp_path):
    """Both engines busy -> Queued; then Running while the job waits; then Success."""
    free_engines, finish_job = tmp_path / "free-engines", tmp_path / "finish-job"
    blockers = [
        submit("default", user, f"blocker-{n}", None, gated, str(free_engines)) for n in range(2)
    ]
    proc = None
    try:
        for job_id, _, _ in blockers:
            wait_for_status(job_id, "Running")
        cmd = (
            "import os, time\n"
            "deadline = time.monotonic() + 60\n"
            f"while not os.path.exists({str(finish_job)!r}) and time.monotonic() < deadline:\n"
            "    time.sleep(0.02)\n"
            "return 'finished'"
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "moi.cli", "submit", "--user", user, "--cmd", cmd, "--block"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: queue.Queue = queue.Queue()
        reader = threading.Thread(target=_lines, args=(proc.stderr, lines), daemon=True)
        reader.start()
        seen: list[str] = []
        _expect_line(lines, "status: Queued", seen)
        free_engines.touch()
        _expect_line(lines, "status: Running", seen)
        finish_job.touch()
        proc.wait(timeout=60)
        reader.join(timeout=10)
        stdout = proc.stdout.read()
    finally:
        free_engines.touch()
        finish_job.touch()
        if proc is not None and proc.poll() is None:
            proc.kill()
    for _, _, ar in blockers:
        assert ar.get(timeout=30) == "released"
    while not lines.empty():
        seen.append(lines.get())
    assert proc.returncode == 0
    assert statuses("".join(seen)) == ["Queued", "Running", "Success"]
    assert details(stdout)["result"] == "finished"


def test_python_failure(moi_env, user):
    proc = moi_cli("submit", "--user", user, "--cmd", "return float('crash and burn')", "--block")
    assert proc.returncode != 0
    info = details(proc.stdout)
    assert info["status"] == "Failed"
    assert info["result"].startswith("Traceback (most recent call last):")
    assert "ValueError: could not convert string to float: 'crash and burn'" in info["result"]
    assert statuses(proc.stderr)[-1] == "Failed"
    assert runtime.store().require(info["id"])["status"] == "Failed"


def test_system_success(moi_env, user):
    result = CliRunner().invoke(
        main,
        ["submit", "--user", user, "--cmd", "echo 'hello from moi'", "--cmd-type", "system"]
        + ["--block"],
    )
    assert result.exit_code == 0, result.output
    info = details(result.stdout)
    assert info["status"] == "Success"
    assert info["result"] == "['hello from moi\\n', '', 0]"
    assert runtime.store().require(info["id"])["result"] == ["hello from moi\n", "", 0]


def test_system_failure(moi_env, user):
    proc = moi_cli(
        "submit", "--user", user, "--cmd", "sleep 0.2; foobar", "--cmd-type=system", "--block"
    )
    assert proc.returncode != 0
    info = details(proc.stdout)
    assert info["status"] == "Failed"
    assert "Failed to execute: sleep 0.2; foobar" in info["result"]
    assert "foobar" in info["result"].split("stderr:", 1)[1]


def test_no_block_returns_at_once_and_job_shows_it_later(moi_env, user, tmp_path):
    release = tmp_path / "release"
    cmd = (
        "import os, time\n"
        "deadline = time.monotonic() + 60\n"
        f"while not os.path.exists({str(release)!r}) and time.monotonic() < deadline:\n"
        "    time.sleep(0.02)\n"
        "return 42"
    )
    try:
        proc = moi_cli("submit", "--user", user, "--cmd", cmd, "--no-block")
        assert proc.returncode == 0, proc.stderr
        job_id = submitted_id(proc.stdout)
        assert proc.stdout.strip() == f"Submitted job id: {job_id}"
        running = wait_for_status(job_id, "Running")  # the job outlived its submitter
        shown = moi_cli("job", "--job-id", job_id)
        assert shown.returncode == 0, shown.stderr
        assert details(shown.stdout)["status"] == "Running"
        assert details(shown.stdout)["date_start"] == running["date_start"]
        assert details(shown.stdout)["date_end"] == "None"
    finally:
        release.touch()
    final = wait(job_id, timeout=30)
    assert final["status"] == "Success" and final["result"] == 42
    shown = CliRunner().invoke(main, ["job", "--job-id", job_id])
    assert shown.exit_code == 0
    assert details(shown.stdout)["status"] == "Success"
    assert details(shown.stdout)["result"] == "42"


def test_python_command_can_set_its_status(moi_env, user, tmp_path):
    release = tmp_path / "release"
    cmd = (
        "import os, time\n"
        "moi_update_status('half way')\n"
        "deadline = time.monotonic() + 60\n"
        f"while not os.path.exists({str(release)!r}) and time.monotonic() < deadline:\n"
        "    time.sleep(0.02)\n"
        "return 'done'"
    )
    try:
        job_id, _, _ = _cli_submit(user, cmd)
        wait_for_status(job_id, "half way")
        shown = CliRunner().invoke(main, ["job", "--job-id", job_id])
        assert details(shown.stdout)["status"] == "half way"
    finally:
        release.touch()
    assert wait(job_id, timeout=30)["result"] == "done"


def test_userjobs_lists_exactly_the_users_jobs_sorted(moi_env, user):
    ids = []
    for cmd in ("return 42", "return float('crash and burn')", "return 'third'"):
        proc = moi_cli("submit", "--user", user, "--cmd", cmd)
        assert proc.returncode == 0, proc.stderr
        ids.append(submitted_id(proc.stdout))
    other = moi_cli("submit", "--user", f"{user}-other", "--cmd", "return 0")
    other_id = submitted_id(other.stdout)
    for job_id in [*ids, other_id]:
        wait(job_id, timeout=60)

    proc = moi_cli("userjobs", "--key", user, "--summary")
    assert proc.returncode == 0, proc.stderr
    rows = [SUMMARY.match(line) for line in proc.stdout.splitlines()]
    assert all(rows), proc.stdout
    assert [r["id"] for r in rows] == ids
    assert [r["status"] for r in rows] == ["Success", "Failed", "Success"]
    dates = [datetime.fromisoformat(r["date"]) for r in rows]
    assert dates == sorted(dates)
    assert other_id not in proc.stdout

    by_group = CliRunner().invoke(main, ["userjobs", "--key", group_of(user), "--summary"])
    assert by_group.stdout == proc.stdout

    full = CliRunner().invoke(main, ["userjobs", "--key", user])
    headers = re.findall(rf"^\*+ ({UUID}) \*+$", full.stdout, re.M)
    assert headers == ids
    assert "ValueError: could not convert string to float" in full.stdout


def test_userjobs_unknown_key(moi_env, user):
    proc = moi_cli("userjobs", "--key", user)
    assert proc.returncode != 0
    assert proc.stderr.strip() == f"Error: Unknown key: {user}"
    assert proc.stdout == ""
    assert runtime.redis_client().hget(keys.USER_ID_MAP, user) is None


def test_users_lists_the_user(moi_env, user):
    job_id, _, _ = _cli_submit(user, "return 1")
    wait(job_id, timeout=60)
    result = CliRunner().invoke(main, ["users"])
    assert result.exit_code == 0
    assert f"{user}\t{group_of(user)}" in result.stdout.splitlines()
    proc = moi_cli("users")
    assert proc.stdout == result.stdout


def _cli_submit(user: str, cmd: str) -> tuple[str, str, str]:
    result = CliRunner().invoke(main, ["submit", "--user", user, "--cmd", cmd, "--no-block"])
    assert result.exit_code == 0, result.output
    return submitted_id(result.stdout), result.stdout, result.stderr


def test_moi_script_exists():
    launcher = Path(__file__).parent.parent / "scripts" / "moi"
    proc = subprocess.run(
        [sys.executable, str(launcher), "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    for command in ("submit", "job", "userjobs", "users", "cancel", "up", "down", "status"):
        assert re.search(rf"^\s+{command}\s", proc.stdout, re.M), command
