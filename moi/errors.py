"""The one exception family moi raises on purpose."""


class MoiError(Exception):
    """Base class of every error moi raises on purpose; its text says what to do."""


class UnknownIdError(MoiError):
    """An id that names no job or group in Redis."""


class InvalidIdError(MoiError, ValueError):
    """A string that cannot be a job or group id (one of moi's own keys, say)."""


class InvalidUserError(MoiError, ValueError):
    """A string that cannot be a user name (empty, a UUID, control characters)."""


class UnknownContextError(MoiError, KeyError):
    """A context name that the configuration does not list."""

    def __str__(self) -> str:
        return str(self.args[0])


class ClusterUnavailableError(MoiError):
    """No ipyparallel controller answers for a context."""


class JobCancelled(Exception):
    """Raised on the engine for a job cancelled before or while it ran."""


class ChainError(MoiError):
    """A job's request for the next jobs of its chain that cannot be met (malformed, a limit)."""
