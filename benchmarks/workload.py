"""The job function the benchmarks run on the engines (imported there by name)."""

from typing import Any


def trivial(x: int, **kwargs: Any) -> int:
    """Job: return its argument; all the time a run takes is overhead."""
    return x


_client: Any = None


def two_round_trips(x: int, redis_url: str, **kwargs: Any) -> int:
    """Job: two Redis PINGs, then return its argument (the floor of what moi does)."""
    global _client
    if _client is None:
        import redis

        _client = redis.Redis.from_url(redis_url)
    _client.ping()
    _client.ping()
    return x


def pong(environ: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Job: what the ``ping`` type does, as a plain function (the typed job's baseline)."""
    environ["pong"] = environ.get("ping")
    return environ


def hop(left: int, moi_chain: Any = None, **kwargs: Any) -> int:
    """Job: ask for the next job of the chain until ``left`` reaches 0."""
    if left > 0:
        moi_chain(hop, left - 1, name=f"hop {left - 1}")
    return left


def nap(x: int, **kwargs: Any) -> int:
    """Job: sleep 50 ms, then return its argument (the cluster, not the tool, is the limit)."""
    import time

    time.sleep(0.05)
    return x
