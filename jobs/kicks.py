"""Kicks through the job broker: what use cases are handed to ask for work after a commit."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from jobs.cases import relay_outbox
from jobs.payments import run_refunds
from jobs.push import push_notification

log = logging.getLogger("zhangban.jobs")


class BrokerKicks:
    """Queues the push and relay jobs; a kick that fails is logged, and the sweeps do the work.

    A push kick asks for a drain of every due push, not for one notification, so the kicks of
    a process are sent off the request, one at a time: one queued while another is on its way
    is sent once that one has left, and covers every commit made before it. A burst of
    callbacks costs a few jobs, not one each, and no request waits for the broker."""

    def __init__(self) -> None:
        self._owed: int | None = None  # the newest notification a push kick is owed for
        self._sending: asyncio.Task | None = None

    async def push(self, notification_ids: Sequence[int]) -> None:
        if not notification_ids:
            return
        self._owed = max(notification_ids)
        if self._sending is None or self._sending.done():
            self._sending = asyncio.get_running_loop().create_task(self._send_push_kicks())

    async def _send_push_kicks(self) -> None:
        try:
            while self._owed is not None:
                newest, self._owed = self._owed, None
                await push_notification.kiq(newest)
        except Exception:
            log.warning("push job could not be queued; the sweep will send it", exc_info=True)

    async def relay(self) -> None:
        try:
            await relay_outbox.kiq()
        except Exception:
            log.warning("could not kick the outbox relay; its schedule will")

    async def refunds(self) -> None:
        try:
            await run_refunds.kiq()
        except Exception:
            log.warning("could not kick the refunds; their schedule will")
