"""好差评 jobs: the default rating after the window, and the deadlines of bad reviews."""

from __future__ import annotations

from taskiq import Context, TaskiqDepends

from container import Services
from jobs.broker import broker
from storage.redis import held_lock


def _services(context: Context) -> Services:
    return context.state.services


@broker.task(task_name="zb.evaluation_defaults", schedule=[{"cron": "35 * * * *", "cron_offset": "Asia/Shanghai"}])
async def evaluation_defaults(context: Context = TaskiqDepends()) -> int:
    """Cases unrated EVALUATION_DEFAULT_DAYS after their decision get the default 基本满意 (hourly)."""
    services = _services(context)
    async with held_lock(services.redis, services.keys("lock", "evaluation_defaults"), timeout=600) as held:
        return await services.evaluations.record_defaults() if held else 0


@broker.task(task_name="zb.rectification_deadlines", schedule=[{"interval": 300}])
async def rectification_deadlines(context: Context = TaskiqDepends()) -> dict:
    """Reminds departments of bad-review deadlines drawing near and escalates passed ones."""
    services = _services(context)
    async with held_lock(services.redis, services.keys("lock", "rectification_deadlines"), timeout=300) as held:
        return await services.rectifications.sweep() if held else {"reminded": 0, "escalated": 0}
