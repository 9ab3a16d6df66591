"""The code stays ruff-clean and type-checked (mypy), as CI sees it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_ruff_finds_nothing():
    paths = [p for p in ("moi", "tests", "example", "benchmarks") if (ROOT / p).exists()]
    done = run("ruff", "check", *paths)
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_finds_nothing_in_the_package():
    done = run("mypy", "moi", "--ignore-missing-imports")
    assert done.returncode == 0, done.stdout + done.stderr


# The house's layers (DESIGN.md, "The job service"): core -> service -> doors.
CORE = {
    "moi", "keys", "status", "errors", "config", "connection", "redis_server", "store",
    "astore", "lua", "engine", "job", "group", "context", "embedded", "runtime", "relay",
    "watchdog",
}
SERVICE = {"types", "chain", "manager", "auth", "logs", "metrics", "nodes", "listing"}
DOORS = {"cli", "api", "websocket", "web", "webauth", "web_watch", "client"}
# Core modules that reach a service module from inside a function, on purpose:
# the engine runs typed jobs, captures a job's output and hands an ending
# job's chain request on; job.submit_type checks an environ and system_call
# streams a command's lines; both load the service only when used.
LAZY_CORE_TO_SERVICE = {
    ("engine", "chain"), ("job", "chain"), ("engine", "types"), ("job", "types"),
    ("engine", "logs"), ("job", "logs"),
}


def _moi_imports(path: Path) -> list[tuple[str, bool]]:
    """(imported moi module, imported at module level) for each import in ``path``."""
    import ast

    tree = ast.parse(path.read_text(), str(path))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "moi":
                names = [alias.name for alias in node.names]
            elif node.module.startswith("moi."):
                names = [node.module.split(".")[1]]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("moi.")]
        found += [(name, id(node) in top_level) for name in names]
    return found


def _layer_of(module: str) -> str:
    for layer, members in (("core", CORE), ("service", SERVICE), ("doors", DOORS)):
        if module in members:
            return layer
    raise AssertionError(f"moi.{module} is in no layer: add it to tests/test_quality.py")


def test_layers_core_service_doors():
    problems = []
    for path in sorted((ROOT / "moi").rglob("*.py")):
        parts = path.relative_to(ROOT / "moi").with_suffix("").parts
        module = "moi" if parts == ("__init__",) else parts[0]
        layer = _layer_of(module)
        for imported, top_level in _moi_imports(path):
            if imported == module or not (ROOT / "moi" / imported).exists() and not (
                ROOT / "moi" / f"{imported}.py"
            ).exists():
                continue
            target = _layer_of(imported)
            lazy_ok = not top_level and (module, imported) in LAZY_CORE_TO_SERVICE
            if layer == "core" and target != "core" and not lazy_ok:
                problems.append(f"core moi.{module} imports {target} moi.{imported}")
            if layer == "service" and target == "doors":
                problems.append(f"service moi.{module} imports door moi.{imported}")
    assert not problems, "\n".join(problems)


def test_the_package_builds_quietly_with_every_data_file(tmp_path):
    """Every data directory is declared: no setuptools warning, and the wheel holds them."""
    import zipfile

    done = run("pip", "wheel", "--no-deps", "-w", str(tmp_path), ".")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "absent from the `packages`" not in done.stdout + done.stderr
    (wheel,) = tmp_path.glob("moi-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for wanted in (
        "moi/static/moi_list.js",
        "moi/static/vendor/uplot/uPlot.iife.min.js",
        "moi/static/vendor/uplot/LICENSE",
        "moi/templates/dashboard.html",
    ):
        assert wanted in names, wanted
