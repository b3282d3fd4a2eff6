"""Progress push jobs: one notification right after its change commits, and the sweep for the rest."""

from __future__ import annotations

from taskiq import Context, TaskiqDepends

from jobs.broker import broker


@broker.task(task_name="zb.push")
async def push_notification(notification_id: int, context: Context = TaskiqDepends()) -> str:
    """Carries one notification to the citizen (kicked right after the change commits)."""
    return await context.state.services.pusher.run_one(notification_id)


@broker.task(task_name="zb.push_sweep", schedule=[{"interval": 10}])
async def push_sweep(context: Context = TaskiqDepends()) -> int:
    """Pushes what is due and was not kicked: retries, quiet-hours waits, lost kicks, dead workers."""
    return await context.state.services.pusher.run_due()
