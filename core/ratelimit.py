"""Abuse limits through the `limits` library: Redis when configured, process memory otherwise.

`await limiter.hit("login", "ip", request.ip)` raises `429 rate_limited` with `Retry-After`
once the named rule's window is spent. Rules are named here, in one table.
"""

from __future__ import annotations

import math
import time

from limits import parse
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from core.errors import TooManyRequests

RULES = {
    ("login", "ip"): "30/minute",
    ("refresh", "ip"): "60/minute",
    ("declare", "user"): "10/hour",
    ("declare", "ip"): "30/hour",
    ("face", "user"): "10/hour",
    ("face", "ip"): "60/hour",
    ("phone", "user"): "10/hour",
}


def parse_overrides(text: str) -> dict[tuple[str, str], str]:
    """`{(action, scope): rule}` from "login.ip=120/minute,..."; raises ValueError naming the bad part."""
    out: dict[tuple[str, str], str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, rule = part.partition("=")
        action, _, scope = name.strip().partition(".")
        if (action, scope) not in RULES:
            raise ValueError(f"unknown limit '{name.strip()}' (known: {', '.join(a + '.' + s for a, s in RULES)})")
        try:
            parse(rule.strip())
        except ValueError:
            raise ValueError(f"bad rule '{rule.strip()}' for {name.strip()} (e.g. 30/minute)") from None
        out[(action, scope)] = rule.strip()
    return out


class Limiter:
    """Checks and counts hits against the named rules."""

    def __init__(self, *, redis_url: str | None, key_prefix: str, overrides: str | None):
        if redis_url:
            uri = redis_url.replace("redis://", "async+redis://", 1).replace("rediss://", "async+rediss://", 1)
            storage = RedisStorage(uri, implementation="redispy", key_prefix=key_prefix + "rl")
        else:
            storage = MemoryStorage()
        self._limiter = MovingWindowRateLimiter(storage)
        rules = {**RULES, **parse_overrides(overrides or "")}
        self._items = {key: parse(rule) for key, rule in rules.items()}

    async def hit(self, action: str, scope: str, identifier: object) -> None:
        """Counts one hit; raises 429 rate_limited with Retry-After when over the limit."""
        item = self._items[(action, scope)]
        if await self._limiter.hit(item, action, scope, str(identifier)):
            return
        stats = await self._limiter.get_window_stats(item, action, scope, str(identifier))
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        raise TooManyRequests(
            f"操作太频繁，请{retry_after}秒后再试",
            code="rate_limited",
            details={"retry_after": retry_after},
            retry_after=retry_after,
        )
