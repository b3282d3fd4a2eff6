"""The console's work pages over real HTTP: case search and case page (audited; another
department's case is the 404 page), the audit page (roles, filters, next-page link, CSV), the
tickets inbox and its answer form (CSRF; the answer reaches the citizen's inbox), the bad-review
queue and its forms. The same in a real browser: tests/browser/test_complaint.py."""

from __future__ import annotations

import re
from contextlib import closing
from html import unescape

import httpx
import pytest

from tests.helpers import RENEWAL, auth, case_of, login, official_client, submit_renewal, wait_for

POLICE, HEALTHCARE = "泸州市公安局", "泸州市医疗保障局"


@pytest.fixture(scope="module", autouse=True)
def catalogue(server):
    assert server.cli("load-demo").returncode == 0


@pytest.fixture(scope="module")
def case(server, wechat_sim) -> tuple[dict, str]:
    return submit_renewal(server, wechat_sim, "吴十九")


def token(client: httpx.Client) -> str:
    return client.get("/console/api/session").json()["csrf_token"]


def me(client: httpx.Client) -> dict:
    return client.get("/console/api/session").json()["official"]


def text_of(response: httpx.Response) -> str:
    return unescape(re.sub(r"<[^>]+>", " ", response.text))


def test_the_case_pages_find_show_and_audit_a_case_and_hide_another_departments(server, case):
    _, case_no = case
    with closing(official_client(server, POLICE, "officer")) as officer:
        found = officer.get("/console/cases", params={"q": case_no[:10]})
        assert found.status_code == 200 and found.headers["content-security-policy"].startswith("default-src 'self'")
        assert f'href="/console/cases/{case_no}"' in found.text
        assert 'href="/console/api/cases/export?q=' in found.text  # the table's CSV
        shown = officer.get(f"/console/cases/{case_no}")
        assert shown.status_code == 200
        assert "吴**" in shown.text and "吴十九" not in shown.text and "办理过程" in shown.text
        assert "查看完整信息" not in shown.text  # no personal_data role: no reveal form
        rows = server.database.query(
            f"SELECT actor_id FROM audit_log WHERE action = 'case.read' AND target_id = '{case_no}'"
        )
        assert (str(me(officer)["id"]),) in rows
        bad = officer.get("/console/cases", params={"q": "ZB%"})
        assert bad.status_code == 422 and "办件编号" in bad.text
    with closing(official_client(server, POLICE, "officer", "personal_data")) as reader:
        assert "查看完整信息" in reader.get(f"/console/cases/{case_no}").text
        clear = reader.get(f"/console/cases/{case_no}", params={"reason": "核对申请人身份信息"})
        assert clear.status_code == 200 and "吴十九" in clear.text and "已记入审计日志" in clear.text
    with closing(official_client(server, HEALTHCARE, "officer")) as outsider:
        hidden = outsider.get(f"/console/cases/{case_no}")
        assert hidden.status_code == 404 and "办件不存在" in hidden.text and "吴" not in text_of(hidden)
        assert f'href="/console/cases/{case_no}"' not in outsider.get("/console/cases", params={"q": case_no}).text
    with server.client() as anonymous:
        away = anonymous.get(f"/console/cases/{case_no}", follow_redirects=False)
        assert away.status_code in (302, 303) and away.headers["location"].startswith("/console/login?next=")


