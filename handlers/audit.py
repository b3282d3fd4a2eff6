"""The audit trail: one function that writes who did or read what, from where, and why."""

from __future__ import annotations

from storage.models import ActorType, AuditLog


async def record(
    *,
    actor_type: ActorType,
    actor_id: object | None,
    action: str,
    target_type: str | None = None,
    target_id: object | None = None,
    request_id: str | None = None,
    ip: str | None = None,
    detail: dict | None = None,
) -> AuditLog:
    """Writes one audit row (inside the caller's transaction, if any) and returns it."""
    return await AuditLog.create(
        actor_type=actor_type,
        actor_id=None if actor_id is None else str(actor_id),
        action=action,
        target_type=target_type,
        target_id=None if target_id is None else str(target_id)[:64],
        request_id=request_id,
        ip=ip,
        detail=detail or {},
    )
