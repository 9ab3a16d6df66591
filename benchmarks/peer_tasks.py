"""The peers' side of benchmarks/peers.py: Celery's app and tasks (workers import this by name).

Configured by the environment the benchmark gives its worker: ``PEERS_BROKER``
(Redis URL, broker and result backend) and ``PEERS_CELERY_EVENTS`` (``1``:
task events and ``task_track_started`` on, what Flower needs to show anything).
"""

from __future__ import annotations

import os

import workload
from celery import Celery

app = Celery("peer_tasks", broker=os.environ.get("PEERS_BROKER", "redis://127.0.0.1:6379/1"))
_events = os.environ.get("PEERS_CELERY_EVENTS") == "1"
app.conf.update(
    result_backend=os.environ.get("PEERS_BROKER", "redis://127.0.0.1:6379/1"),
    worker_send_task_events=_events,
    task_send_sent_event=_events,
    task_track_started=_events,
    result_expires=3600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task
def trivial(x: int) -> int:
    """A trivial task: its argument back."""
    return workload.trivial(x)


@app.task
def nap(x: int) -> int:
    """A 50 ms task."""
    return workload.nap(x)
