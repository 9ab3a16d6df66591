"""The watchdog: fails running jobs whose engine stopped renewing its lease.

An engine renews its job's lease every second (:mod:`moi.engine`); when an
engine dies, nobody does, and within ``LEASE_TTL`` plus one sweep the
watchdog marks the job ``Failed`` with the reason.  It runs beside the
embedded cluster, inside ``moi serve``, or alone as ``python -m moi.watchdog``
(``moi watchdog``) for any other deployment.
"""

from __future__ import annotations

import logging
import signal
import threading

import redis

from moi.engine import LEASE_TTL
from moi.store import Store

SWEEP_INTERVAL = 2.0
REASON = (
    f"the engine running this job stopped answering (no heartbeat for {LEASE_TTL:.0f} s); "
    "it probably died or lost its connection"
)
log = logging.getLogger("moi.watchdog")


def sweep(store: Store) -> list[str]:
    """Fail the jobs whose lease expired; return their ids."""
    reaped = store.reap(REASON)
    for job_id in reaped:
        log.warning("job %s failed: its engine stopped renewing the lease", job_id)
    return reaped


def run(store: Store, stop: threading.Event) -> None:
    """Sweep every ``SWEEP_INTERVAL`` seconds until ``stop`` is set."""
    while not stop.wait(SWEEP_INTERVAL):
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
