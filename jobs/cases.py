"""Case jobs: the outbox relay, the platform sweep for silent cases, the overdue sweep."""

from __future__ import annotations

from taskiq import Context, TaskiqDepends

from container import Services
from handlers.cases.sweeps import mark_overdue, query_silent_cases
from jobs.broker import broker
from storage.redis import held_lock


def _services(context: Context) -> Services:
    return context.state.services


@broker.task(task_name="zb.relay_outbox", schedule=[{"interval": 5}])
async def relay_outbox(context: Context = TaskiqDepends()) -> int:
    """Hands due outbox rows (new cases, retries after failures, expired leases) to the platform."""
    services = _services(context)
    # The lock only saves duplicate effort and keeps one case's rows in order (no two relays
    # ever claim one row), so it is short: a worker killed while relaying holds it no longer
    # than a row's lease.
    timeout = min(60, services.settings.OUTBOX_STUCK_S)
    async with held_lock(services.redis, services.keys("lock", "relay"), timeout=timeout) as held:
        return await services.relay.run_due() if held else 0


@broker.task(task_name="zb.platform_sweep", schedule=[{"interval": 600}])
async def platform_sweep(context: Context = TaskiqDepends()) -> int:
    """Asks the platform about delivered cases it has been silent on for PLATFORM_SILENCE_S."""
    services = _services(context)
    async with held_lock(services.redis, services.keys("lock", "platform_sweep"), timeout=600) as held:
        if not held:
            return 0
        return await query_silent_cases(
            platform=services.platform, silence=services.platform_silence, kicks=services.kicks
        )


@broker.task(task_name="zb.overdue_sweep", schedule=[{"cron": "5 * * * *", "cron_offset": "Asia/Shanghai"}])
async def overdue_sweep(context: Context = TaskiqDepends()) -> int:
    """Marks open cases past their promised date overdue and tells their citizens (hourly)."""
    return await mark_overdue(kicks=_services(context).kicks)
