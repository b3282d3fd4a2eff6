"""Cases: the transition table, the citizen's view of a case, and withdrawal."""

from __future__ import annotations

import uuid
from datetime import date

import pytest

from core.china_time import add_working_days
from handlers.cases.lifecycle import TRANSITIONS
from storage.models import CaseStatus
from tests.helpers import (
    RENEWAL,
    auth,
    id_number,
    login,
    new_draft,
    photo_id,
    renewal_answers,
    submit_renewal,
    to_l3,
)

S = CaseStatus


def test_table_covers_every_status_and_ends_are_final():
    assert set(TRANSITIONS) == set(CaseStatus)
    assert TRANSITIONS[S.CLOSED] == TRANSITIONS[S.WITHDRAWN] == frozenset()
    # Withdrawal only before the platform accepts; nothing ever goes back to submitted.
    assert {s for s, nxt in TRANSITIONS.items() if S.WITHDRAWN in nxt} == {S.SUBMITTED, S.DELIVERED}
    assert all(S.SUBMITTED not in nxt for nxt in TRANSITIONS.values())
    # Every status is reachable from submitted.
    seen, frontier = {S.SUBMITTED}, [S.SUBMITTED]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    assert seen == set(CaseStatus)


def test_working_days_skip_weekends():
    friday = date(2026, 11, 20)
    assert add_working_days(friday, 1) == date(2026, 11, 23)  # Monday
    assert add_working_days(friday, 5) == date(2026, 11, 27)
    assert add_working_days(friday, 0) == friday


@pytest.mark.slow
def test_case_view_timeline_and_withdrawal(server, wechat_sim):
    assert server.cli("load-demo").returncode == 0
    tokens, case_no = submit_renewal(server, wechat_sim, "朱二十")
    with server.client(headers=auth(tokens)) as c:
        listing = c.get("/api/v1/cases").json()
        assert [i["case_no"] for i in listing["items"]] == [case_no] and listing["next_cursor"] is None
        detail = c.get(f"/api/v1/cases/{case_no}").json()
        assert detail["status"] in ("submitted", "delivered_to_platform")
        assert detail["status_label"].startswith(("已提交", "已推送"))
        # The relay may already have handed it to the platform (which, in tests, answers slowly).
        assert [t["status"] for t in detail["timeline"]] in (["submitted"], ["submitted", "delivered_to_platform"])
        assert detail["next_action"] == {"type": "wait", "can_withdraw": True}
        assert date.fromisoformat(detail["promised_date"]).weekday() < 5
        assert detail["fee_fen"] == 2000
        withdrawn = c.post(f"/api/v1/cases/{case_no}/withdraw", json={"reason": "信息填错了，重新申请"})
        assert withdrawn.status_code == 200 and withdrawn.json()["status"] == "withdrawn"
        assert [t["status"] for t in withdrawn.json()["timeline"]][-1] == "withdrawn"
        again = c.post(f"/api/v1/cases/{case_no}/withdraw")
        assert again.status_code == 409 and again.json()["code"] == "withdraw_not_allowed"
    events = server.database.query(
        f"SELECT from_status, to_status, actor_type FROM case_events e JOIN cases c ON c.id = e.case_id "
        f"WHERE c.case_no = '{case_no}' ORDER BY e.id"
    )
    assert events[0] == (None, "submitted", "citizen") and events[-1][1:] == ("withdrawn", "citizen")
    assert [e[1] for e in events] in (["submitted", "withdrawn"], ["submitted", "delivered_to_platform", "withdrawn"])


@pytest.mark.slow
def test_another_users_case_is_404(server, wechat_sim):
    assert server.cli("load-demo").returncode == 0
    _, case_no = submit_renewal(server, wechat_sim, "秦二一")
    other, _ = login(server, wechat_sim)
    with server.client(headers=auth(other)) as c:
        for response in (c.get(f"/api/v1/cases/{case_no}"), c.post(f"/api/v1/cases/{case_no}/withdraw")):
            assert response.status_code == 404 and response.json()["code"] == "case_not_found"
        assert c.get("/api/v1/cases").json()["items"] == []


@pytest.mark.slow
def test_keyset_pages_of_cases(server, wechat_sim):
    assert server.cli("load-demo").returncode == 0
    tokens = to_l3(server, wechat_sim, "尤二二", id_number())
    numbers = []
    with server.client(headers=auth(tokens)) as c:
        for i in range(3):
            draft = new_draft(c, service_code=RENEWAL)
            answers = renewal_answers(photo_id(server, tokens))
            answers["applicant"]["phone"] = f"1372222{i:04d}"
            c.patch(f"/api/v1/drafts/{draft['id']}", json={"version": 1, "data": answers})
            numbers.append(
                c.post(f"/api/v1/drafts/{draft['id']}/submit", headers={"Idempotency-Key": uuid.uuid4().hex}).json()[
                    "case_no"
                ]
            )
        first = c.get("/api/v1/cases", params={"limit": 2}).json()
        second = c.get("/api/v1/cases", params={"limit": 2, "before": first["next_cursor"]}).json()
    assert [i["case_no"] for i in first["items"]] == numbers[::-1][:2]
    assert [i["case_no"] for i in second["items"]] == numbers[::-1][2:] and second["next_cursor"] is None
