"""Ticket jobs: reminders before a consultation's or complaint's deadline, escalation after it."""

from __future__ import annotations

from taskiq import Context, TaskiqDepends

from jobs.broker import broker
from storage.redis import held_lock


@broker.task(task_name="zb.ticket_deadlines", schedule=[{"interval": 300}])
async def ticket_deadlines(context: Context = TaskiqDepends()) -> dict:
    """Reminds departments of tickets due soon and escalates overdue ones to the supervisors (every 5 min)."""
    services = context.state.services
    async with held_lock(services.redis, services.keys("lock", "ticket_deadlines"), timeout=300) as held:
        if not held:
            return {"reminded": 0, "escalated": 0, "linked": 0}
        return await services.tickets.sweep_deadlines()
