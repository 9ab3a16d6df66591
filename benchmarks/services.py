"""The services a benchmark run needs, each on a free loopback port, all stopped at the end.

A Redis server and a two-engine ipyparallel cluster of its own (so a run
never touches anything else on the machine), and the websocket server under
test in a separate process: ``moi`` (the relay) or ``original`` (the
original's design, see :mod:`original_server`).
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from moi import embedded, redis_server, runtime

HERE = Path(__file__).resolve().parent


def raise_open_files() -> int:
    """Raise this process's open-file limit to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 65536
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Block until something accepts connections on ``127.0.0.1:port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout} s")


@contextmanager
def environment(engines: int = 2) -> Iterator[dict[str, str]]:
    """Start Redis and a cluster in a temporary state directory; point moi at them.

    The environment keeps pointing there afterwards: a benchmark run is a process of its own.
    """
    with tempfile.TemporaryDirectory(prefix="moi-bench-") as tmp:
        state = Path(tmp)
        port = redis_server.free_port()
        redis_proc = redis_server.start_redis_server(state / "redis", port)
        profile = state / "ipython" / "profile_default"
        env = {
            "MOI_STATE_DIR": str(state),
            "MOI_REDIS_URL": redis_server.redis_url(port),
            "MOI_CONTEXTS": "default",
            "MOI_DEFAULT_CONTEXT": "default",
            "MOI_CLUSTER_FILE_DEFAULT": str(profile / "security" / "ipcontroller-moi-client.json"),
            # engines import the benchmark's job function from workload.py
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p
            ),
        }
        os.environ.update(env)  # for this process, the servers and the engines it starts
        runtime.reset()
        started = False
        try:
            embedded.start_cluster(profile, engines)
            started = True
            yield env
        finally:
            runtime.reset()
            if started:
                embedded.stop_cluster(profile)
            redis_proc.terminate()
            redis_proc.wait(10)


@contextmanager
def ws_server(kind: str) -> Iterator[tuple[str, int]]:
    """Run the websocket server ``kind`` (``moi`` or ``original``); yield its URL and pid."""
    port = redis_server.free_port()
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "serve.py"), kind, str(port)], env=dict(os.environ)
    )
    try:
        wait_for_port(port, 30, proc)
        yield f"ws://127.0.0.1:{port}/moi-ws/", proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
