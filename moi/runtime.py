"""The process's lazily made connections: settings, Redis, the job store.

Nothing connects until first use; with no Redis configured the first use
starts the embedded server (:mod:`moi.embedded`).
"""

from __future__ import annotations

import functools

import redis

from moi import config, connection, embedded
from moi.store import Store


@functools.cache
def settings() -> config.Settings:
    """The settings of this process, read once."""
    return config.load()


@functools.cache
def redis_url() -> str:
    """URL of the Redis server holding the job tree, starting the embedded one if unset."""
    cfg = settings()
    return cfg.redis_url or embedded.ensure_redis(cfg.state_dir)


@functools.cache
def redis_client() -> redis.Redis:
    """The process's synchronous Redis client (a connection pool)."""
    return connection.client(redis_url())


@functools.cache
def store() -> Store:
    """The process's :class:`~moi.store.Store`."""
    return Store(redis_client(), settings().key_timeout)


def reset() -> None:
    """Forget every cached setting and connection (after the environment changed)."""
    for cached in (settings, redis_url, redis_client, store):
        cached.cache_clear()
    from moi import context

    context.forget_clients()
