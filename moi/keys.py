"""Every Redis key and channel name moi uses, built in one place.

The first four are the public protocol (see README, "Redis protocol"); the
rest are moi's own bookkeeping (cancels, leases, Queued jobs' tasks).  What may
name a node or a user is decided here too (:func:`check_node_id`,
:func:`check_user_name`), so no id can turn into one of these keys.
"""

from __future__ import annotations

import re
from uuid import UUID

from moi.errors import InvalidIdError, InvalidUserError

#: HASH mapping user name -> group uuid and group uuid -> user name.
USER_ID_MAP = "user-id-map"

#: Prefix of the keys and channels moi keeps for itself.
PREFIX = "moi:"

#: Longest job or group id accepted.
MAX_ID_LENGTH = 128

#: C0 controls, DEL and C1 controls (Unicode category ``Cc``).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")

#: ZSET of running job ids scored by the Redis time their lease expires.
LEASES = "moi:leases"

#: ZSET of Queued job ids scored by when the watchdog should next check them (epoch s).
QUEUED = "moi:queued"

#: HASH job id -> JSON of a Queued job's task: msg_id, context, connection_file, since.
QUEUED_TASKS = "moi:queued:tasks"

#: ZSET of job ids the watchdog failed for an expired lease, scored by the Redis time it did.
REAPED = "moi:reaped"


def info(node_id: str) -> str:
    """Key of the JSON info object of a job or group."""
    return node_id


def children(node_id: str) -> str:
    """Key of the SET of ids directly under a group."""
    return f"{node_id}:children"


def pubsub(node_id: str) -> str:
    """Channel on which changes of a node are published."""
    return f"{node_id}:pubsub"


def cancel(job_id: str) -> str:
    """Key whose presence asks the engine running ``job_id`` to stop it."""
    return f"{job_id}:cancel"


#: Pattern matching the channel of every node whose id has the shape of a uuid
#: (every id moi makes): a server subscribes to it once instead of to one
#: channel per node.  A job's output channel (``<id>:log:pubsub``) is longer.
UUID_CHANNEL_PATTERN = "????????-????-????-????-????????????:pubsub"


def in_channel_pattern(node_id: str) -> bool:
    """Whether the channel of ``node_id`` matches :data:`UUID_CHANNEL_PATTERN`.

    Redis matches bytes (a ``?`` is one byte), so the UTF-8 bytes are counted.
    """
    raw = node_id.encode()
    return len(raw) == 36 and all(raw[i] == 0x2D for i in (8, 13, 18, 23))


def node_id_of_channel(channel: str) -> str:
    """Return the node id a ``<id>:pubsub`` channel belongs to."""
    return channel[: -len(":pubsub")] if channel.endswith(":pubsub") else channel


#: Channel every relay subscribes to, so its pub/sub connection always exists.
RELAY_CHANNEL = "moi:relay"


def is_uuid(value: object) -> bool:
    """Whether ``value`` is a string that parses as a UUID (any form :class:`uuid.UUID` reads)."""
    if not isinstance(value, str):
        return False
    try:
        UUID(value)
    except ValueError:
        return False
    return True


def check_node_id(node_id: object, what: str = "id") -> str:
    """Return ``node_id`` if it may name a job or group; refuse it otherwise.

    A node id is a non-empty string of at most :data:`MAX_ID_LENGTH`
    printable characters, without spaces or ``:`` (which ends an id in the
    keys ``<id>:children``, ``<id>:pubsub``, ...), and none of moi's own keys
    (``user-id-map``, anything starting with ``moi:``).  uuids, as moi makes
    them, and names such as ``no-user`` qualify.

    Parameters
    ----------
    node_id : str
        The id to check.
    what : str
        What the id is for, as the error message should call it.

    Returns
    -------
    str
        ``node_id`` itself.

    Raises
    ------
    InvalidIdError
        When ``node_id`` cannot be a node id; the message says why.
    """
    if not isinstance(node_id, str):
        raise InvalidIdError(f"{what} must be a string, not {type(node_id).__name__}")
    problem = _id_problem(node_id)
    if problem is not None:
        raise InvalidIdError(f"invalid {what} {_shown(node_id)}: {problem}")
    return node_id


