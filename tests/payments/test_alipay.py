"""The Alipay adapter against independent computations and against the simulator over real HTTP.

Signatures are checked against alipay-sdk-python's own signer (pure-Python rsa) and the openssl CLI,
not against our signer. The simulator runs as its own process (`python -m payments.alipay_sim`) behind a
gateway URL that carries a port and a path prefix; notifies go to a tiny HTTP receiver in this process.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import threading
import time
import zipfile
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from alipay.aop.api.domain.AlipayTradePrecreateModel import AlipayTradePrecreateModel
from alipay.aop.api.request.AlipayTradePrecreateRequest import AlipayTradePrecreateRequest
from alipay.aop.api.util.SignatureUtils import get_sign_content as sdk_sign_content
from alipay.aop.api.util.SignatureUtils import sign_with_rsa2 as sdk_sign_with_rsa2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from core.china_time import CHINA
from payments.alipay import (
    Alipay,
    AlipayConfig,
    load_private_key,
    load_public_key,
    parse_bill_zip,
    sign_content,
    sign_rsa2,
    signed_response_node,
    verify_rsa2,
)
from payments.base import NotifyRejected, PaymentError, fen_to_yuan, yuan_to_fen
from tests.conftest import free_port, start_simulator

APP_ID = "2021000000000001"
PREFIX = "/_sim/alipay"


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


MERCHANT_KEY = _new_key()
OTHER_KEY = _new_key()


def _pkcs1_body(key: rsa.RSAPrivateKey) -> str:
    """The bare base64 body of a PKCS#1 PEM: what the SDK's signer takes."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()
    return "".join(line for line in pem.splitlines() if not line.startswith("-----"))


