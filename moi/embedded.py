"""moi's own Redis server and local ipyparallel cluster, started on first use.

With nothing configured moi behaves like SQLite: the first command that needs
Redis or a cluster starts them in the background under the per-user state
directory (``MOI_STATE_DIR``, default ``~/.local/state/moi``), says so in one
line on stderr, and every later command reuses them.  A file lock makes two
racing commands start only one of each.  ``moi down`` stops them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from moi import connection, redis_server
from moi.errors import MoiError

CLUSTER_ID = "moi"
#: Set for the embedded watchdog: the state directory whose services it keeps running.
SUPERVISE_VAR = "MOI_SUPERVISE"
#: Set (non-empty) when the watchdog also keeps the embedded Redis running.
SUPERVISE_REDIS_VAR = "MOI_SUPERVISE_REDIS"
_REDIS_FILE = "redis.json"
_WATCHDOG_FILE = "watchdog.json"


def say(message: str) -> None:
    """Tell the user, in one line on stderr, what moi does on their behalf."""
    print(f"moi: {message}", file=sys.stderr, flush=True)


#: State directories whose lock this process holds (``state_lock`` nests).
_held: set[Path] = set()


@contextlib.contextmanager
def state_lock(state_dir: Path, wait: bool = True) -> Iterator[None]:
    """Hold the state directory's lock: one starter at a time, across processes.

    Nested use in the same process holds it once (``moi up`` starts Redis and
    the cluster under one lock, each of which takes it too).  With
    ``wait=False`` a lock held elsewhere raises :class:`BlockingIOError`.
    """
    if state_dir in _held:
        yield
        return
    check_state_dir(state_dir)
    fd = os.open(state_dir / "lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        _held.add(state_dir)
        try:
            yield
        finally:
            _held.discard(state_dir)
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_state_dir(state_dir: Path) -> None:
    """Create the state directory (0700), or refuse one that is not safely ours.

    Like ssh's StrictModes: a directory that another user owns, or that group
    or others may write, could hold a planted ``cookie_secret`` or socket.

    Raises
    ------
    MoiError
        With one line saying what is wrong and how to fix it.
    """
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = os.lstat(state_dir)
    except OSError as exc:
        raise MoiError(f"cannot use the state directory {state_dir}: {exc.strerror}") from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise MoiError(f"refusing the state directory {state_dir}: it is not a plain directory")
    if info.st_uid != os.geteuid():
        raise MoiError(
            f"refusing the state directory {state_dir}: it belongs to uid {info.st_uid}, "
            "not you; remove it or set MOI_STATE_DIR"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise MoiError(
            f"refusing the state directory {state_dir}: group or others may write to it "
            f"(chmod 700 {state_dir})"
        )


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path`` (never through a symbolic link); ``None`` if unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_private(path: Path, data: dict[str, Any]) -> None:
    connection.write_private_text(path, json.dumps(data))


def pid_alive(pid: int | None) -> bool:
    """Return whether a process with ``pid`` exists."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def redis_socket(state_dir: Path) -> Path:
    """The embedded server's unix socket."""
    return state_dir / "redis.sock"


def embedded_url(state_dir: Path) -> str:
    """URL of the embedded server; its password is read from ``redis.json`` beside it."""
    return redis_server.socket_url(redis_socket(state_dir))


def _socket_is_mine(path: Path) -> bool:
    """Whether ``path`` is a socket of this user (never trust a planted one)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISSOCK(info.st_mode) and info.st_uid == os.geteuid()


def ensure_redis(state_dir: Path) -> str:
    """Return the URL of the embedded Redis server, starting it if needed.

    A server that answers but refuses writes (full disk) is alive: moi
    never starts a second one on the same data.
    """
    check_state_dir(state_dir)
    url = embedded_url(state_dir)
    if redis_running(state_dir):
        return url
    with state_lock(state_dir):
        if redis_running(state_dir):
            return url
        known = _read_json(state_dir / _REDIS_FILE) or {}
        if pid_alive(known.get("pid")) and _is_our_server(known["pid"], state_dir):
            raise MoiError(
                f"moi's Redis (pid {known['pid']}) runs but does not answer on "
                f"{redis_socket(state_dir)}; `moi down` stops it (an older moi's server "
                f"listened on a port); see {state_dir / 'redis' / 'redis.log'}"
            )
        try:
            binary, sock = _start_embedded_redis(state_dir)
        except OSError as exc:
            raise MoiError(
                f"cannot start Redis in {state_dir}: {exc.strerror} (disk full or read-only?)"
            ) from None
        version = redis_server.server_version(binary)
        say(f"started Redis ({version}) on {sock}, data in {state_dir / 'redis'}")
        return url


def _start_embedded_redis(state_dir: Path) -> tuple[str, Path]:
    """Start the embedded server with a new password; return its binary and socket."""
    binary = redis_server.redis_binary()
    password = secrets.token_urlsafe(32)  # a new one at each start
    sock = redis_socket(state_dir)
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()
    # the password file first: the server's first client reads it
    _write_private(state_dir / _REDIS_FILE, {"password": password})
    proc = redis_server.start_redis_server(state_dir / "redis", password=password, unix_socket=sock)
    _write_private(
        state_dir / _REDIS_FILE,
        {
            "socket": str(sock),
            "password": password,
            "pid": proc.pid,
            "server": redis_server.server_version(binary),
            "binary": binary,
            "started": str(datetime.now()),
        },
    )
    return binary, sock


def redis_running(state_dir: Path) -> bool:
    """Whether the embedded Redis of ``state_dir`` runs and answers (never starts it)."""
    return _socket_is_mine(redis_socket(state_dir)) and redis_server.answers(
        embedded_url(state_dir)
    )


def _is_our_server(pid: int, state_dir: Path) -> bool:
    """Whether process ``pid`` is the server started with ``state_dir``'s configuration."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    return cwd == str(state_dir / "redis") or str(state_dir / "redis") in cmdline


