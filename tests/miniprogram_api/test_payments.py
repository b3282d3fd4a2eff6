"""Paying a case's fee over real HTTP: our server, the WeChat Pay and Alipay simulators as their
own server (real signatures, real AES-GCM, keys generated for the run) and the core-platform
simulator. Branch logic of settlement and refunds is in tests/handlers/payments/."""

from __future__ import annotations

import base64
import os
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import httpx
import pytest

from core.china_time import CHINA
from tests.conftest import (
    ALIPAY_APP_ID,
    ALIPAY_SELLER,
    PAY_MCHID,
    SIM_MP_APPID,
    make_server,
    spawn,
    wait_healthy,
)
from tests.helpers import assess_fee, auth, case_of, official_client, platform_callback, submit_renewal, wait_for


@pytest.fixture(autouse=True)
def catalogue(server):
    assert server.cli("load-demo").returncode == 0


def fee_due(server, wechat_sim, name: str, amount_fen: int = 2000, platform=None) -> tuple[dict, str]:
    """A citizen's case in review with a fee assessed by the platform: (tokens, case_no)."""
    tokens, case_no = submit_renewal(server, wechat_sim, name)
    assess_fee(server, tokens, case_no, amount_fen, platform=platform)
    return tokens, case_no


def pay_order(server, tokens, case_no: str, channel: str, key: str | None = None) -> httpx.Response:
    return httpx.post(
        f"{server.url}/api/v1/cases/{case_no}/payments",
        json={"channel": channel},
        headers={**auth(tokens), "Idempotency-Key": key or uuid.uuid4().hex},
        timeout=30,
    )


