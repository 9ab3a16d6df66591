"""Helpers shared by the test modules: waiting on events, running the CLI, job functions.

The job functions here run on the engines, which import this module by name
(the fixtures put ``tests/`` on the engines' ``PYTHONPATH``).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil
import redis
from tornado.testing import AsyncHTTPTestCase
from tornado.web import Application

from moi import keys, redis_server, runtime
from moi.relay import Relay
from moi.websocket import MOIMessageHandler

#: Variables that configure moi; removed to get an unconfigured environment.
MOI_VARS = ("MOI_REDIS_URL", "MOI_CONTEXTS", "MOI_DEFAULT_CONTEXT", "MOI_CONFIG_FP")


# -- job functions (run on the engines) ---------------------------------------
def gated(release: str, timeout: float = 120.0, **kwargs: Any) -> str:
    """Job: wait until the file ``release`` exists (at most ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(release):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release} never appeared")
        time.sleep(0.02)
    return "released"


def touch(path: str, **kwargs: Any) -> str:
    """Job: create ``path`` (the side effect cancel tests look for)."""
    Path(path).write_text("ran")
    return "touched"


def sleeper(seconds: float, pid_file: str | None = None, **kwargs: Any) -> str:
    """Job: write this engine's pid to ``pid_file``, then sleep ``seconds``."""
    if pid_file:
        Path(pid_file).write_text(str(os.getpid()))
    time.sleep(seconds)
    return "woke up"


def add(a: int, b: int, **kwargs: Any) -> int:
    """Job: the sum of its arguments."""
    return a + b


# -- waiting on events ----------------------------------------------------------
def wait_for_status(
    job_id: str, accept: Callable[[str | None], bool] | str, timeout: float = 30.0
) -> dict[str, Any]:
    """Block until the job's status satisfies ``accept``; woken by its pub/sub channel."""
    test = accept if callable(accept) else (lambda status: status == accept)
    store = runtime.store()
    deadline = time.monotonic() + timeout
    with runtime.redis_client().pubsub(ignore_subscribe_messages=True) as sub:
        sub.subscribe(keys.pubsub(job_id))
        while True:
            info = store.require(job_id)
            if test(info.get("status")):
                return info
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {info.get('status')!r}")
            sub.get_message(timeout=0.5)


def wait_for_file(path: Path, timeout: float = 30.0) -> str:
    """Return the content of ``path`` once it exists and is not empty."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.02)
    raise TimeoutError(f"{path} did not appear within {timeout} s")


def wait_for_line(
    proc: subprocess.Popen, output: Callable[[], str], pattern: str, timeout: float = 60.0
) -> re.Match[str]:
    """Block until ``proc``'s ``output`` matches ``pattern``; fail with the output.

    Servers print their address once they are bound: waiting for that line
    (rather than for something to accept connections on a port picked
    beforehand) cannot mistake another process's socket for the server.
    """
    deadline = time.monotonic() + timeout
    while True:
        found = re.search(pattern, output())
        if found:
            return found
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}):\n{output()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {pattern!r} in the output after {timeout} s:\n{output()}")
        time.sleep(0.05)


def wait_until_listening(
    port: int, proc: subprocess.Popen, output: Callable[[], str], timeout: float = 60.0
) -> None:
    """Block until ``proc`` itself listens on ``port``; fail with its output.

    The socket must be ``proc``'s: another process may have taken a port
    found free beforehand, and answering there would look like the server.
    """
    deadline = time.monotonic() + timeout
    while True:
        if _listens(proc.pid, port):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}):\n{output()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listening on {port} after {timeout} s:\n{output()}")
        time.sleep(0.05)


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` has a listening TCP socket on ``port``."""
    try:
        sockets = psutil.Process(pid).net_connections(kind="inet")
    except psutil.Error:
        return False
    return any(s.status == psutil.CONN_LISTEN and s.laddr.port == port for s in sockets)


def process_gone(pid: int, timeout: float = 10.0) -> bool:
    """Whether process ``pid`` is gone (or a zombie) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def wait_for_message(sub: redis.client.PubSub, timeout: float = 10.0) -> dict[str, Any]:
    """The next published message on ``sub`` (subscribe confirmations skipped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = sub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if message is not None:
            return message
    raise TimeoutError(f"no message within {timeout} s")


def subscribed(client: redis.Redis, *channels: str) -> redis.client.PubSub:
    """A pub/sub connection on ``channels``, returned once Redis confirmed each."""
    sub = client.pubsub()
    sub.subscribe(*channels)
    confirmed: set[str] = set()
    deadline = time.monotonic() + 10
    while confirmed != set(channels):
        message = sub.get_message(timeout=0.2)
        if message and message["type"] == "subscribe":
            confirmed.add(message["channel"].decode())
        if time.monotonic() > deadline:
            raise TimeoutError("subscription not confirmed")
    return sub


# -- running the CLI as a real process ----------------------------------------
def moi_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m moi.cli ARGS`` and return the finished process (text output)."""
    return subprocess.run(
        [sys.executable, "-m", "moi.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ) if env is None else env,
        cwd="/",
    )


def unconfigured_env(state_dir: Path, **extra: str) -> dict[str, str]:
    """``os.environ`` without any moi configuration, its state under ``state_dir``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in MOI_VARS and not k.startswith("MOI_CLUSTER_FILE_")
    }
    env.update(MOI_STATE_DIR=str(state_dir), **extra)
    return env