def stop_redis(state_dir: Path, timeout: float = 30.0) -> bool:
    """Stop the embedded server (SIGTERM flushes its append-only file); return whether it ran."""
    known = _read_json(state_dir / _REDIS_FILE) or {}
    pid = int(known.get("pid") or 0)
    if not (pid_alive(pid) and _is_our_server(pid, state_dir)):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and _is_our_server(pid, state_dir):
        if time.monotonic() > deadline:
            raise MoiError(f"moi's Redis (pid {pid}) did not stop within {timeout:.0f} s")
        time.sleep(0.05)
    return True


# -- cluster -----------------------------------------------------------------
def profile_dir(state_dir: Path) -> Path:
    """IPython profile directory of the embedded cluster."""
    return state_dir / "ipython" / "profile_moi"


def connection_file(state_dir: Path) -> Path:
    """Client connection file of the embedded cluster."""
    return profile_dir(state_dir) / "security" / f"ipcontroller-{CLUSTER_ID}-client.json"


def _cluster_file(state_dir: Path) -> Path:
    return profile_dir(state_dir) / "security" / f"cluster-{CLUSTER_ID}.json"


def cluster_state(state_dir: Path) -> dict[str, Any] | None:
    """The embedded cluster's recorded state when its controller is alive."""
    state = _read_json(_cluster_file(state_dir))
    if not state:
        return None
    pid = state.get("controller", {}).get("state", {}).get("pid")
    return state if pid_alive(pid) else None


def engine_count() -> int:
    """Engines to start: ``MOI_ENGINES`` or one per core."""
    raw = os.environ.get("MOI_ENGINES") or str(os.cpu_count() or 1)
    if not raw.isdigit() or int(raw) < 1:
        raise MoiError(f"MOI_ENGINES must be a positive number of engines, not {raw!r}")
    return int(raw)


def ensure_cluster(state_dir: Path, redis_url: str) -> Path:
    """Return the embedded cluster's connection file, starting the cluster if needed."""
    if cluster_state(state_dir) and connection_file(state_dir).exists():
        ensure_watchdog(state_dir, redis_url)
        return connection_file(state_dir)
    with state_lock(state_dir):
        if not (cluster_state(state_dir) and connection_file(state_dir).exists()):
            start_cluster(profile_dir(state_dir), engine_count())
            say(
                f"started a local ipyparallel cluster with {engine_count()} engines "
                f"(profile in {profile_dir(state_dir)})"
            )
        ensure_watchdog(state_dir, redis_url, locked=True)
    return connection_file(state_dir)


def _engine_pids(state: dict[str, Any] | None) -> list[int]:
    """Pids of the live engines a cluster file records."""
    sets = (state or {}).get("engines", {}).get("sets", {}).values()
    pids = [e.get("pid") for s in sets for e in s.get("engines", {}).values()]
    return [pid for pid in pids if pid_alive(pid)]


