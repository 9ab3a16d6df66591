"""Session fixtures: a real Redis server and real ipyparallel clusters on loopback.

Everything runs under one temporary state directory, on free ports, and is
stopped at the end; nothing depends on or disturbs services already running.
Contexts: ``default`` (2 engines, for most tests), ``fragile`` (its own
1-engine cluster, started only by tests that kill engines) and ``offline``
(configured, never started: the "no cluster reachable" case).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from moi import embedded, redis_server, runtime


def _connection(state: Path, name: str) -> Path:
    return state / "ipython" / f"profile_{name}" / "security" / "ipcontroller-moi-client.json"


@pytest.fixture(scope="session")
def moi_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Start Redis, the default cluster and a watchdog; point moi at them."""
    state = tmp_path_factory.mktemp("moi-state")
    port = redis_server.free_port()
    redis_proc = redis_server.start_redis_server(state / "redis", port)
    env = {
        "MOI_STATE_DIR": str(state),
        "MOI_REDIS_URL": redis_server.redis_url(port),
        "MOI_CONTEXTS": "default,fragile,offline",
        "MOI_DEFAULT_CONTEXT": "default",
        "MOI_CLUSTER_FILE_DEFAULT": str(_connection(state, "default")),
        "MOI_CLUSTER_FILE_FRAGILE": str(_connection(state, "fragile")),
        "MOI_CLUSTER_FILE_OFFLINE": str(_connection(state, "offline")),
        # engines import the job functions defined in test modules
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p
        ),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    runtime.reset()
    embedded.start_cluster(state / "ipython" / "profile_default", 2)
    watchdog = subprocess.Popen([sys.executable, "-m", "moi.watchdog"], env=dict(os.environ))
    try:
        from moi import ctxs

        ctxs["default"].client.wait_for_engines(2, timeout=120)
        yield env
    finally:
        watchdog.terminate()
        runtime.reset()
        embedded.stop_cluster(state / "ipython" / "profile_default")
        redis_proc.terminate()
        redis_proc.wait(10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def fragile_cluster(moi_env: dict[str, str]) -> Iterator[Path]:
    """A separate one-engine cluster (context ``fragile``) that tests may kill engines of."""
    profile = Path(moi_env["MOI_STATE_DIR"]) / "ipython" / "profile_fragile"
    embedded.start_cluster(profile, 1)
    try:
        yield profile
    finally:
        embedded.stop_cluster(profile)


@pytest.fixture
def user() -> str:
    """A fresh user name, so tests never see each other's jobs."""
    return f"test-{uuid.uuid4().hex[:8]}"


# -- a real browser (Debian's chromium through Playwright) and moi serve --------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per module; each test gets its own context.

    Not for the whole session: while Playwright's sync API runs, the main
    thread counts as running an event loop, which Tornado's AsyncHTTPTestCase
    of a later module could not start (within a module, such cases come first).
    """
    from playwright.sync_api import sync_playwright
    from support import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class Watched:
    """What a page did that it should not have: dialogs, uncaught errors, CSP refusals."""

    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


@pytest.fixture
def watched() -> Watched:
    return Watched()


@pytest.fixture
def viewport() -> dict[str, int] | None:
    """The page's size (Playwright's default); a module may override this fixture."""
    return None


@pytest.fixture
def page(browser: Any, watched: Watched, viewport: dict[str, int] | None) -> Iterator[Any]:
    """A fresh page (own cookies); an uncaught error or a native dialog fails the test.

    Messages about the Content Security Policy go to ``watched.refused``.
    """
    from playwright.sync_api import expect

    # a busy CI machine may take more than Playwright's default 5 s to redraw: every
    # assertion still returns as soon as it holds
    expect.set_options(timeout=30_000)
    context = browser.new_context(**({"viewport": viewport} if viewport else {}))
    context.set_default_timeout(30_000)
    tab = context.new_page()

    def on_dialog(dialog: Any) -> None:
        watched.dialogs.append(dialog.message)
        dialog.dismiss()

    def on_console(message: Any) -> None:
        if "Security Policy" in message.text:
            watched.refused.append(message.text)

    tab.on("dialog", on_dialog)
    tab.on("pageerror", lambda exc: watched.errors.append(str(exc)))
    tab.on("console", on_console)
    yield tab
    context.close()
    assert watched.errors == [], f"uncaught errors in the page: {watched.errors}"
    assert watched.dialogs == [], f"the page opened dialogs: {watched.dialogs}"


@pytest.fixture
def serve(moi_env: dict[str, str], user: str, tmp_path: Path) -> Iterator[Any]:
    """Start ``moi serve`` for the test's user (``serve(read_only=True)`` for a read-only one)."""
    from support import MoiServer

    servers: list[MoiServer] = []

    def start(read_only: bool = False) -> MoiServer:
        server = MoiServer(user, tmp_path / f"serve-{len(servers)}.log", read_only)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(serve: Any) -> Any:
    return serve()


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Path]:
    """A file jobs wait for; created at the end of the test so no engine stays busy."""
    path = tmp_path / "release"
    yield path
    path.touch()


@pytest.fixture(scope="module")
def no_leftover_keys(moi_env: dict[str, str]) -> Iterator[None]:
    """Remove the API keys a module made: with keys, a token-less ``moi serve`` is multi-user."""
    from moi import keys

    client = runtime.redis_client()
    before = set(client.hkeys(keys.API_KEYS))
    yield
    made = set(client.hkeys(keys.API_KEYS)) - before
    if made:
        client.hdel(keys.API_KEYS, *made)
        client.hdel(keys.API_KEYS_USED, *made)


@pytest.fixture
def example_app(moi_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """``example/app.py`` as a subprocess; its base URL."""
    from support import wait_for_line

    example = Path(__file__).resolve().parent.parent / "example" / "app.py"
    log = tmp_path / "example.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(example), "--port", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ),
            cwd="/",
        )
    try:
        found = wait_for_line(
            proc, lambda: log.read_text(errors="replace"), r"http://127\.0\.0\.1:(\d+)/"
        )
        yield f"http://127.0.0.1:{found.group(1)}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def plugin() -> str:
    """Install the test plug-in (job types, filters, templates) where the engines run too."""
    import shutil

    from moi import manager, types

    plugin_dir = Path(__file__).parent / "plugin_pkg"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", str(plugin_dir)],
        check=True,
        capture_output=True,
    )
    for leftover in ("build", "moi_test_plugin.egg-info"):
        shutil.rmtree(plugin_dir / leftover, ignore_errors=True)
    types.refresh()
    manager.refresh()
    return "moi_test_plugin"
