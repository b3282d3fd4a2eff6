"""What officials of the finance role read about money: reconciliation reports and payment
alerts. Every read is audited; officials without the role (or admin) are refused."""

from __future__ import annotations

from datetime import UTC, date, datetime

from core.errors import Forbidden, NotFound
from handlers import audit
from handlers.payments.reconcile import report_view
from storage.models import ActorType, Official, PaymentAlert, ReconciliationReport

FINANCE_ROLES = {"finance", "admin"}


def require_finance(official: Official) -> None:
    if not FINANCE_ROLES & set(official.roles or []):
        raise Forbidden("仅财务人员可以查看对账与资金告警", code="finance_role_required")


async def reports(*, official: Official, channel: str | None, day: date | None, ip: str, request_id: str) -> dict:
    require_finance(official)
    query = ReconciliationReport.all()
    if channel:
        query = query.filter(channel=channel)
    if day:
        query = query.filter(bill_date=day)
    rows = await query.order_by("-bill_date", "channel").limit(60)
    await audit.record(
        actor_type=ActorType.OFFICIAL,
        actor_id=official.id,
        action="payments.reconciliation.read",
        target_type="reconciliation",
        target_id=f"{channel or '*'}:{day or '*'}",
        request_id=request_id,
        ip=ip,
    )
    return {"items": [report_view(r) for r in rows]}


async def alerts(*, official: Official, open_only: bool, ip: str, request_id: str) -> dict:
    require_finance(official)
    query = PaymentAlert.all().prefetch_related("order")
    if open_only:
        query = query.filter(resolved_at__isnull=True)
    rows = await query.order_by("-id").limit(200)
    await audit.record(
        actor_type=ActorType.OFFICIAL,
        actor_id=official.id,
        action="payments.alerts.read",
        target_type="payment_alert",
        target_id="open" if open_only else "all",
        request_id=request_id,
        ip=ip,
    )
    return {
        "items": [
            {
                "id": a.id,
                "kind": a.kind,
                "out_trade_no": a.order.out_trade_no if a.order else a.detail.get("out_trade_no"),
                "detail": a.detail,
                "created_at": a.created_at.isoformat(),
                "resolved_at": a.resolved_at.isoformat() if a.resolved_at else None,
            }
            for a in rows
        ]
    }


async def resolve_alert(*, official: Official, alert_id: int, ip: str, request_id: str) -> dict:
    require_finance(official)
    alert = await PaymentAlert.get_or_none(id=alert_id)
    if alert is None:
        raise NotFound("告警不存在", code="alert_not_found")
    if alert.resolved_at is None:
        await PaymentAlert.filter(id=alert.id, resolved_at__isnull=True).update(resolved_at=datetime.now(UTC))
    await audit.record(
        actor_type=ActorType.OFFICIAL,
        actor_id=official.id,
        action="payments.alert.resolve",
        target_type="payment_alert",
        target_id=str(alert.id),
        request_id=request_id,
        ip=ip,
    )
    return {"id": alert.id, "resolved": True}
