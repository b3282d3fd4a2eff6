"""The Redis client: `redis.asyncio` when REDIS_URL is set, in-process fakeredis otherwise.

Both speak the same asyncio API, Lua scripts included (fakeredis runs them with lupa), so
callers never know which one they hold. Keys are namespaced with `settings.REDIS_KEY_PREFIX`
through `key()`.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from core.settings import Settings

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
        )
    import fakeredis

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
