"""A user's jobs, newest first, a page at a time, from the creation indexes.

Every job and group is added, in the same step that creates it, to its
parent's index by creation time (:func:`moi.keys.jobs_index`,
:func:`moi.keys.groups_index`); a page merges the job indexes of a group and
of the groups under it, so it costs the same for 100 jobs or 100,000.  The
cursor is the ``(creation time, id)`` of the last job returned: jobs created
at the same time are told apart by id, so none is skipped or repeated.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

from moi import keys
from moi.astore import AsyncStore
from moi.store import decode, text

log = logging.getLogger("moi.listing")

#: Largest page.
MAX_LIMIT = 1000
#: Most index entries one page examines (a filtered page may come back short, with a
#: cursor to go on).
MAX_SCAN = 20_000
#: Most groups under a user whose jobs are listed.
MAX_GROUPS = 10_000
#: Index entries written per round trip when indexing an older tree.
REINDEX_BATCH = 5_000


async def _groups_under(store: AsyncStore, root: str) -> list[str]:
    """``root`` and the groups created under it, at most :data:`MAX_GROUPS`."""
    found, level = [root], [root]
    while level and len(found) < MAX_GROUPS:
        async with store.r.pipeline(transaction=False) as pipe:
            for group in level:
                pipe.zrange(keys.groups_index(group), 0, -1)
            answers = await pipe.execute()
        level = [text(g) for answer in answers for g in answer][: MAX_GROUPS - len(found)]
        found += level
    return found


Entry = tuple[float, str]


async def _fetch(
    store: AsyncStore, index: list[str], below: Entry | None, low: str, size: int
) -> tuple[list[Entry], Entry | None]:
    """The next entries of ``index`` (newest first) below ``below``, safe to return in order.

    Returns the merged entries and the boundary: entries past it may still
    miss some of a key not read to its end (``None`` when every key was).
    """
    high = "+inf" if below is None else repr(below[0])
    async with store.r.pipeline(transaction=False) as pipe:
        for key in index:
            if below is not None:  # same creation time, smaller id: not returned yet
                pipe.zrangebyscore(key, high, high, withscores=True)
            pipe.zrevrangebyscore(
                key, high if below is None else f"({high}", low, 0, size, withscores=True
            )
        answers = await pipe.execute()
    merged: list[Entry] = []
    boundary: Entry | None = None
    step = 1 if below is None else 2
    for n in range(len(index)):
        rest = [(float(s), text(m)) for m, s in answers[n * step + step - 1]]
        if below is not None:
            ties = [(float(s), text(m)) for m, s in answers[n * step]]
            merged += [e for e in ties if e[1] < below[1]]
        merged += rest
        if len(rest) == size and (boundary is None or rest[-1] > boundary):
            boundary = rest[-1]
    merged.sort(reverse=True)
    if boundary is not None:
        merged = [e for e in merged if e >= boundary]
    return merged, boundary


def _matches(info: dict[str, Any], wanted: dict[str, str | None]) -> bool:
    if wanted["status"] is not None and info.get("status") != wanted["status"]:
        return False
    if wanted["type"] is not None and info.get("job_type") != wanted["type"]:
        return False
    name = wanted["name"]
    return name is None or name.lower() in str(info.get("name", "")).lower()


async def page(
    store: AsyncStore,
    group: str,
    limit: int,
    cursor: Entry | None,
    since: float | None,
    wanted: dict[str, str | None],
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of the jobs under ``group``, newest first, and the cursor of the next page.

    Parameters
    ----------
    store : AsyncStore
    group : str
        A user's group id (or any group).
    limit : int
        Most jobs returned, at most :data:`MAX_LIMIT`.
    cursor : (float, str), optional
        The last job of the previous page (:func:`cursor_text` of it).
    since : float, optional
        Only jobs created from then on (epoch seconds).
    wanted : dict
        ``status`` (exact), ``name`` (a substring, any case), ``type`` (the
        job type) to match, ``None`` for any.

    Returns
    -------
    (list of dict, str or None)
        The info objects, and the next page's cursor (``None``: no more).
    """
    index = [keys.jobs_index(g) for g in await _groups_under(store, group)]
    low = "-inf" if since is None else repr(since)
    out: list[dict[str, Any]] = []
    scanned = 0
    filtered = any(v is not None for v in wanted.values())
    size = min(MAX_LIMIT, limit * 4 if filtered else limit)
    while True:
        entries, boundary = await _fetch(store, index, cursor, low, size)
        if not entries:
            return out, None
        raws = await store.r.mget([keys.info(e[1]) for e in entries])
        for entry, raw in zip(entries, raws, strict=True):
            cursor, scanned = entry, scanned + 1
            info = decode(raw)
            if info is not None and info.get("type") == "job" and _matches(info, wanted):
                out.append(info)
                if len(out) == limit:
                    return out, cursor_text(cursor)
        if boundary is None:
            return out, None
        if scanned >= MAX_SCAN:
            return out, cursor_text(cursor)


