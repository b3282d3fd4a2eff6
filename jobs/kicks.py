"""Kicks through the job broker: what use cases are handed to ask for work after a commit."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from jobs.cases import relay_outbox
from jobs.payments import run_refunds
from jobs.push import push_notification

log = logging.getLogger("zhangban.jobs")


class _OffTheRequest:
    """One kind of kick, sent off the request and one at a time: a kick asked for while another
    is on its way is sent once that one has left, and covers every commit made before it (the
    job it starts finds all due rows, not just the asker's). The last argument asked for wins."""

    def __init__(self, send: Callable[..., Awaitable[Any]], failure: str):
        self._send, self._failure = send, failure
        self._owed: tuple | None = None
        self._sending: asyncio.Task | None = None

    def ask(self, *args: Any) -> None:
        self._owed = args
        if self._sending is None or self._sending.done():
            self._sending = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._owed is not None:
                args, self._owed = self._owed, None
                await self._send(*args)
        except Exception:
            self._owed = None
            log.warning(self._failure, exc_info=True)


class BrokerKicks:
    """Queues the push, relay and refund jobs; a kick that fails is logged, and the sweeps do the
    work. Push and relay kicks ask for a drain of everything due, not for one row, so they leave
    off the request (`_OffTheRequest`): a burst of callbacks or payment notifies costs a few jobs,
    not one each, and no request waits for the broker."""

    def __init__(self) -> None:
        self._push = _OffTheRequest(push_notification.kiq, "push job could not be queued; the sweep will send it")
        self._relay = _OffTheRequest(relay_outbox.kiq, "could not kick the outbox relay; its schedule will")

    async def push(self, notification_ids: Sequence[int]) -> None:
        if notification_ids:
            self._push.ask(max(notification_ids))

    async def relay(self) -> None:
        self._relay.ask()

    async def refunds(self) -> None:
        try:
            await run_refunds.kiq()
        except Exception:
            log.warning("could not kick the refunds; their schedule will")
