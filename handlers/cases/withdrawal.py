"""The citizen withdraws a case: ours to make before it leaves, the platform's to allow after."""

from __future__ import annotations

from datetime import UTC, datetime

from tortoise.transactions import in_transaction

from bridge.client import PlatformClient, PlatformError
from core.errors import Unavailable
from core.kicks import Kicks
from handlers.cases.access import my_case
from handlers.cases.lifecycle import TRANSITIONS, IllegalTransition, S, transition
from handlers.cases.views import view_mine
from storage.models import ActorType, Outbox, User


class PlatformUnavailable(Unavailable):
    code, message = "platform_unavailable", "审批部门系统暂时无法连接，请稍后再试"


async def withdraw(*, user: User, case_no: str, reason: str = "", platform: PlatformClient, kicks: Kicks) -> dict:
    """The case as the citizen sees it after withdrawing it (only before the platform accepts it).

    Before the case has left, the withdrawal is ours to make (an outbox row still tells the
    platform, in case the delivery was already on its way). Once the platform holds the case
    it decides: it is asked at once, and a case it has accepted meanwhile cannot be withdrawn."""
    case = await my_case(user=user, case_no=case_no)
    if S.WITHDRAWN not in TRANSITIONS[case.status]:
        raise IllegalTransition("办件已受理，不能撤回；如需撤回请联系承办部门", code="withdraw_not_allowed")
    note = reason.strip()[:200] or "申请人撤回"
    if case.status == S.DELIVERED:
        try:
            await platform.withdraw_case(case.case_no, reason=note)
        except PlatformError as exc:
            if exc.status == 409:
                raise IllegalTransition(
                    "审批部门已受理该申请，不能撤回；如需撤回请联系承办部门", code="withdraw_not_allowed"
                ) from None
            if exc.status != 404:
                raise PlatformUnavailable() from None
        await transition(case.id, S.WITHDRAWN, actor_type=ActorType.CITIZEN, actor_id=user.id, note=note)
        return await view_mine(user=user, case_no=case_no)
    async with in_transaction():
        case = await transition(case.id, S.WITHDRAWN, actor_type=ActorType.CITIZEN, actor_id=user.id, note=note)
        await Outbox.create(
            kind="withdraw_case", case_id=case.id, payload={"reason": note}, next_attempt_at=datetime.now(UTC)
        )
    await kicks.relay()
    return await view_mine(user=user, case_no=case_no)
