"""`GET /console/api/dashboard` and `GET /console/api/alerts` over HTTP: department scoping (another
department's rows are never counted), roles, sessions and validation. The figures themselves are
checked against prepared rows in tests/handlers/test_dashboard.py."""

from __future__ import annotations

import pytest

from tests.helpers import CODE, RENEWAL, insert_case_row, insert_ticket_row, official_client

DASHBOARD, ALERTS = "/console/api/dashboard", "/console/api/alerts"
PSB, HRSS = "泸州市公安局", "泸州市人力资源和社会保障局"
SOCIAL_CARD = CODE["社保卡补办"]
# Days of 2025 nothing else in the run writes cases on (cases are stamped with the time they are made).
RANGE = {"from": "2025-03-10", "to": "2025-03-12"}


@pytest.fixture(scope="module", autouse=True)
def catalogue(server):
    assert server.cli("load-demo").returncode == 0


def test_the_dashboard_counts_only_the_officials_department(server):
    insert_case_row(server, RENEWAL, "2025-03-10 02:00:00+00:00")
    insert_case_row(server, RENEWAL, "2025-03-11 15:30:00+00:00")  # 23:30 on 11 March in China
    insert_case_row(server, SOCIAL_CARD, "2025-03-11 03:00:00+00:00")
    insert_case_row(server, RENEWAL, "2025-03-12 16:30:00+00:00")  # 13 March in China: after the range

    officer = official_client(server, "psb")
    mine = officer.get(DASHBOARD, params=RANGE)
    assert mine.status_code == 200, mine.text
    body = mine.json()
    assert body["department"] == PSB and (body["from"], body["to"]) == ("2025-03-10", "2025-03-12")
    assert [(d["day"], d["submitted"]) for d in body["cases"]["per_day"]] == [
        ("2025-03-10", 1),
        ("2025-03-11", 1),
        ("2025-03-12", 0),
    ]
    assert body["cases"]["fully_online"] == 0 and mine.headers["cache-control"] == "no-store"
    assert set(body) >= {"handling", "overdue", "evaluations", "bad_reviews", "tickets", "pushes"}

    theirs = official_client(server, "hrss").get(DASHBOARD, params=RANGE).json()
    assert theirs["department"] == HRSS
    assert (theirs["cases"]["submitted"], theirs["cases"]["fully_online"]) == (1, 1)

    assert officer.get(DASHBOARD, params={**RANGE, "department": HRSS}).status_code == 404
    admin = official_client(server, "", "admin")
    assert admin.get(DASHBOARD, params=RANGE).json()["cases"]["submitted"] == 3
    picked = admin.get(DASHBOARD, params={**RANGE, "department": HRSS}).json()
    assert picked["department"] == HRSS and picked["cases"]["submitted"] == 1


def test_the_dashboard_refuses_strangers_other_roles_and_bad_queries(server, client):
    answer = client.get(DASHBOARD)
    assert answer.status_code == 401 and answer.json()["code"]
    assert client.get(ALERTS).status_code == 401
    officer = official_client(server, "psb")
    default = officer.get(DASHBOARD)
    assert default.status_code == 200 and len(default.json()["cases"]["per_day"]) == 30
    for params, field in (
        ({"from": "2025-13-01"}, "from"),
        ({"from": "2025-03-12", "to": "2025-03-10"}, "to"),
        ({"from": "2024-01-01", "to": "2025-03-10"}, "to"),
        ({"department": "局" * 129}, "department"),
        ({"from": "0001-01-01"}, "from"),  # no overflow of China midnight into year 0
        ({"to": "9999-12-31"}, "to"),
    ):
        bad = officer.get(DASHBOARD, params=params)
        assert bad.status_code == 422, (params, bad.text)
        assert bad.json()["code"] == "validation_failed" and field in bad.json()["details"]["fields"], bad.text
    publisher = official_client(server, "psb", "publisher")
    refused = publisher.get(DASHBOARD)
    assert refused.status_code == 403 and refused.json()["code"] == "role_required"
    assert publisher.get(ALERTS).status_code == 403


