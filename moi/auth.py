"""API keys: who may use ``moi serve`` and its API, as which user.

A key is ``moi_<prefix>_<secret>``: a short public *prefix* that names it
(``moi keys list`` shows it, ``moi keys revoke`` takes it) and 32 random
bytes.  Redis keeps, per prefix, only the SHA-256 of the whole key and the
key's record (user, admin, read-only, created, note; :data:`moi.keys.API_KEYS`),
plus when it was last used (:data:`moi.keys.API_KEYS_USED`).  A presented key
is looked up by its prefix and its digest compared in constant time.

The record logic is pure (:func:`parse_record`, :func:`check_key`, ...); the
sync functions take a ``redis.Redis`` (the CLI's) and the ``a``-prefixed ones a
``redis.asyncio.Redis`` (the server's).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import asdict, dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from moi import keys
from moi.errors import MoiError
from moi.store import now, text

__all__ = [
    "KeyInfo",
    "UnknownKeyError",
    "create",
    "lookup",
    "alookup",
    "list_keys",
    "revoke",
    "any_keys",
    "arecord",
]

#: What a key looks like: ``moi_`` + 8 hex characters + ``_`` + 43 url-safe characters.
KEY_PATTERN = re.compile(r"moi_([0-9a-f]{8})_[A-Za-z0-9_-]{43}")
#: Longest note kept with a key.
MAX_NOTE = 200
#: Seconds between two writes of a key's "last used" time.
USED_RESOLUTION = 60.0


class UnknownKeyError(MoiError, KeyError):
    """A key prefix that names no key, or several."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class KeyInfo:
    """What moi knows of an API key (never the key itself).

    Attributes
    ----------
    prefix : str
        Its public name, the 8 hex characters after ``moi_``.
    user : str
        Whose tree it acts on.
    admin : bool
        Sees and acts on every user's tree.
    read_only : bool
        May only read.
    created : str
        When it was made (``str(datetime.now())``).
    note : str
        Free text given at creation.
    last_used : str or None
        When it last logged in or called the API (to the minute).
    """

    prefix: str
    user: str
    admin: bool = False
    read_only: bool = False
    created: str = ""
    note: str = ""
    last_used: str | None = None


def digest(key: str) -> str:
    """SHA-256 hex digest of ``key``: what Redis keeps instead of it."""
    return hashlib.sha256(key.encode()).hexdigest()


def prefix_of(key: str) -> str | None:
    """The public prefix of a well-formed key, else ``None``."""
    found = KEY_PATTERN.fullmatch(key) if isinstance(key, str) else None
    return found.group(1) if found else None


def new_key() -> tuple[str, str]:
    """A fresh ``(key, prefix)``."""
    prefix = secrets.token_hex(4)
    return f"moi_{prefix}_{secrets.token_urlsafe(32)}", prefix


def parse_record(
    prefix: str, raw: bytes | str | None, used: bytes | str | None = None
) -> KeyInfo | None:
    """The :class:`KeyInfo` stored under ``prefix``; ``None`` when missing or unreadable."""
    if raw is None:
        return None
    try:
        record = json.loads(raw)
        return KeyInfo(
            prefix=prefix,
            user=str(record["user"]),
            admin=bool(record.get("admin")),
            read_only=bool(record.get("read_only")),
            created=str(record.get("created", "")),
            note=str(record.get("note", "")),
            last_used=text(used) if used is not None else None,
        )
    except (ValueError, KeyError, TypeError):
        return None


def check_key(key: str, raw: bytes | str | None) -> bool:
    """Whether ``key`` is the one whose record is ``raw`` (digests compared in constant time)."""
    if raw is None:
        return False
    try:
        stored = str(json.loads(raw)["sha256"])
    except (ValueError, KeyError, TypeError):
        return False
    return hmac.compare_digest(digest(key).encode(), stored.encode())


def _record(user: str, admin: bool, read_only: bool, note: str, key: str) -> dict[str, Any]:
    keys.check_user_name(user)
    if not isinstance(note, str) or len(note) > MAX_NOTE or not note.isprintable():
        raise MoiError(f"a key's note is printable text of at most {MAX_NOTE} characters")
    return {
        "user": user,
        "admin": bool(admin),
        "read_only": bool(read_only),
        "created": now(),
        "note": note,
        "sha256": digest(key),
    }


# -- sync (the CLI) -----------------------------------------------------------------------
def _client(r: redis.Redis | None) -> redis.Redis:
    if r is not None:
        return r
    from moi import runtime

    return runtime.redis_client()


