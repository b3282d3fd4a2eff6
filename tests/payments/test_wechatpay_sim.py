"""WeChat Pay v3 adapter against the simulator, a separate process over real HTTP, with real keys.

The merchant's key and APIv3 key are made here and registered with the simulator; the simulator
answers with its platform key (a WeChat Pay public key, or a certificate). Notifies arrive at a tiny
HTTP receiver in this process; the notify schedule is compressed 100 times (`--time-scale 0.01`).
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from core.china_time import CHINA
from payments.base import NotifyRejected, PaymentError
from payments.wechatpay import WeChatPay, WeChatPayConfig, load_platform_key
from tests.conftest import SimServer, start_simulator

APPID = "wx_sim_miniprogram"
OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"
TIME_SCALE = 0.01
MERCHANT_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
MERCHANT_PUBLIC_PEM = (
    MERCHANT_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)


class Receiver:
    """The merchant's notify endpoint: records every POST, answers the queued statuses, then 204."""

    def __init__(self, statuses: tuple[int, ...] = ()):
        self.received: list[tuple[float, dict[str, str], bytes]] = []
        self.statuses = list(statuses)
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.received.append((time.monotonic(), dict(self.headers.items()), body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 204
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/pay/notify/wechat"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    async def wait(self, count: int, timeout: float = 10.0) -> list[tuple[float, dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            assert time.monotonic() < deadline, f"{len(self.received)} of {count} notifies arrived"
            await asyncio.sleep(0.02)
        return list(self.received)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


_sims: dict[str, SimServer] = {}


@pytest.fixture(scope="module")
def sims(tmp_path_factory) -> Iterator[dict[str, SimServer]]:
    yield _sims
    for sim in _sims.values():
        sim.process.terminate()
        sim.process.wait(10)
    _sims.clear()


def _sim(sims: dict[str, SimServer], tmp_path_factory, key_mode: str) -> SimServer:
    if key_mode not in sims:
        url, process = start_simulator(
            "payments.wechatpay_sim",
            tmp_path_factory.mktemp(f"wechatpay-sim-{key_mode}"),
            "--key-mode",
            key_mode,
            "--time-scale",
            str(TIME_SCALE),
        )
        sims[key_mode] = SimServer(url, process)
    return sims[key_mode]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.stop()


def _register(sim: SimServer, notify_url: str, *, appids: tuple[str, ...] = (APPID,)) -> tuple[WeChatPayConfig, dict]:
    """A new merchant (its own mchid) registered with the simulator; its config for the adapter."""
    mchid = "19" + "".join(secrets.choice("0123456789") for _ in range(8))
    serial, apiv3_key = secrets.token_hex(20), secrets.token_hex(16)
    platform = sim.control(
        "merchants",
        {
            "mchid": mchid,
            "appids": list(appids),
            "serial_no": serial.upper(),
            "public_key_pem": MERCHANT_PUBLIC_PEM,
            "apiv3_key": apiv3_key,
        },
    )
    pem = platform["platform_certificate_pem"] or platform["platform_public_key_pem"]
    config = WeChatPayConfig(
        api_base=sim.url,
        mchid=mchid,
        appid=appids[0],
        serial_no=serial.upper(),
        private_key=MERCHANT_KEY,
        apiv3_key=apiv3_key.encode(),
        platform_keys={platform["platform_serial"]: load_platform_key(pem)},
        notify_url=notify_url,
    )
    return config, platform


def _no() -> str:
    return "ZB" + secrets.token_hex(8).upper()


def _expiry() -> datetime:
    return datetime.now(CHINA) + timedelta(minutes=30)


async def _prepay(pay: WeChatPay, out_trade_no: str, amount_fen: int = 1, expires_at: datetime | None = None) -> str:
    return await pay.jsapi_prepay(
        out_trade_no=out_trade_no,
        description="不动产登记费",
        amount_fen=amount_fen,
        payer_openid=OPENID,
        expires_at=expires_at or _expiry(),
    )


@pytest.fixture
def public_key_sim(sims, tmp_path_factory) -> SimServer:
    return _sim(sims, tmp_path_factory, "public_key")


@pytest.fixture
async def merchant(public_key_sim, receiver) -> tuple[SimServer, WeChatPay]:
    config, _ = _register(public_key_sim, receiver.url)
    pay = WeChatPay(config)
    yield public_key_sim, pay
    await pay.aclose()


# -- the whole payment ---------------------------------------------------------------------


@pytest.mark.parametrize("key_mode", ["public_key", "certificate"])
@pytest.mark.parametrize("amount_fen", [1, 9_999_999_999])
async def test_pay_notify_query_refund_and_bill(sims, tmp_path_factory, receiver, key_mode, amount_fen) -> None:
    sim = _sim(sims, tmp_path_factory, key_mode)
    config, platform = _register(sim, receiver.url)
    assert platform["key_mode"] == key_mode
    if key_mode == "public_key":
        assert platform["platform_serial"].startswith("PUB_KEY_ID_") and platform["platform_certificate_pem"] is None
    else:
        assert "BEGIN CERTIFICATE" in platform["platform_certificate_pem"]
    pay = WeChatPay(config)
    try:
        no = _no()
        # The same order again (the same body: one expiry, or a second boundary between the two
        # calls makes a different `time_expire`): the same prepay_id.
        expires = _expiry()
        prepay_id = await _prepay(pay, no, amount_fen, expires)
        assert await _prepay(pay, no, amount_fen, expires) == prepay_id
        params = pay.pay_params(prepay_id)
        assert sim.control("pay-sign-check", params)["valid"] is True
        forged = {**params, "paySign": pay.pay_params("wx" + prepay_id[2:])["paySign"]}
        assert sim.control("pay-sign-check", forged)["valid"] is False
        assert (await pay.query(no)).state == "pending"

        sim.control("pay", {"out_trade_no": no})
        (_, headers, body), *_ = await receiver.wait(1)
        notify = pay.parse_notify(headers, body)
        trade = notify.trade
        assert trade.state == "paid" and trade.out_trade_no == no and trade.amount_fen == amount_fen
        assert (trade.merchant_id, trade.app_id, trade.payer) == (config.mchid, APPID, OPENID)
        assert trade.transaction_id and trade.paid_at is not None

        queried = await pay.query(no)
        assert queried.state == "paid" and queried.amount_fen == amount_fen
        assert queried.transaction_id == trade.transaction_id
        with pytest.raises(PaymentError) as caught:
            await pay.close(no)
        assert caught.value.code == "ORDERPAID" and not caught.value.retryable

        refund = await pay.refund(
            out_trade_no=no, out_refund_no="RF" + no, amount_fen=amount_fen, total_fen=amount_fen, reason="撤回申请"
        )
        assert refund.state == "processing" and refund.amount_fen == amount_fen and refund.refund_id
        again = await pay.refund(
            out_trade_no=no, out_refund_no="RF" + no, amount_fen=amount_fen, total_fen=amount_fen, reason="撤回申请"
        )
        assert again.refund_id == refund.refund_id  # idempotent by out_refund_no
        (_, headers, body) = (await receiver.wait(2))[1]
        refunded = pay.parse_notify(headers, body).refund
        assert refunded.state == "success" and refunded.amount_fen == amount_fen and refunded.out_trade_no == no
        assert (await pay.query_refund("RF" + no)).state == "success"
        assert (await pay.query(no)).state == "refunded"

        rows = await pay.trade_bill(datetime.now(CHINA).date())
        assert [(r.kind, r.out_trade_no, r.amount_fen) for r in rows] == [
            ("pay", no, amount_fen),
            ("refund", no, amount_fen),
        ]
        assert rows[1].out_refund_no == "RF" + no and rows[0].transaction_id == trade.transaction_id
    finally:
        await pay.aclose()


async def test_a_tampered_bill_is_refused_and_a_day_without_trades_is_empty(merchant, receiver) -> None:
    sim, pay = merchant
    no = _no()
    await _prepay(pay, no, 1234)
    sim.control("pay", {"out_trade_no": no})
    today = datetime.now(CHINA).date()
    sim.control("bill-tamper", {"bill_date": today.isoformat(), "mchid": pay.config.mchid})
    with pytest.raises(PaymentError) as caught:
        await pay.trade_bill(today)
    assert caught.value.code == "BILL_HASH_MISMATCH"
    assert [r.amount_fen for r in await pay.trade_bill(today)] == [1234]  # the next download is whole
    assert await pay.trade_bill(today - timedelta(days=40)) == []


async def test_extra_bill_rows_for_reconciliation(merchant) -> None:
    sim, pay = merchant
    day = date.today() - timedelta(days=3)
    sim.control(
        "bill-rows",
        {
            "bill_date": day.isoformat(),
            "mchid": pay.config.mchid,
            "rows": [
                {"kind": "pay", "out_trade_no": "ZBUNKNOWN0001", "amount_fen": 999_999_999_999},
                {"kind": "refund", "out_trade_no": "ZBUNKNOWN0001", "amount_fen": 1, "out_refund_no": "RFX"},
            ],
        },
    )
    rows = await pay.trade_bill(day)
    assert [(r.kind, r.amount_fen, r.out_refund_no) for r in rows] == [
        ("pay", 999_999_999_999, None),
        ("refund", 1, "RFX"),
    ]
    assert rows[0].at == datetime(day.year, day.month, day.day, 12, tzinfo=CHINA)


# -- refusals by the channel ---------------------------------------------------------------


async def test_prepay_refusals(merchant, receiver) -> None:
    sim, pay = merchant
    no = _no()
    await _prepay(pay, no, 100)
    with pytest.raises(PaymentError) as caught:
        await _prepay(pay, no, 200)  # the same out_trade_no, another body
    assert (caught.value.code, caught.value.status, caught.value.retryable) == ("INVALID_REQUEST", 400, False)
    with pytest.raises(PaymentError) as caught:
        await _prepay(pay, "short", 100)
    assert caught.value.code == "PARAM_ERROR"
    with pytest.raises(PaymentError) as caught:
        await _prepay(pay, _no(), 0)
    assert caught.value.code == "PARAM_ERROR"

    other_app = WeChatPay(WeChatPayConfig(**{**pay.config.__dict__, "appid": "wx_not_bound"}))
    forged = WeChatPay(WeChatPayConfig(**{**pay.config.__dict__, "serial_no": "0" * 40}))
    strange = WeChatPay(WeChatPayConfig(**{**pay.config.__dict__, "mchid": "1999999999"}))
    try:
        with pytest.raises(PaymentError) as caught:
            await _prepay(other_app, _no())
        assert caught.value.code == "APPID_MCHID_NOT_MATCH"
        for client in (forged, strange):
            with pytest.raises(PaymentError) as caught:
                await client.query(no)
            assert (caught.value.code, caught.value.status) == ("SIGN_ERROR", 401)
    finally:
        for client in (other_app, forged, strange):
            await client.aclose()


async def test_unknown_orders_and_refunds(merchant) -> None:
    _, pay = merchant
    assert (await pay.query(_no())).state == "not_found"
    with pytest.raises(PaymentError) as caught:
        await pay.query_refund("RFNOTHING")
    assert (caught.value.code, caught.value.status) == ("RESOURCE_NOT_EXISTS", 404)
    with pytest.raises(PaymentError) as caught:
        await pay.refund(out_trade_no=_no(), out_refund_no="RF1", amount_fen=1, total_fen=1, reason="")
    assert caught.value.code == "RESOURCE_NOT_EXISTS"


async def test_refund_beyond_the_paid_amount_is_refused(merchant, receiver) -> None:
    sim, pay = merchant
    no = _no()
    await _prepay(pay, no, 1000)
    sim.control("pay", {"out_trade_no": no})
    await pay.refund(out_trade_no=no, out_refund_no="RFA" + no, amount_fen=600, total_fen=1000, reason="")
    with pytest.raises(PaymentError) as caught:
        await pay.refund(out_trade_no=no, out_refund_no="RFB" + no, amount_fen=401, total_fen=1000, reason="")
    assert caught.value.code == "INVALID_REQUEST"
    partial = await pay.refund(out_trade_no=no, out_refund_no="RFC" + no, amount_fen=400, total_fen=1000, reason="")
    assert partial.amount_fen == 400


async def test_close_then_pay_after_close_and_payment_failure(merchant, receiver) -> None:
    sim, pay = merchant
    closed, failed = _no(), _no()
    await _prepay(pay, closed)
    await pay.close(closed)
    await pay.close(closed)  # closing again is fine
    assert (await pay.query(closed)).state == "closed"
    response = httpx.post(f"{sim.url}/__sim__/pay", json={"out_trade_no": closed}, timeout=10)
    assert response.status_code == 409
    sim.control("pay", {"out_trade_no": closed, "force": True})  # the payer paid while we closed
    assert (await pay.query(closed)).state == "paid"
    (_, headers, body), *_ = await receiver.wait(1)
    assert pay.parse_notify(headers, body).trade.out_trade_no == closed

    await _prepay(pay, failed)
    sim.control("fail", {"out_trade_no": failed})
    trade = await pay.query(failed)
    assert trade.state == "closed" and trade.raw["trade_state"] == "PAYERROR"


# -- notify delivery -----------------------------------------------------------------------


async def test_notify_is_retried_on_the_compressed_schedule(public_key_sim) -> None:
    receiver = Receiver(statuses=(500, 500))
    try:
        config, _ = _register(public_key_sim, receiver.url)
        pay = WeChatPay(config)
        no = _no()
        await _prepay(pay, no)
        public_key_sim.control("pay", {"out_trade_no": no})
        received = await receiver.wait(3)
        await asyncio.sleep(0.5)  # nothing more after the 204
        assert len(receiver.received) == 3
        gaps = [b[0] - a[0] for a, b in zip(received, received[1:], strict=False)]
        assert all(gap >= 15 * TIME_SCALE * 0.9 for gap in gaps), gaps
        ids = {pay.parse_notify(headers, body).notify_id for _, headers, body in received}
        assert len(ids) == 1  # one notify, three deliveries, each verifiable (signed afresh)
        log = public_key_sim.control(f"deliveries?out_trade_no={no}")["deliveries"]
        assert [(d["attempt"], d["status"]) for d in log] == [(1, 500), (2, 500), (3, 204)]
        await pay.aclose()
    finally:
        receiver.stop()


async def test_lost_duplicate_and_delayed_notifies(merchant, receiver) -> None:
    sim, pay = merchant
    lost, twice, late = _no(), _no(), _no()
    for no in (lost, twice, late):
        await _prepay(pay, no)
    sim.control("notify-mode", {"out_trade_no": lost, "mode": "lose"})
    sim.control("pay", {"out_trade_no": lost})
    await asyncio.sleep(0.4)
    assert receiver.received == []
    assert [n["mode"] for n in sim.control(f"deliveries?out_trade_no={lost}")["notifies"]] == ["lose"]
    assert (await pay.query(lost)).state == "paid"  # what a reconciling job finds

    sim.control("notify-mode", {"out_trade_no": twice, "mode": "duplicate", "count": 3})
    sim.control("pay", {"out_trade_no": twice})
    received = await receiver.wait(3)
    notifies = [pay.parse_notify(headers, body) for _, headers, body in received]
    assert {n.trade.out_trade_no for n in notifies} == {twice} and len({n.notify_id for n in notifies}) == 1

    sim.control("notify-mode", {"out_trade_no": late, "mode": "delay", "delay_s": 50})
    started = time.monotonic()
    sim.control("pay", {"out_trade_no": late})
    (arrived, headers, body) = (await receiver.wait(4))[3]
    assert arrived - started >= 50 * TIME_SCALE * 0.9
    assert pay.parse_notify(headers, body).trade.out_trade_no == late

    sim.control("notify-mode", {"out_trade_no": lost, "mode": "normal"})
    sim.control("resend", {"out_trade_no": lost})
    (_, headers, body) = (await receiver.wait(5))[4]
    assert pay.parse_notify(headers, body).trade.out_trade_no == lost


# -- notifies forged through the simulator's own builder -----------------------------------


def _signed(sim: SimServer, pay: WeChatPay, **overrides) -> tuple[dict[str, str], bytes]:
    resource = {
        "appid": APPID,
        "mchid": pay.config.mchid,
        "out_trade_no": "ZB000000000001",
        "transaction_id": "4200000985202103031441826014",
        "trade_type": "JSAPI",
        "trade_state": "SUCCESS",
        "success_time": datetime.now(CHINA).isoformat(timespec="seconds"),
        "payer": {"openid": OPENID},
        "amount": {"total": 100, "payer_total": 100, "currency": "CNY", "payer_currency": "CNY"},
    }
    resource.update(overrides.pop("resource", {}))
    made = sim.control(
        "sign-notify",
        {"mchid": pay.config.mchid, "event_type": "TRANSACTION.SUCCESS", "resource": resource, **overrides},
    )
    return made["headers"], made["body"].encode()


async def test_forged_notifies_are_refused(merchant) -> None:
    sim, pay = merchant
    assert pay.parse_notify(*_signed(sim, pay)).trade.amount_fen == 100
    cases = [
        ({"timestamp": int(time.time()) - 301}, "stale"),
        ({"signature_prefix": "WECHATPAY/SIGNTEST/"}, "test_signature"),
        ({"use_wrong_key": True}, "signature"),
    ]
    for overrides, reason in cases:
        with pytest.raises(NotifyRejected) as caught:
            pay.parse_notify(*_signed(sim, pay, **overrides))
        assert caught.value.reason == reason
    headers, body = _signed(sim, pay)
    with pytest.raises(NotifyRejected) as caught:
        pay.parse_notify({**headers, "Wechatpay-Serial": "PUB_KEY_ID_0114232100000000000000000000"}, body)
    assert caught.value.reason == "unknown_serial"
    with pytest.raises(NotifyRejected) as caught:
        pay.parse_notify(headers, body.replace(b'"summary":"', b'"summary":"x'))
    assert caught.value.reason == "signature"


async def test_notify_values_come_back_for_the_caller_to_compare(merchant) -> None:
    """Wrong amount, another merchant or appid: verified notifies whose values differ from the order."""
    sim, pay = merchant
    trade = pay.parse_notify(*_signed(sim, pay, resource={"amount": {"total": 99}, "appid": "wx_other"})).trade
    assert (trade.amount_fen, trade.app_id) == (99, "wx_other")
    trade = pay.parse_notify(*_signed(sim, pay, resource={"mchid": "1900000000"})).trade
    assert trade.merchant_id == "1900000000"
