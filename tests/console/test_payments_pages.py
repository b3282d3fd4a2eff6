"""The payments page (finance, admin): reconciliation reports with their differences and payment
alerts, filters, a resolve form, CSV export of each table; every read goes through the audited use
cases; anyone else gets the 403 page."""

from __future__ import annotations

import json
import random
import uuid
from datetime import date, timedelta

import httpx
import pytest

from tests.helpers import official_client

POLICE = "泸州市公安局"


@pytest.fixture(scope="module", autouse=True)
def catalogue(server):
    assert server.cli("load-demo").returncode == 0


def csrf_token(client: httpx.Client) -> str:
    return client.get("/console/api/session").json()["csrf_token"]


def raise_alert(server, out_trade_no: str) -> int:
    """A payment alert as settlement raises it for a payment of an order we do not know (how and
    when it is raised is the payments tests' business; this page only shows and resolves it)."""
    now = "strftime('%Y-%m-%d %H:%M:%f+00:00', 'now')" if server.database.url.startswith("sqlite") else "now()"
    detail = json.dumps({"out_trade_no": out_trade_no})
    server.database.query(
        "INSERT INTO payment_alerts (kind, dedup_key, detail, created_at) "
        f"VALUES ('unknown_order', 'unknown_order:{out_trade_no}', '{detail}', {now})"
    )
    [(alert_id,)] = server.database.query(
        f"SELECT id FROM payment_alerts WHERE dedup_key = 'unknown_order:{out_trade_no}'"
    )
    return alert_id


@pytest.fixture(scope="module")
def bill(server, pay_sim):
    """A day of WeChat Pay's bill with one payment we never took (长款 7.77 元), reconciled."""
    day = (date.today() - timedelta(days=random.randint(400, 4000))).isoformat()
    trade_no = f"ZB{uuid.uuid4().hex[:24].upper()}"
    pay_sim.wechat(
        "bill-rows", {"bill_date": day, "rows": [{"kind": "pay", "out_trade_no": trade_no, "amount_fen": 777}]}
    )
    run = server.cli("reconcile", "--date", day, "--channel", "wechat")
    assert run.returncode == 3, run.stdout + run.stderr  # not balanced
    return day, trade_no


def test_finance_sees_reports_differences_and_alerts_and_exports_them(server, bill):
    day, trade_no = bill
    unknown = f"ZB{uuid.uuid4().hex[:24].upper()}"
    alert_id = raise_alert(server, unknown)
    finance = official_client(server, POLICE, "finance")
    page = finance.get("/console/payments", params={"date": day})
    assert page.status_code == 200, page.text
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert f"<td>{day}</td>" in page.text and "有差异（1 笔）" in page.text
    assert trade_no in page.text and "长款（渠道有、本方无）" in page.text and "7.77" in page.text
    assert f'id="alert-{alert_id}"' in page.text and unknown in page.text and "未知订单" in page.text

    elsewhere = finance.get("/console/payments", params={"date": day, "channel": "alipay"})
    assert elsewhere.status_code == 200 and trade_no not in elsewhere.text and "没有符合条件的对账单" in elsewhere.text
    bad = finance.get("/console/payments", params={"date": "2026-13-45", "channel": "cash"})
    assert bad.status_code == 422 and "日期格式应为 YYYY-MM-DD" in bad.text and "请选择微信支付或支付宝" in bad.text

    reports = finance.get("/console/payments", params={"format": "csv", "table": "reports", "date": day})
    assert reports.status_code == 200 and reports.headers["content-type"].startswith("text/csv")
    lines = reports.text.lstrip("\ufeff").splitlines()
    assert lines[0].startswith("对账日期,渠道,支付相符,长款,短款") and len(lines) == 2
    assert (
        lines[1].startswith(f"{day},微信支付,0,1,0,0")
        and ",7.77,0.00," in lines[1]
        and lines[1].endswith(lines[1].split(",")[-1])
    )
    items = finance.get("/console/payments", params={"format": "csv", "table": "items", "date": day}).text
    assert f"{day},微信支付,长款（渠道有、本方无）,{trade_no},,7.77,—," in items
    alerts = finance.get("/console/payments", params={"format": "csv", "table": "alerts"}).text
    assert f"{alert_id},未知订单,{unknown}," in alerts

    me = finance.get("/console/api/session").json()
    official_id = me.get("id") or me["official"]["id"]
    audited = dict(
        server.database.query(
            "SELECT action, count(*) FROM audit_log WHERE action LIKE 'payments.%' "
            f"AND actor_id = '{official_id}' GROUP BY action"
        )
    )
    # Each view read the reports and the alerts through the audited use cases; each export its table.
    assert audited == {"payments.reconciliation.read": 5, "payments.alerts.read": 4}


def test_an_alert_is_resolved_through_its_form(server):
    unknown = f"ZB{uuid.uuid4().hex[:24].upper()}"
    alert_id = raise_alert(server, unknown)
    finance = official_client(server, POLICE, "finance")
    refused = finance.post(f"/console/payments/alerts/{alert_id}/resolve", data={})
    assert refused.status_code == 403
    assert f'id="alert-{alert_id}"' in finance.get("/console/payments").text

    done = finance.post(f"/console/payments/alerts/{alert_id}/resolve", data={"csrf_token": csrf_token(finance)})
    assert done.status_code == 303 and done.headers["location"].startswith("/console/payments")
    landing = finance.get("/console/payments")
    assert f"已将告警 {alert_id} 标记为已处理" in landing.text
    assert f'id="alert-{alert_id}"' not in landing.text  # open alerts only, by default
    everything = finance.get("/console/payments", params={"alerts": "all"})
    row = everything.text.split(f'id="alert-{alert_id}"')[1].split("</tr>")[0]
    assert "已处理" in row and "<form" not in row
    [(resolved,)] = server.database.query(f"SELECT resolved_at FROM payment_alerts WHERE id = {alert_id}")
    assert resolved is not None
    missing = finance.post("/console/payments/alerts/999999999/resolve", data={"csrf_token": csrf_token(finance)})
    assert missing.status_code == 404


def test_only_finance_and_admins_see_the_page(server):
    for roles in [("officer", "supervisor"), ("publisher", "personal_data")]:
        other = official_client(server, POLICE, *roles)
        assert other.get("/console/payments").status_code == 403
        assert other.get("/console/payments", params={"format": "csv", "table": "alerts"}).status_code == 403
    admin = official_client(server, POLICE, "admin")
    assert admin.get("/console/payments").status_code == 200
    anonymous = server.client().get("/console/payments")
    assert anonymous.status_code in (302, 303) and "/console/login" in anonymous.headers["location"]
