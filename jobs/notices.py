"""Notice jobs: start scheduled notices when due, and run (or resume) the ones being sent."""

from __future__ import annotations

from taskiq import Context, TaskiqDepends

from jobs.broker import broker
from storage.redis import held_lock

# A sender works a notice for at most `Sender.slice_s` (60 s) per tick; its lock outlives that.
LOCK_S = 300


@broker.task(task_name="zb.notices", schedule=[{"interval": 5}])
async def send_notices(context: Context = TaskiqDepends()) -> dict:
    """Starts due scheduled notices and sends the rest of each notice being sent, one sender per notice (every 5 s)."""
    services = context.state.services
    started = await services.notices.start_due()
    outcomes = {}
    for notice_id in await services.notices.sending_ids():
        async with held_lock(services.redis, services.keys("lock", "notice", notice_id), timeout=LOCK_S) as held:
            if held:
                outcomes[notice_id] = await services.notice_sender.run(notice_id)
    return {"started": started, "runs": outcomes}
