"""Operators' jobs: the heartbeat /readyz reports, and the echo probe of `check-jobs`."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from taskiq import Context, TaskiqDepends

from core.settings import Settings
from jobs.broker import broker
from storage.redis import Keys, create_redis


@broker.task(task_name="zb.heartbeat", schedule=[{"interval": 30}])
async def heartbeat(context: Context = TaskiqDepends()) -> float:
    """Records that a worker ran a scheduled job; /readyz reports how long ago that was."""
    services = context.state.services
    now = time.time()
    await services.redis.set(services.keys("heartbeat", "jobs"), str(now), ex=3600)
    return now


@broker.task(task_name="zb.echo")
async def echo(payload: dict[str, Any], context: Context = TaskiqDepends()) -> dict[str, Any]:
    """Writes `payload` under a key it names and returns it: the operators' and tests' probe."""
    services = context.state.services
    await services.redis.set(services.keys("echo", payload["key"]), str(payload.get("value")), ex=600)
    return payload


async def probe_jobs(settings: Settings, *, timeout: float) -> tuple[bool, str]:
    """Kicks `zb.echo` and waits for a worker to write its key: (ok, what happened)."""
    redis = create_redis(settings)
    keys = Keys(settings.REDIS_KEY_PREFIX)
    token = secrets.token_hex(8)
    try:
        await broker.startup()
        started = time.monotonic()
        await echo.kiq({"key": token, "value": token})
        while time.monotonic() - started < timeout:
            if await redis.get(keys("echo", token)) == token.encode():
                return True, f"job ran in {time.monotonic() - started:.2f}s"
            await asyncio.sleep(0.05)
        return False, f"no worker ran the probe job within {timeout:.0f}s"
    finally:
        await broker.shutdown()
        await redis.aclose()
