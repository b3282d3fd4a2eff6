"""A job worker process: every task module, and the service container built at start.

`python server.py worker` points taskiq at `jobs.worker:broker`. On the embedded default the
in-memory broker runs inside the server, which hands it the app's own container first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable

from redis.asyncio import Redis
from taskiq import AckableMessage, TaskiqEvents, TaskiqState
from taskiq.cli.scheduler.run import SchedulerLoop

from container import Services
from core.backoff import backoff_s
from jobs import cases, drafts, evaluation, notices, ops, payments, push, tickets  # noqa: F401  (registers every task with the broker)
from jobs.broker import StreamBroker, broker, scheduler, settings
from jobs.kicks import BrokerKicks
from storage.db import close_db, init_db
from storage.redis import REDIS_OUTAGES

log = logging.getLogger("zhangban.jobs")

TASK_MODULES = [
    "jobs.cases",
    "jobs.drafts",
    "jobs.evaluation",
    "jobs.notices",
    "jobs.ops",
    "jobs.payments",
    "jobs.push",
    "jobs.tickets",
]
__all__ = ["TASK_MODULES", "broker", "scheduler", "run_embedded_scheduler"]


@broker.on_event(TaskiqEvents.WORKER_STARTUP)
async def _worker_startup(state: TaskiqState) -> None:
    if getattr(state, "services", None) is not None:  # the server's own, in-memory broker
        state.owns_services = False
        return
    if isinstance(broker, StreamBroker):
        # Before the consumer group is declared: a worker started while Redis is down waits
        # for it instead of dying, and taskiq restarting it, with a traceback each time.
        await wait_for_redis(broker)
    state.owns_services = True
    state.owns_db = await init_db(settings)
    state.services = Services(settings, kicks=BrokerKicks())


@broker.on_event(TaskiqEvents.WORKER_SHUTDOWN)
async def _worker_shutdown(state: TaskiqState) -> None:
    if not getattr(state, "owns_services", False):
        return
    await state.services.close()
    if state.owns_db:
        await close_db()


async def run_embedded_scheduler() -> None:
    """The scheduler loop inside the server process (embedded default only)."""
    for source in scheduler.sources:
        await source.startup()
    await SchedulerLoop(scheduler).run()


async def wait_for_redis(stream_broker: StreamBroker) -> None:
    """Returns once Redis answers; one log line when it does not, one when it is back."""
    attempts = 0
    while True:
        try:
            async with Redis(connection_pool=stream_broker.connection_pool) as client:
                await client.ping()
        except REDIS_OUTAGES as exc:
            attempts += 1
            if attempts == 1:
                log.warning("redis unavailable, jobs wait for it", extra={"error": type(exc).__name__})
            await asyncio.sleep(backoff_s(attempts, base_s=0.5, cap_s=10))
            continue
        if attempts:
            log.warning("redis is back, jobs resume", extra={"failed_attempts": attempts})
        return


def survive_outages(
    stream_broker: StreamBroker, listen: Callable[[], AsyncGenerator[AckableMessage, None]]
) -> Callable[[], AsyncGenerator[AckableMessage, None]]:
    """`listen` resumed after a Redis outage instead of ending the worker process with a trace
    (taskiq would restart it, to die again while Redis is down)."""

    async def listen_through_outages() -> AsyncGenerator[AckableMessage, None]:
        while True:
            try:
                async for message in listen():
                    yield message
                return
            except REDIS_OUTAGES:
                await wait_for_redis(stream_broker)
                # A Redis restarted without its data has lost the consumer group: declare it
                # again (taskiq-redis does it only at start-up).
                await stream_broker._declare_consumer_group()

    return listen_through_outages


if isinstance(broker, StreamBroker):
    broker.listen = survive_outages(broker, broker.listen)  # type: ignore[method-assign]
