"""The watchdog: no job stays ``Running`` or ``Queued`` forever.

Running jobs: an engine renews its job's lease every second
(:mod:`moi.engine`); when an engine dies, nobody does, and within
``LEASE_TTL`` plus one sweep the watchdog marks the job ``Failed`` with the
reason.  After Redis was unreachable the watchdog reaps nothing for
``LEASE_TTL`` seconds: every lease ran out meanwhile, and live engines renew
them (or write their jobs' outcomes) first.  An engine whose final write comes
after its job was reaped anyway still records its outcome (the ``final`` guard
of :data:`moi.lua.UPDATE`).

Queued jobs: ``submit`` records each job's ipyparallel task (its msg_id and
the controller's connection file, :data:`moi.keys.QUEUED_TASKS`) until the
job leaves ``Queued``.  Every ``RECONCILE_INTERVAL`` seconds the watchdog
asks each controller about the tasks of the jobs Queued for more than
``CHECK_AFTER`` seconds: a task still pending (a long queue, ``after=``
dependencies) is left alone; one that ipyparallel failed (a dependency
failed, the engine holding it died) fails its job with the reason; one the
controller does not know after ``GRACE`` seconds (it restarted), or whose
controller has not answered for ``GRACE`` seconds, is lost: the job fails
with :data:`LOST`.  A chained job's bookkeeping is written with no task
(:mod:`moi.chain`): its asking job's engine adds the task once it has handed
the job over; one still without a task after ``GRACE`` seconds is lost too.

It runs beside the embedded cluster, inside ``moi serve``, or alone as
``python -m moi.watchdog`` (``moi watchdog``) for any other deployment; it
must be able to read the controllers' connection files and reach them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import weakref
from collections import defaultdict
from pathlib import Path
from typing import Any, NoReturn

import ipyparallel as ipp
import redis

from moi import embedded
from moi.engine import LEASE_TTL
from moi.job import reason_line
from moi.status import Status
from moi.store import Store, now

SWEEP_INTERVAL = 2.0
REASON = (
    f"the engine running this job stopped answering (no heartbeat for {LEASE_TTL:.0f} s); "
    "it probably died or lost its connection"
)
LOST = "lost by the cluster (controller restarted or engine died before it started)"
#: Note on a chained job whose asking job's engine never handed it to the cluster.
NOT_HANDED_OVER = (
    "the engine of job {} asked for it but never handed it to the cluster "
    "(it probably died right after its job ended)"
)

#: Seconds between two looks at the Queued jobs, and the age at which a job is first
#: looked at (a pending task is looked at again this long after).
RECONCILE_INTERVAL = 5.0
CHECK_AFTER = 5.0
#: Seconds a Queued job's task may be unknown to its controller, or its controller
#: silent, before the job counts as lost.
GRACE = 20.0
#: Most Queued jobs looked at in one round.
BATCH = 5000
#: Seconds to wait for a controller: to connect, for one answer, between two tries.
CONNECT_TIMEOUT = 3.0
QUERY_TIMEOUT = 5.0
RECONNECT_INTERVAL = 10.0

log = logging.getLogger("moi.watchdog")

#: What becomes of a job: ``None`` (leave it Queued) or its Failed ``(result, note)``.
Verdict = tuple[Any, str | None] | None


class Unreachable(Exception):
    """A controller that cannot be reached (no connection file, no answer)."""


class Controller:
    """One cluster's controller, asked about tasks with a deadline on every answer.

    Parameters
    ----------
    path : str
        Its client connection file.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.client: ipp.Client | None = None
        self.down_since: float | None = None
        self._retry_at = 0.0

    def silent_for(self) -> float:
        """Seconds since the controller first failed to answer (0 while it answers)."""
        return 0.0 if self.down_since is None else time.monotonic() - self.down_since

    def statuses(self, msg_ids: list[str]) -> tuple[set[str], set[str], set[str]]:
        """Split ``msg_ids`` into the pending, completed and unknown tasks.

        Raises
        ------
        Unreachable
            When the controller cannot be reached or does not answer in time.
        """
        pending: set[str] = set()
        completed: set[str] = set()
        unknown: set[str] = set()
        asked = list(msg_ids)
        while asked:  # the hub refuses the whole request over its first unknown id
            content = self.ask("result_request", {"msg_ids": asked, "status_only": True})
            missing = _unknown_id(content, asked)
            if missing is None:
                pending.update(content.get("pending", ()))
                completed.update(content.get("completed", ()))
                break
            unknown.add(missing)
            asked.remove(missing)
        return pending, completed, unknown

    def outcomes(self, msg_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The ``result_content`` the hub recorded for each finished task it still holds."""
        if not msg_ids:
            return {}
        query = {"query": {"msg_id": {"$in": msg_ids}}, "keys": ["msg_id", "result_content"]}
        content = self.ask("db_request", query)
        if content.get("status") != "ok":
            return {}
        return {r["msg_id"]: r.get("result_content") or {} for r in content.get("records", ())}

    def ask(self, msg_type: str, content: dict[str, Any]) -> dict[str, Any]:
        """Send a query to the hub and return its reply's content within ``QUERY_TIMEOUT``."""
        client = self._connected()
        # Client.db_query/result_status wait forever on a dead controller: the same request,
        # with a deadline (ipyparallel 9's Client._send returns the reply's future)
        future = client._send(client._query_stream, msg_type, content=content)
        if not future.wait(QUERY_TIMEOUT):
            self._lost_contact(f"no answer within {QUERY_TIMEOUT:.0f} s")
        self.down_since = None
        return future.result()["content"]

    def _connected(self) -> ipp.Client:
        if self.client is not None:
            return self.client
        if time.monotonic() < self._retry_at:
            raise Unreachable(f"the controller of {self.path} did not answer the last try")
        try:
            self.client = ipp.Client(self.path, timeout=CONNECT_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 -- no file, bad file, no hub: all unreachable
            self._lost_contact(f"{type(exc).__name__}: {exc}")
        return self.client

    def _lost_contact(self, why: str) -> NoReturn:
        """Note the failure, drop the client (a late reply must not answer the next query)."""
        self.close()
        if self.down_since is None:
            self.down_since = time.monotonic()
        self._retry_at = time.monotonic() + RECONNECT_INTERVAL
        raise Unreachable(f"the controller of {self.path} cannot be reached ({why})")

    def close(self) -> None:
        """Disconnect (a new client is made on the next question)."""
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close(linger=0)
            self.client = None


def _unknown_id(content: dict[str, Any], asked: list[str]) -> str | None:
    """The msg_id a ``No such message`` error names; ``None`` when the reply is an answer.

    Raises
    ------
    Unreachable
        On any other error: the hub could not answer.
    """
    if content.get("status") == "ok":
        return None
    text = str(content.get("evalue", ""))
    if content.get("ename") == "KeyError" and "No such message" in text:
        for msg_id in asked:
            if msg_id in text:
                return msg_id
    raise Unreachable(f"the controller refused the query: {content.get('ename')}: {text}")


def outcome_verdict(outcome: dict[str, Any] | None) -> Verdict:
    """The Failed result of a Queued job whose task ipyparallel finished with ``outcome``."""
    if not outcome:
        return LOST, "the controller finished its task but no longer holds its record"
    status, name = outcome.get("status"), str(outcome.get("ename") or "")
    if status == "error" and name == "EngineError":
        return LOST, f"EngineError: {outcome.get('evalue')}"
    if status == "error":
        return [reason_line(name, str(outcome.get("evalue") or ""))], None
    if status == "aborted":
        return [reason_line("TaskAborted", "")], None
    return LOST, f"the controller reports its task finished ({status}) but it never started"


class Reconciler:
    """Settles Queued jobs against their controllers' records; see the module's text.

    Parameters
    ----------
    check_after, grace : float
        See :data:`CHECK_AFTER` and :data:`GRACE`.
    """

    def __init__(self, check_after: float = CHECK_AFTER, grace: float = GRACE) -> None:
        self.check_after, self.grace = check_after, grace
        self.controllers: dict[str, Controller] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._next_round = 0.0

    def kick(self, store: Store) -> None:
        """Start a round in the background when one is due and none is running."""
        if time.monotonic() < self._next_round or (self._thread and self._thread.is_alive()):
            return
        self._next_round = time.monotonic() + RECONCILE_INTERVAL
        self._thread = threading.Thread(
            target=self._logged_round, args=(store,), name="moi-reconcile", daemon=True
        )
        self._thread.start()

    def _logged_round(self, store: Store) -> None:
        try:
            self.reconcile(store)
        except Exception as exc:  # noqa: BLE001 -- the next round tries again
            log.warning("checking Queued jobs failed (%s: %s); retrying", type(exc).__name__, exc)

    def reconcile(self, store: Store) -> list[str]:
        """Fail the Queued jobs their cluster lost or failed; return their ids."""
        with self._lock:
            started = time.time()
            due = store.queued_due(started - self.check_after, BATCH)
            gone = {job_id for job_id, task, info in due if not _still_queued(task, info)}
            store.forget_queued(gone)
            by_file: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
            unsent = []
            for job_id, task, _ in due:
                if job_id in gone:
                    continue
                if "msg_id" in task:
                    by_file[task["connection_file"]].append((job_id, task))
                else:  # a chained job whose engine has not handed it over (yet)
                    unsent.append((job_id, task))
            failed = self._settle_unsent(store, unsent, started)
            for path, jobs in by_file.items():
                failed += self._settle(store, self._controller(path), jobs, started)
            return failed

    def _controller(self, path: str) -> Controller:
        if path not in self.controllers:
            self.controllers[path] = Controller(path)
        return self.controllers[path]

    def _settle(
        self,
        store: Store,
        controller: Controller,
        jobs: list[tuple[str, dict[str, Any]]],
        started: float,
    ) -> list[str]:
        """Give each of one controller's Queued jobs its verdict; return the ids failed."""
        # the jobs of one submit_many chunk share its task: ask about each task once
        verdicts = self._verdicts(controller, sorted({task["msg_id"] for _, task in jobs}))
        failed, waiting = [], []
        for job_id, task in jobs:
            verdict = verdicts.get(task["msg_id"])
            old_enough = started - float(task.get("since", 0)) >= self.grace
            if verdict is None or (verdict[0] == LOST and not old_enough):
                waiting.append(job_id)
            elif _fail(store, job_id, verdict):
                failed.append(job_id)
        if controller.down_since is None:  # pending: look again CHECK_AFTER from now
            store.check_queued_later(waiting, started)
        return failed

    def _settle_unsent(
        self, store: Store, jobs: list[tuple[str, dict[str, Any]]], started: float
    ) -> list[str]:
        """Fail chained jobs not handed to the cluster within ``grace`` s; return their ids."""
        failed, waiting = [], []
        for job_id, task in jobs:
            if started - float(task.get("since", 0)) < self.grace:
                waiting.append(job_id)
            elif _fail(store, job_id, (LOST, NOT_HANDED_OVER.format(task.get("chained_from")))):
                failed.append(job_id)
        store.check_queued_later(waiting, started)
        return failed

    def _verdicts(self, controller: Controller, msg_ids: list[str]) -> dict[str, Verdict]:
        """Each task's verdict; all lost once the controller is silent for ``grace`` s."""
        try:
            pending, completed, unknown = controller.statuses(msg_ids)
            outcomes = controller.outcomes(sorted(completed))
        except Unreachable as exc:
            log.warning("%s", exc)
            if controller.silent_for() < self.grace:
                return {}
            note = f"its controller has not answered for {controller.silent_for():.0f} s: {exc}"
            return dict.fromkeys(msg_ids, (LOST, note))
        verdicts: dict[str, Verdict] = {m: outcome_verdict(outcomes.get(m)) for m in completed}
        for msg_id in unknown:
            verdicts[msg_id] = (LOST, f"its controller knows no task {msg_id}")
        return verdicts

    def close(self) -> None:
        """Disconnect from every controller."""
        for controller in self.controllers.values():
            controller.close()


def _still_queued(task: Any, info: dict[str, Any] | None) -> bool:
    """Whether a bookkeeping entry still describes a Queued job the watchdog can check."""
    readable = isinstance(task, dict) and "connection_file" in task
    return readable and info is not None and info.get("status") == Status.QUEUED


def _fail(store: Store, job_id: str, verdict: tuple[Any, str | None]) -> bool:
    """Fail a job that is still Queued; return whether it was."""
    result, note = verdict
    fields = {"status": Status.FAILED.value, "result": result, "date_end": now()}
    if note:
        fields["note"] = note
    applied, before = store.update(job_id, fields, guard="queued")
    if applied:
        log.warning("job %s failed while Queued: %s", job_id, note or result)
    else:  # it started meanwhile; its bookkeeping is already gone
        store.forget_queued([job_id])
    return applied


#: The reconciler of this process (``sweep`` runs it in the background).
reconciler = Reconciler()

#: Per store: since when (monotonic) Redis answers again after it did not, if it did not.
_back_since: weakref.WeakKeyDictionary[Store, float | None] = weakref.WeakKeyDictionary()


def _reaping_allowed(store: Store) -> bool:
    """Ping Redis; whether it has answered for ``LEASE_TTL`` s (engines renewed since).

    Raises
    ------
    redis.RedisError
        When Redis does not answer (and notes the outage).
    """
    try:
        store.r.ping()
    except redis.RedisError:
        _back_since[store] = None
        raise
    if store not in _back_since:
        return True
    back = _back_since[store]
    if back is None:
        back = _back_since[store] = time.monotonic()
        log.warning("Redis answers again; reaping leases in %.0f s", LEASE_TTL)
    if time.monotonic() - back < LEASE_TTL:
        return False
    del _back_since[store]
    return True


def sweep(store: Store) -> list[str]:
    """Fail the jobs whose lease expired; return their ids.  Start a look at Queued jobs."""
    reaped = store.reap(REASON) if _reaping_allowed(store) else []
    for job_id in reaped:
        log.warning("job %s failed: its engine stopped renewing the lease", job_id)
    reconciler.kick(store)
    return reaped


def supervise_embedded() -> None:
    """Restart what died of the embedded services this watchdog was started beside."""
    state_dir = os.environ.get(embedded.SUPERVISE_VAR)
    if not state_dir:
        return
    try:
        restarted = embedded.supervise(
            Path(state_dir),
            embedded.engine_count(),
            redis_too=bool(os.environ.get(embedded.SUPERVISE_REDIS_VAR)),
        )
    except Exception as exc:  # noqa: BLE001 -- keep watching whatever failed; retry next sweep
        log.warning("could not restart the embedded services: %s", exc)
        return
    if restarted:
        log.warning("restarted what had died: %s", ", ".join(restarted))


def run(store: Store, stop: threading.Event) -> None:
    """Sweep (and supervise) every ``SWEEP_INTERVAL`` seconds until ``stop`` is set."""
    while not stop.wait(SWEEP_INTERVAL):
        supervise_embedded()
        try:
            sweep(store)
        except redis.RedisError as exc:
            log.warning("cannot reach Redis (%s); retrying", exc)


def main() -> None:
    """Entry point of ``python -m moi.watchdog``: sweep until SIGTERM or SIGINT."""
    from moi import runtime

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("watching leases in %s", runtime.redis_url().split("@")[-1])
    run(runtime.store(), stop)


if __name__ == "__main__":
    main()
