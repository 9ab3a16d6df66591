"""What runs on the engine around a job: status, result, lease, cancel.

Engines need no moi configuration: the job carries the Redis URL and key
timeout (``JobSpec``).  While a job runs, one heartbeat thread per engine
renews the job's lease (so a watchdog can fail the job if this engine dies)
and interrupts the job with SIGINT when a cancel is asked for.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, TypedDict

import redis

from moi.errors import JobCancelled
from moi.status import Status, is_terminal
from moi.store import Store, now

#: Seconds between lease renewals; a lease lasts LEASE_TTL seconds.
HEARTBEAT_INTERVAL = 1.0
LEASE_TTL = 10.0


class JobSpec(TypedDict):
    """What the engine-side wrapper needs to know about a job."""

    id: str
    redis_url: str
    key_timeout: int
    context: str
    parent: str | None
    #: The job's Queued info object, written by the engine if the submitter's write is late.
    info: dict[str, Any]


@functools.cache
def _store(redis_url: str, key_timeout: int) -> Store:
    return Store(redis.Redis.from_url(redis_url), key_timeout)


class Heartbeat(threading.Thread):
    """Renews the lease of the job this engine runs and delivers cancels."""

    def __init__(self) -> None:
        super().__init__(name="moi-heartbeat", daemon=True)
        self._lock = threading.Lock()
        self._job: tuple[Store, str] | None = None
        self.interrupted = False

    def watch(self, store: Store, job_id: str) -> None:
        """Start renewing ``job_id``'s lease."""
        with self._lock:  # the lease was set with Running: renewing can wait for the next beat
            self._job, self.interrupted = (store, job_id), False

    def stop(self) -> bool:
        """Stop watching; no interrupt is sent after this returns.  Return whether one was."""
        with self._lock:
            self._job = None
            return self.interrupted

    def run(self) -> None:
        while True:
            time.sleep(HEARTBEAT_INTERVAL)
            with self._lock:
                if self._job is None:
                    continue
                store, job_id = self._job
                try:  # renew even after the interrupt: a job may swallow it and go on
                    cancel_asked = store.heartbeat(job_id, LEASE_TTL)
                except redis.RedisError:
                    continue
                if cancel_asked and not self.interrupted:
                    self.interrupted = True
                    os.kill(os.getpid(), signal.SIGINT)


_heartbeat: Heartbeat | None = None


def _get_heartbeat() -> Heartbeat:
    global _heartbeat
    if _heartbeat is None or not _heartbeat.is_alive():
        _heartbeat = Heartbeat()
        _heartbeat.start()
    return _heartbeat


def jsonable(result: Any) -> tuple[Any, str | None]:
    """Return ``result`` if JSON can hold it, else its ``repr`` and a note saying so."""
    try:
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return repr(result), f"result was not JSON-serialisable ({exc}); stored as its repr()"
    return result, None


def update_status(store: Store, job_id: str, new_status: str) -> str:
    """Set a running job's status text (the ``moi_update_status`` callback); return the old one.

    The final statuses are moi's to set when the job returns or raises: a job
    that set one itself would look finished while running, and lose its result.
    """
    if is_terminal(str(new_status)):
        raise ValueError(
            f"moi_update_status({str(new_status)!r}): moi sets the final status itself "
            "when the job returns (Success) or raises (Failed); use other text"
        )
    _, before = store.update(job_id, {"status": str(new_status)}, guard="live")
    return before


def run_job(spec: JobSpec, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``func`` as moi job ``spec['id']`` on this engine; return its result.

    The job goes ``Running`` only if it is still ``Queued`` (a job cancelled
    while queued raises :class:`JobCancelled` without running), then ends
    ``Success``, ``Failed`` (the formatted traceback as result) or
    ``Cancelled``; an exception is raised again so dependent jobs see it.
    """
    store, job_id = _store(spec["redis_url"], spec["key_timeout"]), spec["id"]
    fields = {"status": Status.RUNNING.value, "date_start": now()}
    started, before = store.update(
        job_id, fields, guard="queued", lease=("add", LEASE_TTL), if_missing=spec.get("info")
    )
    if not started:
        raise JobCancelled(f"job {job_id} did not run: it was {before} before it started")
    kwargs.update(
        moi_update_status=functools.partial(update_status, store, job_id),
        moi_context=spec["context"],
        moi_parent_id=spec["parent"],
    )
    heartbeat = _get_heartbeat()
    heartbeat.watch(store, job_id)
    try:
        try:
            result = func(*args, **kwargs)
        finally:
            interrupted = heartbeat.stop()
    except BaseException as exc:
        cancelled = interrupted_by_cancel(exc, heartbeat)
        _finish(
            store,
            job_id,
            Status.CANCELLED if cancelled else Status.FAILED,
            traceback.format_exception(exc),
        )
        if cancelled:
            raise JobCancelled(f"job {job_id} was cancelled while running") from None
        raise
    if interrupted:
        store.clear_cancel(job_id)
    value, note = jsonable(result)
    _finish(store, job_id, Status.SUCCESS, value, note)
    return result


def interrupted_by_cancel(exc: BaseException, heartbeat: Heartbeat) -> bool:
    """Whether ``exc`` is the interrupt the heartbeat sent for a cancel."""
    return heartbeat.interrupted and isinstance(exc, KeyboardInterrupt)


def _finish(
    store: Store, job_id: str, status: Status, result: Any, note: str | None = None
) -> None:
    fields: dict[str, Any] = {"status": status.value, "result": result, "date_end": now()}
    if note:
        fields["note"] = note
    store.update(job_id, fields, guard="live", lease=("remove", 0))
    if status is Status.CANCELLED:
        store.clear_cancel(job_id)
