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
