"""A job worker process: every task module, and the service container built at start.

`python server.py worker` points taskiq at `jobs.worker:broker`. On the embedded default the
in-memory broker runs inside the server, which hands it the app's own container first.
"""

from __future__ import annotations

from taskiq import TaskiqEvents, TaskiqState
from taskiq.cli.scheduler.run import SchedulerLoop

from container import Services
from jobs import cases, drafts, ops, push  # noqa: F401  (registers every task with the broker)
from jobs.broker import broker, scheduler, settings
from jobs.kicks import BrokerKicks
from storage.db import close_db, init_db

TASK_MODULES = ["jobs.cases", "jobs.drafts", "jobs.ops", "jobs.push"]
__all__ = ["TASK_MODULES", "broker", "scheduler", "run_embedded_scheduler"]


@broker.on_event(TaskiqEvents.WORKER_STARTUP)
async def _worker_startup(state: TaskiqState) -> None:
    if getattr(state, "services", None) is not None:  # the server's own, in-memory broker
        state.owns_services = False
        return
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