def test_the_audit_page_filters_pages_on_and_is_for_supervisors_and_admins(server, case):
    _, case_no = case
    with closing(official_client(server, POLICE, "officer")) as officer:
        for _ in range(52):
            assert officer.get(f"/console/api/cases/{case_no}").status_code == 200
        username = me(officer)["username"]
        refused = officer.get("/console/audit")
        assert refused.status_code == 403 and "没有访问此页面的权限" in refused.text
    with closing(official_client(server, POLICE, "supervisor")) as chief:
        first = chief.get("/console/audit", params={"official": username, "action": "case.read"})
        assert first.status_code == 200, first.text
        assert first.text.count("<code>case.read</code>") == 50
        nxt = re.search(r'href="(/console/audit\?[^"]+)" rel="next"', first.text)
        assert nxt and "before=" in nxt.group(1)
        second = chief.get(unescape(nxt.group(1)))
        assert second.text.count("<code>case.read</code>") == 2 and 'rel="next"' not in second.text
        assert f'href="/console/api/audit/export?official={username}&amp;action=case.read"' in first.text
        wrong = chief.get("/console/audit", params={"since": "2026-13-01", "citizen": "abc"})
        assert wrong.status_code == 422 and "开始日期" in wrong.text and "公民用户编号" in wrong.text
    with closing(official_client(server, HEALTHCARE, "supervisor")) as elsewhere:
        other = elsewhere.get("/console/audit", params={"official": username})
        assert other.status_code == 200 and "没有符合条件的记录" in other.text


def test_a_complaint_answered_in_the_tickets_page_reaches_the_citizens_inbox(server, wechat_sim):
    tokens, _ = login(server, wechat_sim)
    made = httpx.post(
        f"{server.url}/api/v1/tickets",
        headers=auth(tokens),
        json={"kind": "complaint", "content": "换证窗口排队两个小时没有人办理", "service_code": RENEWAL},
    )
    assert made.status_code == 201, made.text
    ticket_no = made.json()["ticket_no"]
    with closing(official_client(server, POLICE, "officer")) as officer:
        inbox = officer.get("/console/tickets")
        assert inbox.status_code == 200 and f'href="/console/tickets/{ticket_no}"' in inbox.text
        assert "data-countdown=" in inbox.text
        listed = officer.get("/console/api/tickets", params={"status": "open", "limit": 1})
        assert listed.status_code == 200 and "next_cursor" in listed.json()
        assert officer.get("/console/api/tickets", params={"after": "soon"}).status_code == 422
        assert officer.get("/console/tickets", params={"after": "soon"}).status_code == 422
        csv = officer.get("/console/tickets", params={"status": "open", "format": "csv"})
        assert csv.headers["content-type"].startswith("text/csv") and ticket_no in csv.text
        page = officer.get(f"/console/tickets/{ticket_no}")
        assert page.status_code == 200 and "换证窗口排队两个小时没有人办理" in page.text
        path = f"/console/tickets/{ticket_no}/answer"
        answer = "已增开两个换证窗口，并约谈窗口负责人。"
        forged = officer.post(path, data={"answer": answer}, follow_redirects=False)
        assert forged.status_code == 403  # no csrf_token field
        empty = officer.post(path, data={"answer": " ", "csrf_token": token(officer)}, follow_redirects=False)
        assert empty.status_code == 422 and "答复内容" in empty.text
        sent = officer.post(path, data={"answer": answer, "csrf_token": token(officer)}, follow_redirects=False)
        assert sent.status_code == 303 and sent.headers["location"] == f"/console/tickets/{ticket_no}"
        after = officer.get(f"/console/tickets/{ticket_no}")
        assert "已答复" in after.text and answer in after.text and "提交答复" not in after.text
        again = officer.post(path, data={"answer": "再答一次", "csrf_token": token(officer)}, follow_redirects=False)
        assert again.status_code == 409 and "该工单已答复" in again.text
    items = wait_for(
        lambda: [
            n
            for n in httpx.get(f"{server.url}/api/v1/inbox", headers=auth(tokens)).json()["items"]
            if ticket_no in n["body"]
        ]
    )
    assert items[0]["kind"] == "ticket_answered"
    mine = httpx.get(f"{server.url}/api/v1/tickets", headers=auth(tokens)).json()["items"]
    assert next(t for t in mine if t["ticket_no"] == ticket_no)["answer"] == answer
    with closing(official_client(server, HEALTHCARE, "officer")) as outsider:
        assert outsider.get(f"/console/tickets/{ticket_no}").status_code == 404
        assert ticket_no not in outsider.get("/console/tickets", params={"status": ""}).text