def test_alerts_are_scoped_and_sectioned_by_role(server):
    psb_ticket = insert_ticket_row(server, PSB, "2025-03-01 00:00:00+00:00")
    hrss_ticket = insert_ticket_row(server, HRSS, "2025-03-01 00:00:00+00:00")

    officer = official_client(server, "psb")
    mine = officer.get(ALERTS)
    assert mine.status_code == 200, mine.text
    body = mine.json()
    listed = {t["ticket_no"] for t in body["tickets"]["items"]}
    assert psb_ticket in listed and hrss_ticket not in listed
    assert all(t["department"] == PSB for t in body["tickets"]["items"])
    assert body["payments"] is None and body["outbox"] is None and body["attention"] >= 1
    assert officer.get(ALERTS, params={"department": HRSS}).status_code == 404

    hrss = official_client(server, "hrss").get(ALERTS).json()
    assert hrss_ticket in {t["ticket_no"] for t in hrss["tickets"]["items"]}

    finance = official_client(server, "psb", "finance").get(ALERTS).json()
    assert finance["tickets"] is None and finance["rectifications"] is None and finance["outbox"] is None
    assert isinstance(finance["payments"]["open"], int)

    admin = official_client(server, "", "admin").get(ALERTS).json()
    assert admin["department"] is None and admin["payments"] is not None
    assert isinstance(admin["outbox"]["backlog"], int) and "oldest_age_s" in admin["outbox"]
    assert {psb_ticket, hrss_ticket} <= {t["ticket_no"] for t in admin["tickets"]["items"]}  # the oldest due


# -- the pages -----------------------------------------------------------------------------------

PAGE_RANGE = {"from": "2025-04-07", "to": "2025-04-09"}


def test_the_dashboard_page_draws_its_charts_and_exports_every_table(server, client):
    insert_case_row(server, RENEWAL, "2025-04-08 02:00:00+00:00")
    insert_case_row(server, RENEWAL, "2025-04-08 03:00:00+00:00")
    insert_case_row(server, SOCIAL_CARD, "2025-04-08 03:00:00+00:00")  # another department's

    stranger = client.get("/console/", params=PAGE_RANGE, follow_redirects=False)
    assert stranger.status_code in (302, 303) and stranger.headers["location"].startswith("/console/login?next=")
    officer = official_client(server, "psb")
    page = officer.get("/console/", params=PAGE_RANGE)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    html = page.text
    assert html.count('<svg class="chart"') >= 3 and "每日提交办件量" in html
    assert '<rect class="bar"' in html and "04-08：2件" in html  # the day's bar, titled with its count
    for table in ("summary", "days", "overdue", "levels", "channels"):
        assert f"/console/dashboard/export/{table}?from=2025-04-07&amp;to=2025-04-09" in html, table

    csv = officer.get("/console/dashboard/export/days", params=PAGE_RANGE)
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv"), csv.text[:3000]
    lines = csv.content.decode("utf-8-sig").splitlines()
    assert lines == ["日期,提交办件,全程网办", "2025-04-07,0,0", "2025-04-08,2,0", "2025-04-09,0,0"]
    summary = officer.get("/console/dashboard/export/summary", params=PAGE_RANGE).content.decode("utf-8-sig")
    assert "提交办件,2" in summary.splitlines()

    assert officer.get("/console/dashboard/export/days", params={**PAGE_RANGE, "department": HRSS}).status_code == 404
    assert officer.get("/console/dashboard/export/nothing").status_code == 404
    bad = officer.get("/console/", params={"from": "2025-04-09", "to": "2025-04-01"})
    assert bad.status_code == 422 and "text/html" in bad.headers["content-type"]

    publisher = official_client(server, "psb", "publisher")
    welcome = publisher.get("/console/")
    assert welcome.status_code == 200 and '<svg class="chart"' not in welcome.text
    assert publisher.get("/console/dashboard/export/days").status_code == 403


def test_the_alerts_page_lists_and_exports_the_departments_tickets(server):
    mine = insert_ticket_row(server, PSB, "2025-02-01 00:00:00+00:00")
    theirs = insert_ticket_row(server, HRSS, "2025-02-01 00:00:00+00:00")
    officer = official_client(server, "psb")
    page = officer.get("/console/alerts")
    assert page.status_code == 200 and "待办提醒" in page.text
    assert mine in page.text and theirs not in page.text
    assert "/console/alerts/export/tickets" in page.text and "/console/alerts/export/payments" not in page.text
    csv = officer.get("/console/alerts/export/tickets").content.decode("utf-8-sig").splitlines()
    assert csv[0] == "编号,类型,部门,截止时间,已超期,已上报"
    assert any(line.startswith(f"{mine},投诉,{PSB},") and ",是," in line for line in csv)
    assert not any(theirs in line for line in csv)
    assert officer.get("/console/alerts/export/payments").status_code == 404  # not a finance official
    finance = official_client(server, "psb", "finance")
    assert finance.get("/console/alerts/export/payments").status_code == 200