def _public_pem(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


# -- signatures against independent computations --------------------------------------------

VECTORS = [
    "app_id=2014072300007148&biz_content={}&charset=utf-8&method=alipay.trade.query",
    'biz_content={"out_trade_no":"ZB20240101","subject":"居住证办理费","total_amount":"0.01"}&charset=utf-8',
    "subject=掌办·不动产登记 费用（含工本费）&total_amount=99999999.99",
]


@pytest.mark.parametrize("content", VECTORS)
def test_sign_rsa2_is_byte_identical_to_the_sdk(content):
    assert sign_rsa2(MERCHANT_KEY, content) == sdk_sign_with_rsa2(_pkcs1_body(MERCHANT_KEY), content, "utf-8")


def test_verify_rsa2_accepts_the_sdks_signature_and_rejects_tampering():
    public = MERCHANT_KEY.public_key()
    content = VECTORS[1]
    signature = sdk_sign_with_rsa2(_pkcs1_body(MERCHANT_KEY), content, "utf-8")
    assert verify_rsa2(public, content, signature)
    assert not verify_rsa2(public, content.replace("0.01", "0.02"), signature)
    tampered = base64.b64encode(bytes([base64.b64decode(signature)[0] ^ 1]) + base64.b64decode(signature)[1:])
    assert not verify_rsa2(public, content, tampered.decode())
    assert not verify_rsa2(public, content, "not base64!")
    assert not verify_rsa2(OTHER_KEY.public_key(), content, signature)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl CLI")
def test_openssl_verifies_our_signature(tmp_path):
    content = VECTORS[2]
    (tmp_path / "pub.pem").write_text(_public_pem(MERCHANT_KEY))
    (tmp_path / "content.txt").write_bytes(content.encode("utf-8"))
    (tmp_path / "sig.bin").write_bytes(base64.b64decode(sign_rsa2(MERCHANT_KEY, content)))
    result = subprocess.run(
        ["openssl", "dgst", "-sha256", "-verify", "pub.pem", "-signature", "sig.bin", "content.txt"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and "Verified OK" in result.stdout, result.stdout + result.stderr


def test_sign_content_is_the_sdks_canonical_content():
    model = AlipayTradePrecreateModel()
    model.out_trade_no, model.subject, model.total_amount = "ZB1", "居住证 & 签注", "12.30"
    params = AlipayTradePrecreateRequest(biz_model=model).get_params()
    params.update(app_id=APP_ID, charset="utf-8", sign_type="RSA2", timestamp="2024-01-02 03:04:05", format="JSON")
    independent = "&".join(f"{k}={params[k]}" for k in sorted(params))
    assert sign_content(params) == sdk_sign_content(dict(params)) == independent
    assert '"subject":"居住证 & 签注"' in sign_content(params)


def test_keys_load_from_pem_pkcs1_pkcs8_bare_base64_and_files(tmp_path):
    def private(fmt, encoding=serialization.Encoding.PEM):
        return MERCHANT_KEY.private_bytes(encoding, fmt, serialization.NoEncryption())

    pkcs1 = private(serialization.PrivateFormat.TraditionalOpenSSL).decode()
    pkcs8 = private(serialization.PrivateFormat.PKCS8).decode()
    bare8 = base64.b64encode(private(serialization.PrivateFormat.PKCS8, serialization.Encoding.DER)).decode()
    bare1 = base64.b64encode(private(serialization.PrivateFormat.TraditionalOpenSSL, serialization.Encoding.DER))
    (tmp_path / "app.pem").write_text(pkcs8)
    for source in (pkcs1, pkcs8, bare8, bare1.decode(), str(tmp_path / "app.pem"), tmp_path / "app.pem"):
        assert load_private_key(source).private_numbers() == MERCHANT_KEY.private_numbers()
    spki_der = MERCHANT_KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for source in (_public_pem(MERCHANT_KEY), base64.b64encode(spki_der).decode()):
        assert load_public_key(source).public_numbers() == MERCHANT_KEY.public_key().public_numbers()
    with pytest.raises(ValueError):
        load_public_key("not a key at all")


def test_the_signed_node_is_cut_from_the_raw_text():
    node = '{"code":"10000","msg":"Success","note":"a } and a \\" and {","nested":{"a":[1,{"b":2}]}}'
    body = f'{{"alipay_trade_query_response" : {node},"sign":"c2lnbg=="}}'
    assert signed_response_node(body, "alipay_trade_query_response") == (node, "c2lnbg==")
    assert signed_response_node(body, "alipay_trade_close_response") is None


@pytest.mark.parametrize(("yuan", "fen"), [("0.01", 1), ("99999999.99", 9_999_999_999), ("12.30", 1230)])
def test_amounts_are_exact_both_ways(yuan, fen):
    assert yuan_to_fen(yuan) == fen
    assert fen_to_yuan(fen) == yuan


# -- a notify receiver and the simulator -----------------------------------------------------


class Receiver:
    """A tiny HTTP server taking notifies: answers `success` unless told otherwise per path."""

    def __init__(self):
        self.received: list[tuple[str, dict[str, str], float]] = []
        self.answers: dict[str, list[str]] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode("utf-8")
                with receiver.lock:
                    receiver.received.append((self.path, dict(parse_qsl(body, keep_blank_values=True)), time.time()))
                    queue = receiver.answers.get(self.path) or []
                    answer = queue.pop(0) if queue else "success"
                data = answer.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def forms(self, path: str) -> list[dict[str, str]]:
        with self.lock:
            return [form for p, form, _ in self.received if p == path]

    def times(self, path: str) -> list[float]:
        with self.lock:
            return [at for p, _, at in self.received if p == path]

    def wait(self, path: str, count: int, timeout: float = 20) -> list[dict[str, str]]:
        deadline = time.monotonic() + timeout
        while len(self.forms(path)) < count:
            assert time.monotonic() < deadline, f"{len(self.forms(path))} notifies at {path}, waited for {count}"
            time.sleep(0.05)
        return self.forms(path)


class Sim:
    def __init__(self, url: str, process: subprocess.Popen):
        self.root, self.process = url, process
        self.url = url + PREFIX
        self.gateway = self.url + "/gateway.do"

    def control(self, path: str, payload: dict | None = None, status: int = 200) -> dict:
        if payload is None:
            response = httpx.get(f"{self.url}/__sim__/{path}", timeout=10)
        else:
            response = httpx.post(f"{self.url}/__sim__/{path}", json=payload, timeout=10)
        assert response.status_code == status, response.text
        return response.json()


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Iterator[Sim]:
    url, process = start_simulator(
        "payments.alipay_sim", tmp_path_factory.mktemp("alipay-sim"), "--time-scale", "0.001", "--url-prefix", PREFIX
    )
    yield Sim(url, process)
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture(scope="module")
def merchant(sim) -> dict:
    return sim.control("apps", {"app_id": APP_ID, "app_public_key_pem": _public_pem(MERCHANT_KEY)})


_counter = iter(range(1, 1_000_000))


def _no(prefix: str = "ZB") -> str:
    return f"{prefix}{int(time.time())}{next(_counter):04d}"


@pytest.fixture
async def channel(sim, receiver, merchant) -> Iterator[tuple[Alipay, str]]:
    """(adapter, its notify path at the receiver)."""
    path = f"/notify/{_no('N')}"
    alipay = Alipay(
        AlipayConfig(
            gateway=sim.gateway,
            app_id=APP_ID,
            private_key=MERCHANT_KEY,
            alipay_public_key=load_public_key(merchant["alipay_public_key_pem"]),
            notify_url=receiver.url + path,
            seller_id=merchant["seller_id"],
        )
    )
    yield alipay, path
    await alipay.aclose()


def _expiry() -> datetime:
    return datetime.now(UTC) + timedelta(minutes=30)


# -- the flow over HTTP -----------------------------------------------------------------------


async def test_precreate_pay_notify_query_refund_and_bill(sim, receiver, channel, merchant):
    alipay, path = channel
    assert urlsplit(sim.gateway).port and urlsplit(sim.gateway).path == PREFIX + "/gateway.do"
    no = _no()
    qr = await alipay.precreate(out_trade_no=no, subject="居住证办理费", amount_fen=1234, expires_at=_expiry())
    assert qr.startswith("https://qr.alipay.com/")
    assert (await alipay.query(no)).state == "not_found"  # nobody scanned the QR code yet

    sim.control("pay", {"out_trade_no": no})
    notify = alipay.parse_notify(receiver.wait(path, 1)[0])
    trade = notify.trade
    assert notify.channel == "alipay" and notify.refund is None and notify.notify_id
    assert (trade.out_trade_no, trade.state, trade.amount_fen) == (no, "paid", 1234)
    assert (trade.app_id, trade.merchant_id) == (APP_ID, merchant["seller_id"])
    assert trade.transaction_id and trade.paid_at and trade.paid_at.tzinfo == CHINA and "*" in trade.payer

    queried = await alipay.query(no)
    assert (queried.state, queried.amount_fen, queried.transaction_id) == ("paid", 1234, trade.transaction_id)
    assert queried.paid_at == trade.paid_at

    with pytest.raises(PaymentError) as closing:
        await alipay.close(no)
    assert closing.value.code == "ACQ.TRADE_STATUS_ERROR" and not closing.value.retryable

    first = await alipay.refund(out_trade_no=no, out_request_no=no + "R1", amount_fen=234, reason="部分退款")
    again = await alipay.refund(out_trade_no=no, out_request_no=no + "R1", amount_fen=234, reason="部分退款")
    assert (first.state, first.amount_fen, first.out_refund_no) == ("success", 234, no + "R1")
    assert (again.state, again.amount_fen) == ("success", 234)
    assert first.raw["fund_change"] == "Y" and again.raw.get("refund_status") == "REFUND_SUCCESS"
    assert sim.control(f"trades/{no}")["refunds"] == [
        {"out_request_no": no + "R1", "refund_amount": "2.34", "at": sim.control(f"trades/{no}")["refunds"][0]["at"]}
    ]
    refund_notify = alipay.parse_notify(next(f for f in receiver.wait(path, 2) if "refund_fee" in f))
    assert refund_notify.trade is None
    assert (refund_notify.refund.out_refund_no, refund_notify.refund.amount_fen) == (no + "R1", 234)
    assert refund_notify.refund.refunded_at is not None

    queried_refund = await alipay.query_refund(out_trade_no=no, out_request_no=no + "R1")
    assert (queried_refund.state, queried_refund.amount_fen) == ("success", 234)
    assert queried_refund.refunded_at is not None
    with pytest.raises(PaymentError) as unknown:
        await alipay.query_refund(out_trade_no=no, out_request_no="never")
    assert unknown.value.code == "REFUND_NOT_EXIST"
    with pytest.raises(PaymentError) as too_much:
        await alipay.refund(out_trade_no=no, out_request_no=no + "R2", amount_fen=1001, reason="超额")
    assert too_much.value.code == "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL"

    rows = await alipay.bill(datetime.now(CHINA).date())
    mine = sorted((r.kind, r.amount_fen, r.out_refund_no) for r in rows if r.out_trade_no == no)
    assert mine == [("pay", 1234, None), ("refund", 234, no + "R1")]
    assert all(r.transaction_id == trade.transaction_id for r in rows if r.out_trade_no == no)


async def test_full_refund_closes_the_trade_and_query_says_refunded(sim, receiver, channel):
    alipay, path = channel
    no = _no()
    await alipay.precreate(out_trade_no=no, subject="工本费", amount_fen=1, expires_at=_expiry())
    sim.control("pay", {"out_trade_no": no})
    await alipay.refund(out_trade_no=no, out_request_no=no, amount_fen=1, reason="全额退款")
    forms = receiver.wait(path, 2)
    # The payment's and the refund's notifies travel separately: either may arrive first.
    refunded = next(f for f in forms if "refund_fee" in f)
    assert refunded["trade_status"] == "TRADE_CLOSED" and refunded["refund_fee"] == "0.01"
    assert alipay.parse_notify(refunded).refund.amount_fen == 1
    assert (await alipay.query(no)).state == "refunded"


async def test_close_a_qr_code_never_scanned_and_a_trade_abandoned(sim, channel):
    alipay, _ = channel
    never = _no()
    await alipay.precreate(out_trade_no=never, subject="证照费", amount_fen=500, expires_at=_expiry())
    await alipay.close(never)  # ACQ.TRADE_NOT_EXIST: fine
    sim.control("pay", {"out_trade_no": never}, status=409)
    paid_after_close = sim.control("pay", {"out_trade_no": never, "force": True})
    assert paid_after_close["trade_status"] == "TRADE_SUCCESS"
    assert (await alipay.query(never)).state == "paid"

    abandoned = _no()
    await alipay.precreate(out_trade_no=abandoned, subject="证照费", amount_fen=500, expires_at=_expiry())
    sim.control("fail", {"out_trade_no": abandoned})
    assert (await alipay.query(abandoned)).state == "pending"
    await alipay.close(abandoned)
    await alipay.close(abandoned)  # already closed: fine
    assert (await alipay.query(abandoned)).state == "closed"


async def test_wap_pay_url_is_accepted_by_the_gateway_and_a_tampered_one_is_not(sim, channel):
    alipay, _ = channel
    no = _no()
    url = alipay.wap_pay_url(
        out_trade_no=no, subject="预约服务费", amount_fen=99, expires_at=_expiry(), return_url="https://zb.example/r"
    )
    assert url.startswith(sim.gateway + "?")
    page = httpx.get(url, timeout=10)
    assert page.status_code == 200 and f'data-out-trade-no="{no}"' in page.text and "0.99" in page.text
    assert (await alipay.query(no)).state == "pending"
    tampered = httpx.get(url.replace("%220.99%22", "%220.01%22"), timeout=10)
    assert "0.01" not in url and 'data-code="isv.invalid-signature"' in tampered.text


async def test_the_gateway_refuses_a_wrong_app_key_and_we_refuse_an_answer_signed_by_another_key(sim, merchant):
    def client(private_key, alipay_public_key) -> Alipay:
        return Alipay(AlipayConfig(sim.gateway, APP_ID, private_key, alipay_public_key, "http://127.0.0.1:9/n"))

    wrong_app_key = client(OTHER_KEY, load_public_key(merchant["alipay_public_key_pem"]))
    with pytest.raises(PaymentError) as refused:
        await wrong_app_key.query("anything")
    assert refused.value.code == "isv.invalid-signature" and not refused.value.retryable
    await wrong_app_key.aclose()

    wrong_alipay_key = client(MERCHANT_KEY, OTHER_KEY.public_key())
    with pytest.raises(PaymentError) as unverifiable:
        await wrong_alipay_key.query("anything")
    assert unverifiable.value.code == "SIGN_ERROR"
    await wrong_alipay_key.aclose()


async def test_a_gateway_that_is_down_is_retryable(merchant):
    alipay = Alipay(
        AlipayConfig(
            f"http://127.0.0.1:{free_port()}/gateway.do",
            APP_ID,
            MERCHANT_KEY,
            load_public_key(merchant["alipay_public_key_pem"]),
            "http://127.0.0.1:9/n",
        )
    )
    with pytest.raises(PaymentError) as down:
        await alipay.query("anything")
    assert down.value.retryable
    await alipay.aclose()


async def test_bill_with_extra_rows_and_a_future_day(sim, channel):
    alipay, _ = channel
    day = datetime.now(CHINA).date() - timedelta(days=3)
    sim.control(
        "bill-rows",
        {
            "date": day.isoformat(),
            "app_id": APP_ID,
            "rows": [
                {"kind": "pay", "out_trade_no": "ONLY-AT-ALIPAY", "amount_fen": 9_999_999_999, "at": f"{day} 10:00:00"},
                {
                    "kind": "refund",
                    "out_trade_no": "X1",
                    "amount_fen": 1,
                    "out_refund_no": "X1R",
                    "at": f"{day} 11:00:00",
                },
            ],
        },
    )
    rows = await alipay.bill(day)
    assert [(r.kind, r.out_trade_no, r.amount_fen, r.out_refund_no) for r in rows] == [
        ("pay", "ONLY-AT-ALIPAY", 9_999_999_999, None),
        ("refund", "X1", 1, "X1R"),
    ]
    assert rows[0].at == datetime(day.year, day.month, day.day, 10, tzinfo=CHINA)
    with pytest.raises(PaymentError) as future:
        await alipay.bill(date.today() + timedelta(days=2))
    assert future.value.code == "isp.bill_not_exist"


def test_the_bill_zip_holds_gbk_csv_files_named_in_gbk(sim, merchant):
    """Read the zip independently of our parser: GBK member names without the UTF-8 flag, GBK content."""
    day = datetime.now(CHINA).date()
    body = {"bill_type": "trade", "bill_date": day.isoformat()}
    params = {
        "app_id": APP_ID,
        "method": "alipay.data.dataservice.bill.downloadurl.query",
        "format": "JSON",
        "charset": "utf-8",
        "sign_type": "RSA2",
        "timestamp": datetime.now(CHINA).strftime("%Y-%m-%d %H:%M:%S"),
        "version": "1.0",
        "biz_content": json.dumps(body),
    }
    params["sign"] = sdk_sign_with_rsa2(_pkcs1_body(MERCHANT_KEY), sdk_sign_content(params), "utf-8")
    answer = httpx.post(sim.gateway, data=params, timeout=10).json()
    url = answer["alipay_data_dataservice_bill_downloadurl_query_response"]["bill_download_url"]
    data = httpx.get(url, timeout=10).content
    with zipfile.ZipFile(BytesIO(data)) as archive:
        infos = archive.infolist()
        names = [info.filename.encode("cp437").decode("gbk") for info in infos]
        assert all(not info.flag_bits & 0x800 for info in infos)
        seller = merchant["seller_id"]
        assert names == [f"{seller}_{day:%Y%m%d}_业务明细.csv", f"{seller}_{day:%Y%m%d}_业务明细(汇总).csv"]
        detail = archive.read(infos[0]).decode("gbk")
    assert detail.startswith("#支付宝业务明细查询\r\n#账号：[")
    assert "业务明细列表结束" in detail and "#导出时间：[" in detail
    assert parse_bill_zip(data) is not None


# -- notify rejections ------------------------------------------------------------------------


def _paid_fields(merchant: dict, **extra: str) -> dict[str, str]:
    fields = {
        "notify_time": "2024-01-02 03:04:05",
        "notify_type": "trade_status_sync",
        "notify_id": "2024010200222030405000000000000001",
        "app_id": APP_ID,
        "charset": "utf-8",
        "version": "1.0",
        "trade_no": "2024010222001400000000000001",
        "out_trade_no": "ZB-NOTIFY-1",
        "seller_id": merchant["seller_id"],
        "buyer_logon_id": "158******34",
        "trade_status": "TRADE_SUCCESS",
        "total_amount": "0.01",
        "gmt_payment": "2024-01-02 03:04:04",
        "subject": "居住证 办理&签注",
        "fund_bill_list": '[{"amount":"0.01","fundChannel":"ALIPAYACCOUNT"}]',
    }
    fields.update(extra)
    return fields


def _signed(sim: Sim, fields: dict[str, str], **options: bool) -> dict[str, str]:
    return sim.control("sign-notify", {"fields": fields, **options})["form"]


async def test_a_correct_notify_is_accepted_with_exact_amounts(sim, channel, merchant):
    alipay, _ = channel
    for yuan, fen in (("0.01", 1), ("99999999.99", 9_999_999_999)):
        notify = alipay.parse_notify(_signed(sim, _paid_fields(merchant, total_amount=yuan)))
        assert notify.trade.amount_fen == fen and notify.trade.state == "paid"
        assert notify.trade.paid_at == datetime(2024, 1, 2, 3, 4, 4, tzinfo=CHINA)
    waiting = alipay.parse_notify(_signed(sim, _paid_fields(merchant, trade_status="WAIT_BUYER_PAY")))
    assert waiting.trade.state == "pending" and waiting.trade.paid_at is None


async def test_notifies_that_must_be_refused(sim, channel, merchant):
    alipay, _ = channel

    def reason(form: dict[str, str]) -> str:
        with pytest.raises(NotifyRejected) as rejected:
            alipay.parse_notify(form)
        return rejected.value.reason

    fields = _paid_fields(merchant)
    assert reason(_signed(sim, fields, sign_type_in_content=True)) == "signature"
    assert reason(_signed(sim, fields, use_wrong_key=True)) == "signature"
    assert reason({**_signed(sim, fields), "total_amount": "100.00"}) == "signature"
    assert reason({k: v for k, v in _signed(sim, fields).items() if k != "sign"}) == "signature"
    assert reason(_signed(sim, {**fields, "app_id": "2021999999999999"})) == "app_id"
    assert reason(_signed(sim, {**fields, "seller_id": "2088999999999999"})) == "seller_id"
    for malformed in ("1.5", "1e3", "-1.00", "0.001", "", "１.00"):
        assert reason(_signed(sim, {**fields, "total_amount": malformed})) == "amount", malformed


# -- notify delivery: retries, lost and duplicated notifies ----------------------------------


async def test_a_notify_is_retried_on_the_compressed_schedule_until_success(sim, receiver, channel):
    alipay, path = channel
    receiver.answers[path] = ["fail", "fail"]
    no = _no()
    await alipay.precreate(out_trade_no=no, subject="证照费", amount_fen=100, expires_at=_expiry())
    sim.control("pay", {"out_trade_no": no})
    forms = receiver.wait(path, 3)
    time.sleep(0.8)  # the next retry, were there one, would come 0.6 s later
    assert len(receiver.forms(path)) == 3 and len({f["notify_id"] for f in forms}) == 1
    at = receiver.times(path)
    assert at[1] - at[0] >= 0.24 * 0.9 and at[2] - at[1] >= 0.6 * 0.9
    outcomes = [d["outcome"] for d in sim.control(f"deliveries?out_trade_no={no}")["deliveries"]]
    assert outcomes == ["fail", "fail", "success"]


async def test_a_lost_notify_arrives_on_resend_and_a_duplicated_one_twice(sim, receiver, channel):
    alipay, path = channel
    lost = _no()
    await alipay.precreate(out_trade_no=lost, subject="证照费", amount_fen=100, expires_at=_expiry())
    sim.control("notify-mode", {"out_trade_no": lost, "mode": "lose"})
    sim.control("pay", {"out_trade_no": lost})
    time.sleep(0.5)
    assert receiver.forms(path) == []
    assert (await alipay.query(lost)).state == "paid"  # what a reconciliation job would find
    sim.control("resend", {"out_trade_no": lost})
    assert alipay.parse_notify(receiver.wait(path, 1)[0]).trade.out_trade_no == lost

    twice = _no()
    await alipay.precreate(out_trade_no=twice, subject="证照费", amount_fen=100, expires_at=_expiry())
    sim.control("notify-mode", {"out_trade_no": twice, "mode": "duplicate", "count": 2})
    sim.control("pay", {"out_trade_no": twice})
    forms = [f for f in receiver.wait(path, 3) if f["out_trade_no"] == twice]
    assert len(forms) == 2 and forms[0]["notify_id"] == forms[1]["notify_id"]
    assert {alipay.parse_notify(f).notify_id for f in forms} == {forms[0]["notify_id"]}


def test_the_simulators_control_api_answers_errors_in_the_house_shape(sim):
    missing = sim.control("pay", {"out_trade_no": "no-such-trade"}, status=404)
    assert missing["code"] == "not_found" and set(missing) == {"code", "message", "details"}
    invalid = sim.control("notify-mode", {"out_trade_no": "x", "mode": "sometimes"}, status=422)
    assert "mode" in invalid["details"]["fields"]
    assert sim.control("alipay-public-key")["alipay_public_key_pem"].startswith("-----BEGIN PUBLIC KEY-----")
    # Stats may be empty: under xdist this test can be the module's first on its worker.
    stats = sim.control("stats")
    assert isinstance(stats["calls"], dict) and isinstance(stats["trades"], int) and "notifies" in stats


def test_unknown_app_and_method_are_answered_in_alipays_envelope(sim):
    answer = httpx.post(sim.gateway, data={"method": "alipay.trade.query", "app_id": "nobody"}, timeout=10).json()
    node = answer["alipay_trade_query_response"]
    assert node["code"] == "40001" and node["sub_code"] == "isv.missing-signature-type" and answer["sign"]
