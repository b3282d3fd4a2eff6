"""Telling the core platform about paid fees, and getting the e-receipt (财政电子票据) back.

Both travel through the transactional outbox (`handlers/cases/outbox.py` relays them with its
lease and backoff): `fee_paid` is written in the transaction that marks the order paid; once the
platform has it, a `request_receipt` row follows, and the receipt lands on the order, the case's
timeline and the citizen's inbox, once, however often the relay retries.
"""

from __future__ import annotations

from datetime import UTC, datetime

from tortoise.transactions import in_transaction

from bridge.client import PlatformClient
from core.kicks import Kicks
from handlers.push import notify
from storage.models import ActorType, Case, CaseEvent, Notification, Outbox, PaymentOrder


class FeeRelay:
    """The outbox kinds of payments: `fee_paid` and `request_receipt`."""

    kinds = ("fee_paid", "request_receipt")

    def __init__(self, *, platform: PlatformClient, kicks: Kicks):
        self.platform, self.kicks = platform, kicks

    async def deliver(self, row: Outbox) -> list[int]:
        """Sends one row; the notifications it made (to push). Raises PlatformError to retry."""
        if row.kind == "fee_paid":
            return await self._fee_paid(row)
        return await self._receipt(row)

    async def _fee_paid(self, row: Outbox) -> list[int]:
        payload = {k: v for k, v in row.payload.items() if k != "payment_id" and v is not None}
        await self.platform.fee_paid(row.case.case_no, payload)
        async with in_transaction():
            # One receipt request per payment, even if this row is relayed twice (lease expiry).
            exists = await Outbox.filter(kind="request_receipt", case_id=row.case_id).all()
            if not any(o.payload.get("out_trade_no") == row.payload["out_trade_no"] for o in exists):
                await Outbox.create(
                    kind="request_receipt",
                    case_id=row.case_id,
                    payload={
                        "payment_id": row.payload["payment_id"],
                        "out_trade_no": row.payload["out_trade_no"],
                        "amount_fen": row.payload["amount_fen"],
                    },
                    next_attempt_at=datetime.now(UTC),
                )
        await self.kicks.relay()
        return []

    async def _receipt(self, row: Outbox) -> list[int]:
        answer = await self.platform.request_receipt(
            row.case.case_no, {"out_trade_no": row.payload["out_trade_no"], "amount_fen": row.payload["amount_fen"]}
        )
        receipt = {
            "receipt_no": str(answer["receipt_no"]),
            "verify_url": str(answer.get("verify_url") or ""),
            "issued_at": str(answer.get("issued_at") or datetime.now(UTC).isoformat()),
        }
        notes: list[Notification] = []
        async with in_transaction():
            order = await PaymentOrder.select_for_update().get(out_trade_no=row.payload["out_trade_no"])
            if order.receipt:
                return []
            await PaymentOrder.filter(id=order.id).update(receipt=receipt)
            case = await Case.get(id=order.case_id)
            event = await CaseEvent.create(
                case=case,
                actor_type=ActorType.PLATFORM,
                from_status=case.status.value,
                to_status=case.status.value,
                note=f"缴费电子票据已开具（票据号 {receipt['receipt_no']}）",
                data={"event": "receipt_issued", "payment_id": order.payment_id, **receipt},
            )
            note = await notify(case, kind="receipt_issued", dedup_key=f"event:{event.id}", data=receipt)
            if note is not None:
                notes.append(note)
        return [n.id for n in notes]
