"""Kicks: how a use case asks for background work right after its change commits.

Use cases never import the job broker; they are handed a `Kicks`. A kick is an optimisation,
never the only way work gets done: a lost kick (broker down, process killed) is picked up by
the sweep that finds due rows (pushes every 10 s, the outbox every 5 s).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Kicks(Protocol):
    async def push(self, notification_ids: Sequence[int]) -> None:
        """Queues the push of each notification."""

    async def relay(self) -> None:
        """Asks for the outbox to be relayed to the platform now."""

    async def refunds(self) -> None:
        """Asks for due refunds to be sent to the payment channels now."""


class NoKicks:
    """Kicks that do nothing: one-shot commands settle what they made themselves, and tests
    of a use case's branches need no broker."""

    async def push(self, notification_ids: Sequence[int]) -> None:
        return None

    async def relay(self) -> None:
        return None

    async def refunds(self) -> None:
        return None


NO_KICKS = NoKicks()
