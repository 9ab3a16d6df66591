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
from typing import Any, cast

import ipyparallel as ipp

from moi import embedded, keys, runtime
from moi.context import _connection_file
from moi.status import Status
from moi.store import text

#: Seconds one context may take to answer, by default.
TIMEOUT = 5.0
#: The thread every query runs on (ipyparallel clients are not thread-safe).
_worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="moi-nodes")
#: Clients of this module, by context name (used on ``_worker`` only).
_clients: dict[str, ipp.Client] = {}
#: Host and pid of each engine that answered, by (context, engine uuid).
_where: dict[tuple[str, str], tuple[str, int]] = {}
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
        ``pid``, ``running`` (``{"id", "name"}`` or ``None``), ``queue``,
        ``done``) and, when unreachable, ``error`` saying why.
    """
    running = _running_jobs()
    return [_context(name, timeout, running.get(name, {})) for name in runtime.settings().contexts]


def health(timeout: float = 2.0) -> dict[str, Any]:
    """``{"ok", "redis", "contexts": {name: bool}}``: whether Redis and each controller answer."""
    try:
        redis_ok = bool(runtime.redis_client().ping())
    except Exception:  # noqa: BLE001 -- whatever the reason, Redis is not ok
        redis_ok = False
    contexts = {}
    for name in runtime.settings().contexts:
        try:
            _ask(name, lambda client: client.queue_status(), timeout)
            contexts[name] = True
        except Exception:  # noqa: BLE001 -- health reports no details
            contexts[name] = False
    return {"ok": redis_ok and all(contexts.values()), "redis": redis_ok, "contexts": contexts}


def _context(name: str, timeout: float, running: dict[int, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"context": name, "reachable": False, "controller": None, "engines": []}
    try:
        answer = _ask(name, lambda client: _engines(name, client, timeout / 2), timeout)
    except concurrent.futures.TimeoutError:
        out["error"] = f"unreachable: the controller did not answer within {timeout:g} s"
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


def _ask(name: str, question: Any, timeout: float) -> Any:
    """``question(client)`` on the nodes thread; ``TimeoutError`` after ``timeout`` s."""
    future = _worker.submit(lambda: question(_client(name)))
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        _worker.submit(_forget, name)  # the next question starts on a fresh connection
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
    client = _clients.pop(name, None)
    if client is not None:
        client.close()


def _engines(name: str, client: ipp.Client, timeout: float) -> dict[str, Any]:
    """The controller's address and each engine's queue, counts, host and pid."""
    status = client.queue_status()
    ids = sorted(i for i in status if isinstance(i, int))
    uuids = {i: client._engines.get(i, str(i)) for i in ids}
    unknown = [i for i in ids if (name, uuids[i]) not in _where]
    if unknown:
        answers = {i: client[i].apply_async(_whoami) for i in unknown}
        for i, ar in answers.items():
            try:
                ar.wait(timeout / max(1, len(answers)))
            except Exception:  # noqa: BLE001 -- busy or gone: ask again next time
                continue
            if ar.ready() and ar.successful():
                _where[(name, uuids[i])] = tuple(ar.get())  # type: ignore[assignment]
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