def cursor_text(entry: Entry | None) -> str | None:
    return None if entry is None else f"{entry[0]!r}~{entry[1]}"


def _created(info: dict[str, Any]) -> float:
    """A node's creation time (epoch seconds) from its ``date_created``; now if unreadable."""
    try:
        return datetime.fromisoformat(str(info.get("date_created"))).timestamp()
    except ValueError:
        return time.time()


async def reindex(store: AsyncStore, root: str) -> int:
    """Add the nodes under ``root`` missing from the creation indexes; how many were added.

    Trees written by moi 1.0 (before the indexes) would otherwise be missing
    from ``GET /api/v1/jobs``.  Entries already there are kept (``ZADD NX``).
    """
    tree = await store.tree(root)
    infos = [i for i in tree if isinstance(i.get("parent"), str) and i.get("id") != root]
    added = 0
    for start in range(0, len(infos), REINDEX_BATCH):  # the server's loop breathes between
        async with store.r.pipeline(transaction=False) as pipe:
            for info in infos[start : start + REINDEX_BATCH]:
                index = keys.jobs_index if info.get("type") == "job" else keys.groups_index
                pipe.zadd(index(info["parent"]), {info["id"]: _created(info)}, nx=True)
                pipe.expire(index(info["parent"]), store.key_timeout)
            answers = await pipe.execute()
        added += sum(answers[0::2])
    return added


async def _reindex_where_missing(store: AsyncStore, root: str) -> int:
    """:func:`reindex` the groups under ``root`` whose indexes miss children.

    Walks the groups only (three counts per group): a tree written by moi
    1.1 costs a few round trips, not a read of every job.
    """
    added, level, seen = 0, [root], {root}
    while level:
        async with store.r.pipeline(transaction=False) as pipe:
            for group in level:
                pipe.scard(keys.children(group))
                pipe.zcard(keys.jobs_index(group))
                pipe.zrange(keys.groups_index(group), 0, -1)
            answers = await pipe.execute()
        below: list[str] = []
        for n, group in enumerate(level):
            children, jobs, groups = answers[3 * n : 3 * n + 3]
            if children != jobs + len(groups):
                added += await reindex(store, group)
            else:
                below += [g for g in map(text, groups) if g not in seen]
        # a cycle written by another program ends here; a walk stops at MAX_GROUPS
        level = below[: max(0, MAX_GROUPS - len(seen))]
        seen.update(level)
    return added


async def reindex_users(store: AsyncStore) -> int:
    """Index every user's tree not marked done (:func:`moi.keys.indexed`); nodes added.

    A tree is marked done once walked; the mark expires with moi's other keys.
    """
    users = await store.r.hgetall(keys.USER_ID_MAP)
    roots = {text(gid) for gid in users.values() if keys.is_uuid(text(gid))}
    added = 0
    for root in sorted(roots):
        if not await store.r.exists(keys.indexed(root)):
            added += await _reindex_where_missing(store, root)
            await store.r.set(keys.indexed(root), "1", ex=store.key_timeout)
    if added:
        log.info("indexed %d older jobs and groups for the JSON API", added)
    return added
