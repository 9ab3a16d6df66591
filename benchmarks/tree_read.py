"""tree_read: a user's tree of 10,000 jobs, read whole.

moi reads it with one Lua script call (:meth:`moi.store.Store.tree`); the
baseline walks it as the original did, one ``SMEMBERS`` per group and one
``GET`` per node.  Then the time a websocket client takes from connecting to
holding the whole tree, against moi's server and the original-style one.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Callable

from results import Result
from services import ws_server
from wsload import Fleet, make_users

from moi import keys, runtime
from moi.store import decode, text


def walk(root_id: str) -> list[dict]:
    """The baseline read: one round trip per node."""
    r = runtime.redis_client()
    found, queue = [], [root_id]
    while queue:
        info = decode(r.get(keys.info(queue.pop())))
        if info is None:
            continue
        found.append(info)
        if info.get("type") == "group":
            queue.extend(text(m) for m in r.smembers(keys.children(info["id"])))
    return found


def timed(read: Callable[[], list[dict]], expected: int, rounds: int) -> float:
    """Median seconds of ``rounds`` reads, each checked to return ``expected`` nodes.

    As ``timeit`` does, the garbage collector is off while a read is timed,
    so neither side pays for collecting what the rest of the process holds.
    """
    times = []
    for _ in range(rounds):
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            nodes = read()
            times.append(time.perf_counter() - start)
        finally:
            gc.enable()
        if len(nodes) != expected:
            raise RuntimeError(f"read {len(nodes)} nodes, expected {expected}")
    return statistics.median(times)


def run(quick: bool) -> list[Result]:
    jobs = 2000 if quick else 10_000
    tree = make_users("bench-tree", 1, jobs)[0]
    store = runtime.store()
    lua_s = timed(lambda: store.tree(tree.group_id), jobs + 1, 7)
    walk_s = timed(lambda: walk(tree.group_id), jobs + 1, 3)
    initial = {}
    for kind in ("original", "moi"):
        with ws_server(kind) as (url, _):
            initial[kind] = asyncio.run(Fleet(url).initial_get(tree))
    return [
        Result(
            "tree_read",
            lua_s * 1000,
            walk_s * 1000,
            "ms",
            ratio_of="baseline/value",
            target="ratio >= 20",
            note=f"{jobs} jobs; baseline one GET per node; median of 7 (baseline 3) reads, "
            "GC off while timed",
        ),
        Result(
            "tree_initial_get",
            initial["moi"],
            initial["original"],
            "s",
            target="value <= 1",
            note=f"connect, send get, receive all {jobs + 1} get frames",
        ),
    ]
