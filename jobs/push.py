"""Progress push jobs: a drain right after a change commits, and the sweep for the rest."""

from __future__ import annotations

from taskiq import Context, TaskiqDepends

from jobs.broker import broker


@broker.task(task_name="zb.push")
async def push_notification(notification_id: int, context: Context = TaskiqDepends()) -> int:
    """Kicked right after a change commits: drains the due pushes, this notification among them
    (a drain already running in this process takes it up instead)."""
    return await context.state.services.pusher.drain()


@broker.task(task_name="zb.push_sweep", schedule=[{"interval": 10}])
async def push_sweep(context: Context = TaskiqDepends()) -> int:
    """Pushes what is due and was not kicked: retries, quiet-hours waits, lost kicks, dead workers."""
    return await context.state.services.pusher.drain()
