"""Alerts for officials about money (a mismatch, a payment after close, a refund that failed)."""

from __future__ import annotations

import logging

from storage.models import PaymentAlert, PaymentOrder

log = logging.getLogger("zhangban.payments")


async def raise_alert(kind: str, *, order: PaymentOrder | None, dedup: str, detail: dict) -> None:
    """An alert for officials, once per (`kind`, `dedup`) however often the cause repeats.

    `get_or_create` takes a savepoint, so a repeat inside the caller's transaction leaves that
    transaction usable (a bare insert that hits the unique key would abort it on PostgreSQL)."""
    _, created = await PaymentAlert.get_or_create(
        dedup_key=f"{kind}:{dedup}"[:128], defaults={"order": order, "kind": kind, "detail": detail}
    )
    if created:
        log.warning("payment alert %s", kind, extra={"dedup": dedup, **{k: str(v) for k, v in detail.items()}})
