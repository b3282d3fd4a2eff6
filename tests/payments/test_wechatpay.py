"""WeChat Pay v3 adapter: signatures, answers, notifies and bills, checked against computations made here.

Every vector is computed independently in the test: the signed string is written out by hand and
verified with `cryptography` (or the `openssl` CLI), notifies are encrypted with AESGCM here. The
WeChat side of a call is an httpx transport in the test that signs its answers with its own key;
the simulator, over real HTTP, is in test_wechatpay_sim.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import shutil
import subprocess
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

from core.china_time import CHINA
from payments.base import NotifyRejected, PaymentError
from payments.wechatpay import (
    WeChatPay,
    WeChatPayConfig,
    certificate_serial,
    decrypt_resource,
    load_platform_key,
    load_private_key,
    parse_trade_bill,
)

MCHID, APPID, SERIAL = "1900000109", "wx_sim_miniprogram", "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
PLATFORM_SERIAL = "PUB_KEY_ID_0114232134912410000000000012"
NOTIFY_URL = "https://zb.example.cn/pay/notify/wechat"
APIV3_KEY = secrets.token_hex(16).encode()  # 32 bytes
NOW = 1_760_000_000


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


MERCHANT_KEY, PLATFORM_KEY, OTHER_KEY = _key(), _key(), _key()


def _sign(key: rsa.RSAPrivateKey, text: str) -> str:
    return base64.b64encode(key.sign(text.encode(), padding.PKCS1v15(), hashes.SHA256())).decode()


def _verify(key: rsa.RSAPublicKey, text: str, signature: str) -> None:
    key.verify(base64.b64decode(signature), text.encode(), padding.PKCS1v15(), hashes.SHA256())


def _answer(
    status: int, body: dict | None, *, key=PLATFORM_KEY, serial=PLATFORM_SERIAL, ts: int = NOW
) -> httpx.Response:
    """An answer as WeChat signs it, computed here."""
    text = "" if body is None else json.dumps(body, ensure_ascii=False)
    nonce = secrets.token_hex(16)
    headers = {
        "Wechatpay-Timestamp": str(ts),
        "Wechatpay-Nonce": nonce,
        "Wechatpay-Signature": _sign(key, f"{ts}\n{nonce}\n{text}\n"),
        "Wechatpay-Serial": serial,
        "Content-Type": "application/json",
    }
    return httpx.Response(status, content=text.encode(), headers=headers)


def _client(handler, *, api_base: str = "https://api.mch.weixin.qq.com", clock=lambda: NOW) -> WeChatPay:
    config = WeChatPayConfig(
        api_base=api_base,
        mchid=MCHID,
        appid=APPID,
        serial_no=SERIAL,
        private_key=MERCHANT_KEY,
        apiv3_key=APIV3_KEY,
        platform_keys={PLATFORM_SERIAL: PLATFORM_KEY.public_key()},
        notify_url=NOTIFY_URL,
    )
    return WeChatPay(config, http=httpx.AsyncClient(transport=httpx.MockTransport(handler)), clock=clock)


def _auth_params(request: httpx.Request) -> dict[str, str]:
    scheme, _, rest = request.headers["Authorization"].partition(" ")
    assert scheme == "WECHATPAY2-SHA256-RSA2048"
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    assert set(params) == {"mchid", "nonce_str", "signature", "timestamp", "serial_no"}
    return params


# -- keys ----------------------------------------------------------------------------------


def _certificate(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tenpay.com Root CA")])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(0x5157F09EFDC096DE15EBE81A47057A7232F1B8E1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )


def test_keys_load_from_pem_or_path_in_every_format(tmp_path: Path) -> None:
    pkcs8 = MERCHANT_KEY.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pkcs1 = MERCHANT_KEY.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    assert b"BEGIN RSA PRIVATE KEY" in pkcs1
    (tmp_path / "apiclient_key.pem").write_bytes(pkcs8)
    numbers = MERCHANT_KEY.private_numbers()
    for source in (pkcs8, pkcs1, pkcs1.decode(), str(tmp_path / "apiclient_key.pem")):
        assert load_private_key(source).private_numbers() == numbers

    public_pem = PLATFORM_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    cert_pem = _certificate(PLATFORM_KEY).public_bytes(serialization.Encoding.PEM)
    expected = PLATFORM_KEY.public_key().public_numbers()
    for source in (public_pem, public_pem.decode(), cert_pem, cert_pem.decode()):
        assert load_platform_key(source).public_numbers() == expected
    assert certificate_serial(cert_pem) == "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"


# -- request signatures --------------------------------------------------------------------


async def test_authorization_header_signs_method_path_prefix_timestamp_nonce_and_body() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return _answer(200, {"prepay_id": "wx201410272009395522657a690389285100"})

    pay = _client(handler, api_base="http://sim.test:8000/_sim/wechatpay/")
    expires = datetime(2026, 12, 1, 10, 30, tzinfo=CHINA)
    prepay_id = await pay.jsapi_prepay(
        out_trade_no="ZB20261201000001",
        description="不动产登记费-测试",
        amount_fen=9_999_999_999,
        payer_openid="oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
        expires_at=expires,
        attach="case=42",
    )
    assert prepay_id == "wx201410272009395522657a690389285100"
    request = seen[0]
    params = _auth_params(request)
    assert params["mchid"] == MCHID and params["serial_no"] == SERIAL and params["timestamp"] == str(NOW)
    body = request.content.decode()
    message = f"POST\n/_sim/wechatpay/v3/pay/transactions/jsapi\n{NOW}\n{params['nonce_str']}\n{body}\n"
    _verify(MERCHANT_KEY.public_key(), message, params["signature"])
    assert request.headers["Accept"] == "application/json"
    sent = json.loads(body)
    assert sent == {
        "appid": APPID,
        "mchid": MCHID,
        "description": "不动产登记费-测试",
        "out_trade_no": "ZB20261201000001",
        "time_expire": "2026-12-01T10:30:00+08:00",
        "notify_url": NOTIFY_URL,
        "amount": {"total": 9_999_999_999, "currency": "CNY"},
        "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
        "attach": "case=42",
    }
    with pytest.raises(InvalidSignature):  # the prefix is part of what is signed
        _verify(MERCHANT_KEY.public_key(), message.replace("/_sim/wechatpay", ""), params["signature"])


async def test_get_signs_the_query_string_and_an_empty_body() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return _answer(
            200,
            {
                "appid": APPID,
                "mchid": MCHID,
                "out_trade_no": "ZB1",
                "transaction_id": "4200000985202103031441826014",
                "trade_type": "JSAPI",
                "trade_state": "SUCCESS",
                "success_time": "2026-03-03T10:00:01+08:00",
                "payer": {"openid": "oPayer"},
                "amount": {"total": 1, "payer_total": 1, "currency": "CNY", "payer_currency": "CNY"},
            },
        )

    trade = await _client(handler).query("ZB000001")
    params = _auth_params(seen[0])
    message = f"GET\n/v3/pay/transactions/out-trade-no/ZB000001?mchid={MCHID}\n{NOW}\n{params['nonce_str']}\n\n"
    _verify(MERCHANT_KEY.public_key(), message, params["signature"])
    assert trade.state == "paid" and trade.amount_fen == 1
    assert trade.transaction_id == "4200000985202103031441826014"
    assert trade.paid_at == datetime(2026, 3, 3, 10, 0, 1, tzinfo=CHINA)
    assert (trade.merchant_id, trade.app_id, trade.payer) == (MCHID, APPID, "oPayer")


def test_pay_sign_is_rsa_over_appid_timestamp_nonce_package(tmp_path: Path) -> None:
    pay = _client(lambda r: _answer(200, {}), clock=lambda: 1_414_561_699.7)
    params = pay.pay_params("wx201410272009395522657a690389285100")
    assert params["appId"] == APPID and params["timeStamp"] == "1414561699"
    assert params["package"] == "prepay_id=wx201410272009395522657a690389285100" and params["signType"] == "RSA"
    message = f"{APPID}\n1414561699\n{params['nonceStr']}\nprepay_id=wx201410272009395522657a690389285100\n"
    _verify(MERCHANT_KEY.public_key(), message, params["paySign"])
    if shutil.which("openssl"):  # and by a second, unrelated implementation
        (tmp_path / "pub.pem").write_bytes(
            MERCHANT_KEY.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        (tmp_path / "msg").write_bytes(message.encode())
        (tmp_path / "sig").write_bytes(base64.b64decode(params["paySign"]))
        result = subprocess.run(
            ["openssl", "dgst", "-sha256", "-verify", "pub.pem", "-signature", "sig", "msg"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert result.stdout.strip() == "Verified OK", result.stderr


# -- answers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        lambda: httpx.Response(200, json={"prepay_id": "wx1"}),  # unsigned
        lambda: _answer(200, {"prepay_id": "wx1"}, key=OTHER_KEY),  # another key
        lambda: _answer(200, {"prepay_id": "wx1"}, serial="PUB_KEY_ID_0199"),  # unknown serial
        lambda: _answer(200, {"prepay_id": "wx1"}, ts=NOW - 301),  # stale
    ],
)
async def test_an_unverifiable_answer_is_a_sign_error(answer) -> None:
    pay = _client(lambda request: answer())
    with pytest.raises(PaymentError) as caught:
        await pay.jsapi_prepay(
            out_trade_no="ZB000001",
            description="x",
            amount_fen=1,
            payer_openid="o1",
            expires_at=datetime.now(UTC) + timedelta(hours=1),
        )
    assert caught.value.code == "SIGN_ERROR" and not caught.value.retryable


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (500, "SYSTEM_ERROR", True),
        (502, "SYSTEM_ERROR", True),
        (429, "FREQUENCY_LIMITED", True),
        (400, "PARAM_ERROR", False),
        (403, "NO_AUTH", False),
        (401, "SIGN_ERROR", False),
    ],
)
async def test_errors_map_to_payment_errors(status: int, code: str, retryable: bool) -> None:
    pay = _client(lambda r: _answer(status, {"code": code, "message": "错误"}))
    with pytest.raises(PaymentError) as caught:
        await pay.refund(out_trade_no="ZB000001", out_refund_no="R1", amount_fen=1, total_fen=1, reason="")
    assert (caught.value.code, caught.value.retryable, caught.value.status) == (code, retryable, status)


async def test_network_failures_are_retryable() -> None:
    def timeout(request):
        raise httpx.ConnectTimeout("slow", request=request)

    def refused(request):
        raise httpx.ConnectError("refused", request=request)

    for handler in (timeout, refused):
        with pytest.raises(PaymentError) as caught:
            await _client(handler).query("ZB000001")
        assert caught.value.retryable


async def test_query_of_an_order_wechat_never_saw_is_not_found_and_close_tolerates_closed() -> None:
    pay = _client(lambda r: _answer(404, {"code": "ORDER_NOT_EXIST", "message": "订单不存在"}))
    assert (await pay.query("ZB000001")).state == "not_found"
    assert await _client(lambda r: _answer(400, {"code": "ORDER_CLOSED", "message": "订单已关闭"})).close("ZB1") is None
    with pytest.raises(PaymentError) as caught:
        await _client(lambda r: _answer(400, {"code": "ORDERPAID", "message": "订单已支付"})).close("ZB000001")
    assert caught.value.code == "ORDERPAID"


async def test_naive_expiry_is_refused() -> None:
    pay = _client(lambda r: _answer(200, {}))
    with pytest.raises(ValueError):
        await pay.jsapi_prepay(
            out_trade_no="ZB000001", description="x", amount_fen=1, payer_openid="o", expires_at=datetime(2026, 1, 1)
        )


# -- notifies ------------------------------------------------------------------------------


def _encrypt(plaintext: dict, *, key: bytes = APIV3_KEY, associated: str = "transaction") -> dict:
    nonce = secrets.token_hex(6)
    ciphertext = AESGCM(key).encrypt(nonce.encode(), json.dumps(plaintext).encode(), associated.encode())
    return {
        "original_type": associated,
        "algorithm": "AEAD_AES_256_GCM",
        "ciphertext": base64.b64encode(ciphertext).decode(),
        "associated_data": associated,
        "nonce": nonce,
    }


def _notify(
    event_type: str,
    plaintext: dict,
    *,
    ts: int | None = None,
    key=PLATFORM_KEY,
    serial=PLATFORM_SERIAL,
    prefix: str = "",
    resource: dict | None = None,
) -> tuple[dict[str, str], bytes]:
    ts = int(time.time()) if ts is None else ts
    associated = "refund" if "REFUND" in event_type else "transaction"
    body = json.dumps(
        {
            "id": "EV-2018022511223320873",
            "create_time": "2026-06-08T10:34:56+08:00",
            "resource_type": "encrypt-resource",
            "event_type": event_type,
            "summary": "支付成功",
            "resource": resource or _encrypt(plaintext, associated=associated),
        },
        ensure_ascii=False,
    )
    nonce = secrets.token_hex(16)
    headers = {
        "Wechatpay-Timestamp": str(ts),
        "Wechatpay-Nonce": nonce,
        "Wechatpay-Signature": prefix + _sign(key, f"{ts}\n{nonce}\n{body}\n"),
        "Wechatpay-Serial": serial,
        "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
    }
    return headers, body.encode()


def _transaction(total: int = 1) -> dict:
    return {
        "appid": APPID,
        "mchid": MCHID,
        "out_trade_no": "ZB20260608000001",
        "transaction_id": "4200000985202103031441826014",
        "trade_type": "JSAPI",
        "trade_state": "SUCCESS",
        "trade_state_desc": "支付成功",
        "bank_type": "CMC",
        "attach": "",
        "success_time": "2026-06-08T10:34:56+08:00",
        "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
        "amount": {"total": total, "payer_total": total, "currency": "CNY", "payer_currency": "CNY"},
    }


def _live() -> WeChatPay:
    return _client(lambda r: _answer(200, {}), clock=time.time)


def test_resource_encrypted_here_decrypts() -> None:
    resource = _encrypt({"a": "中文"}, associated="certificate")
    assert json.loads(decrypt_resource(APIV3_KEY, resource)) == {"a": "中文"}
    with pytest.raises(ValueError):
        decrypt_resource(secrets.token_hex(16).encode(), resource)


@pytest.mark.parametrize("total", [1, 9_999_999_999])
def test_payment_notify_is_verified_and_decrypted(total: int) -> None:
    headers, body = _notify("TRANSACTION.SUCCESS", _transaction(total))
    notify = _live().parse_notify({k.lower(): v for k, v in headers.items()}, body)
    assert notify.channel == "wechat" and notify.notify_id == "EV-2018022511223320873" and notify.refund is None
    trade = notify.trade
    assert trade.state == "paid" and trade.amount_fen == total and trade.out_trade_no == "ZB20260608000001"
    assert (trade.merchant_id, trade.app_id, trade.payer) == (MCHID, APPID, "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o")
    assert trade.paid_at == datetime(2026, 6, 8, 10, 34, 56, tzinfo=CHINA)


@pytest.mark.parametrize(("event", "state"), [("REFUND.SUCCESS", "success"), ("REFUND.ABNORMAL", "failed")])
def test_refund_notify(event: str, state: str) -> None:
    plaintext = {
        "mchid": MCHID,
        "out_trade_no": "ZB20260608000001",
        "transaction_id": "4200000985202103031441826014",
        "out_refund_no": "RF20260608000001",
        "refund_id": "50000000382019052709732678859",
        "refund_status": event.split(".")[1],
        "success_time": "2026-06-08T11:00:00+08:00",
        "user_received_account": "支付用户零钱",
        "amount": {"total": 999, "refund": 500, "payer_total": 999, "payer_refund": 500},
    }
    notify = _live().parse_notify(*_notify(event, plaintext))
    refund = notify.refund
    assert notify.trade is None and refund.state == state and refund.amount_fen == 500
    assert (refund.out_refund_no, refund.out_trade_no) == ("RF20260608000001", "ZB20260608000001")
    assert refund.refund_id == "50000000382019052709732678859"


def _tamper_ciphertext() -> dict:
    resource = _encrypt(_transaction())
    raw = bytearray(base64.b64decode(resource["ciphertext"]))
    raw[3] ^= 0x01
    return {**resource, "ciphertext": base64.b64encode(bytes(raw)).decode()}


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: _notify("TRANSACTION.SUCCESS", _transaction(), ts=int(time.time()) - 301), "stale"),
        (lambda: _notify("TRANSACTION.SUCCESS", _transaction(), ts=int(time.time()) + 301), "stale"),
        (lambda: _notify("TRANSACTION.SUCCESS", _transaction(), prefix="WECHATPAY/SIGNTEST/"), "test_signature"),
        (lambda: _notify("TRANSACTION.SUCCESS", _transaction(), key=OTHER_KEY), "signature"),
        (lambda: _notify("TRANSACTION.SUCCESS", _transaction(), serial="PUB_KEY_ID_0199"), "unknown_serial"),
        (lambda: _notify("TRANSACTION.SUCCESS", _transaction(), resource=_tamper_ciphertext()), "decrypt"),
        (lambda: _notify("TRANSACTION.SUCCESS", {}, resource=_encrypt(_transaction(), key=b"k" * 32)), "decrypt"),
        (lambda: ({}, b"{}"), "headers"),
    ],
)
def test_notify_rejections(make, reason: str) -> None:
    headers, body = make()
    with pytest.raises(NotifyRejected) as caught:
        _live().parse_notify(headers, body)
    assert caught.value.reason == reason


def test_a_body_changed_after_signing_is_refused() -> None:
    headers, body = _notify("TRANSACTION.SUCCESS", _transaction())
    changed = body.replace("支付成功".encode(), "退款成功".encode(), 1)
    assert changed != body
    with pytest.raises(NotifyRejected) as caught:
        _live().parse_notify(headers, changed)
    assert caught.value.reason == "signature"


# -- bills ---------------------------------------------------------------------------------

BILL = (
    "\ufeff交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,"
    "货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,"
    "商户数据包,手续费,费率,订单金额,申请退款金额,费率备注\r\n"
    "`2026-06-08 10:34:56,`wx_sim_miniprogram,`1900000109,`0,`,`4200000985202103031441826014,`ZB20260608000001,"
    "`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,`JSAPI,`SUCCESS,`OTHERS,`CNY,`99999999.99,`0.00,`0,`0,`0.00,`0.00,`,`,"
    "`不动产登记费,`,`0.00000,`0.60%,`99999999.99,`0.00,`\r\n"
    "`2026-06-08 23:59:59,`wx_sim_miniprogram,`1900000109,`0,`,`4200000985202103031441826015,`ZB20260601000009,"
    "`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,`JSAPI,`REFUND,`OTHERS,`CNY,`0.00,`0.00,`50000000382019052709732678859,"
    "`RF20260608000001,`0.01,`0.00,`ORIGINAL,`SUCCESS,`办证费,`,`0.00000,`0.60%,`0.00,`0.01,`\r\n"
    "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\r\n"
    "`2,`99999999.99,`0.01,`0.00,`0.00000,`99999999.99,`0.01\r\n"
)


def test_trade_bill_rows_parse_exactly() -> None:
    pay, refund = parse_trade_bill(BILL)
    assert pay.kind == "pay" and pay.amount_fen == 9_999_999_999 and pay.out_trade_no == "ZB20260608000001"
    assert pay.transaction_id == "4200000985202103031441826014"
    assert pay.at == datetime(2026, 6, 8, 10, 34, 56, tzinfo=CHINA)
    assert refund.kind == "refund" and refund.amount_fen == 1 and refund.out_refund_no == "RF20260608000001"
    with pytest.raises(PaymentError):
        parse_trade_bill("not,a,bill\r\n")


async def test_trade_bill_downloads_and_checks_the_hash() -> None:
    content = BILL.encode()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v3/bill/tradebill":
            assert request.url.params["bill_date"] == "2026-06-08" and request.url.params["bill_type"] == "ALL"
            return _answer(
                200,
                {
                    "download_url": "https://api.mch.weixin.qq.com/v3/billdownload/file?token=T1",
                    "hash_type": "SHA1",
                    "hash_value": hashlib.sha1(content).hexdigest(),
                },
            )
        params = _auth_params(request)  # the download is signed by us, not by WeChat
        _verify(
            MERCHANT_KEY.public_key(),
            f"GET\n/v3/billdownload/file?token=T1\n{NOW}\n{params['nonce_str']}\n\n",
            params["signature"],
        )
        return httpx.Response(200, content=content if request.url.params["token"] == "T1" else b"x")

    rows = await _client(handler).trade_bill(date(2026, 6, 8))
    assert [r.amount_fen for r in rows] == [9_999_999_999, 1]

    def tampered(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v3/bill/tradebill":
            body = {"download_url": "https://x/v3/billdownload/file?token=T1", "hash_type": "SHA1", "hash_value": "00"}
            return _answer(200, body)
        return httpx.Response(200, content=content)

    with pytest.raises(PaymentError) as caught:
        await _client(tampered).trade_bill(date(2026, 6, 8))
    assert caught.value.code == "BILL_HASH_MISMATCH"
    no_bill = _client(lambda r: _answer(400, {"code": "NO_STATEMENT_EXIST", "message": "账单文件不存在"}))
    assert await no_bill.trade_bill(date(2026, 6, 8)) == []
