"""好差评 and the rectification loop, on factory rows: the use cases called directly, the clock
moved by their `now` argument (tests/miniprogram_api/test_evaluation_http.py has the HTTP side)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from bridge.client import PlatformClient
from core.china_time import CHINA
from core.errors import Conflict, Forbidden, NotFound, ValidationFailed
from core.kicks import NO_KICKS
from handlers.evaluation.loop import LoopPolicy, Rectifications
from handlers.evaluation.rating import Evaluations
from storage.models import (
    CaseEvent,
    CaseStatus,
    Evaluation,
    LoopEvent,
    Notification,
    Official,
    Outbox,
    Rectification,
)
from tests import factories

S = CaseStatus
DEPT = "泸州市公安局"  # the demo renewal's department
OTHER = "泸州市人力资源和社会保障局"


def china(*args) -> datetime:
    return datetime(*args, tzinfo=CHINA)


@pytest.fixture
def services(db, cipher):
    policy = LoopPolicy(verify_days=1, rectify_days=15, remind_before=timedelta(hours=8))
    loop = Rectifications(cipher=cipher, kicks=NO_KICKS, policy=policy)
    # Never called here: the relay has its own HTTP test.
    platform = PlatformClient(base_url="http://127.0.0.1:9", app_key="k", secret="s", http=httpx.AsyncClient())
    return Evaluations(cipher=cipher, kicks=NO_KICKS, platform=platform, loop=loop, policy=policy), loop


async def official(department: str = DEPT, *roles: str) -> Official:
    return await Official.create(
        username=f"o{datetime.now().timestamp()}{roles}",
        display_name="王科员",
        department=department,
        roles=list(roles) or ["officer"],
        password_hash="x",
    )


async def decided_case(status: S = S.APPROVED):
    user = await factories.create_user(level="L3", name="林小满")
    return user, await factories.create_case(user=user, status=status)


async def bad_review(services, now: datetime, level: int = 1):
    evaluations, _ = services
    user, case = await decided_case()
    view = await evaluations.rate(
        user=user, case_no=case.case_no, level=level, tags=["办理超时"], comment="等了很久", channel="mp", now=now
    )
    assert view["rectification"]["status"] == "verifying"
    return user, case, await Rectification.get(case_id=case.id).prefetch_related("case")


async def actions(r: Rectification) -> list[str]:
    return [e.action for e in await LoopEvent.filter(subject_type="rectification", subject_id=r.id).order_by("id")]


# -- rating ------------------------------------------------------------------------------------


async def test_rating_only_after_a_decision_and_once(services):
    evaluations, _ = services
    user, case = await decided_case(S.IN_REVIEW)
    with pytest.raises(Conflict) as early:
        await evaluations.rate(user=user, case_no=case.case_no, level=5, tags=[], comment=None, channel="miniprogram")
    assert early.value.code == "evaluation_not_open"
    assert not await Evaluation.exists(case_id=case.id)

    user, case = await decided_case(S.REJECTED)
    with pytest.raises(ValidationFailed) as wrong_tag:
        await evaluations.rate(user=user, case_no=case.case_no, level=5, tags=["态度不佳"], comment=None, channel="x")
    assert "tags" in wrong_tag.value.fields
    view = await evaluations.rate(
        user=user, case_no=case.case_no, level=4, tags=["办事便捷"], comment="很好", channel="miniprogram"
    )
    assert view["level_label"] == "满意" and view["rectification"] is None and view["comment"] == "很好"
    with pytest.raises(Conflict) as twice:
        await evaluations.rate(user=user, case_no=case.case_no, level=1, tags=[], comment=None, channel="miniprogram")
    assert twice.value.code == "already_evaluated"
    stored = await Evaluation.get(case_id=case.id)
    assert (stored.level, stored.active, stored.channel, stored.identity_level) == (4, True, "miniprogram", "L3")
    assert b"\xe5\xbe\x88\xe5\xa5\xbd" not in stored.comment_enc  # "很好" is sealed
    assert await Outbox.filter(case_id=case.id, kind="evaluation").count() == 1
    assert not await Rectification.exists(case_id=case.id)  # a good review opens no loop

    stranger = await factories.create_user(level="L3")
    with pytest.raises(NotFound):
        await evaluations.rate(user=stranger, case_no=case.case_no, level=5, tags=[], comment=None, channel="x")


async def test_default_after_seven_days_is_basic_and_not_active(services):
    evaluations, _ = services
    _, quiet = await decided_case(S.RESULT_ISSUED)
    rater, rated = await decided_case(S.APPROVED)
    await evaluations.rate(user=rater, case_no=rated.case_no, level=5, tags=[], comment=None, channel="miniprogram")
    _, pending = await decided_case(S.IN_REVIEW)
    decided_at = (await CaseEvent.filter(case_id=quiet.id, to_status="approved").first()).at

    assert await evaluations.record_defaults(now=decided_at + timedelta(days=6, hours=23)) == 0
    assert await evaluations.record_defaults(now=decided_at + timedelta(days=7, hours=1)) == 1
    assert await evaluations.record_defaults(now=decided_at + timedelta(days=30)) == 0  # once

    default = await Evaluation.get(case_id=quiet.id)
    assert (default.level, default.active, default.channel, default.tags) == (3, False, "default", [])
    assert await Outbox.filter(case_id=quiet.id, kind="evaluation").count() == 1
    assert (await Evaluation.get(case_id=rated.id)).level == 5  # an active rating is never replaced
    assert not await Evaluation.exists(case_id=pending.id)  # no decision, no default
    assert await Evaluation.filter(active=True).count() == 1


# -- the loop: deadlines ---------------------------------------------------------------------------


async def test_deadlines_count_the_spring_festival_and_its_working_saturdays(services):
    # Friday 13 February 2026: Saturday 14 is a make-up working day (调休), 15-23 the Spring
    # Festival, Saturday 28 a make-up working day, then plain weekends.
    _, _, r = await bad_review(services, china(2026, 2, 13, 10, 0))
    assert r.verify_due_at == china(2026, 2, 15, 0, 0)  # the end of Saturday 14 (调休)
    # 14, 24, 25, 26, 27, 28 (调休), 2, 3, 4, 5, 6, 9, 10, 11, 12 March: the 15th ends on the 12th
    assert r.rectify_due_at == china(2026, 3, 13, 0, 0)
    _, _, weekend = await bad_review(services, china(2026, 3, 6, 16, 30))  # a Friday
    assert weekend.verify_due_at == china(2026, 3, 10, 0, 0)  # Monday 9's end, the weekend skipped
    # on the eve of the festival: the call-back is due after it
    _, _, eve = await bad_review(services, china(2026, 2, 14, 9, 0))
    assert eve.verify_due_at == china(2026, 2, 25, 0, 0)  # Tuesday 24, the first working day after
    events = await LoopEvent.filter(subject_id=r.id, action="created")
    assert len(events) == 1 and events[0].actor_type.value == "system"


async def test_reminder_then_escalation_once_each(services):
    _, loop = services
    start = china(2026, 3, 2, 10, 0)  # Monday: the call-back is due at the end of Tuesday
    _, _, r = await bad_review(services, start)
    assert await loop.sweep(now=start + timedelta(hours=1)) == {"reminded": 0, "escalated": 0}
    near = r.verify_due_at - timedelta(hours=3)
    assert await loop.sweep(now=near) == {"reminded": 1, "escalated": 0}
    assert await loop.sweep(now=near + timedelta(hours=1)) == {"reminded": 0, "escalated": 0}
    late = r.verify_due_at + timedelta(minutes=5)
    assert await loop.sweep(now=late) == {"reminded": 0, "escalated": 1}
    assert await loop.sweep(now=late + timedelta(hours=2)) == {"reminded": 0, "escalated": 0}
    fresh = await Rectification.get(id=r.id)
    assert fresh.reminded_at == near and fresh.escalated_at == late
    assert await actions(r) == ["created", "reminded", "escalated"]

    officer = await official()
    listed = await loop.list_for(official=officer, overdue=True, now=late)
    assert [i["id"] for i in listed["items"]] == [r.id]
    item = listed["items"][0]
    assert item["seconds_left"] == -300 and item["escalated_at"] == late.astimezone(UTC).isoformat()
    assert (await loop.list_for(official=officer, escalated=False, now=late))["items"] == []

    # Calling back late moves on to the rectification deadline: reminded and escalated again.
    await loop.verify(official=officer, rect_id=r.id, note="已电话回访", now=late + timedelta(hours=1))
    due = r.rectify_due_at
    assert await loop.sweep(now=due - timedelta(hours=1)) == {"reminded": 1, "escalated": 0}
    assert await loop.sweep(now=due + timedelta(seconds=1)) == {"reminded": 0, "escalated": 1}


# -- the loop: steps ------------------------------------------------------------------------------


async def test_dissatisfaction_escalates_into_a_second_round(services):
    evaluations, loop = services
    start = china(2026, 3, 2, 10, 0)
    user, case, r = await bad_review(services, start)
    officer = await official()
    with pytest.raises(Conflict):  # nothing to answer yet
        await evaluations.answer(user=user, case_no=case.case_no, satisfied=False)
    await loop.verify(official=officer, rect_id=r.id, note="已电话联系群众核实情况", now=start + timedelta(hours=2))
    done = await loop.rectify(
        official=officer, rect_id=r.id, text="已增加窗口并优化预约流程", now=start + timedelta(days=3)
    )
    assert done["status"] == "awaiting_citizen" and done["on_time"] is True
    kinds = [n.kind for n in await Notification.filter(case_id=case.id).order_by("id")]
    assert kinds[-2:] == ["evaluation_verified", "rectification_replied"]
    body = (await Notification.filter(case_id=case.id, kind="rectification_replied").first()).body
    assert "已增加窗口并优化预约流程" in body
    mine = await evaluations.mine(user=user, case_no=case.case_no)
    assert mine["evaluation"]["rectification"]["awaiting_answer"] is True
    assert mine["evaluation"]["rectification"]["rectify_text"] == "已增加窗口并优化预约流程"

    again = start + timedelta(days=4)  # Friday 6 March
    answered = await evaluations.answer(user=user, case_no=case.case_no, satisfied=False, now=again)
    assert answered == {"case_no": case.case_no, "status": "verifying", "round": 2}
    fresh = await Rectification.get(id=r.id)
    assert (fresh.round, fresh.status, fresh.citizen_answer) == (2, "verifying", "not_satisfied")
    assert fresh.escalated_at == again
    assert fresh.verify_due_at == china(2026, 3, 10, 0, 0)  # from Friday: Monday 9's end
    assert await actions(r) == ["created", "verified", "rectified", "citizen_not_satisfied", "escalated"]
    escalated = await loop.list_for(official=officer, escalated=True, now=again)
    assert [i["id"] for i in escalated["items"]] == [r.id]

    await loop.rectify(official=officer, rect_id=r.id, text="已约谈窗口人员并整改", now=again + timedelta(days=1))
    closed = await evaluations.answer(user=user, case_no=case.case_no, satisfied=True, now=again + timedelta(days=2))
    assert closed["status"] == "closed"
    view = await loop.view(official=officer, rect_id=r.id, ip="127.0.0.1", request_id="t")
    assert view["status"] == "closed" and view["citizen_answer"] == "satisfied"
    assert view["evaluator"]["name_masked"] == "林**" and view["comment"] == "等了很久"
    assert [e["data"].get("text") for e in view["events"] if e["action"] == "rectified"] == [
        "已增加窗口并优化预约流程",
        "已约谈窗口人员并整改",
    ]
    assert all(e["actor_id"] == str(officer.id) for e in view["events"] if e["action"] in ("verified", "rectified"))


async def test_exclusion_approved_and_refused(services):
    _, loop = services
    now = china(2026, 3, 2, 10, 0)
    officer, supervisor = await official(DEPT, "officer"), await official(DEPT, "supervisor")
    _, case, r = await bad_review(services, now)
    with pytest.raises(Conflict) as nothing:
        await loop.decide_exclusion(official=supervisor, rect_id=r.id, approve=True, reason="无申请")
    assert nothing.value.code == "exclusion_not_requested"
    await loop.request_exclusion(official=officer, rect_id=r.id, reason="评价内容与本办件无关，系误评")
    with pytest.raises(Forbidden) as not_theirs:
        await loop.decide_exclusion(official=officer, rect_id=r.id, approve=True, reason="同意")
    assert not_theirs.value.code == "role_required"
    approved = await loop.decide_exclusion(official=supervisor, rect_id=r.id, approve=True, reason="经核实为误评")
    assert (approved["status"], approved["exclusion"]) == ("excluded", "approved")
    fresh = await Rectification.get(id=r.id)
    assert fresh.exclusion_reason == "评价内容与本办件无关，系误评" and fresh.exclusion_decision == "经核实为误评"
    assert await Evaluation.exists(case_id=case.id)  # kept, marked
    told = await Notification.get(case_id=case.id, kind="evaluation_reviewed")
    assert "不计入" in told.body and "经核实为误评" in told.body
    assert await loop.sweep(now=fresh.verify_due_at + timedelta(days=1)) == {"reminded": 0, "escalated": 0}

    _, other_case, other = await bad_review(services, now)
    await loop.request_exclusion(official=officer, rect_id=other.id, reason="恶意评价")
    refused = await loop.decide_exclusion(official=supervisor, rect_id=other.id, approve=False, reason="理由不充分")
    assert (refused["status"], refused["exclusion"]) == ("verifying", "refused")
    told = await Notification.get(case_id=other_case.id, kind="evaluation_reviewed")
    assert "继续整改" in told.body and "理由不充分" in told.body
    assert await actions(other) == ["created", "exclusion_requested", "exclusion_refused"]


async def test_another_departments_review_is_not_found_and_reassignment_moves_it(services):
    _, loop = services
    _, _, r = await bad_review(services, china(2026, 3, 2, 10, 0))
    outsider, outside_supervisor = await official(OTHER, "officer"), await official(OTHER, "supervisor")
    for call in (
        loop.view(official=outsider, rect_id=r.id, ip="127.0.0.1", request_id="t"),
        loop.verify(official=outsider, rect_id=r.id, note="试图核实"),
        loop.reassign(official=outside_supervisor, rect_id=r.id, department=OTHER, reason="抢办"),
    ):
        with pytest.raises(NotFound):
            await call
    assert (await loop.list_for(official=outsider))["items"] == []
    officer, supervisor = await official(DEPT, "officer"), await official(DEPT, "supervisor")
    with pytest.raises(Forbidden):
        await loop.reassign(official=officer, rect_id=r.id, department=OTHER, reason="非本部门")
    await loop.reassign(official=supervisor, rect_id=r.id, department=OTHER, reason="属社保业务")
    assert [i["id"] for i in (await loop.list_for(official=outsider))["items"]] == [r.id]
    with pytest.raises(NotFound):
        await loop.view(official=officer, rect_id=r.id, ip="127.0.0.1", request_id="t")
    admin = await official("", "admin")
    assert [i["id"] for i in (await loop.list_for(official=admin))["items"]] == [r.id]
