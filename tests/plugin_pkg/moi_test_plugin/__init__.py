"""Job types and filters for moi's tests (entry points in ``moi.jobs`` / ``moi.filters``).

``broken`` names a module that does not exist: moi must report it by name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def square(environ: dict[str, Any]) -> dict[str, Any]:
    """Set square to n * n."""
    environ["square"] = environ["n"] * environ["n"]
    return environ


def scratch(environ: dict[str, Any]) -> dict[str, Any]:
    """Write a file in the working directory; report the directory and this process."""
    Path("left-behind.txt").write_text("scratch")
    environ.update(cwd=os.getcwd(), files=sorted(os.listdir(".")), pid=os.getpid())
    return environ


def not_a_dict(environ: dict[str, Any]) -> Any:
    """Return a list instead of the environ."""
    return [1, 2, 3]


def boom(environ: dict[str, Any]) -> dict[str, Any]:
    """Raise RuntimeError with the environ's message."""
    raise RuntimeError(environ.get("message", "boom"))


def double(environ: dict[str, Any]) -> dict[str, Any]:
    """Filter: double n."""
    environ["n"] = environ["n"] * 2
    return environ


def trail(environ: dict[str, Any]) -> dict[str, Any]:
    """Filter: append n to trail (shows the order filters run in)."""
    environ.setdefault("trail", []).append(environ["n"])
    return environ


#: A job template as an entry point naming a dict (moi.templates): the template's name is
#: the entry point's.
SQUARE_TEMPLATE = {"job_type": "square", "params": {"n": 3}, "description": "n * n, n = 3"}


def templates() -> list[dict[str, Any]]:
    """Job templates as an entry point naming a callable that returns a list."""
    return [{"name": "plugin-ping", "job_type": "ping", "params": {"ping": "from a plug-in"}}]
