"""`GET /console/api/dashboard` and `GET /console/api/alerts` over HTTP: department scoping (another
department's rows are never counted), roles, sessions and validation. The figures themselves are
checked against prepared rows in tests/handlers/test_dashboard.py."""

from __future__ import annotations

import secrets

import pytest

from tests.helpers import CODE, RENEWAL, official_client

DASHBOARD, ALERTS = "/console/api/dashboard", "/console/api/alerts"
PSB, HRSS = "泸州市公安局", "泸州市人力资源和社会保障局"
SOCIAL_CARD = CODE["社保卡补办"]
# Days of 2025 nothing else in the run writes cases on (cases are stamped with the time they are made).
RANGE = {"from": "2025-03-10", "to": "2025-03-12"}


@pytest.fixture(scope="module", autouse=True)
def catalogue(server):
    assert server.cli("load-demo").returncode == 0


def insert_case(server, code: str, submitted_at: str) -> None:
    """A case row as the app writes it, submitted at `submitted_at` (UTC)."""
    db = server.database
    item_id, name = db.query(f"SELECT id, name FROM service_items WHERE code = '{code}' AND is_current = true")[0]
    user_id = db.query(
        "INSERT INTO users (identity_level, is_active, created_at, updated_at) "
        "VALUES ('L1', true, '2025-03-01 00:00:00+00:00', '2025-03-01 00:00:00+00:00') RETURNING id"
    )[0][0]
    db.query(
        "INSERT INTO cases (case_no, user_id, service_item_id, service_code, service_name, status, materials, "
        "fee_ref, platform_seq, row_version, submitted_at, updated_at) VALUES "
        f"('ZBT{secrets.token_hex(6)}', {user_id}, {item_id}, '{code}', '{name}', 'in_review', '{{}}', '', 0, 1, "
        f"'{submitted_at}', '{submitted_at}')"
    )


def insert_ticket(server, department: str, due_at: str) -> str:
    ticket_no = "TS" + secrets.token_hex(6)
    blob = "X'78'" if server.database.kind == "sqlite" else "decode('78', 'hex')"
    server.database.query(
        "INSERT INTO tickets (ticket_no, kind, oa_openid, department, content_enc, status, dedup_key, created_at, "
        f"channel) VALUES ('{ticket_no}', 'complaint', '', '{department}', {blob}, 'open', '{ticket_no}', "
        f"'{due_at}', 'miniprogram')"
    )
    server.database.query(f"UPDATE tickets SET due_at = '{due_at}' WHERE ticket_no = '{ticket_no}'")
    return ticket_no


def test_the_dashboard_counts_only_the_officials_department(server):
    insert_case(server, RENEWAL, "2025-03-10 02:00:00+00:00")
    insert_case(server, RENEWAL, "2025-03-11 15:30:00+00:00")  # 23:30 on 11 March in China
    insert_case(server, SOCIAL_CARD, "2025-03-11 03:00:00+00:00")
    insert_case(server, RENEWAL, "2025-03-12 16:30:00+00:00")  # 13 March in China: after the range

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
    ):
        bad = officer.get(DASHBOARD, params=params)
        assert bad.status_code == 422, (params, bad.text)
        assert bad.json()["code"] == "validation_failed" and field in bad.json()["details"]["fields"], bad.text
    publisher = official_client(server, "psb", "publisher")
    refused = publisher.get(DASHBOARD)
    assert refused.status_code == 403 and refused.json()["code"] == "role_required"
    assert publisher.get(ALERTS).status_code == 403


def test_alerts_are_scoped_and_sectioned_by_role(server):
    psb_ticket = insert_ticket(server, PSB, "2025-03-01 00:00:00+00:00")
    hrss_ticket = insert_ticket(server, HRSS, "2025-03-01 00:00:00+00:00")

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
