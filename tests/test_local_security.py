"""Another local user must not get in: the embedded Redis and the state directory.

The attacker is a second Unix user the test creates (the tests run as root in
CI); it tries what the security review did: read the password from command
lines, connect to the server, plant a state directory.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis
from support import moi_cli, unconfigured_env

from moi import connection, embedded
from moi.errors import MoiError

ATTACKER = "moi-attacker"


def _attacker() -> str:
    """The attacking user's name, created on first use."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a second Unix user (CI runs as root)")
    try:
        pwd.getpwnam(ATTACKER)
    except KeyError:
        subprocess.run(["useradd", "-M", "-s", "/bin/false", ATTACKER], check=True)
    return ATTACKER


def as_attacker(code: str) -> subprocess.CompletedProcess[str]:
    """Run Python ``code`` as the attacking user (the system's python3)."""
    python = shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3"
    return subprocess.run(
        ["runuser", "-u", _attacker(), "--", python, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
    )


@pytest.fixture
def shared_base() -> Iterator[Path]:
    """A world-traversable directory (like /home on a lab server) to put a state dir in."""
    base = Path(tempfile.mkdtemp(prefix="moi-sec-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def embedded_redis(shared_base: Path) -> Iterator[Path]:
    """moi's own Redis started as for a user with nothing configured; its state dir."""
    state = shared_base / "state"
    embedded.ensure_redis(state)
    try:
        yield state
    finally:
        embedded.stop_redis(state)


def _password(state: Path) -> str:
    return json.loads((state / "redis.json").read_text())["password"]


def test_embedded_redis_listens_on_a_private_socket_only(embedded_redis):
    state = embedded_redis
    known = json.loads((state / "redis.json").read_text())
    server = psutil.Process(known["pid"])
    assert server.net_connections(kind="inet") == []  # no TCP port at all
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    for private in (state / "redis.json", state / "redis" / "redis.conf", state / "redis.sock"):
        assert stat.S_IMODE(os.lstat(private).st_mode) == 0o600, private
    assert "port" not in known and "url" not in known
    password = known["password"]
    assert password not in (state / "redis" / "redis.conf").read_text()  # only its hash
    for proc in psutil.process_iter(["cmdline"]):
        assert password not in " ".join(proc.info["cmdline"] or ()), proc
    assert "password" not in embedded.embedded_url(state)


def test_each_start_makes_a_new_password_and_clients_follow(embedded_redis):
    state = embedded_redis
    url = embedded.embedded_url(state)
    client = connection.client(url)
    client.set("kept", "yes")
    before = _password(state)
    embedded.stop_redis(state)
    assert embedded.ensure_redis(state) == url
    assert _password(state) != before
    assert client.get("kept") == b"yes"  # a long-lived client reconnects with the new one
    stale = redis.Redis(unix_socket_path=str(state / "redis.sock"), password=before)
    with pytest.raises(redis.AuthenticationError):
        stale.ping()


@pytest.mark.parametrize(
    "command",
    [
        ("CONFIG", "SET", "dir", "/tmp"),
        ("CONFIG", "SET", "dbfilename", "authorized_keys"),
        ("SAVE",),
        ("BGSAVE",),
        ("MODULE", "LOAD", "/tmp/evil.so"),
        ("DEBUG", "SLEEP", "0"),
        ("REPLICAOF", "127.0.0.1", "1"),
        ("SHUTDOWN",),
        ("ACL", "SETUSER", "evil", "on"),
    ],
)
def test_admin_commands_are_refused(embedded_redis, command):
    client = connection.client(embedded.embedded_url(embedded_redis))
    with pytest.raises(redis.ResponseError, match="no permissions|not allowed"):
        client.execute_command(*command)
    assert client.ping()


def test_another_local_user_cannot_reach_the_server_or_its_secrets(embedded_redis):
    state = embedded_redis
    tries = as_attacker(
        "import socket, sys\n"
        f"paths = {[str(state / 'redis.sock'), str(state / 'redis.json')]!r}\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        "    s.connect(paths[0]); print('CONNECTED')\n"
        "except OSError as e: print('refused', e.errno)\n"
        "try:\n"
        "    print('READ', open(paths[1]).read())\n"
        "except OSError as e: print('refused', e.errno)\n"
    )
    assert tries.returncode == 0, tries.stderr
    assert "CONNECTED" not in tries.stdout and "READ" not in tries.stdout
    assert tries.stdout.count("refused 13") == 2  # EACCES, twice


def test_a_planted_state_directory_is_refused(shared_base):
    planted = shared_base / "planted"
    planted.mkdir(mode=0o700)
    planted.chmod(0o777)
    (planted / "cookie_secret").write_text("attacker-knows-this")
    done = moi_cli("status", env=unconfigured_env(planted))
    assert done.returncode == 1
    assert "refusing the state directory" in done.stderr and "chmod 700" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (planted / "redis.sock").exists()

    theirs = shared_base / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, pwd.getpwnam(_attacker()).pw_uid, -1)
    with pytest.raises(MoiError, match="belongs to uid"):
        embedded.ensure_redis(theirs)


def test_moi_files_are_never_written_through_a_symbolic_link(shared_base):
    state = shared_base / "state"
    state.mkdir(mode=0o700)
    target = shared_base / "victim"
    target.write_text("untouched")
    (state / "redis.json").symlink_to(target)
    try:
        embedded.ensure_redis(state)
        assert target.read_text() == "untouched"
        assert not (state / "redis.json").is_symlink()
    finally:
        embedded.stop_redis(state)


def test_a_planted_password_file_is_not_trusted(shared_base):
    state = shared_base / "state"
    state.mkdir(mode=0o700)
    secret = state / "redis.json"
    secret.write_text(json.dumps({"password": "attacker"}))
    secret.chmod(0o644)
    with pytest.raises(MoiError, match="chmod 600"):
        connection.read_private_json(secret)


def test_status_names_the_server_and_its_version(shared_base):
    done = moi_cli("status", env=unconfigured_env(shared_base / "state"))
    assert done.returncode == 0, done.stderr
    line = next(row for row in done.stdout.splitlines() if row.startswith("redis"))
    assert "Valkey 9." in line or "Redis " in line
    assert "unix socket" in line


def test_a_planted_cookie_secret_is_refused(shared_base):
    from moi.web import load_cookie_secret

    state = shared_base / "state"
    state.mkdir(mode=0o700)
    (state / "cookie_secret").write_text("attacker-knows-this")
    (state / "cookie_secret").chmod(0o644)
    with pytest.raises(MoiError, match="chmod 600"):
        load_cookie_secret(state)
    (state / "cookie_secret").unlink()
    (state / "cookie_secret").symlink_to(shared_base / "elsewhere")
    with pytest.raises(MoiError, match="symbolic link"):
        load_cookie_secret(state)
    assert not (shared_base / "elsewhere").exists()
