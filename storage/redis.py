"""The Redis client: `redis.asyncio` when REDIS_URL is set, in-process fakeredis otherwise.

Both speak the same asyncio API, Lua scripts included (fakeredis runs them with lupa), so
callers never know which one they hold. Keys are namespaced with `settings.REDIS_KEY_PREFIX`
through `key()`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import fakeredis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import LockError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.outages import register_outage
from core.settings import Settings

log = logging.getLogger("zhangban.redis")

# Redis down or unreachable: a request meeting it is a 503 with Retry-After and one log line.
REDIS_OUTAGES = (RedisConnectionError, RedisTimeoutError)
register_outage("redis", *REDIS_OUTAGES)

_fake_server = None


def create_redis(settings: Settings) -> aioredis.Redis:
    """A client for the configured Redis, or for this process's fakeredis server."""
    if settings.REDIS_URL:
        return aioredis.from_url(
            settings.REDIS_URL,
            decode_responses=False,
            socket_connect_timeout=2,
            socket_timeout=5,
            health_check_interval=30,
            # After a Redis restart every pooled connection is dead: one quick retry on a new
            # connection, so its first command does not fail while Redis is already back.
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
            retry_on_error=list(REDIS_OUTAGES),
        )
    global _fake_server
    if _fake_server is None:
        _fake_server = fakeredis.FakeServer()
    return fakeredis.FakeAsyncRedis(server=_fake_server, decode_responses=False)


class Keys:
    """Builds namespaced Redis keys, so several deployments or test runs can share a server."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def __call__(self, *parts: object) -> str:
        return self.prefix + ":".join(str(p) for p in parts)


@asynccontextmanager
async def held_lock(
    redis: aioredis.Redis, key: str, *, timeout: float, blocking_timeout: float = 0
) -> AsyncIterator[bool]:
    """Holds a Redis lock for the block: yields True if taken, False if another holder has it.

    The lock expires after `timeout` seconds, so a holder killed mid-way blocks no one for
    longer; a release that finds it already expired is logged, not raised."""
    lock = redis.lock(key, timeout=timeout, blocking_timeout=blocking_timeout)
    if not await lock.acquire():
        yield False
        return
    try:
        yield True
    finally:
        try:
            await lock.release()
        except LockError:
            log.warning("lock expired before release", extra={"key": key})
