"""Groups and users: info objects, the user map, and a live view of a tree.

A user's jobs hang under one group whose uuid ``user-id-map`` records (both
ways).  :class:`Group` is a subscriber's live view of such a tree: it follows
every node under it through the process's shared relay and forwards each
change to a callback, as the websocket handler does for each browser.
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID, uuid4

from moi import keys, runtime
from moi.errors import MoiError, UnknownIdError
from moi.status import Status
from moi.store import now


def create_info(
    name: str,
    info_type: str,
    url: str | None = None,
    parent: str | None = None,
    id: str | None = None,
    context: str | None = None,
    store: bool = False,
) -> dict[str, Any]:
    """Build (and with ``store=True`` save) the info object of a job or group.

    Parameters
    ----------
    name : str
        Human readable name.
    info_type : {'job', 'group'}
    url : str, optional
        Where the node's result can be seen.
    parent : str, optional
        Id of the parent group.
    id : str, optional
        Id to use; a new uuid4 by default.
    context : str, optional
        Context name; the default context when omitted.
    store : bool
        Save it in Redis (and add it to its parent's children) now.

    Returns
    -------
    dict
        The info object.
    """
    if info_type not in ("job", "group"):
        raise MoiError(f"info_type must be 'job' or 'group', not {info_type!r}")
    node_id = str(uuid4()) if id is None else id
    info = {
        "id": node_id,
        "name": name,
        "type": info_type,
        "pubsub": keys.pubsub(node_id),
        "url": url,
        "parent": parent,
        "context": context or runtime.settings().default_context,
        "status": Status.QUEUED.value if info_type == "job" else None,
        "result": None,
        "date_created": now(),
        "date_start": None,
        "date_end": None,
    }
    if store:
        runtime.store().create(info)
    return info


def get_id_from_user(user: str) -> str:
    """Return the group id of ``user``, creating the user's group on first use."""
    r = runtime.redis_client()
    found = r.hget(keys.USER_ID_MAP, user)
    if found is not None:
        group_id = found.decode()
    else:
        candidate = str(uuid4())
        if r.hsetnx(keys.USER_ID_MAP, user, candidate):
            r.hset(keys.USER_ID_MAP, candidate, user)
        group_id = r.hget(keys.USER_ID_MAP, user).decode()
    if runtime.store().get(group_id) is None:  # new, or its info expired
        info = create_info(user, "group", id=group_id)
        r.set(keys.info(group_id), json.dumps(info), ex=runtime.settings().key_timeout, nx=True)
    return group_id


def get_user_from_id(group_id: str) -> str:
    """Return the user name whose group is ``group_id``.

    Raises
    ------
    UnknownIdError
        When no user has that group.
    """
    found = runtime.redis_client().hget(keys.USER_ID_MAP, group_id)
    if found is None:
        raise UnknownIdError(f"no user has group id {group_id}")
    return found.decode()


def find_user_group(key: str) -> str:
    """Group id for ``key``, a user name or a user's group uuid.

    Raises
    ------
    UnknownIdError
        ``Unknown key: <key>`` when it is neither.
    """
    found = runtime.redis_client().hget(keys.USER_ID_MAP, key)
    if found is None:
        raise UnknownIdError(f"Unknown key: {key}")
    value = found.decode()
    return value if _is_uuid(value) else key


def users() -> dict[str, str]:
    """All users and their group ids."""
    pairs = runtime.redis_client().hgetall(keys.USER_ID_MAP)
    decoded = {k.decode(): v.decode() for k, v in pairs.items()}
    return {
        name: gid
        for name, gid in decoded.items()
        if _is_uuid(gid) and not _is_uuid(name) and decoded.get(gid) == name
    }


def _is_uuid(text: str) -> bool:
    try:
        UUID(text)
    except ValueError:
        return False
    return True
