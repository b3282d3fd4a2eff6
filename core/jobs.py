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
from datetime import timedelta
from typing import Any

from taskiq import AsyncBroker, Context, InMemoryBroker, TaskiqDepends, TaskiqEvents, TaskiqScheduler, TaskiqState
from taskiq.schedule_sources import LabelScheduleSource

from core.settings import Settings, installed
from storage.redis import Keys, create_redis

log = logging.getLogger("zhangban.jobs")


def _stream_broker_class():
    from redis.asyncio import Redis
    from taskiq_redis import RedisStreamBroker

    class StreamBroker(RedisStreamBroker):
        """taskiq-redis's stream broker, kicking and acknowledging through one Redis client.

        The library builds a new client for every message it queues or acknowledges, which
        costs more than the XADD itself (about a third of a platform callback's time)."""

        _client: Redis | None = None

        def _redis(self) -> Redis:
            if self._client is None:
                self._client = Redis(connection_pool=self.connection_pool)
            return self._client

        async def kick(self, message) -> None:
            queue_name = message.labels.get("queue_name") or self.queue_name
            await self._redis().xadd(
                queue_name, {b"data": message.message}, maxlen=self.maxlen, approximate=self.approximate
            )

        def _ack_generator(self, id: str, queue_name: str):
            async def _ack() -> None:
                await self._redis().xack(queue_name, self.consumer_group_name, id)

            return _ack

    return StreamBroker


def create_broker(settings: Settings) -> AsyncBroker:
    """The broker for these settings: in-memory, or a Redis stream with acknowledgements."""
    if settings.TASK_BROKER == "redis":
        return _stream_broker_class()(
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


SIM_PLATFORM_KEY = "zhangban-sim"
SIM_PLATFORM_SECRET = "zhangban-sim-platform-secret-0123456789"
SIM_PLATFORM_PREFIX = "/_sim/platform"


def platform_endpoint(settings: Settings) -> tuple[str, str, str]:
    """(base URL, app key, secret) of the core platform, or of the in-process simulator."""
    if settings.simulated("core platform"):
        return settings.local_base_url + SIM_PLATFORM_PREFIX, SIM_PLATFORM_KEY, SIM_PLATFORM_SECRET
    return settings.PLATFORM_BASE_URL, settings.PLATFORM_APP_KEY, settings.PLATFORM_SECRET


async def run_embedded_scheduler() -> None:
    """The scheduler loop inside the server process (embedded default only)."""
    from taskiq.cli.scheduler.run import SchedulerLoop

    for source in scheduler.sources:
        await source.startup()
    await SchedulerLoop(scheduler).run()


@broker.on_event(TaskiqEvents.WORKER_STARTUP)
async def _worker_startup(state: TaskiqState) -> None:
    import httpx

    from storage.db import init_db

    state.redis = create_redis(settings)
    state.redis_keys = keys
    # With the in-memory broker the app has already set up the ORM; share it.
    state.owns_db = await init_db(settings)
    state.http = httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=3.0))
    state.platform = create_platform_client(settings, http=state.http)
    state.relay = create_relay(settings, platform=state.platform)
    state.pusher = create_pusher(settings, redis=state.redis, http=state.http)


def create_platform_client(settings: Settings, *, http):
    """The core platform's client: configured, or the in-process simulator's."""
    from bridge.client import PlatformClient

    base_url, app_key, secret = platform_endpoint(settings)
    return PlatformClient(base_url=base_url, app_key=app_key, secret=secret, http=http)


def create_relay(settings: Settings, *, platform):
    """The outbox relay for these settings."""
    from handlers.delivery import Relay
    from handlers.materials import platform_links
    from storage.crypto import FieldCipher

    return Relay(
        platform=platform,
        cipher=FieldCipher(settings.field_encryption_key(), settings.field_encryption_old_keys()),
        material_links=platform_links(signing_key=settings.secret_key().encode(), base_url=settings.public_base_url),
        lease=timedelta(seconds=settings.OUTBOX_STUCK_S),
    )


def create_pusher(settings: Settings, *, redis, http):
    """The progress pusher for these settings (WeChat clients, templates, quiet hours)."""
    from handlers.push import Pusher, QuietHours
    from wechat.apps import mp_appid, progress_template, wechat_client
    from wechat.client import OfficialAccountAPI

    return Pusher(
        mp=wechat_client(settings, "mp", redis=redis, http=http),
        oa=OfficialAccountAPI(wechat_client(settings, "oa", redis=redis, http=http)),
        mp_appid=mp_appid(settings),
        mp_template_id=progress_template(settings, "mp"),
        oa_template_id=progress_template(settings, "oa"),
        quiet=QuietHours.parse(settings.PUSH_QUIET_HOURS),
        lease_s=settings.PUSH_LEASE_S,
        max_attempts=settings.PUSH_MAX_ATTEMPTS,
        miniprogram_state="developer" if settings.embedded else "formal",
    )


@broker.on_event(TaskiqEvents.WORKER_SHUTDOWN)
async def _worker_shutdown(state: TaskiqState) -> None:
    from storage.db import close_db

    await state.redis.aclose()
    await state.http.aclose()
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


@broker.task(task_name="zb.relay_outbox", schedule=[{"interval": 5}])
async def relay_outbox(context: Context = TaskiqDepends()) -> int:
    """Hands due outbox rows (new cases, retries after failures, expired leases) to the platform."""
    # The lock only saves duplicate effort (each row is claimed on its own), so it is short: a
    # worker killed while relaying holds it no longer than a row's lease.
    lock = context.state.redis.lock(
        context.state.redis_keys("lock", "relay"), timeout=min(60, settings.OUTBOX_STUCK_S), blocking_timeout=0
    )
    if not await lock.acquire():  # another worker is relaying right now
        return 0
    try:
        return await context.state.relay.run_due()
    finally:
        try:
            await lock.release()
        except Exception:
            log.warning("relay lock expired before release")


@broker.task(task_name="zb.push")
async def push_notification(notification_id: int, context: Context = TaskiqDepends()) -> str:
    """Carries one notification to the citizen (kicked right after the change commits)."""
    return await context.state.pusher.run_one(notification_id)


@broker.task(task_name="zb.push_sweep", schedule=[{"interval": 10}])
async def push_sweep(context: Context = TaskiqDepends()) -> int:
    """Pushes what is due and was not kicked: retries, quiet-hours waits, lost kicks, dead workers."""
    return await context.state.pusher.run_due()


@broker.task(task_name="zb.platform_sweep", schedule=[{"interval": 600}])
async def platform_sweep(context: Context = TaskiqDepends()) -> int:
    """Asks the platform about delivered cases it has been silent on for PLATFORM_SILENCE_S."""
    from handlers.sweeps import query_silent_cases

    lock = context.state.redis.lock(context.state.redis_keys("lock", "platform_sweep"), timeout=600, blocking_timeout=0)
    if not await lock.acquire():
        return 0
    try:
        return await query_silent_cases(context.state.platform, silence=timedelta(seconds=settings.PLATFORM_SILENCE_S))
    finally:
        try:
            await lock.release()
        except Exception:
            log.warning("platform sweep lock expired before release")


@broker.task(task_name="zb.overdue_sweep", schedule=[{"cron": "5 * * * *", "cron_offset": "Asia/Shanghai"}])
async def overdue_sweep() -> int:
    """Marks open cases past their promised date overdue and tells their citizens (hourly)."""
    from handlers.sweeps import mark_overdue

    return await mark_overdue()


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
