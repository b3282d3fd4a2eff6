"""Background jobs on taskiq: the broker, the scheduler, and the periodic jobs.

Embedded default: taskiq's in-memory broker runs jobs inside the Sanic worker and the
scheduler loop runs there too. Production (`TASK_BROKER=redis`): a Redis stream broker with
acknowledgements (a job killed mid-way is redelivered to another worker), separate
`python server.py worker` and `python server.py scheduler` processes.

taskiq's worker imports this module by path (`core.jobs:broker`), so the broker is built at
import from the process's installed settings.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from taskiq import AsyncBroker, Context, InMemoryBroker, TaskiqDepends, TaskiqEvents, TaskiqScheduler, TaskiqState
from taskiq.schedule_sources import LabelScheduleSource

from core.settings import Settings, installed
from storage.redis import Keys, create_redis

log = logging.getLogger("zhangban.jobs")


def create_broker(settings: Settings) -> AsyncBroker:
    """The broker for these settings: in-memory, or a Redis stream with acknowledgements."""
    if settings.TASK_BROKER == "redis":
        from taskiq_redis import RedisStreamBroker

        return RedisStreamBroker(
            url=settings.REDIS_URL,
            queue_name=f"{settings.REDIS_KEY_PREFIX}jobs",
            consumer_group_name=f"{settings.REDIS_KEY_PREFIX}workers",
            # Start the group at the stream's beginning: jobs queued before the first
            # worker ever started are still done.
            consumer_id="0",
            # Redeliver a job a dead worker had taken after 5 minutes without an ack.
            idle_timeout=300_000,
            unacknowledged_lock_timeout=30,
            maxlen=100_000,
        )
    return InMemoryBroker(await_inplace=False)


# Modules holding jobs besides this one; the worker imports them all.
TASK_MODULES: list[str] = []

settings = installed()
keys = Keys(settings.REDIS_KEY_PREFIX)
broker = create_broker(settings)
scheduler = TaskiqScheduler(broker, sources=[LabelScheduleSource(broker)])


async def run_embedded_scheduler() -> None:
    """The scheduler loop inside the server process (embedded default only)."""
    from taskiq.cli.scheduler.run import SchedulerLoop

    for source in scheduler.sources:
        await source.startup()
    await SchedulerLoop(scheduler).run()


@broker.on_event(TaskiqEvents.WORKER_STARTUP)
async def _worker_startup(state: TaskiqState) -> None:
    from storage.db import init_db

    state.redis = create_redis(settings)
    state.redis_keys = keys
    # With the in-memory broker the app has already set up the ORM; share it.
    state.owns_db = await init_db(settings)


@broker.on_event(TaskiqEvents.WORKER_SHUTDOWN)
async def _worker_shutdown(state: TaskiqState) -> None:
    from storage.db import close_db

    await state.redis.aclose()
    if getattr(state, "owns_db", False):
        await close_db()


# -- jobs ------------------------------------------------------------------------------


@broker.task(task_name="zb.heartbeat", schedule=[{"interval": 30}])
async def heartbeat(context: Context = TaskiqDepends()) -> float:
    """Records that a worker ran a scheduled job; /readyz reports how long ago that was."""
    now = time.time()
    await context.state.redis.set(context.state.redis_keys("heartbeat", "jobs"), str(now), ex=3600)
    return now


@broker.task(task_name="zb.purge_drafts", schedule=[{"cron": "17 3 * * *", "cron_offset": "Asia/Shanghai"}])
async def purge_drafts() -> int:
    """Deletes drafts past their expiry (nightly)."""
    from handlers.drafts import purge_expired_drafts

    count = await purge_expired_drafts()
    log.info("expired drafts purged", extra={"count": count})
    return count


@broker.task(task_name="zb.echo")
async def echo(payload: dict[str, Any], context: Context = TaskiqDepends()) -> dict[str, Any]:
    """Writes `payload` under a key it names and returns it: the operators' and tests' probe."""
    await context.state.redis.set(context.state.redis_keys("echo", payload["key"]), str(payload.get("value")), ex=600)
    return payload


async def probe_jobs(settings: Settings, *, timeout: float) -> tuple[bool, str]:
    """Kicks `zb.echo` and waits for a worker to write its key: (ok, what happened)."""
    import asyncio
    import secrets

    redis = create_redis(settings)
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
