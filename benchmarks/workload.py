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