def start_cluster(profile: Path, engines: int) -> None:
    """Start a detached ipyparallel controller and ``engines`` engines on loopback.

    Engines left by a controller that died are stopped first: they would
    never get work again.
    """
    _cluster_file_path = profile / "security" / f"cluster-{CLUSTER_ID}.json"
    for orphan in _engine_pids(_read_json(_cluster_file_path)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(orphan, signal.SIGTERM)
    with contextlib.suppress(FileNotFoundError):
        _cluster_file_path.unlink()
    profile.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _working_dir(profile):  # engines inherit it: never the user's cwd (a `moi/` there)
        _start_cluster(profile, engines)


@contextlib.contextmanager
def _working_dir(path: Path) -> Iterator[None]:
    """Run the body in ``path``: ipyparallel starts its processes in the current directory."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _start_cluster(profile: Path, engines: int) -> None:
    import ipyparallel as ipp

    cluster = ipp.Cluster(
        profile_dir=str(profile),
        cluster_id=CLUSTER_ID,
        n=engines,
        controller_ip="127.0.0.1",
        shutdown_atexit=False,
        log_level=40,
    )
    cluster.start_cluster_sync()


def stop_cluster(profile: Path) -> bool:
    """Stop the cluster recorded in ``profile``; return whether one was running."""
    import ipyparallel as ipp

    try:
        cluster = ipp.Cluster.from_file(profile_dir=str(profile), cluster_id=CLUSTER_ID)
    except FileNotFoundError:
        return False
    cluster.stop_cluster_sync()
    return True


def replace_dead_engines(state_dir: Path, wanted: int) -> int:
    """Start engines until the embedded cluster has ``wanted`` live ones; return how many."""
    import ipyparallel as ipp

    state = cluster_state(state_dir)
    missing = wanted - len(_engine_pids(state)) if state else 0
    if missing <= 0:
        return 0
    cluster = ipp.Cluster.from_file(profile_dir=str(profile_dir(state_dir)), cluster_id=CLUSTER_ID)
    with _working_dir(profile_dir(state_dir)):
        cluster.start_engines_sync(n=missing)
    return missing


def supervise(state_dir: Path, wanted_engines: int, redis_too: bool = True) -> list[str]:
    """Restart whatever of the embedded services died; return what was restarted.

    Redis comes back on the same socket and data directory (clients follow
    it by themselves); a dead controller is restarted with its engines, and
    dead engines are replaced.  Called by the embedded watchdog every sweep;
    it does nothing while another process holds the state lock (``moi down``
    stopping everything, ``moi up`` starting it).
    """
    restarted: list[str] = []
    try:
        with state_lock(state_dir, wait=False):
            _restart_what_died(state_dir, wanted_engines, redis_too, restarted)
    except BlockingIOError:
        pass
    return restarted


def _restart_what_died(
    state_dir: Path, wanted_engines: int, redis_too: bool, restarted: list[str]
) -> None:
    if redis_too and not redis_running(state_dir):
        ensure_redis(state_dir)
        restarted.append("redis")
    if connection_file(state_dir).exists() and not cluster_state(state_dir):
        start_cluster(profile_dir(state_dir), wanted_engines)
        restarted.append("cluster")
    elif replaced := replace_dead_engines(state_dir, wanted_engines):
        restarted.append(f"{replaced} engine(s)")


# -- watchdog ----------------------------------------------------------------
def ensure_watchdog(state_dir: Path, redis_url: str, locked: bool = False) -> None:
    """Run one watchdog (:mod:`moi.watchdog`) beside the embedded cluster."""
    known = _read_json(state_dir / _WATCHDOG_FILE)
    if known and pid_alive(known.get("pid")):
        return
    with contextlib.nullcontext() if locked else state_lock(state_dir):
        known = _read_json(state_dir / _WATCHDOG_FILE)
        if known and pid_alive(known.get("pid")):
            return
        log = open(state_dir / "watchdog.log", "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "moi.watchdog"],
            env={
                **os.environ,
                "MOI_REDIS_URL": redis_url,
                SUPERVISE_VAR: str(state_dir),
                "MOI_ENGINES": str(engine_count()),
                SUPERVISE_REDIS_VAR: "1" if redis_url == embedded_url(state_dir) else "",
            },
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        _write_private(
            state_dir / _WATCHDOG_FILE, {"pid": proc.pid, "started": str(datetime.now())}
        )


# -- moi up / down / status --------------------------------------------------
def down(state_dir: Path) -> list[str]:
    """Stop the embedded watchdog, cluster and Redis; return what was stopped."""
    stopped = []
    with state_lock(state_dir):
        watchdog = _read_json(state_dir / _WATCHDOG_FILE)
        if watchdog and pid_alive(watchdog.get("pid")):
            os.kill(watchdog["pid"], 15)
            stopped.append("watchdog")
        if cluster_state(state_dir) and stop_cluster(profile_dir(state_dir)):
            stopped.append("cluster")
        if stop_redis(state_dir):
            stopped.append("redis")
    return stopped


def status(state_dir: Path) -> list[tuple[str, str, str, str]]:
    """Rows of ``(component, state, where, since)`` for the embedded services."""
    check_state_dir(state_dir)
    known = _read_json(state_dir / _REDIS_FILE) or {}
    redis_up = redis_running(state_dir)
    server = known.get("server") or redis_server.server_version(redis_server.redis_binary())
    rows = [
        (
            "redis",
            "running" if redis_up else "stopped",
            f"{server}, unix socket {redis_socket(state_dir)}, data {state_dir / 'redis'}",
            known.get("started", "-") if redis_up else "-",
        )
    ]
    cluster = cluster_state(state_dir)
    if cluster:
        engines = len(_engine_pids(cluster))
        since = datetime.fromtimestamp(connection_file(state_dir).stat().st_mtime)
        rows.append(
            ("cluster", f"running, {engines} engines", str(profile_dir(state_dir)), str(since))
        )
    else:
        rows.append(("cluster", "stopped", str(profile_dir(state_dir)), "-"))
    watchdog = _read_json(state_dir / _WATCHDOG_FILE)
    alive = bool(watchdog and pid_alive(watchdog.get("pid")))
    rows.append(
        (
            "watchdog",
            "running" if alive else "stopped",
            f"pid {watchdog['pid']}" if alive and watchdog else "-",
            watchdog["started"] if alive and watchdog else "-",
        )
    )
    return rows
