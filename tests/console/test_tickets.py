"""Consultations and complaints over real HTTP: from the bot or the mini-program to the console's
answer, back to the citizen through the channel they used, and rated."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.conftest import SIM_MP_APPID
from tests.helpers import auth, login, official_client, wait_for
from tests.oa_pusher import OA_APPID, OAPusher, text_message

FUND = "泸州市住房公积金管理中心"
POLICE = "泸州市公安局"


@pytest.fixture(scope="module", autouse=True)
def catalogue(server):
    assert server.cli("load-demo").returncode == 0


def csrf(client: httpx.Client) -> dict:
    return {"X-CSRF-Token": client.get("/console/api/session").json()["csrf_token"]}


def linked_follower(server, wechat_sim) -> tuple[dict, str]:
    """A mini-program citizen (tokens) who also follows the official account (its openid), linked by unionid."""
    unionid = "oU" + uuid.uuid4().hex[:26]
    mp_openid = wechat_sim.control("users", {"appid": SIM_MP_APPID, "unionid": unionid})["openid"]
    tokens, _ = login(server, wechat_sim, mp_openid)
    oa_openid = wechat_sim.control("users", {"appid": OA_APPID, "unionid": unionid})["openid"]
    return tokens, oa_openid


def bot_ticket(oa: OAPusher, openid: str, text: str) -> str:
    reply = oa.reply_text(oa.post(text_message(openid, text)))
    assert reply and "已受理" in reply, reply
    return next(word for word in reply.replace("，", " ").split() if word.startswith(("ZX", "TS")))


def sent_to(wechat_sim, openid: str) -> list[dict]:
    return [m for m in wechat_sim.control("messages")["messages"] if m.get("touser") == openid]


def test_a_bot_consultation_answered_in_the_console_reaches_the_follower_as_a_customer_service_message(
    server, oa, wechat_sim
):
    tokens, openid = linked_follower(server, wechat_sim)
    reply = oa.reply_text(oa.post(text_message(openid, "咨询 公积金提取后多久能到账？")))
    assert "2个工作日内答复" in reply and FUND in reply  # the promise is the setting's, not "3个工作日"
    ticket_no = next(word for word in reply.replace("，", " ").split() if word.startswith("ZX"))
    row = server.database.query(f"SELECT due_at, channel, user_id FROM tickets WHERE ticket_no = '{ticket_no}'")[0]
    assert row[0] is not None and row[1] == "official_account" and row[2] is not None

    officer = official_client(server, FUND, "officer")
    listed = officer.get("/console/api/tickets", params={"kind": "consultation", "status": "open"}).json()["items"]
    item = next(i for i in listed if i["ticket_no"] == ticket_no)
    assert item["seconds_left"] > 0 and item["overdue"] is False and "content" not in item
    seen = officer.get(f"/console/api/tickets/{ticket_no}").json()
    assert seen["content"] == "公积金提取后多久能到账？" and [e["action"] for e in seen["events"]] == ["created"]
    audited = server.database.query(
        f"SELECT action FROM audit_log WHERE target_type = 'ticket' AND target_id = '{ticket_no}'"
    )
    assert ("ticket.read",) in audited

    answer = "公积金提取审核通过后，一般 1 个工作日内到账。"
    response = officer.post(f"/console/api/tickets/{ticket_no}/answer", json={"answer": answer}, headers=csrf(officer))
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "answered"
    again = officer.post(f"/console/api/tickets/{ticket_no}/answer", json={"answer": "再答"}, headers=csrf(officer))
    assert again.status_code == 409 and again.json()["code"] == "ticket_already_answered"

    sent = wait_for(lambda: sent_to(wechat_sim, openid))
    assert len(sent) == 1 and sent[0]["type"] == "custom" and sent[0]["msgtype"] == "text"
    assert answer in sent[0]["content"]["content"] and ticket_no in sent[0]["content"]["content"]
    raw = server.database.query(f"SELECT answer_enc FROM tickets WHERE ticket_no = '{ticket_no}'")[0][0]
    assert answer.encode() not in bytes(raw)  # sealed at rest
    inbox = httpx.get(f"{server.url}/api/v1/inbox", headers=auth(tokens)).json()["items"]
    assert any(ticket_no in n["body"] and n["kind"] == "ticket_answered" for n in inbox)
    mine = httpx.get(f"{server.url}/api/v1/tickets", headers=auth(tokens)).json()["items"]
    assert next(t for t in mine if t["ticket_no"] == ticket_no)["answer"] == answer


def test_outside_the_48_hour_window_the_answer_goes_as_a_template_message(server, oa, wechat_sim):
    tokens, openid = linked_follower(server, wechat_sim)
    ticket_no = bot_ticket(oa, openid, "投诉 驾驶证换证窗口排队两个小时没人办理")
    # The follower last wrote three days ago: WeChat takes no customer-service message now.
    server.database.query(
        f"UPDATE followers SET last_message_at = '2020-01-01 00:00:00+00:00' WHERE oa_openid = '{openid}'"
    )
    officer = official_client(server, POLICE, "officer")
    response = officer.post(
        f"/console/api/tickets/{ticket_no}/answer",
        json={"answer": "已约谈窗口负责人并增开窗口。"},
        headers=csrf(officer),
    )
    assert response.status_code == 200, response.text
    sent = wait_for(lambda: sent_to(wechat_sim, openid))
    assert [m["type"] for m in sent] == ["template"]
    assert sent[0]["data"]["character_string2"]["value"] == ticket_no
    assert sent[0]["data"]["phrase3"]["value"] == "已答复"
    assert "ticket_no=" + ticket_no in sent[0]["miniprogram"]["pagepath"]
    inbox = httpx.get(f"{server.url}/api/v1/inbox", headers=auth(tokens)).json()["items"]
    assert any(ticket_no in n["body"] for n in inbox)


def test_a_mini_program_ticket_created_listed_answered_and_rated_once(server, wechat_sim):
    tokens, _ = login(server, wechat_sim)
    with server.client(headers=auth(tokens)) as c:
        made = c.post("/api/v1/tickets", json={"kind": "consultation", "content": "公积金提取要带什么材料？"})
        assert made.status_code == 201, made.text
        ticket = made.json()
        assert ticket["ticket_no"].startswith("ZX") and ticket["department"] == FUND and ticket["due_at"]
        assert ticket["status"] == "open" and ticket["channel"] == "miniprogram"
        other = c.post("/api/v1/tickets", json={"kind": "complaint", "content": "网上办理页面一直打不开"}).json()
        listed = c.get("/api/v1/tickets").json()["items"]
        assert [t["ticket_no"] for t in listed[:2]] == [other["ticket_no"], ticket["ticket_no"]]  # newest first
        early = c.post(f"/api/v1/tickets/{ticket['ticket_no']}/rating", json={"level": 5})
        assert early.status_code == 409 and early.json()["code"] == "ticket_not_answered"
        assert c.post("/api/v1/tickets", json={"kind": "consultation", "content": "短"}).status_code == 422
        assert c.post("/api/v1/tickets", json={"kind": "other", "content": "公积金提取要带什么"}).status_code == 422

    officer = official_client(server, FUND, "officer")
    answered = officer.post(
        f"/console/api/tickets/{ticket['ticket_no']}/answer",
        json={"answer": "身份证和银行卡即可。"},
        headers=csrf(officer),
    )
    assert answered.status_code == 200, answered.text
    with server.client(headers=auth(tokens)) as c:
        mine = next(t for t in c.get("/api/v1/tickets").json()["items"] if t["ticket_no"] == ticket["ticket_no"])
        assert mine["answer"] == "身份证和银行卡即可。" and mine["status"] == "answered"
        rated = c.post(f"/api/v1/tickets/{ticket['ticket_no']}/rating", json={"level": 4})
        assert rated.status_code == 200 and rated.json()["rating"] == 4 and rated.json()["status"] == "closed"
        twice = c.post(f"/api/v1/tickets/{ticket['ticket_no']}/rating", json={"level": 1})
        assert twice.status_code == 409 and twice.json()["code"] == "ticket_already_rated"
        assert c.post(f"/api/v1/tickets/{ticket['ticket_no']}/rating", json={"level": 6}).status_code == 422
    # Nobody else can rate it, nor see it.
    stranger, _ = login(server, wechat_sim)
    with server.client(headers=auth(stranger)) as c:
        assert c.post(f"/api/v1/tickets/{ticket['ticket_no']}/rating", json={"level": 1}).status_code == 404
        assert all(t["ticket_no"] != ticket["ticket_no"] for t in c.get("/api/v1/tickets").json()["items"])
    events = officer.get(f"/console/api/tickets/{ticket['ticket_no']}").json()["events"]
    assert [e["action"] for e in events] == ["created", "answered", "rated"]


def test_another_departments_ticket_is_404_and_a_supervisor_reassigns(server, wechat_sim):
    tokens, _ = login(server, wechat_sim)
    with server.client(headers=auth(tokens)) as c:
        ticket = c.post("/api/v1/tickets", json={"kind": "complaint", "content": "公积金提取一直没有到账"}).json()
    no = ticket["ticket_no"]
    police = official_client(server, POLICE, "officer", "supervisor")
    assert police.get(f"/console/api/tickets/{no}").status_code == 404
    assert police.get("/console/api/tickets/ZX20990101000001").status_code == 404
    answer = police.post(f"/console/api/tickets/{no}/answer", json={"answer": "不归我们管"}, headers=csrf(police))
    assert answer.status_code == 404 and answer.json()["code"] == "ticket_not_found"
    assert all(i["ticket_no"] != no for i in police.get("/console/api/tickets").json()["items"])
    reassign = police.post(
        f"/console/api/tickets/{no}/reassign", json={"department": POLICE, "reason": "试图抢单"}, headers=csrf(police)
    )
    assert reassign.status_code == 404

    officer = official_client(server, FUND, "officer")
    refused = officer.post(
        f"/console/api/tickets/{no}/reassign", json={"department": POLICE, "reason": "转交"}, headers=csrf(officer)
    )
    assert refused.status_code == 403 and refused.json()["code"] == "role_required"
    no_csrf = officer.post(f"/console/api/tickets/{no}/answer", json={"answer": "答复内容"})
    assert no_csrf.status_code == 403 and no_csrf.json()["code"] == "csrf_failed"

    supervisor = official_client(server, FUND, "supervisor")
    unknown = supervisor.post(
        f"/console/api/tickets/{no}/reassign",
        json={"department": "不存在的局", "reason": "转交"},
        headers=csrf(supervisor),
    )
    assert unknown.status_code == 422 and unknown.json()["code"] == "department_unknown"
    moved = supervisor.post(
        f"/console/api/tickets/{no}/reassign",
        json={"department": POLICE, "reason": "涉及窗口服务，转公安局"},
        headers=csrf(supervisor),
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["department"] == POLICE and moved.json()["due_at"] == ticket["due_at"]  # the deadline stays
    assert supervisor.get(f"/console/api/tickets/{no}").status_code == 404
    seen = police.get(f"/console/api/tickets/{no}").json()
    assert seen["content"] == "公积金提取一直没有到账" and seen["events"][-1]["action"] == "reassigned"
    assert seen["events"][-1]["note"] == "涉及窗口服务，转公安局"


def test_console_ticket_routes_need_a_session(server):
    with server.client() as c:
        assert c.get("/console/api/tickets").status_code == 401
    tokens_free = httpx.get(f"{server.url}/api/v1/tickets")
    assert tokens_free.status_code == 401
