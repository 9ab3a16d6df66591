"""The engines of each context and what they do now (roJob's ``listnodes``, Flower's workers).

:func:`listing` asks every configured context's controller for its engines
and their queues (``Client.queue_status``), each engine for its host and pid
(a direct ``apply``, answered between two jobs and remembered), and Redis for
the job each engine runs now (a running job's info object names its engine,
see :func:`moi.engine.engine_name`).  Every question has a time limit: a
context whose controller does not answer in time is reported ``unreachable``
with the reason, never waited on.  The queries use clients of their own, on
one thread of their own, so they never share the submitting client.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import socket
import time
from typing import Any, cast

import ipyparallel as ipp

from moi import embedded, keys, runtime
from moi.context import _connection_file
from moi.status import Status
from moi.store import text

#: Seconds one context may take to answer, by default.
TIMEOUT = 5.0
#: One thread per context runs its queries (ipyparallel clients are not thread-safe), so a
#: controller that hangs holds up its own context only.
_workers: dict[str, concurrent.futures.ThreadPoolExecutor] = {}
#: Clients of this module, by context name (used on ``_worker`` only).
_clients: dict[str, ipp.Client] = {}
#: Host and pid of each engine that answered, by (context, engine uuid).
_where: dict[tuple[str, str], tuple[str, int]] = {}
#: Questions for host and pid not answered yet, by (context, engine uuid).
_asking: dict[tuple[str, str], Any] = {}
#: ``engine 3 (host:pid)``, as a running job's ``engine`` field says.
_ENGINE = re.compile(r"engine (\d+) \((.*):(\d+)\)$")


def _whoami() -> tuple[str, int]:
    """Run on an engine: its host name and pid."""
    import os
    import socket

    return socket.gethostname(), os.getpid()


def listing(timeout: float = TIMEOUT) -> list[dict[str, Any]]:
    """Every configured context with its controller and engines.

    Parameters
    ----------
    timeout : float
        Seconds each context may take to answer.

    Returns
    -------
    list of dict
        One per context: ``context``, ``reachable`` (bool), ``controller``
        (its address, or ``None``), ``engines`` (each with ``id``, ``host``,
        ``pid``, ``running`` (``{"id", "name"}`` or ``None``), ``queue``
        (tasks assigned to it, the running one included), ``done`` (tasks it
        finished, moi's one question for its host and pid included)) and,
        when unreachable, ``error`` saying why.
    """
    running = _running_jobs()
    names = runtime.settings().contexts
    asked = {name: _start(name, lambda c, n=name: _engines(n, c, timeout / 2)) for name in names}
    deadline = time.monotonic() + timeout  # the contexts answer side by side
    return [
        _context(name, asked[name], (deadline, timeout), running.get(name, {})) for name in names
    ]


def health(timeout: float = 2.0) -> dict[str, Any]:
    """``{"ok", "redis", "contexts": {name: bool}}``: whether Redis and each controller answer."""
    try:
        redis_ok = bool(runtime.redis_client().ping())
    except Exception:  # noqa: BLE001 -- whatever the reason, Redis is not ok
        redis_ok = False
    names = runtime.settings().contexts
    asked = {name: _start(name, lambda client: _queue_status(client, timeout)) for name in names}
    deadline, contexts = time.monotonic() + timeout, {}
    for name in names:
        try:
            _answer(name, asked[name], deadline)
            contexts[name] = True
        except Exception:  # noqa: BLE001 -- health reports no details
            contexts[name] = False
    return {"ok": redis_ok and all(contexts.values()), "redis": redis_ok, "contexts": contexts}


def _context(
    name: str,
    asked: concurrent.futures.Future[Any],
    limit: tuple[float, float],
    running: dict[int, dict[str, Any]],
) -> dict[str, Any]:
    """Context ``name``'s entry, from ``asked``; ``limit``: the deadline and the time limit."""
    out: dict[str, Any] = {"context": name, "reachable": False, "controller": None, "engines": []}
    try:
        answer = _answer(name, asked, limit[0])
    except concurrent.futures.TimeoutError:
        out["error"] = f"unreachable: the controller did not answer within {limit[1]:g} s"
        return out
    except Exception as exc:  # noqa: BLE001 -- say why, whatever it is
        out["error"] = f"unreachable: {exc}"
        return out
    out.update(reachable=True, controller=answer["controller"])
    for engine in answer["engines"]:
        host, pid = engine["host"], engine["pid"]
        job = running.get(engine["id"])
        if job is not None and host is None:  # busy: its job says where it runs
            host, pid = job["host"], job["pid"]
        shown = {"id": job["id"], "name": job["name"]} if job else None
        out["engines"].append({**engine, "host": host, "pid": pid, "running": shown})
    return out


def _start(name: str, question: Any) -> concurrent.futures.Future[Any]:
    """Ask ``question(client)`` of context ``name`` on its own thread."""
    worker = _workers.get(name)
    if worker is None:
        worker = _workers[name] = concurrent.futures.ThreadPoolExecutor(1, f"moi-nodes-{name}")
    return worker.submit(lambda: question(_client(name)))


def _answer(name: str, asked: concurrent.futures.Future[Any], deadline: float) -> Any:
    """The answer to ``asked``; ``TimeoutError(limit)`` when none came by ``deadline``."""
    try:
        return asked.result(max(0.0, deadline - time.monotonic()))
    except concurrent.futures.TimeoutError:
        _workers[name].submit(_forget, name)  # the next question starts on a fresh connection
        raise


def _client(name: str) -> ipp.Client:
    """This module's client of context ``name`` (never starts a cluster)."""
    client = _clients.get(name)
    if client is None:
        cfg = runtime.settings()
        if cfg.embedded_cluster and name == cfg.default_context and name not in cfg.cluster_files:
            if not embedded.cluster_state(cfg.state_dir):
                raise RuntimeError("the embedded cluster is not running (moi up starts it)")
            path = embedded.connection_file(cfg.state_dir)
        else:
            path = _connection_file(name)
        if not os.path.exists(path):
            raise RuntimeError(f"no connection file {path}")
        client = _clients[name] = ipp.Client(str(path), timeout=TIMEOUT)
    return client


def _forget(name: str) -> None:
    for key in [key for key in _asking if key[0] == name]:  # questions of the old client
        del _asking[key]
    client = _clients.pop(name, None)
    if client is not None:
        client.close()


def _engines(name: str, client: ipp.Client, timeout: float) -> dict[str, Any]:
    """The controller's address and each engine's queue, counts, host and pid."""
    status = _queue_status(client, timeout)
    ids = sorted(i for i in status if isinstance(i, int))
    uuids = {i: client._engines.get(i, str(i)) for i in ids}
    unknown = {(name, uuids[i]): i for i in ids if (name, uuids[i]) not in _where}
    for key, i in unknown.items():
        if key not in _asking:  # one question per engine: a busy one answers after its job
            _asking[key] = client[i].apply_async(_whoami)
    deadline = time.monotonic() + timeout
    for key in unknown:
        ar = _asking[key]
        try:
            ar.wait(max(0.0, deadline - time.monotonic()))
        except Exception:  # noqa: BLE001 -- gone: ask again next time
            del _asking[key]
            continue
        if ar.ready():
            del _asking[key]
            if ar.successful():
                _where[key] = tuple(ar.get())  # type: ignore[assignment]
    engines = []
    for i in ids:
        host, pid = _where.get((name, uuids[i]), (None, None))
        counts = status[i]
        engines.append(
            {
                "id": i,
                "host": host,
                "pid": pid,
                "queue": counts.get("queue", 0) + counts.get("tasks", 0),
                "done": counts.get("completed", 0),
            }
        )
    return {"controller": _controller(client), "engines": engines}


def _queue_status(client: ipp.Client, timeout: float) -> dict[Any, Any]:
    """``client.queue_status()`` with a time limit (ipyparallel's own waits forever)."""
    future = client._send(client._query_stream, "queue_request", content={"targets": None})
    content = future.result(timeout)["content"]
    if content.pop("status") != "ok":
        raise RuntimeError(f"the controller refused the queue request: {content}")
    return ipp.util.int_keys(content)


def _controller(client: ipp.Client) -> str | None:
    """Where the controller listens (its registration address)."""
    info = getattr(client, "_config", None) or {}
    url = info.get("registration") or info.get("interface")
    return str(url) if url else socket.gethostname()


def _running_jobs() -> dict[str, dict[int, dict[str, Any]]]:
    """Jobs running now by context and engine id, from their leases and info objects."""
    store = runtime.store()
    ids = [text(i) for i in cast("list[bytes]", store.r.zrange(keys.LEASES, 0, -1))]
    found: dict[str, dict[int, dict[str, Any]]] = {}
    for info in store.get_many(ids):
        matched = _ENGINE.match(str(info.get("engine") or ""))
        if info.get("status") != Status.RUNNING or matched is None:
            continue
        engine_id, host, pid = int(matched[1]), matched[2], int(matched[3])
        entry = {"id": info["id"], "name": info.get("name"), "host": host, "pid": pid}
        found.setdefault(str(info.get("context")), {})[engine_id] = entry
    return found
