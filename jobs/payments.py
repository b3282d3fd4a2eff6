"""Payment jobs: refunds, the sweep for late notifies and expired orders, the daily reconciliation."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from taskiq import Context, TaskiqDepends

from container import Services
from core.china_time import CHINA
from jobs.broker import broker
from storage.redis import held_lock

log = logging.getLogger("zhangban.jobs")


def _services(context: Context) -> Services:
    return context.state.services


@broker.task(task_name="zb.run_refunds", schedule=[{"interval": 20}])
async def run_refunds(context: Context = TaskiqDepends()) -> int:
    """Sends due refunds to their channels and asks about those in progress."""
    services = _services(context)
    async with held_lock(services.redis, services.keys("lock", "refunds"), timeout=120) as held:
        if not held:
            return 0
        settled, notification_ids = await services.refunder.run_due()
    if notification_ids:
        await services.kicks.push(notification_ids)
    return settled


@broker.task(task_name="zb.payments_sweep", schedule=[{"interval": 30}])
async def payments_sweep(context: Context = TaskiqDepends()) -> int:
    """Asks the channels about orders whose notify is late; closes expired ones."""
    services = _services(context)
    async with held_lock(services.redis, services.keys("lock", "payments_sweep"), timeout=300) as held:
        if not held:
            return 0
        result = await services.payments_sweeper.run()
    if result.notification_ids:
        await services.kicks.push(result.notification_ids)
    if result.refund_due:
        await services.kicks.refunds()
    if result.relay_due:
        await services.kicks.relay()
    return result.asked


@broker.task(task_name="zb.reconcile", schedule=[{"cron": "20 10 * * *", "cron_offset": "Asia/Shanghai"}])
async def reconcile_yesterday(context: Context = TaskiqDepends()) -> int:
    """After 10:00 China time, when both channels have published yesterday's bills: 对账."""
    services = _services(context)
    day = (datetime.now(CHINA) - timedelta(days=1)).date()
    done = 0
    for provider in ("wechat", "alipay"):
        try:
            await services.reconciler.run(provider, day)
            done += 1
        except Exception:
            log.exception("reconciliation of %s for %s failed; run `server.py reconcile` by hand", provider, day)
    return done
