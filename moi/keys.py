"""Every Redis key and channel name moi uses, built in one place.

The first four are the public protocol (see README, "Redis protocol"); the
rest are moi's own bookkeeping for cancellation and engine leases.
"""

#: HASH mapping user name -> group uuid and group uuid -> user name.
USER_ID_MAP = "user-id-map"

#: ZSET of running job ids scored by the Redis time their lease expires.
LEASES = "moi:leases"


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


def node_id_of_channel(channel: str) -> str:
    """Return the node id a ``<id>:pubsub`` channel belongs to."""
    return channel[: -len(":pubsub")] if channel.endswith(":pubsub") else channel


#: Channel every relay subscribes to, so its pub/sub connection always exists.
RELAY_CHANNEL = "moi:relay"
