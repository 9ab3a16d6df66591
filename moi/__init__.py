"""moi: run computations on an ipyparallel cluster and watch them live.

Importing moi does no I/O: Redis and the cluster are reached (and, with
nothing configured, started) on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moi.config import DEFAULT_KEY_TIMEOUT as REDIS_KEY_TIMEOUT
from moi.context import Contexts

__version__ = "1.0.0"
__all__ = [
    "r_client",
    "ctxs",
    "ctx_default",
    "REDIS_KEY_TIMEOUT",
    "moi_js",
    "moi_list_js",
    "moi_css",
]

_STATIC = Path(__file__).parent / "static"


class _LazyRedis:
    """Stands for the process's Redis client; connects on first use."""

    def __getattr__(self, name: str) -> Any:
        from moi import runtime

        return getattr(runtime.redis_client(), name)

    def __repr__(self) -> str:
        return "<moi r_client (connects on first use)>"


#: The process's Redis client (``redis.Redis``), connected on first use.
r_client: Any = _LazyRedis()

#: The configured contexts by name (``ctxs[name].bv`` is a load-balanced view).
ctxs = Contexts()


def __getattr__(name: str) -> Any:
    if name == "ctx_default":
        from moi import runtime

        return runtime.settings().default_context
    raise AttributeError(f"module 'moi' has no attribute {name!r}")


def moi_js() -> str:
    """Path of ``moi.js``, the browser client, to serve to pages."""
    return str(_STATIC / "moi.js")


def moi_list_js() -> str:
    """Path of ``moi_list.js``, the live job panel, to serve to pages."""
    return str(_STATIC / "moi_list.js")


def moi_css() -> str:
    """Path of ``moi.css``, the panel's (and moi's pages') stylesheet, to serve to pages."""
    return str(_STATIC / "moi.css")
