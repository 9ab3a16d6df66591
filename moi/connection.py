"""Redis clients from moi's Redis URLs, including the embedded server's socket.

The embedded Redis (:mod:`moi.embedded`) listens on a unix socket in the
0700 state directory, and its password, new at each start, lives beside the
socket in a 0600 file (``redis.json``); it never travels in a URL, an
environment variable or a task.  A ``unix://`` URL without a password whose
socket has that file beside it gets a credential provider reading the file
at every new connection, so a long-lived process (server, relay, watchdog,
engine) follows a restarted server without being told.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import redis
import redis.asyncio as aioredis
from redis.credentials import CredentialProvider

from moi.errors import MoiError

#: Name of the file beside the embedded socket holding its password.
SECRET_FILE = "redis.json"


def read_private_text(path: Path) -> str:
    """The content of ``path``: a regular file of yours that only you can read.

    Never follows a symbolic link (nor blocks on a FIFO).

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    MoiError
        When ``path`` is a symbolic link, not a regular file, another user's,
        or open to group or others: someone else may have planted it.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as exc:
        reason = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise MoiError(f"refusing {path}: {reason}") from None
    with os.fdopen(fd) as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
            raise MoiError(
                f"refusing {path}: it must be a regular file of yours that only you can read "
                f"(chmod 600 {path}); someone else may have planted it"
            )
        return handle.read()


def read_private_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from a private file (:func:`read_private_text`); ``None`` when missing
    or garbled."""
    try:
        data = json.loads(read_private_text(path))
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class StateFileCredentials(CredentialProvider):
    """The embedded server's password, read from its private file at each connection.

    Parameters
    ----------
    path : Path
        The ``redis.json`` beside the server's socket.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        known = read_private_json(self.path)
        if not known or not known.get("password"):
            raise redis.ConnectionError(f"no password in {self.path}: is moi's Redis running?")
        return ("default", known["password"])


def _socket_secret(url: str) -> Path | None:
    """The password file beside a password-less ``unix://`` URL's socket, if any."""
    parsed = urlparse(url)
    if parsed.scheme != "unix" or parsed.password or "password" in parse_qs(parsed.query):
        return None
    secret = Path(parsed.path).with_name(SECRET_FILE)
    return secret if secret.exists() else None


def options(url: str) -> dict[str, Any]:
    """Extra keyword arguments for ``from_url(url, ...)`` (the embedded server's credentials)."""
    secret = _socket_secret(url)
    return {"credential_provider": StateFileCredentials(secret)} if secret else {}


def client(url: str, **kwargs: Any) -> redis.Redis:
    """A synchronous client (its own pool) for ``url``."""
    return redis.Redis.from_url(url, **options(url), **kwargs)


def async_client(url: str, **kwargs: Any) -> aioredis.Redis:
    """An asyncio client (its own pool) for ``url``."""
    return aioredis.Redis.from_url(url, **options(url), **kwargs)


def async_pool(url: str, **kwargs: Any) -> aioredis.BlockingConnectionPool:
    """A blocking asyncio connection pool for ``url``."""
    return aioredis.BlockingConnectionPool.from_url(url, **options(url), **kwargs)


def shown(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parsed = urlparse(url)
    if parsed.scheme == "unix":
        return f"unix socket {parsed.path}"
    return url.split("@")[-1]


def write_private_text(path: Path, text: str) -> None:
    """Write ``path`` as a private (0600) file, never through a symbolic link."""
    with contextlib.suppress(FileNotFoundError):
        if os.lstat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO) or os.path.islink(path):
            os.unlink(path)  # never reuse a file others could read or that points elsewhere
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