def test_a_bad_review_is_worked_in_the_reviews_pages(server, wechat_sim, platform_sim):
    tokens, case_no = submit_renewal(server, wechat_sim, "郑二十")
    wait_for(lambda: case_of(server, tokens, case_no)["status"] == "delivered_to_platform")
    for event in ("accepted", "in_review", "rejected"):
        data = {"reason": "申请材料不符合法定条件"} if event == "rejected" else {}
        assert platform_sim.control("event", {"case_no": case_no, "event": event, "data": data})["delivered"]
    rated = httpx.post(
        f"{server.url}/api/v1/cases/{case_no}/evaluation",
        headers=auth(tokens),
        json={"level": 1, "tags": ["办理超时"], "comment": "等了三周"},
    )
    assert rated.status_code == 201, rated.text
    with closing(official_client(server, POLICE, "officer")) as officer:
        queue = officer.get("/console/reviews")
        assert queue.status_code == 200 and case_no in queue.text and "data-countdown=" in queue.text
        rid = int(re.search(rf'href="/console/reviews/(\d+)">{case_no}<', queue.text).group(1))
        assert case_no in officer.get("/console/reviews", params={"format": "csv"}).text
        page = officer.get(f"/console/reviews/{rid}")
        assert page.status_code == 200 and "等了三周" in page.text and "郑**" in page.text
        assert "审核申诉" not in page.text and "转办" not in text_of(page).split("处理记录")[0]
        short = officer.post(f"/console/reviews/{rid}/verify", data={"note": "x", "csrf_token": token(officer)})
        assert short.status_code == 422 and "回访情况" in short.text
        done = officer.post(
            f"/console/reviews/{rid}/verify",
            data={"note": "已电话回访群众", "csrf_token": token(officer)},
            follow_redirects=False,
        )
        assert done.status_code == 303
        assert "整改中" in officer.get(f"/console/reviews/{rid}").text
        twice = officer.post(f"/console/reviews/{rid}/verify", data={"note": "再次回访", "csrf_token": token(officer)})
        assert twice.status_code == 409 and "不在核实回访阶段" in twice.text
        fixed = officer.post(
            f"/console/reviews/{rid}/rectify",
            data={"text": "已优化审核流程", "csrf_token": token(officer)},
            follow_redirects=False,
        )
        assert fixed.status_code == 303 and "待群众确认" in officer.get(f"/console/reviews/{rid}").text
        asked = officer.post(
            f"/console/reviews/{rid}/exclusion",
            data={"reason": "系群众误评", "csrf_token": token(officer)},
            follow_redirects=False,
        )
        assert asked.status_code == 303 and "申诉待审" in officer.get("/console/reviews").text
        refused = officer.post(
            f"/console/reviews/{rid}/decision",
            data={"approve": "1", "reason": "同意", "csrf_token": token(officer)},
        )
        assert refused.status_code == 403  # deciding is the supervisor's
    with closing(official_client(server, POLICE, "supervisor")) as chief:
        assert "审核申诉" in chief.get(f"/console/reviews/{rid}").text
        decided = chief.post(
            f"/console/reviews/{rid}/decision",
            data={"approve": "0", "reason": "群众诉求属实", "csrf_token": token(chief)},
            follow_redirects=False,
        )
        assert decided.status_code == 303
        after = chief.get(f"/console/reviews/{rid}").text
        assert "审核意见：群众诉求属实" in after and "申诉未通过" in after and "提交审核" not in after
    inbox = httpx.get(f"{server.url}/api/v1/inbox", headers=auth(tokens)).json()["items"]
    assert any(i["kind"] == "rectification_replied" and "已优化审核流程" in i["body"] for i in inbox)
    with closing(official_client(server, HEALTHCARE, "supervisor")) as outsider:
        assert outsider.get(f"/console/reviews/{rid}").status_code == 404
        assert case_no not in outsider.get("/console/reviews", params={"status": "all"}).text