def create(
    user: str,
    admin: bool = False,
    read_only: bool = False,
    note: str = "",
    r: redis.Redis | None = None,
) -> tuple[str, KeyInfo]:
    """Make a new API key for ``user``; return it (shown once, never stored) and its record.

    Parameters
    ----------
    user : str
        Whose tree the key acts on (checked by :func:`moi.keys.check_user_name`).
    admin : bool
        See and act on every user's tree.
    read_only : bool
        Only read.
    note : str
        Free text (printable, at most :data:`MAX_NOTE` characters).
    r : redis.Redis, optional
        Client to use; the process's own by default.

    Returns
    -------
    (str, KeyInfo)

    Raises
    ------
    InvalidUserError, MoiError
        For a bad user name or note; nothing is stored.
    """
    client = _client(r)
    while True:
        key, prefix = new_key()
        record = _record(user, admin, read_only, note, key)
        if client.hsetnx(keys.API_KEYS, prefix, json.dumps(record)):
            info = parse_record(prefix, json.dumps(record))
            assert info is not None
            return key, info


def lookup(key: str, r: redis.Redis | None = None) -> KeyInfo | None:
    """The record of a valid, unrevoked ``key``, else ``None`` (its last use is noted)."""
    prefix = prefix_of(key)
    if prefix is None:
        return None
    client = _client(r)
    with client.pipeline(transaction=False) as pipe:
        pipe.hget(keys.API_KEYS, prefix)
        pipe.hget(keys.API_KEYS_USED, prefix)
        raw, used = pipe.execute()
    if not check_key(key, raw):
        return None
    if _stale(used):
        client.hset(keys.API_KEYS_USED, prefix, now())
    return parse_record(prefix, raw, used)


def list_keys(r: redis.Redis | None = None) -> list[KeyInfo]:
    """Every key's record, oldest first."""
    client = _client(r)
    raws = client.hgetall(keys.API_KEYS)
    used = {text(p): u for p, u in client.hgetall(keys.API_KEYS_USED).items()}
    found = [parse_record(text(p), raw, used.get(text(p))) for p, raw in raws.items()]
    return sorted((i for i in found if i is not None), key=lambda i: (i.created, i.prefix))


def revoke(prefix: str, r: redis.Redis | None = None) -> KeyInfo:
    """Revoke the one key whose prefix starts with ``prefix`` (a whole key works too).

    Returns
    -------
    KeyInfo
        The revoked key's record.

    Raises
    ------
    UnknownKeyError
        When no key, or more than one, matches.
    """
    client = _client(r)
    wanted = prefix_of(prefix) or prefix.removeprefix("moi_")
    if not wanted:
        raise UnknownKeyError("give the prefix of the key to revoke (see moi keys list)")
    matches = [i for i in list_keys(client) if i.prefix.startswith(wanted)]
    if not matches:
        raise UnknownKeyError(f"no key has the prefix {prefix!r} (see moi keys list)")
    if len(matches) > 1:
        names = ", ".join(i.prefix for i in matches)
        raise UnknownKeyError(
            f"{len(matches)} keys start with {prefix!r} ({names}): give more of it"
        )
    with client.pipeline(transaction=True) as pipe:
        pipe.hdel(keys.API_KEYS, matches[0].prefix)
        pipe.hdel(keys.API_KEYS_USED, matches[0].prefix)
        pipe.execute()
    return matches[0]


def any_keys(r: redis.Redis | None = None) -> bool:
    """Whether any API key exists."""
    return bool(_client(r).hlen(keys.API_KEYS))


def as_dict(info: KeyInfo) -> dict[str, Any]:
    """A key's record as JSON-ready values."""
    return asdict(info)


def _stale(used: bytes | str | None) -> bool:
    """Whether a "last used" time is missing or older than :data:`USED_RESOLUTION`."""
    if used is None:
        return True
    from datetime import datetime

    try:
        then = datetime.fromisoformat(text(used))
    except ValueError:
        return True
    return (datetime.now() - then).total_seconds() > USED_RESOLUTION


# -- async (the server) -------------------------------------------------------------------
async def alookup(key: str, r: aioredis.Redis) -> KeyInfo | None:
    """:func:`lookup` on an asyncio client: one round trip (two when the last use is noted)."""
    prefix = prefix_of(key)
    if prefix is None:
        return None
    async with r.pipeline(transaction=False) as pipe:
        pipe.hget(keys.API_KEYS, prefix)
        pipe.hget(keys.API_KEYS_USED, prefix)
        raw, used = await pipe.execute()
    if not check_key(key, raw):
        return None
    if _stale(used):
        await r.hset(keys.API_KEYS_USED, prefix, now())
    return parse_record(prefix, raw, used)


async def arecord(prefix: str, r: aioredis.Redis) -> KeyInfo | None:
    """The record of the key named ``prefix`` if it is still there (a session's check)."""
    return parse_record(prefix, await r.hget(keys.API_KEYS, prefix))