def check_user_name(user: object) -> str:
    """Return ``user`` if it may be a user name; refuse it otherwise.

    ``user-id-map`` holds both user -> group id and group id -> user, so a
    user name must never read as a group id: it cannot be a UUID.  It cannot
    be empty or hold control characters either.

    Parameters
    ----------
    user : str
        The name to check.

    Returns
    -------
    str
        ``user`` itself.

    Raises
    ------
    InvalidUserError
        When ``user`` cannot be a user name; the message says why.
    """
    if not isinstance(user, str):
        raise InvalidUserError(f"a user name must be a string, not {type(user).__name__}")
    if not user:
        raise InvalidUserError("a user name cannot be empty")
    if _CONTROL.search(user):
        raise InvalidUserError(f"invalid user name {_shown(user)}: it contains control characters")
    if is_uuid(user):
        raise InvalidUserError(
            f"invalid user name {_shown(user)}: user names cannot be UUIDs, which are group "
            "ids; choose another name"
        )
    return user


def _id_problem(node_id: str) -> str | None:
    """Why ``node_id`` cannot name a node, or ``None``."""
    if not node_id:
        return "it is empty"
    if len(node_id) > MAX_ID_LENGTH:
        return f"it is longer than {MAX_ID_LENGTH} characters"
    if node_id == USER_ID_MAP or node_id.startswith(PREFIX):
        return "it is one of moi's own keys"
    if ":" in node_id:
        return "an id cannot hold ':' (moi names a node's own keys <id>:children, <id>:pubsub, ...)"
    if " " in node_id or not node_id.isprintable():
        return "it contains spaces or control characters"
    return None


def _shown(value: str) -> str:
    """``value`` quoted for an error message: escaped, and cut when long."""
    return repr(value) if len(value) <= 60 else repr(value[:60]) + "..."


# -- live output and metrics (moi.logs, moi.metrics) ---------------------------------

#: HASH of moi's counters (``submitted|<context>``, ``finished|<context>|<status>``, ...).
STATS = "moi:stats"


def stat_field(*parts: str) -> str:
    """Field of :data:`STATS` for a counter and its labels (``submitted|default``)."""
    return "|".join(parts)


def log(job_id: str) -> str:
    """Key of the LIST of a job's last output lines, oldest first."""
    return f"{job_id}:log"


def log_meta(job_id: str) -> str:
    """Key of the HASH beside :func:`log`: ``total`` lines ever written, ``bytes`` kept."""
    return f"{job_id}:log:meta"


def log_channel(job_id: str) -> str:
    """Channel on which a job's new output lines are published, in batches."""
    return f"{job_id}:log:pubsub"

# -- the job service's JSON API (listing a user's jobs) -----------------------------------


def jobs_index(parent_id: str) -> str:
    """ZSET of the ids of the jobs created under ``parent_id``, scored by creation (epoch s)."""
    return f"{PREFIX}jobs-by-parent:{parent_id}"


def groups_index(parent_id: str) -> str:
    """ZSET of the ids of the groups created under ``parent_id``, scored by creation (epoch s)."""
    return f"{PREFIX}groups-by-parent:{parent_id}"


def indexed(root_id: str) -> str:
    """Key whose presence says the nodes under ``root_id`` are all in the creation indexes.

    Trees written before the indexes existed (moi 1.0) are indexed once by
    :func:`moi.listing.reindex` when a server starts.
    """
    return f"{PREFIX}indexed:{root_id}"


def job_input(job_id: str) -> str:
    """Key of the JSON input a job was submitted with through the API (what a retry reruns)."""
    return f"{PREFIX}job-input:{job_id}"


# -- job service: API keys (moi.auth) and status callbacks (moi.manager) --------------
#: HASH public key prefix -> JSON record of an API key (user, admin, read_only, created,
#: note, sha256 of the key); the key itself is never stored.
API_KEYS = "moi:apikeys"

#: HASH public key prefix -> when the key was last used (``str(datetime.now())``).
API_KEYS_USED = "moi:apikeys:used"


def callback_secrets(job_id: str) -> str:
    """Key of the SET of sha256 hex digests of a job's status-callback secrets."""
    return f"moi:callback:{job_id}"
