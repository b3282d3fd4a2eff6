"""The embedded default pays offline: the in-process WeChat Pay, Alipay, WeChat and platform
simulators (keys generated into var/) take a citizen from a fee to the e-receipt, as `make run` does."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Server, WeChatSim, base_env, start_server
from tests.helpers import auth, case_of, submit_renewal, wait_for


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, databases) -> Iterator[Server]:
    """A server on the embedded default: no channel configured, every simulator in-process."""
    database = databases.new("sqlite")
    srv = start_server(
        base_env(DATABASE_URL=database.url, PAYMENT_SIM_TIME_SCALE="0.01", PUSH_QUIET_HOURS=""),
        tmp_path_factory.mktemp("offline-pay"),
        database=database,
    )
    assert srv.cli("load-demo").returncode == 0
    yield srv
    srv.stop()


def sim(server: Server, name: str, path: str, payload: dict) -> dict:
    response = httpx.post(f"{server.url}/_sim/{name}/__sim__/{path}", json=payload, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_fee_is_paid_offline_on_the_embedded_default(embedded):
    server = embedded
    wechat = WeChatSim(server.url + "/_sim/wechat", None)
    sim(server, "platform", "script", {"script": "fee"})
    sim(server, "platform", "config", {"step_delay_s": 0.3})
    tokens, case_no = submit_renewal(server, wechat, "离线缴费")
    wait_for(lambda: case_of(server, tokens, case_no)["fee"]["notice_no"], timeout=60)
    created = httpx.post(
        f"{server.url}/api/v1/cases/{case_no}/payments",
        json={"channel": "wechat"},
        headers={**auth(tokens), "Idempotency-Key": uuid.uuid4().hex},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    order = created.json()
    assert sim(server, "wechatpay", "pay-sign-check", order["request_payment"])["valid"] is True
    sim(server, "wechatpay", "pay", {"out_trade_no": order["out_trade_no"]})
    final = wait_for(
        lambda: (c := case_of(server, tokens, case_no))["status"] == "closed" and c["fee"]["receipt"] and c, timeout=60
    )
    assert final["fee"]["paid"] is True and final["fee"]["payment"]["status"] == "paid"
    # Alipay's QR code works offline too (for a payer outside WeChat): a new order on another case.
    tokens2, case2 = submit_renewal(server, wechat, "离线扫码")
    wait_for(lambda: case_of(server, tokens2, case2)["fee"]["notice_no"], timeout=60)
    qr = httpx.post(
        f"{server.url}/api/v1/cases/{case2}/payments",
        json={"channel": "alipay_qr"},
        headers={**auth(tokens2), "Idempotency-Key": uuid.uuid4().hex},
        timeout=30,
    ).json()
    sim(server, "alipay", "pay", {"out_trade_no": qr["out_trade_no"]})
    wait_for(lambda: case_of(server, tokens2, case2)["fee"]["paid"], timeout=60)
    sim(server, "platform", "script", {"script": "happy"})