def order_of(server, tokens, payment_id: str) -> dict:
    response = httpx.get(f"{server.url}/api/v1/payments/{payment_id}", headers=auth(tokens), timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def db_order(server, out_trade_no: str) -> dict:
    state, paid_at, refunded = server.database.query(
        f"SELECT state, paid_at, refunded_fen FROM payment_orders WHERE out_trade_no = '{out_trade_no}'"
    )[0]
    return {"state": state, "paid_at": paid_at, "refunded_fen": refunded}


def count(server, sql: str) -> int:
    return server.database.query(sql)[0][0]


def rows_of_case(server, case_no: str, table: str, kind: str) -> int:
    """How many `table` rows (outbox or notifications) of `kind` the case has."""
    join = f"SELECT count(*) FROM {table} t JOIN cases c ON c.id = t.case_id"
    return count(server, f"{join} WHERE c.case_no = '{case_no}' AND t.kind = '{kind}'")


def paid_events(server, out_trade_no: str) -> int:
    join = "SELECT count(*) FROM payment_events e JOIN payment_orders o ON o.id = e.order_id"
    return count(server, f"{join} WHERE o.out_trade_no = '{out_trade_no}' AND e.to_state = 'paid'")


def wechat_resource(order: dict, **overrides) -> dict:
    resource = {
        "mchid": PAY_MCHID,
        "appid": SIM_MP_APPID,
        "out_trade_no": order["out_trade_no"],
        "transaction_id": "4200002" + uuid.uuid4().hex[:21],
        "trade_type": "JSAPI",
        "trade_state": "SUCCESS",
        "trade_state_desc": "支付成功",
        "bank_type": "OTHERS",
        "success_time": datetime.now(CHINA).isoformat(timespec="seconds"),
        "payer": {"openid": "o_payer"},
        "amount": {
            "total": order["amount_fen"],
            "payer_total": order["amount_fen"],
            "currency": "CNY",
            "payer_currency": "CNY",
        },
    }
    for key, value in overrides.items():
        if key == "total":
            resource["amount"] = {**resource["amount"], "total": value, "payer_total": value}
        else:
            resource[key] = value
    return resource


def signed_notify(pay_sim, resource: dict, **options) -> tuple[dict, str]:
    built = pay_sim.wechat(
        "sign-notify", {"mchid": PAY_MCHID, "event_type": "TRANSACTION.SUCCESS", "resource": resource, **options}
    )
    return built["headers"], built["body"]


def post_wechat_notify(server, headers: dict, body: str) -> httpx.Response:
    return httpx.post(f"{server.url}/pay/notify/wechat", content=body.encode(), headers=headers, timeout=30)


def issued(case: dict) -> bool:
    """The receipt is on the case: on its fee, and in its timeline (read a moment apart)."""
    return bool(case["fee"]["receipt"]) and any(t["note"].startswith("缴费电子票据已开具") for t in case["timeline"])


def test_the_whole_journey_by_wechat_pay(server, wechat_sim, platform_sim, pay_sim):
    # New cases play the `fee` script (it waits for the payment before deciding), quickly.
    platform_sim.control("script", {"script": "fee"})
    platform_sim.control("config", {"step_delay_s": 0.3})
    try:
        tokens, case_no = submit_renewal(server, wechat_sim, "缴费甲")
        # The platform's assessment (with its payment notice number) replaces the catalogue's fee.
        due = wait_for(lambda: (c := case_of(server, tokens, case_no))["fee"]["notice_no"] and c)
        assert due["next_action"]["type"] == "pay"
        assert due["next_action"]["amount_fen"] == 2000 and due["fee"]["notice_no"]
        key = uuid.uuid4().hex
        created = pay_order(server, tokens, case_no, "wechat", key)
        assert created.status_code == 201, created.text
        order = created.json()
        assert order["status"] == "paying" and order["amount_fen"] == 2000 and order["channel"] == "wechat"
        params = order["request_payment"]
        assert params["signType"] == "RSA" and params["package"].startswith("prepay_id=")
        # What the WeChat client checks before it shows the cashier: paySign by our merchant key.
        assert pay_sim.wechat("pay-sign-check", params)["valid"] is True
        again = pay_order(server, tokens, case_no, "wechat", key)
        assert again.status_code == 201 and again.json()["payment_id"] == order["payment_id"]
        pay_sim.wechat("pay", {"out_trade_no": order["out_trade_no"]})
        paid = wait_for(lambda: (o := order_of(server, tokens, order["payment_id"]))["status"] == "paid" and o)
        assert paid["paid_at"]
        final = wait_for(lambda: (c := case_of(server, tokens, case_no))["status"] == "closed" and issued(c) and c, 60)
    finally:
        platform_sim.control("script", {"script": "happy"})
        platform_sim.control("config", {"step_delay_s": 60})
    statuses = [t["status"] for t in final["timeline"]]
    assert statuses.index("approved") > statuses.index("in_review")
    notes = [t["note"] for t in final["timeline"]]
    assert "已缴费 20.00 元（微信支付）" in notes and any(n.startswith("缴费电子票据已开具") for n in notes)
    assert final["fee"]["paid"] is True and final["next_action"] is None
    receipt = final["fee"]["receipt"]
    assert receipt["receipt_no"] and receipt["verify_url"].startswith("https://")
    seen = next(c for c in platform_sim.control("cases")["cases"] if c["case_no"] == case_no)
    assert [p["out_trade_no"] for p in seen["payments"]] == [order["out_trade_no"]]
    assert seen["payments"][0]["amount_fen"] == 2000 and seen["payments"][0]["channel"] == "wechat"
    assert len(seen["receipts"]) == 1
    inbox = httpx.get(f"{server.url}/api/v1/inbox", headers=auth(tokens)).json()
    kinds = [item.get("kind") or item.get("title") for item in inbox["items"]]
    assert any("已缴费" in str(k) or k == "fee_paid" for k in kinds), inbox
    assert rows_of_case(server, case_no, "outbox", "fee_paid") == 1


def test_a_hundred_identical_notifies_are_one_payment(server, wechat_sim, platform_sim, pay_sim):
    tokens, case_no = fee_due(server, wechat_sim, "缴费乙", platform=platform_sim)
    order = pay_order(server, tokens, case_no, "wechat").json()
    headers, body = signed_notify(pay_sim, wechat_resource(order))
    with ThreadPoolExecutor(25) as pool:
        answers = list(pool.map(lambda _: post_wechat_notify(server, headers, body), range(100)))
    assert all(a.status_code == 204 for a in answers), {a.status_code: a.text for a in answers}
    assert db_order(server, order["out_trade_no"])["state"] == "paid"
    assert rows_of_case(server, case_no, "outbox", "fee_paid") == 1
    assert rows_of_case(server, case_no, "notifications", "fee_paid") == 1
    assert paid_events(server, order["out_trade_no"]) == 1
    # The platform hears of it once, and the receipt is asked for once.
    wait_for(lambda: case_of(server, tokens, case_no)["fee"]["receipt"], timeout=30)
    assert rows_of_case(server, case_no, "outbox", "request_receipt") == 1
    seen = next(c for c in platform_sim.control("cases")["cases"] if c["case_no"] == case_no)
    assert len(seen["payments"]) == 1 and len(seen["receipts"]) == 1


@pytest.mark.parametrize(
    "what, resource_overrides, options, status",
    [
        ("wrong amount", {"total": 1999}, {}, 409),
        ("another merchant", {"mchid": "1900000999"}, {}, 409),
        ("another app", {"appid": "wx_not_ours"}, {}, 409),
        ("stale timestamp", {}, {"timestamp": int(time.time()) - 600}, 400),
        ("forged signature", {}, {"use_wrong_key": True}, 400),
        ("signature test", {}, {"signature_prefix": "WECHATPAY/SIGNTEST/"}, 400),
    ],
)
def test_a_bad_wechat_notify_is_refused_and_changes_nothing(
    server, wechat_sim, pay_sim, what, resource_overrides, options, status
):
    tokens, case_no = fee_due(server, wechat_sim, "缴费丙")
    order = pay_order(server, tokens, case_no, "wechat").json()
    headers, body = signed_notify(pay_sim, wechat_resource(order, **resource_overrides), **options)
    answer = post_wechat_notify(server, headers, body)
    assert answer.status_code == status, (what, answer.text)
    assert answer.json()["code"] == "FAIL" and answer.json()["message"]
    assert db_order(server, order["out_trade_no"])["state"] == "paying"
    tampered = body.replace('"TRANSACTION.SUCCESS"', '"TRANSACTION.SUCCESS" ')
    if tampered != body:
        assert post_wechat_notify(server, headers, tampered).status_code == 400


def test_an_alipay_notify_signed_over_sign_type_is_refused(server, wechat_sim, pay_sim):
    tokens, case_no = fee_due(server, wechat_sim, "缴费丁")
    order = pay_order(server, tokens, case_no, "alipay_qr").json()
    fields = {
        "notify_time": datetime.now(CHINA).strftime("%Y-%m-%d %H:%M:%S"),
        "notify_type": "trade_status_sync",
        "notify_id": uuid.uuid4().hex,
        "app_id": ALIPAY_APP_ID,
        "charset": "utf-8",
        "version": "1.0",
        "trade_no": "2026113022001" + uuid.uuid4().hex[:15],
        "out_trade_no": order["out_trade_no"],
        "seller_id": ALIPAY_SELLER,
        "trade_status": "TRADE_SUCCESS",
        "total_amount": "20.00",
        "gmt_payment": datetime.now(CHINA).strftime("%Y-%m-%d %H:%M:%S"),
    }
    bad = pay_sim.alipay("sign-notify", {"fields": fields, "sign_type_in_content": True})["form"]
    answer = httpx.post(f"{server.url}/pay/notify/alipay", data=bad, timeout=30)
    assert answer.status_code == 400 and answer.text != "success"
    assert db_order(server, order["out_trade_no"])["state"] == "paying"
    good = pay_sim.alipay("sign-notify", {"fields": fields})["form"]
    answer = httpx.post(f"{server.url}/pay/notify/alipay", data=good, timeout=30)
    assert answer.status_code == 200 and answer.text == "success"
    assert db_order(server, order["out_trade_no"])["state"] == "paid"


def test_alipay_by_qr_code_and_switching_channel(server, wechat_sim, pay_sim):
    tokens, case_no = fee_due(server, wechat_sim, "缴费戊", amount_fen=1)
    wechat = pay_order(server, tokens, case_no, "wechat").json()
    qr = pay_order(server, tokens, case_no, "alipay_qr")
    assert qr.status_code == 201, qr.text
    qr = qr.json()
    assert qr["payment_id"] != wechat["payment_id"] and qr["amount_fen"] == 1
    assert qr["qr_code"].startswith("https://qr.alipay.com/")
    assert base64.b64decode(qr["qr_png_base64"]).startswith(b"\x89PNG")
    # Switching closed the WeChat order, at WeChat Pay first.
    assert order_of(server, tokens, wechat["payment_id"])["status"] == "closed"
    assert pay_sim.wechat(f"orders/{wechat['out_trade_no']}")["trade_state"] == "CLOSED"
    pay_sim.alipay("pay", {"out_trade_no": qr["out_trade_no"]})
    wait_for(lambda: order_of(server, tokens, qr["payment_id"])["status"] == "paid")
    # The fee is paid: asking again gives the paid order, never a second one.
    again = pay_order(server, tokens, case_no, "wechat")
    assert again.status_code == 201 and again.json()["payment_id"] == qr["payment_id"]
    listed = httpx.get(f"{server.url}/api/v1/payments", params={"case_no": case_no}, headers=auth(tokens)).json()
    assert {o["payment_id"]: o["status"] for o in listed["items"]} == {
        qr["payment_id"]: "paid",
        wechat["payment_id"]: "closed",
    }


def test_alipay_wap_gives_a_signed_checkout_link(server, wechat_sim, pay_sim):
    tokens, case_no = fee_due(server, wechat_sim, "缴费己")
    order = pay_order(server, tokens, case_no, "alipay_wap").json()
    page = httpx.get(order["pay_url"], timeout=30)
    assert page.status_code == 200 and order["out_trade_no"] in page.text


def test_no_fee_no_order_and_nobody_elses_case(server, wechat_sim):
    tokens, case_no = submit_renewal(server, wechat_sim, "缴费庚")
    refused = pay_order(server, tokens, case_no, "wechat")
    assert refused.status_code == 409 and refused.json()["code"] == "no_fee_due"
    other_tokens, other_case = fee_due(server, wechat_sim, "缴费辛")
    stranger = pay_order(server, tokens, other_case, "wechat")
    assert stranger.status_code == 404 and stranger.json()["code"] == "case_not_found"
    order = pay_order(server, other_tokens, other_case, "wechat").json()
    peek = httpx.get(f"{server.url}/api/v1/payments/{order['payment_id']}", headers=auth(tokens))
    assert peek.status_code == 404 and peek.json()["code"] == "payment_not_found"
    bad = httpx.post(
        f"{server.url}/api/v1/cases/{other_case}/payments",
        json={"channel": "cash"},
        headers={**auth(other_tokens), "Idempotency-Key": uuid.uuid4().hex},
    )
    assert bad.status_code == 422 and "channel" in bad.json()["details"]["fields"]
    keyless = httpx.post(
        f"{server.url}/api/v1/cases/{other_case}/payments", json={"channel": "wechat"}, headers=auth(other_tokens)
    )
    assert keyless.status_code == 400 and keyless.json()["code"] == "idempotency_key_required"


def test_a_lost_notify_is_recovered_by_the_query_sweep(server, wechat_sim, pay_sim):
    tokens, case_no = fee_due(server, wechat_sim, "缴费壬")
    order = pay_order(server, tokens, case_no, "wechat").json()
    pay_sim.wechat("notify-mode", {"out_trade_no": order["out_trade_no"], "mode": "lose"})
    pay_sim.wechat("pay", {"out_trade_no": order["out_trade_no"]})
    time.sleep(0.5)
    assert db_order(server, order["out_trade_no"])["state"] == "paying"
    # The sweep asks about orders paying for longer than PAYMENT_QUERY_AFTER_S.
    ago = _ten_minutes_ago(server)
    server.database.query(
        f"UPDATE payment_orders SET updated_at = {ago} WHERE out_trade_no = '{order['out_trade_no']}'"
    )
    swept = server.cli("sweep", "payments")
    assert swept.returncode == 0, swept.stderr
    assert db_order(server, order["out_trade_no"])["state"] == "paid"
    case = case_of(server, tokens, case_no)
    assert case["fee"]["paid"] is True


def _ten_minutes_ago(server) -> str:
    if server.database.url.startswith("sqlite"):
        return "strftime('%Y-%m-%d %H:%M:%f+00:00', 'now', '-10 minutes')"
    return "now() - interval '10 minutes'"


def test_a_payment_after_close_is_refunded_with_an_alert(server, wechat_sim, pay_sim):
    tokens, case_no = fee_due(server, wechat_sim, "缴费癸")
    first = pay_order(server, tokens, case_no, "wechat").json()
    second = pay_order(server, tokens, case_no, "alipay_qr").json()  # closes the first at WeChat Pay
    assert order_of(server, tokens, first["payment_id"])["status"] == "closed"
    pay_sim.wechat("pay", {"out_trade_no": first["out_trade_no"], "force": True})
    wait_for(lambda: db_order(server, first["out_trade_no"])["state"] in ("refunding", "refunded"))
    assert server.cli("sweep", "refunds").returncode == 0
    wait_for(lambda: db_order(server, first["out_trade_no"])["state"] == "refunded", timeout=30)
    assert db_order(server, first["out_trade_no"])["refunded_fen"] == 2000
    assert order_of(server, tokens, second["payment_id"])["status"] == "paying"  # the fee is still due
    finance = official_client(server, "psb", "finance")
    alerts = finance.get("/console/api/payments/alerts").json()["items"]
    assert any(a["kind"] == "paid_after_close" and a["out_trade_no"] == first["out_trade_no"] for a in alerts)
    clerk = official_client(server, "psb")
    refused = clerk.get("/console/api/payments/alerts")
    assert refused.status_code == 403 and refused.json()["code"] == "finance_role_required"


def test_a_rejected_case_gets_its_fee_back_once(server, wechat_sim, pay_sim):
    tokens, case_no = fee_due(server, wechat_sim, "缴费子")
    order = pay_order(server, tokens, case_no, "wechat").json()
    pay_sim.wechat("pay", {"out_trade_no": order["out_trade_no"]})
    wait_for(lambda: db_order(server, order["out_trade_no"])["state"] == "paid")
    platform_callback(server, case_no, 4, "rejected", {"reason": "不符合换领条件"})
    platform_callback(server, case_no, 4, "rejected", {"reason": "不符合换领条件"})  # a duplicate
    for _ in range(2):  # the refund job, twice: the channel refunds once (out_refund_no)
        assert server.cli("sweep", "refunds").returncode == 0
    wait_for(lambda: db_order(server, order["out_trade_no"])["state"] == "refunded", timeout=30)
    held = pay_sim.wechat(f"orders/{order['out_trade_no']}")
    assert len(held.get("refunds", [])) == 1
    final = case_of(server, tokens, case_no)
    assert any(t["note"] == "已退费 20.00 元" for t in final["timeline"])
    assert order_of(server, tokens, order["payment_id"])["refunds"][0]["status"] == "success"


def test_reconciliation_by_hand_and_in_the_console(server, wechat_sim, pay_sim):
    tokens, case_no = fee_due(server, wechat_sim, "缴费丑")
    order = pay_order(server, tokens, case_no, "wechat").json()
    pay_sim.wechat("pay", {"out_trade_no": order["out_trade_no"]})
    wait_for(lambda: db_order(server, order["out_trade_no"])["state"] == "paid")
    today = datetime.now(CHINA).date().isoformat()
    pay_sim.wechat(
        "bill-rows",
        {
            "bill_date": today,
            "rows": [{"kind": "pay", "out_trade_no": "ZB20991231000000LONGLONG01", "amount_fen": 777}],
        },
    )
    run = server.cli("reconcile", "--date", today, "--channel", "wechat")
    assert run.returncode == 3, run.stdout + run.stderr  # not balanced: one 长款
    assert "长款 1" in run.stdout
    finance = official_client(server, "psb", "finance")
    reports = finance.get("/console/api/payments/reconciliation", params={"channel": "wechat", "date": today}).json()
    report = reports["items"][0]
    assert report["summary"]["payments"]["channel_only"] == 1
    assert any(i["kind"] == "channel_only" and i["channel_fen"] == 777 for i in report["items"])
    assert not any(i.get("out_trade_no") == order["out_trade_no"] for i in report["items"])  # ours matched
    bad = server.cli("reconcile", "--date", "yesterday")
    assert bad.returncode == 2 and "--date" in bad.stderr


def test_amounts_at_both_ends_are_exact(server, wechat_sim, pay_sim):
    tokens, case_no = fee_due(server, wechat_sim, "缴费寅", amount_fen=1)
    order = pay_order(server, tokens, case_no, "alipay_qr").json()
    pay_sim.alipay("pay", {"out_trade_no": order["out_trade_no"]})
    wait_for(lambda: db_order(server, order["out_trade_no"])["state"] == "paid")
    assert pay_sim.alipay(f"trades/{order['out_trade_no']}")["total_amount"] == "0.01"


@pytest.fixture
def crash_server(tmp_path_factory, databases, wechat_sim):
    """A server of its own, to be killed."""
    srv, _ = make_server(tmp_path_factory, databases, wechat_sim, "paykill", with_workers=True)
    assert srv.cli("load-demo").returncode == 0
    yield srv
    srv.stop()


def test_a_server_killed_before_it_commits_the_notify_ends_paid_once(crash_server, wechat_sim, pay_sim):
    server = crash_server
    tokens, case_no = fee_due(server, wechat_sim, "缴费卯")
    order = pay_order(server, tokens, case_no, "wechat").json()
    # The server dies (SIGKILL: no clean-up, nothing committed of what it was doing) ...
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait()
    # ... while the payer pays: WeChat Pay's notify finds nobody and keeps retrying on its schedule.
    pay_sim.wechat("pay", {"out_trade_no": order["out_trade_no"]})
    wait_for(lambda: len(pay_sim.wechat(f"deliveries?out_trade_no={order['out_trade_no']}")["deliveries"]) >= 3)
    assert db_order(server, order["out_trade_no"])["state"] == "paying"
    # The server comes back on its address; the next retry lands and is applied once.
    port = server.url.rsplit(":", 1)[1]
    restarted = spawn(["serve", "--port", port], env=server.env, cwd=server.cwd, log_path=server.cwd / "restart.log")
    server.proc, server.log_path = restarted.proc, restarted.log_path
    wait_healthy(server)
    wait_for(lambda: db_order(server, order["out_trade_no"])["state"] == "paid", timeout=60)
    pay_sim.wechat("resend", {"out_trade_no": order["out_trade_no"]})  # and once more, for good measure
    time.sleep(0.5)
    assert paid_events(server, order["out_trade_no"]) == 1
    assert rows_of_case(server, case_no, "outbox", "fee_paid") == 1
    assert rows_of_case(server, case_no, "notifications", "fee_paid") == 1
