"""好差评 over real HTTP: the mini-program's rating, the official account's `评价 ZB… 5`, the relay
to the platform simulator (once, even relayed twice), and the console's department-scoped loop.

Branches (deadlines, the default after 7 days, reminders, escalation, exclusion) are tested on
factory rows in tests/handlers/evaluation/test_evaluation_loop.py."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from tests.conftest import SIM_MP_APPID
from tests.helpers import (
    RENEWAL,
    auth,
    case_of,
    id_number,
    login,
    new_draft,
    official_client,
    photo_id,
    renewal_answers,
    submit_renewal,
    to_l3,
    wait_for,
)
from tests.oa_pusher import OA_APPID, event_message, text_message

DEPT = "泸州市公安局"  # the demo renewal's department
OTHER = "泸州市医疗保障局"


@pytest.fixture(scope="module", autouse=True)
def catalogue(server):
    assert server.cli("load-demo").returncode == 0


def decide(server, platform_sim, tokens, case_no: str, final: str = "approved") -> None:
    """The platform accepts, reviews and decides the case, calling back at once."""
    wait_for(lambda: case_of(server, tokens, case_no)["status"] == "delivered_to_platform")
    for event in ("accepted", "in_review", final):
        data = {"reason": "申请材料不符合法定条件"} if event == "rejected" else {}
        assert platform_sim.control("event", {"case_no": case_no, "event": event, "data": data})["delivered"]
    assert case_of(server, tokens, case_no)["status"] == final


def sim_case(platform_sim, case_no: str) -> dict:
    return platform_sim.control(f"cases?case_no={case_no}")["cases"][0]


def csrf(client: httpx.Client) -> dict:
    return {"X-CSRF-Token": client.get("/console/api/session").json()["csrf_token"]}


def test_rating_after_the_decision_once_relayed_to_the_platform_once(server, wechat_sim, platform_sim):
    tokens, case_no = submit_renewal(server, wechat_sim, "秦好评")
    url = f"{server.url}/api/v1/cases/{case_no}/evaluation"
    early = httpx.post(url, headers=auth(tokens), json={"level": 5, "tags": []})
    assert early.status_code == 409 and early.json()["code"] == "evaluation_not_open"
    assert case_of(server, tokens, case_no)["evaluation_invited"] is False

    decide(server, platform_sim, tokens, case_no)
    detail = case_of(server, tokens, case_no)
    assert detail["evaluation_invited"] is True and detail["evaluation"] is None
    inbox = httpx.get(f"{server.url}/api/v1/inbox", headers=auth(tokens)).json()["items"]
    assert any(i["kind"] == "approved" and "评价" in i["body"] for i in inbox)  # the decision invites it

    offered = httpx.get(f"{server.url}/api/v1/evaluation/tags", headers=auth(tokens)).json()["levels"]
    assert [(lv["level"], lv["label"], lv["bad"]) for lv in offered][0] == (5, "非常满意", False)
    wrong = httpx.post(url, headers=auth(tokens), json={"level": 6, "tags": [], "comment": "x" * 501})
    assert wrong.status_code == 422 and {"level", "comment"} <= set(wrong.json()["details"]["fields"])

    rated = httpx.post(url, headers=auth(tokens), json={"level": 5, "tags": ["办事便捷"], "comment": "一次办好"})
    assert rated.status_code == 201, rated.text
    assert rated.json()["evaluation"]["level_label"] == "非常满意"
    again = httpx.post(url, headers=auth(tokens), json={"level": 1, "tags": []})
    assert again.status_code == 409 and again.json()["code"] == "already_evaluated"
    detail = case_of(server, tokens, case_no)
    assert detail["evaluation_invited"] is False
    assert detail["evaluation"]["level"] == 5 and detail["evaluation"]["channel"] == "miniprogram"
    assert detail["evaluation"]["active"] is True and detail["evaluation"]["rectification_status"] is None
    mine = httpx.get(url, headers=auth(tokens)).json()
    assert mine["evaluation"]["comment"] == "一次办好"
    stranger, _ = login(server, wechat_sim)
    assert httpx.get(url, headers=auth(stranger)).status_code == 404

    platform = wait_for(lambda: (c := sim_case(platform_sim, case_no))["evaluation"] and c)
    assert platform["evaluation"]["level"] == 5 and platform["evaluation"]["comment"] == "一次办好"
    assert platform["evaluation"]["active"] is True and platform["evaluation"]["channel"] == "miniprogram"
    first = platform["evaluation"]["evaluation_no"]
    assert platform["evaluation_calls"] == 1

    # The relay sends the row again (as after a lease expiry): the platform keeps one evaluation.
    server.database.query(
        "UPDATE outbox SET status = 'pending', next_attempt_at = '2020-01-01T00:00:00+00:00' "
        f"WHERE kind = 'evaluation' AND case_id = (SELECT id FROM cases WHERE case_no = '{case_no}')"
    )
    wait_for(lambda: sim_case(platform_sim, case_no)["evaluation_calls"] == 2)
    platform = sim_case(platform_sim, case_no)
    assert platform["evaluation"]["evaluation_no"] == first and platform["evaluation"]["level"] == 5
    rows = server.database.query(
        "SELECT status FROM outbox WHERE kind = 'evaluation' "
        f"AND case_id = (SELECT id FROM cases WHERE case_no = '{case_no}')"
    )
    assert len(rows) == 1


def test_a_bad_review_goes_round_the_loop_in_the_console(server, wechat_sim, platform_sim):
    tokens, case_no = submit_renewal(server, wechat_sim, "韩差评")
    decide(server, platform_sim, tokens, case_no, final="rejected")
    url = f"{server.url}/api/v1/cases/{case_no}/evaluation"
    rated = httpx.post(url, headers=auth(tokens), json={"level": 1, "tags": ["办理超时"], "comment": "等了三周"})
    assert rated.status_code == 201, rated.text
    assert rated.json()["evaluation"]["rectification"]["status"] == "verifying"

    officer = official_client(server, DEPT, "officer")
    supervisor = official_client(server, DEPT, "supervisor")
    outsider = official_client(server, OTHER, "supervisor")
    items = officer.get("/console/api/evaluations/reviews", params={"status": "verifying"}).json()["items"]
    review = next(i for i in items if i["case_no"] == case_no)
    assert review["seconds_left"] > 0 and review["next_deadline"] == "verify" and review["overdue"] is False
    rid = review["id"]
    path = f"/console/api/evaluations/reviews/{rid}"

    assert all(i["case_no"] != case_no for i in outsider.get("/console/api/evaluations/reviews").json()["items"])
    assert outsider.get(path).status_code == 404
    hidden = outsider.post(path + "/verify", json={"note": "越权核实"}, headers=csrf(outsider))
    assert hidden.status_code == 404 and hidden.json()["code"] == "not_found"
    assert officer.post(path + "/verify", json={"note": "缺少令牌"}).status_code == 403  # CSRF

    one = officer.get(path)
    assert one.status_code == 200 and one.json()["comment"] == "等了三周"
    assert one.json()["evaluator"]["name_masked"] == "韩**" and "韩差评" not in one.text
    audited = server.database.query(
        f"SELECT count(*) FROM audit_log WHERE action = 'evaluation.review.read' AND target_id = '{rid}'"
    )
    assert audited[0][0] == 1

    assert officer.post(path + "/verify", json={"note": "已电话回访"}, headers=csrf(officer)).status_code == 200
    fixed = officer.post(path + "/rectify", json={"text": "已优化审核流程"}, headers=csrf(officer))
    assert fixed.status_code == 200 and fixed.json()["status"] == "awaiting_citizen"
    inbox = httpx.get(f"{server.url}/api/v1/inbox", headers=auth(tokens)).json()["items"]
    assert any(i["kind"] == "rectification_replied" and "已优化审核流程" in i["body"] for i in inbox)

    answer = httpx.post(url + "/answer", headers=auth(tokens), json={"satisfied": False})
    assert answer.status_code == 200 and answer.json()["round"] == 2
    escalated = supervisor.get("/console/api/evaluations/reviews", params={"escalated": "true"}).json()["items"]
    assert any(i["id"] == rid and i["round"] == 2 for i in escalated)
    denied = officer.post(path + "/exclusion/decision", json={"approve": True, "reason": "同意"}, headers=csrf(officer))
    assert denied.status_code == 403 and denied.json()["code"] == "role_required"
    asked = officer.post(path + "/exclusion", json={"reason": "系误评"}, headers=csrf(officer))
    assert asked.status_code == 200 and asked.json()["exclusion"] == "requested"
    decided = supervisor.post(
        path + "/exclusion/decision", json={"approve": False, "reason": "群众诉求属实"}, headers=csrf(supervisor)
    )
    assert decided.status_code == 200 and decided.json()["exclusion"] == "refused"
    events = [e["action"] for e in supervisor.get(path).json()["events"]]
    assert events == [
        "created",
        "verified",
        "rectified",
        "citizen_not_satisfied",
        "escalated",
        "exclusion_requested",
        "exclusion_refused",
    ]
    for c in (officer, supervisor, outsider):
        c.close()


def submit_as(server, tokens) -> str:
    with server.client(headers=auth(tokens)) as c:
        draft = new_draft(c, service_code=RENEWAL)
        answers = renewal_answers(photo_id(server, tokens))
        answers["applicant"]["phone"] = "13700003333"
        c.patch(f"/api/v1/drafts/{draft['id']}", json={"version": 1, "data": answers})
        response = c.post(f"/api/v1/drafts/{draft['id']}/submit", headers={"Idempotency-Key": uuid.uuid4().hex})
    assert response.status_code == 201, response.text
    return response.json()["case_no"]


def test_the_official_account_takes_a_rating_by_reply_and_menu(server, wechat_sim, platform_sim, oa):
    unionid = "oU" + uuid.uuid4().hex[:26]
    mp_openid = wechat_sim.control("users", {"appid": SIM_MP_APPID, "unionid": unionid})["openid"]
    tokens = to_l3(server, wechat_sim, "邹公众", id_number(), openid=mp_openid)
    case_no = submit_as(server, tokens)
    oa_openid = wechat_sim.control("users", {"appid": OA_APPID, "unionid": unionid})["openid"]

    def ask(text: str) -> str:
        return oa.reply_text(oa.post(text_message(oa_openid, text)))

    assert "还没有审批结果" in ask(f"评价 {case_no} 5")
    decide(server, platform_sim, tokens, case_no)
    hint = oa.reply_text(oa.post(event_message(oa_openid, "CLICK", "EVALUATE")))
    assert case_no in hint and f"评价 {case_no}" in hint

    reply = ask(f"评价 {case_no} 4 窗口服务很耐心")
    assert "感谢您的评价" in reply and "满意" in reply
    evaluation = case_of(server, tokens, case_no)["evaluation"]
    assert (evaluation["level"], evaluation["channel"], evaluation["active"]) == (4, "official_account", True)
    assert (
        httpx.get(f"{server.url}/api/v1/cases/{case_no}/evaluation", headers=auth(tokens)).json()["evaluation"][
            "comment"
        ]
        == "窗口服务很耐心"
    )
    assert "已评价过" in ask(f"评价 {case_no} 1")
    later = event_message(oa_openid, "CLICK", "EVALUATE", create_time=int(time.time()) + 60)  # not a resend
    assert "您暂时没有待评价的办件" in oa.reply_text(oa.post(later))

    # Someone else's case reads as unknown.
    other_tokens, other_case = submit_renewal(server, wechat_sim, "石旁人")
    assert "未找到办件" in ask(f"评价 {other_case} 5")
    assert case_of(server, other_tokens, other_case)["evaluation"] is None
