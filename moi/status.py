"""Job statuses: a ``str`` Enum equal to the plain strings of the protocol."""

from enum import Enum


class Status(str, Enum):
    """The statuses moi itself sets; jobs may set any other text while running.

    ``Pending``: saved by :class:`moi.manager.JobManager` and not submitted yet
    (no task, not watched by the watchdog); ``Job.execute()`` makes it ``Queued``.
    """

    PENDING = "Pending"
    QUEUED = "Queued"
    RUNNING = "Running"
    SUCCESS = "Success"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    def __str__(self) -> str:
        return self.value


#: Statuses after which a job never changes again.
TERMINAL = frozenset({Status.SUCCESS, Status.FAILED, Status.CANCELLED})


def is_terminal(status: str | None) -> bool:
    """Return whether ``status`` ends a job's life."""
    return status in TERMINAL