def processes_mentioning(text: str, names: Iterable[str] = ()) -> list[psutil.Process]:
    """Live processes whose command line contains ``text`` (and one of ``names``)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or ())
        if proc.info["status"] == psutil.STATUS_ZOMBIE or text not in cmdline:
            continue
        if not names or any(n in cmdline for n in names):
            found.append(proc)
    return found


def snapshot(client: redis.Redis) -> dict[str, Any]:
    """Every key and its value (minus bookkeeping that running jobs and the watchdog touch).

    Keys that expire within a day are left out: moi writes with its key
    timeout (14 days); shorter ones are other tests' data that may expire
    while a test compares two snapshots.
    """
    readers = {b"string": client.get, b"set": client.smembers, b"hash": client.hgetall}
    found = {}
    for key in client.keys("*"):
        if key.decode().startswith(keys.PREFIX) or key.decode().endswith(":cancel"):
            continue
        ttl = client.ttl(key)
        if ttl == -2 or 0 < ttl < 86400:  # gone already, or soon
            continue
        kind = client.type(key)
        if kind == b"none":  # expired since
            continue
        found[key.decode()] = readers[kind](key) if kind in readers else kind
    return found


# -- a Tornado test case with a Redis server of its own -------------------------
class OwnRedisCase(AsyncHTTPTestCase):
    """A relay and ``MOIMessageHandler`` on a Redis server this test starts, restarts, stops.

    Subclasses set ``cookie_secret``; ``restart_redis`` stops the server with
    SIGTERM (the embedded ACL refuses ``SHUTDOWN``) and starts it again on the
    same port and append-only data.
    """

    cookie_secret = "own-redis-secret"

    def setUp(self) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="moi-own-redis-"))
        self.port = redis_server.free_port()
        self.url = redis_server.redis_url(self.port)
        self.redis_proc = redis_server.start_redis_server(self.data_dir, self.port)
        super().setUp()

    def tearDown(self) -> None:
        self.io_loop.run_sync(self.relay.stop)
        super().tearDown()
        self.redis_proc.terminate()
        self.redis_proc.wait(10)

    def get_app(self) -> Application:
        self.relay = Relay(self.url, 3600)
        return Application(
            [(r"/moi-ws/", MOIMessageHandler, {"relay": self.relay})],
            cookie_secret=self.cookie_secret,
        )

    def restart_redis(self) -> None:
        self.redis_proc.terminate()
        self.redis_proc.wait(10)  # appendonly: the data comes back
        self.redis_proc = redis_server.start_redis_server(self.data_dir, self.port)


# -- a real browser and a real moi serve ----------------------------------------------
#: Debian's chromium (``MOI_CHROMIUM`` overrides), driven by Playwright.
CHROMIUM = os.environ.get("MOI_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Milliseconds a page may take to show a live change (generous: CI machines are slow).
LIVE = 60_000


class MoiServer:
    """``moi serve`` as a subprocess; can be stopped and started again on the same port.

    The first start asks for port 0 and reads the port picked from the
    server's first line: a port found free beforehand may be taken by another
    process (a cluster's ZeroMQ socket) before the server binds it.
    """

    def __init__(self, user: str, log: Path, read_only: bool = False) -> None:
        self.user = user
        self.token = secrets.token_urlsafe(16)
        self.port = 0
        self.read_only = read_only
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def login_url(self) -> str:
        return f"{self.base}/?token={self.token}"

    def start(self, timeout: float = 60.0) -> None:
        args = ["--port", str(self.port), "--token", self.token, "--user", self.user]
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moi.cli", "serve", *args]
                + (["--read-only"] if self.read_only else []),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(os.environ),
                cwd="/",
            )
        # the login URL is printed once the port is bound: by this server, not another
        found = wait_for_line(
            self.proc,
            lambda: self.log.read_bytes()[offset:].decode(errors="replace"),
            r"http://127\.0\.0\.1:(\d+)/",
            timeout,
        )
        self.port = int(found.group(1))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def log_in(page: Any, server: MoiServer) -> None:
    """Open the dashboard through the token URL and wait until the panel is live."""
    from playwright.sync_api import expect

    page.goto(server.login_url)
    expect(page).to_have_url(f"{server.base}/")
    expect(page.locator("#moi-panel .moi-connection")).to_have_attribute("data-state", "open")


def gated_cmd(release: Path) -> str:
    """Python job body that runs until ``release`` exists (two minutes at most)."""
    return (
        "import os, time\n"
        "deadline = time.time() + 120\n"
        f"while not os.path.exists({str(release)!r}) and time.time() < deadline:\n"
        "    time.sleep(0.05)\n"
        "return 'released'"
    )


def ensure_engine(profile: Path, context: str = "fragile", timeout: float = 120.0) -> None:
    """Make sure the one-engine cluster of ``profile`` has its engine (a test may have killed it).

    Asks the controller through a client of its own first: moi's client of
    ``context`` would wait for engines that nobody starts.
    """
    import ipyparallel as ipp

    from moi import ctxs

    cluster = ipp.Cluster.from_file(profile_dir=str(profile), cluster_id="moi")
    client = cluster.connect_client_sync()
    try:
        if not client.ids:
            cluster.start_engines_sync(1)
        client.wait_for_engines(1, timeout=timeout)
    finally:
        client.close()
    ctxs[context].client.wait_for_engines(1, timeout=timeout)
