"""Kicks through the job broker: what use cases are handed to ask for work after a commit."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from jobs.cases import relay_outbox
from jobs.payments import run_refunds
from jobs.push import push_notification

log = logging.getLogger("zhangban.jobs")


class BrokerKicks:
    """Queues the push and relay jobs; a kick that fails is logged, and the sweeps do the work."""

    async def push(self, notification_ids: Sequence[int]) -> None:
        try:
            for notification_id in notification_ids:
                await push_notification.kiq(notification_id)
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
