"""WeChat Pay API v3 simulator: the real paths, JSON, HTTP statuses, signatures and notifies, in memory.

WeChat Pay cannot be reached from development and test machines, so Zhangban talks to this simulator
instead. Mount it in-process (`wechatpay_blueprint(state, url_prefix="/_sim/wechatpay")`) or run it
standalone:

    python -m payments.wechatpay_sim --host 127.0.0.1 --port 8703 --key-mode public_key --time-scale 1.0

Keys. At start the simulator generates its platform RSA-2048 key: in `public_key` mode (what new
merchants get) it is named `PUB_KEY_ID_01142321…`; in `certificate` mode it sits in a self-signed X.509
certificate named by its serial in upper-case hex. A merchant is registered through the control API
with its API certificate serial, its public key and its APIv3 key; the answer gives the platform serial
and key (and certificate) the merchant verifies answers and notifies with.

WeChat Pay endpoints (direct merchant):

    POST /v3/pay/transactions/jsapi                         -> 200 {"prepay_id"}
    GET  /v3/pay/transactions/out-trade-no/{no}?mchid=      -> 200 a transaction; 404 ORDER_NOT_EXIST
    POST /v3/pay/transactions/out-trade-no/{no}/close       {"mchid"} -> 204; 400 ORDERPAID when paid
    POST /v3/refund/domestic/refunds                        -> 200 a refund (PROCESSING, SUCCESS soon after)
    GET  /v3/refund/domestic/refunds/{out_refund_no}        -> 200 a refund; 404 RESOURCE_NOT_EXISTS
    GET  /v3/bill/tradebill?bill_date=&bill_type=ALL        -> 200 {"download_url", "hash_type": "SHA1",
                                                               "hash_value"}; 400 NO_STATEMENT_EXIST
    GET  /v3/billdownload/file?token=                       the CSV itself (not signed, as at WeChat)

Wire behaviour, as WeChat Pay does it:

- every request must carry `Authorization: WECHATPAY2-SHA256-RSA2048 mchid=…,nonce_str=…,signature=…,
  timestamp=…,serial_no=…` over `METHOD\\nPATH?QUERY\\ntimestamp\\nnonce\\nbody\\n` (the path the server
  sees, the mount prefix included), verified with the merchant's registered public key; otherwise
  401 SIGN_ERROR. A timestamp more than 5 minutes off is a SIGN_ERROR too;
- every answer except the bill file is signed with the platform key: `Wechatpay-Timestamp`,
  `Wechatpay-Nonce`, `Wechatpay-Signature`, `Wechatpay-Serial` over `timestamp\\nnonce\\nbody\\n`;
- errors are `{"code", "message", "detail"?}`: 400 PARAM_ERROR (with detail.field), 400
  APPID_MCHID_NOT_MATCH, 400 MCH_NOT_EXISTS, 400 INVALID_REQUEST ("201 商户订单号重复": an
  out_trade_no again with another body, or again after it was closed; the same body again answers the
  same prepay_id), 400 ORDERPAID, 404 ORDER_NOT_EXIST, 404 RESOURCE_NOT_EXISTS;
- closing a closed or unknown order answers 204 (WeChat does);
- refunds: the amount.total must be the order's; more than what remains is 400 INVALID_REQUEST; the
  same out_refund_no with the same body answers the same refund, with another body 400 INVALID_REQUEST;
- the bill of a China-time day lists the payments that succeeded that day (交易状态 SUCCESS) and the
  refunds that succeeded that day (REFUND), plus rows added by control, in the trade bill layout of
  `payments.wechatpay.BILL_COLUMNS` with every value prefixed by a backtick, then the summary.

Notifies. On payment (control `pay`) and on a refund's success, the simulator POSTs, as an asyncio
task, to the order's notify_url (a refund: the refund's notify_url, else the order's):

    {"id", "create_time", "resource_type": "encrypt-resource", "event_type", "summary",
     "resource": {"original_type", "algorithm": "AEAD_AES_256_GCM", "ciphertext", "associated_data", "nonce"}}

with Wechatpay-Timestamp/Nonce/Signature/Serial and `Wechatpay-Signature-Type: WECHATPAY2-SHA256-RSA2048`
(each attempt signed afresh). An answer of 200 or 204 ends it; anything else, or no answer within 5 s,
is retried after 15 s, 15 s, 30 s, 3 m, 10 m, 20 m, 30 m, 30 m, 30 m, 60 m, 3 h, 3 h, 3 h, 6 h, 6 h
(`RETRY_SCHEDULE_S`), each multiplied by `time_scale`.

Control API (not WeChat Pay; JSON; errors are `{"code", "message", "details"}`):

    POST /__sim__/merchants      {"mchid", "appids": [...], "serial_no", "public_key_pem", "apiv3_key"}
                                 -> {"platform_serial", "platform_public_key_pem", "platform_certificate_pem"}
    GET  /__sim__/platform       {"key_mode", "platform_serial", "platform_public_key_pem", "platform_certificate_pem"}
    POST /__sim__/pay            {"out_trade_no", "mchid"?, "force"?: false} -> the order; SUCCESS + notify
                                 (force: pay even a closed order, "paid after close")
    POST /__sim__/fail           {"out_trade_no", "mchid"?} -> PAYERROR
    POST /__sim__/notify-mode    {"out_trade_no", "mode": "normal"|"lose"|"duplicate"|"delay", "count"?: 2,
                                  "delay_s"?: 0} for the order's next notifies (lose: never sent; duplicate:
                                 sent `count` times at once; delay: first try after delay_s × time_scale)
    POST /__sim__/resend         {"out_trade_no"} sends the order's latest notify again (a new delivery)
    POST /__sim__/refund-outcome {"out_refund_no", "status": "SUCCESS"|"ABNORMAL"|"CLOSED"} settles a
                                 PROCESSING refund now, with its notify
    POST /__sim__/config         {"time_scale"?, "refund_settle_s"?}
    GET  /__sim__/deliveries     {"notifies": [...], "deliveries": [{"notify_id", "out_trade_no", "event_type",
                                  "attempt", "url", "status", "error", "at"}]}
    GET  /__sim__/orders/<no>    the order as the simulator holds it (with its refunds)
    POST /__sim__/pay-sign-check {"appId"|"appid", "timeStamp", "nonceStr", "package", "paySign"}
                                 -> {"valid": bool, "reason"}: what the WeChat client checks
    POST /__sim__/sign-notify    {"mchid", "event_type", "resource": {...plaintext...}, "timestamp"?,
                                  "signature_prefix"?, "use_wrong_key"?, "id"?} -> {"headers", "body"}
    POST /__sim__/bill-rows      {"bill_date", "rows": [{"kind": "pay"|"refund", "out_trade_no", "amount_fen",
                                  "transaction_id"?, "out_refund_no"?, "at"?, "mchid"?}]}
    POST /__sim__/bill-tamper    {"bill_date"}: the next download of that bill no longer matches its hash
    GET  /__sim__/stats          {"calls": {route: n}, "orders", "refunds", "notifies", "deliveries"}
    POST /__sim__/reset          forget orders, refunds, notifies (merchants and keys stay)
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.x509.oid import NameOID
from sanic import Blueprint, Request, Sanic
from sanic.response import HTTPResponse

from core import simserver
from core.china_time import CHINA
from core.simserver import SimError
from payments.base import fen_to_yuan
from payments.wechatpay import (
    BILL_COLUMNS,
    BILL_SUMMARY_COLUMNS,
    BILL_TIME_FORMAT,
    PUBLIC_KEY_ID_PREFIX,
    SIGN_SCHEME,
    dumps,
    encrypt_resource,
    load_platform_key,
    new_nonce,
    rfc3339,
    rsa_sign,
    rsa_verify,
    signing_message,
)

log = logging.getLogger("zhangban.wechatpay_sim")

KeyMode = Literal["public_key", "certificate"]
KEY_MODES = ("public_key", "certificate")
RETRY_SCHEDULE_S = (15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600)
NOTIFY_TIMEOUT_S = 5.0
AUTH_SKEW_S = 300
NOTIFY_MODES = ("normal", "lose", "duplicate", "delay")
REFUND_OUTCOMES = ("SUCCESS", "ABNORMAL", "CLOSED")
NOTIFY_SUMMARY = {"TRANSACTION.SUCCESS": "支付成功", "REFUND.SUCCESS": "退款成功", "REFUND.CLOSED": "退款关闭"}
_OUT_TRADE_NO = re.compile(r"^[0-9A-Za-z_\-*]{6,32}$")
_OUT_REFUND_NO = re.compile(r"^[0-9A-Za-z_\-*/|@]{1,64}$")
_AUTH_PARAM = re.compile(r'(\w+)="([^"]*)"')
TRADE_STATE_DESC = {
    "NOTPAY": "订单未支付",
    "SUCCESS": "支付成功",
    "REFUND": "转入退款",
    "CLOSED": "订单已关闭",
    "PAYERROR": "支付失败，请重新下单支付",
}


class PayError(Exception):
    """A WeChat Pay refusal: answered as `status` with `{"code", "message", "detail"?}`, signed."""

    def __init__(self, status: int, code: str, message: str, detail: dict[str, Any] | None = None):
        self.status, self.code, self.message, self.detail = status, code, message, detail
        super().__init__(f"{status} {code}: {message}")

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail:
            body["detail"] = self.detail
        return body


def _param_error(field_name: str, issue: str, value: Any = None) -> PayError:
    detail = {"field": field_name, "location": "body", "issue": issue}
    if value is not None:
        detail["value"] = value
    return PayError(400, "PARAM_ERROR", f"输入源“/body/{field_name}”映射到字段“{field_name}”{issue}", detail)


def _digits(n: int) -> str:
    return "".join(secrets.choice("0123456789") for _ in range(n))


def _now_china() -> datetime:
    return datetime.now(CHINA).replace(microsecond=0)


# -- state ---------------------------------------------------------------------------------


@dataclass
class Merchant:
    mchid: str
    appids: set[str]
    serial_no: str
    public_key: RSAPublicKey
    apiv3_key: bytes


@dataclass
class SimRefund:
    out_refund_no: str
    refund_id: str
    out_trade_no: str
    mchid: str
    amount: int
    reason: str
    notify_url: str | None
    fingerprint: str
    create_time: datetime
    status: str = "PROCESSING"
    success_time: datetime | None = None


@dataclass
class SimOrder:
    mchid: str
    appid: str
    out_trade_no: str
    description: str
    total: int
    openid: str
    notify_url: str
    attach: str
    time_expire: str | None
    fingerprint: str
    prepay_id: str
    created_at: datetime
    trade_state: str = "NOTPAY"
    transaction_id: str | None = None
    success_time: datetime | None = None
    refunds: list[str] = field(default_factory=list)
    notify_mode: str = "normal"
    notify_count: int = 2
    notify_delay_s: float = 0.0
    last_notify: OutgoingNotify | None = None

    def refunded(self, refunds: dict[str, SimRefund]) -> int:
        return sum(refunds[no].amount for no in self.refunds if refunds[no].status in ("PROCESSING", "SUCCESS"))


@dataclass
class OutgoingNotify:
    notify_id: str
    mchid: str
    out_trade_no: str
    event_type: str
    url: str
    body: str
    mode: str


@dataclass
class BillFile:
    content: bytes
    tampered: bool = False


class WeChatPayState:
    """All simulator state: platform keys, merchants, orders, refunds, notifies, extra bill rows."""

    def __init__(
        self,
        *,
        key_mode: KeyMode = "public_key",
        time_scale: float = 1.0,
        http: httpx.AsyncClient | None = None,
        platform_key: RSAPrivateKey | None = None,
        platform_serial: str | None = None,
    ):
        """`platform_key` / `platform_serial`: WeChat Pay's key and its id handed in (the embedded
        default keeps one per node, so its workers verify what the server's simulator signs)."""
        if key_mode not in KEY_MODES:
            raise ValueError(f"key_mode must be one of {KEY_MODES}")
        self.key_mode: KeyMode = key_mode
        self.time_scale = float(time_scale)
        self.refund_settle_s = 2.0
        self.platform_key: RSAPrivateKey = platform_key or rsa.generate_private_key(
            public_exponent=65537, key_size=2048
        )
        self.wrong_key: RSAPrivateKey = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.platform_certificate_pem: str | None = None
        if key_mode == "certificate":
            certificate = _self_signed(self.platform_key)
            self.platform_serial = f"{certificate.serial_number:X}"
            self.platform_certificate_pem = certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
        else:
            self.platform_serial = platform_serial or f"{PUBLIC_KEY_ID_PREFIX}01142321{_digits(22)}"
        self.platform_public_key_pem = (
            self.platform_key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode("ascii")
        )
        self.merchants: dict[str, Merchant] = {}
        self._client = http
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._own_client = http is None
        self.tasks: set[asyncio.Task] = set()
        self.reset()

    def reset(self) -> None:
        """Forgets orders, refunds, notifies and bills; merchants and keys stay."""
        for task in list(getattr(self, "tasks", ())):
            task.cancel()
        self.orders: dict[tuple[str, str], SimOrder] = {}
        self.refunds: dict[tuple[str, str], SimRefund] = {}
        self.notifies: list[dict[str, Any]] = []
        self.deliveries: list[dict[str, Any]] = []
        self.extra_bill_rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.bill_files: dict[str, BillFile] = {}
        self.tamper_next: set[tuple[str, str]] = set()
        self.calls: dict[str, int] = {}

    # merchants and keys ------------------------------------------------------------------

    def register_merchant(
        self, *, mchid: str, appids: list[str], serial_no: str, public_key_pem: str, apiv3_key: str
    ) -> dict:
        """Registers (or replaces) a merchant; returns the platform key it verifies WeChat with."""
        key = apiv3_key.encode("utf-8")
        if len(key) != 32:
            raise ValueError("apiv3_key must be 32 bytes")
        self.merchants[mchid] = Merchant(mchid, set(appids), serial_no, load_platform_key(public_key_pem), key)
        return self.platform_info()

    def platform_info(self) -> dict:
        return {
            "key_mode": self.key_mode,
            "platform_serial": self.platform_serial,
            "platform_public_key_pem": self.platform_public_key_pem,
            "platform_certificate_pem": self.platform_certificate_pem,
        }

    def signed_headers(self, body: str, *, key: RSAPrivateKey | None = None, timestamp: int | None = None) -> dict:
        """Wechatpay-* headers over `body`, as WeChat signs answers and notifies."""
        timestamp = int(time.time()) if timestamp is None else timestamp
        nonce = new_nonce()
        signature = rsa_sign(key or self.platform_key, signing_message(str(timestamp), nonce, body))
        return {
            "Wechatpay-Timestamp": str(timestamp),
            "Wechatpay-Nonce": nonce,
            "Wechatpay-Signature": signature,
            "Wechatpay-Serial": self.platform_serial,
        }

    def authenticate(self, request: Request) -> Merchant:
        """The merchant whose Authorization signature this request carries; PayError 401 otherwise."""
        header = request.headers.get("authorization", "")
        scheme, _, rest = header.partition(" ")
        params = dict(_AUTH_PARAM.findall(rest))
        if scheme != SIGN_SCHEME or not all(
            params.get(k) for k in ("mchid", "nonce_str", "signature", "timestamp", "serial_no")
        ):
            raise PayError(401, "SIGN_ERROR", "Http头Authorization值格式错误，请参考《微信支付商户REST API签名规则》")
        merchant = self.merchants.get(params["mchid"])
        if merchant is None:
            raise PayError(401, "SIGN_ERROR", "商户号不存在或未配置API证书")
        if params["serial_no"] != merchant.serial_no:
            raise PayError(401, "SIGN_ERROR", "商户证书序列号有误。请使用签名私钥匹配的证书序列号")
        if not params["timestamp"].isdigit() or abs(time.time() - int(params["timestamp"])) > AUTH_SKEW_S:
            raise PayError(401, "SIGN_ERROR", "Http头Authorization中的timestamp已过期")
        try:
            target, body = request.raw_url.decode("ascii"), request.body.decode("utf-8")
        except UnicodeDecodeError:
            raise PayError(401, "SIGN_ERROR", "签名错误") from None
        message = signing_message(request.method, target, params["timestamp"], params["nonce_str"], body)
        if not rsa_verify(merchant.public_key, message, params["signature"]):
            raise PayError(401, "SIGN_ERROR", "签名错误，请检查后再试")
        return merchant

    # orders ------------------------------------------------------------------------------

    def find_order(self, out_trade_no: str, mchid: str | None = None) -> SimOrder:
        """An order by out_trade_no (and mchid when several merchants used it); control API lookups."""
        found = [o for (m, no), o in self.orders.items() if no == out_trade_no and (mchid is None or m == mchid)]
        if not found:
            raise SimError(404, "not_found", "订单不存在", {"out_trade_no": out_trade_no})
        if len(found) > 1:
            raise SimError(409, "ambiguous", "多个商户有此订单号，请给出 mchid", {"out_trade_no": out_trade_no})
        return found[0]

    def jsapi_prepay(self, merchant: Merchant, body: dict) -> dict:
        order = _validated_prepay(body)
        if order["mchid"] != merchant.mchid:
            raise PayError(400, "INVALID_REQUEST", "请求中的mchid与Authorization中的mchid不一致")
        if order["appid"] not in merchant.appids:
            raise PayError(400, "APPID_MCHID_NOT_MATCH", "AppID和mch_id不匹配")
        fingerprint = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        existing = self.orders.get((merchant.mchid, order["out_trade_no"]))
        if existing is not None:
            if existing.trade_state in ("SUCCESS", "REFUND"):
                raise PayError(400, "ORDERPAID", "该订单已支付")
            if existing.fingerprint != fingerprint or existing.trade_state != "NOTPAY":
                raise PayError(400, "INVALID_REQUEST", "201 商户订单号重复")
            return {"prepay_id": existing.prepay_id}
        now = _now_china()
        created = SimOrder(
            mchid=merchant.mchid,
            appid=order["appid"],
            out_trade_no=order["out_trade_no"],
            description=order["description"],
            total=order["total"],
            openid=order["openid"],
            notify_url=order["notify_url"],
            attach=order["attach"],
            time_expire=order["time_expire"],
            fingerprint=fingerprint,
            prepay_id=f"wx{now:%d%H%M%S}{secrets.token_hex(13)}",
            created_at=now,
        )
        self.orders[(merchant.mchid, created.out_trade_no)] = created
        return {"prepay_id": created.prepay_id}

    def transaction(self, order: SimOrder) -> dict:
        """The order as the query API (and the payment notify) writes it."""
        data: dict[str, Any] = {
            "appid": order.appid,
            "mchid": order.mchid,
            "out_trade_no": order.out_trade_no,
            "trade_type": "JSAPI",
            "trade_state": order.trade_state,
            "trade_state_desc": TRADE_STATE_DESC.get(order.trade_state, ""),
            "attach": order.attach,
            "payer": {"openid": order.openid},
            "amount": {"total": order.total, "currency": "CNY"},
        }
        if order.transaction_id is not None:
            data["transaction_id"] = order.transaction_id
            data["bank_type"] = "OTHERS"
            data["amount"].update({"payer_total": order.total, "payer_currency": "CNY"})
        if order.success_time is not None:
            data["success_time"] = rfc3339(order.success_time)
        return data

    def query(self, merchant: Merchant, out_trade_no: str, mchid: str | None) -> dict:
        if mchid != merchant.mchid:
            raise PayError(400, "PARAM_ERROR", "商户号mchid与Authorization中的商户号不一致", {"field": "mchid"})
        order = self.orders.get((merchant.mchid, out_trade_no))
        if order is None:
            raise PayError(404, "ORDER_NOT_EXIST", "订单不存在")
        return self.transaction(order)

    def close(self, merchant: Merchant, out_trade_no: str, body: dict) -> None:
        if body.get("mchid") != merchant.mchid:
            raise _param_error("mchid", "与Authorization中的商户号不一致", body.get("mchid"))
        order = self.orders.get((merchant.mchid, out_trade_no))
        if order is None:
            return  # WeChat answers 204 for an order it does not know
        if order.trade_state in ("SUCCESS", "REFUND"):
            raise PayError(400, "ORDERPAID", "订单已支付")
        order.trade_state = "CLOSED"

    def pay(self, order: SimOrder, *, force: bool = False) -> SimOrder:
        """The payer paid (control API): SUCCESS, then the notify."""
        if order.trade_state in ("SUCCESS", "REFUND"):
            raise SimError(409, "already_paid", "订单已支付", {"out_trade_no": order.out_trade_no})
        if order.trade_state != "NOTPAY" and not force:
            raise SimError(409, "not_payable", "订单已关闭或支付失败", {"trade_state": order.trade_state})
        order.trade_state = "SUCCESS"
        order.success_time = _now_china()
        order.transaction_id = f"4200{_digits(6)}{order.success_time:%Y%m%d}{_digits(10)}"
        self.notify_trade(order)
        return order

    def fail(self, order: SimOrder) -> SimOrder:
        if order.trade_state != "NOTPAY":
            raise SimError(409, "not_payable", "订单不是未支付状态", {"trade_state": order.trade_state})
        order.trade_state = "PAYERROR"
        return order

    # refunds -----------------------------------------------------------------------------

    def refund_view(self, refund: SimRefund) -> dict:
        order = self.orders[(refund.mchid, refund.out_trade_no)]
        data: dict[str, Any] = {
            "refund_id": refund.refund_id,
            "out_refund_no": refund.out_refund_no,
            "transaction_id": order.transaction_id,
            "out_trade_no": refund.out_trade_no,
            "channel": "ORIGINAL",
            "user_received_account": "支付用户零钱",
            "create_time": rfc3339(refund.create_time),
            "status": refund.status,
            "funds_account": "AVAILABLE",
            "amount": {
                "total": order.total,
                "refund": refund.amount,
                "payer_total": order.total,
                "payer_refund": refund.amount,
                "settlement_refund": refund.amount,
                "settlement_total": order.total,
                "discount_refund": 0,
                "currency": "CNY",
                "refund_fee": 0,
            },
        }
        if refund.success_time is not None:
            data["success_time"] = rfc3339(refund.success_time)
        return data

    def refund(self, merchant: Merchant, body: dict) -> dict:
        out_refund_no = body.get("out_refund_no")
        if not isinstance(out_refund_no, str) or not _OUT_REFUND_NO.match(out_refund_no):
            raise _param_error("out_refund_no", "格式不正确", out_refund_no)
        out_trade_no = body.get("out_trade_no")
        if not isinstance(out_trade_no, str) or not out_trade_no:
            raise _param_error("out_trade_no", "不能为空")
        amount = body.get("amount")
        if not isinstance(amount, dict):
            raise _param_error("amount", "不能为空")
        refund_fen, total_fen = amount.get("refund"), amount.get("total")
        for name, value in (("amount.refund", refund_fen), ("amount.total", total_fen)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _param_error(name, "应为正整数", value)
        if amount.get("currency") != "CNY":
            raise _param_error("amount.currency", "应为CNY", amount.get("currency"))
        notify_url = body.get("notify_url")
        if notify_url is not None and (not isinstance(notify_url, str) or not notify_url.startswith("http")):
            raise _param_error("notify_url", "格式不正确", notify_url)
        fingerprint = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        existing = self.refunds.get((merchant.mchid, out_refund_no))
        if existing is not None:
            if existing.fingerprint != fingerprint:
                raise PayError(400, "INVALID_REQUEST", "订单金额或退款金额与之前请求不一致，请核实后再试")
            return self.refund_view(existing)
        order = self.orders.get((merchant.mchid, out_trade_no))
        if order is None:
            raise PayError(404, "RESOURCE_NOT_EXISTS", "订单不存在")
        if order.trade_state not in ("SUCCESS", "REFUND"):
            raise PayError(400, "INVALID_REQUEST", "订单未支付，不能退款")
        if total_fen != order.total:
            raise PayError(400, "INVALID_REQUEST", "订单金额或退款金额与之前请求不一致，请核实后再试")
        if refund_fen > order.total - order.refunded(self._order_refunds(order)):
            raise PayError(400, "INVALID_REQUEST", "申请退款金额超过订单可退金额")
        refund = SimRefund(
            out_refund_no=out_refund_no,
            refund_id=f"50{_digits(8)}{_now_china():%Y%m%d}{_digits(11)}",
            out_trade_no=out_trade_no,
            mchid=merchant.mchid,
            amount=refund_fen,
            reason=str(body.get("reason") or ""),
            notify_url=notify_url,
            fingerprint=fingerprint,
            create_time=_now_china(),
        )
        self.refunds[(merchant.mchid, out_refund_no)] = refund
        order.refunds.append(out_refund_no)
        self._spawn(self._settle_later(refund))
        return self.refund_view(refund)

    def _order_refunds(self, order: SimOrder) -> dict[str, SimRefund]:
        return {no: self.refunds[(order.mchid, no)] for no in order.refunds}

    def query_refund(self, merchant: Merchant, out_refund_no: str) -> dict:
        refund = self.refunds.get((merchant.mchid, out_refund_no))
        if refund is None:
            raise PayError(404, "RESOURCE_NOT_EXISTS", "退款单不存在")
        return self.refund_view(refund)

    async def _settle_later(self, refund: SimRefund) -> None:
        await asyncio.sleep(self.refund_settle_s * self.time_scale)
        if refund.status == "PROCESSING":
            self.settle_refund(refund, "SUCCESS")

    def find_refund(self, out_refund_no: str) -> SimRefund:
        found = [r for (_, no), r in self.refunds.items() if no == out_refund_no]
        if not found:
            raise SimError(404, "not_found", "退款单不存在", {"out_refund_no": out_refund_no})
        return found[0]

    def settle_refund(self, refund: SimRefund, status: str) -> SimRefund:
        """A PROCESSING refund ends SUCCESS, ABNORMAL or CLOSED; the order turns REFUND; the notify goes."""
        if refund.status != "PROCESSING":
            raise SimError(409, "refund_settled", "退款已有结果", {"status": refund.status})
        refund.status = status
        order = self.orders[(refund.mchid, refund.out_trade_no)]
        if status == "SUCCESS":
            refund.success_time = _now_china()
            order.trade_state = "REFUND"
        view = self.refund_view(refund)
        resource = {
            "mchid": refund.mchid,
            "out_trade_no": refund.out_trade_no,
            "transaction_id": order.transaction_id,
            "out_refund_no": refund.out_refund_no,
            "refund_id": refund.refund_id,
            "refund_status": status,
            "user_received_account": view["user_received_account"],
            "amount": {k: view["amount"][k] for k in ("total", "refund", "payer_total", "payer_refund")},
        }
        if refund.success_time is not None:
            resource["success_time"] = rfc3339(refund.success_time)
        self.send_notify(order, f"REFUND.{status}", resource, url=refund.notify_url or order.notify_url)
        return refund

    # notifies ----------------------------------------------------------------------------

    def build_notify(
        self,
        merchant: Merchant,
        event_type: str,
        resource: dict,
        *,
        notify_id: str | None = None,
        timestamp: int | None = None,
        signature_prefix: str = "",
        use_wrong_key: bool = False,
    ) -> tuple[dict[str, str], str]:
        """(headers, body) of a notify as WeChat builds it."""
        body = self._notify_body(merchant, event_type, resource, notify_id or str(uuid.uuid4()))
        headers = self.signed_headers(body, key=self.wrong_key if use_wrong_key else None, timestamp=timestamp)
        headers["Wechatpay-Signature"] = signature_prefix + headers["Wechatpay-Signature"]
        headers["Wechatpay-Signature-Type"] = SIGN_SCHEME
        headers["Content-Type"] = "application/json"
        return headers, body

    @staticmethod
    def _notify_body(merchant: Merchant, event_type: str, resource: dict, notify_id: str) -> str:
        """The notify JSON: its resource encrypted with the merchant's APIv3 key."""
        original_type = "refund" if event_type.startswith("REFUND.") else "transaction"
        return dumps(
            {
                "id": notify_id,
                "create_time": rfc3339(_now_china()),
                "resource_type": "encrypt-resource",
                "event_type": event_type,
                "summary": NOTIFY_SUMMARY.get(event_type, "退款异常"),
                "resource": encrypt_resource(
                    merchant.apiv3_key,
                    dumps(resource).encode("utf-8"),
                    associated_data=original_type,
                    original_type=original_type,
                ),
            }
        )

    def notify_trade(self, order: SimOrder) -> None:
        self.send_notify(order, "TRANSACTION.SUCCESS", self.transaction(order), url=order.notify_url)

    def send_notify(self, order: SimOrder, event_type: str, resource: dict, *, url: str) -> OutgoingNotify:
        """Builds a notify and starts its delivery as the order's notify mode says."""
        notify_id = str(uuid.uuid4())
        body = self._notify_body(self.merchants[order.mchid], event_type, resource, notify_id)
        notify = OutgoingNotify(notify_id, order.mchid, order.out_trade_no, event_type, url, body, "")
        order.last_notify = notify
        self.start_delivery(order, notify)
        return notify

    def start_delivery(self, order: SimOrder, notify: OutgoingNotify) -> None:
        mode = notify.mode = order.notify_mode
        self.notifies.append(
            {
                "notify_id": notify.notify_id,
                "out_trade_no": notify.out_trade_no,
                "event_type": notify.event_type,
                "url": notify.url,
                "mode": mode,
                "at": round(time.time(), 3),
            }
        )
        if mode == "lose":
            return
        copies = order.notify_count if mode == "duplicate" else 1
        first_delay = order.notify_delay_s if mode == "delay" else 0.0
        for _ in range(copies):
            self._spawn(self._deliver(notify, first_delay))

    def _spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._own_client and (self._client is None or self._client_loop is not loop or self._client.is_closed):
            self._client = httpx.AsyncClient(trust_env=False, follow_redirects=False)
            self._client_loop = loop
        assert self._client is not None
        return self._client

    async def _deliver(self, notify: OutgoingNotify, first_delay_s: float) -> None:
        """One delivery: the first try after `first_delay_s`, then WeChat's retry schedule, all scaled."""
        try:
            delays = (first_delay_s, *RETRY_SCHEDULE_S)
            for attempt, delay in enumerate(delays, start=1):
                if delay:
                    await asyncio.sleep(delay * self.time_scale)
                if await self._attempt(notify, attempt):
                    return
            log.warning("wechatpay simulator: gave up notify %s to %s", notify.notify_id, notify.url)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("wechatpay simulator: notify %s failed", notify.notify_id)

    async def _attempt(self, notify: OutgoingNotify, attempt: int) -> bool:
        entry: dict[str, Any] = {
            "notify_id": notify.notify_id,
            "out_trade_no": notify.out_trade_no,
            "event_type": notify.event_type,
            "attempt": attempt,
            "url": notify.url,
            "status": None,
            "error": None,
            "at": round(time.time(), 3),
        }
        self.deliveries.append(entry)
        headers = self.signed_headers(notify.body)
        headers.update({"Wechatpay-Signature-Type": SIGN_SCHEME, "Content-Type": "application/json"})
        try:
            response = await self._http().post(
                notify.url, content=notify.body.encode("utf-8"), headers=headers, timeout=NOTIFY_TIMEOUT_S
            )
        except Exception as error:  # any failure to deliver is a failed attempt, retried
            # httpx errors, and the odd transport error that escapes httpx when the peer drops the socket.
            entry["error"] = f"{type(error).__name__}: {error}"[:300]
            return False
        entry["status"] = response.status_code
        return response.status_code in (200, 204)

    def resend(self, order: SimOrder) -> OutgoingNotify:
        if order.last_notify is None:
            raise SimError(409, "no_notify", "此订单还没有通知", {"out_trade_no": order.out_trade_no})
        self.start_delivery(order, order.last_notify)
        return order.last_notify

    # bills -------------------------------------------------------------------------------

    def bill_lines(self, merchant: Merchant, day: date) -> list[dict[str, str]]:
        """The day's bill rows as column -> value (China time)."""
        rows: list[dict[str, str]] = []
        for order in self.orders.values():
            if order.mchid == merchant.mchid and order.success_time and order.success_time.date() == day:
                rows.append(self._pay_row(order))
        for refund in self.refunds.values():
            if refund.mchid == merchant.mchid and refund.success_time and refund.success_time.date() == day:
                rows.append(self._refund_row(refund))
        for extra in self.extra_bill_rows.get((merchant.mchid, day.isoformat()), []):
            rows.append(self._extra_row(merchant, extra))
        return rows

    def _base_row(self, appid: str, mchid: str, at: datetime, transaction_id: str, out_trade_no: str) -> dict:
        row = dict.fromkeys(BILL_COLUMNS, "")
        row.update(
            {
                "交易时间": at.astimezone(CHINA).strftime(BILL_TIME_FORMAT),
                "公众账号ID": appid,
                "商户号": mchid,
                "特约商户号": "0",
                "微信订单号": transaction_id,
                "商户订单号": out_trade_no,
                "交易类型": "JSAPI",
                "付款银行": "OTHERS",
                "货币种类": "CNY",
                "代金券金额": "0.00",
                "充值券退款金额": "0.00",
                "手续费": "0.00000",
                "费率": "0.60%",
            }
        )
        return row

    def _pay_row(self, order: SimOrder) -> dict:
        assert order.success_time is not None and order.transaction_id is not None
        row = self._base_row(order.appid, order.mchid, order.success_time, order.transaction_id, order.out_trade_no)
        amount = fen_to_yuan(order.total)
        row.update(
            {
                "用户标识": order.openid,
                "交易状态": "SUCCESS",
                "应结订单金额": amount,
                "微信退款单号": "0",
                "商户退款单号": "0",
                "退款金额": "0.00",
                "商品名称": order.description,
                "商户数据包": order.attach,
                "订单金额": amount,
                "申请退款金额": "0.00",
            }
        )
        return row

    def _refund_row(self, refund: SimRefund) -> dict:
        order = self.orders[(refund.mchid, refund.out_trade_no)]
        assert refund.success_time is not None
        transaction_id = order.transaction_id or ""
        row = self._base_row(order.appid, order.mchid, refund.success_time, transaction_id, order.out_trade_no)
        amount = fen_to_yuan(refund.amount)
        row.update(
            {
                "用户标识": order.openid,
                "交易状态": "REFUND",
                "应结订单金额": "0.00",
                "微信退款单号": refund.refund_id,
                "商户退款单号": refund.out_refund_no,
                "退款金额": amount,
                "退款类型": "ORIGINAL",
                "退款状态": "SUCCESS",
                "商品名称": order.description,
                "订单金额": "0.00",
                "申请退款金额": amount,
            }
        )
        return row

    def _extra_row(self, merchant: Merchant, extra: dict) -> dict:
        appid = next(iter(sorted(merchant.appids)), "")
        at = datetime.fromisoformat(extra["at"])
        transaction_id = extra.get("transaction_id") or f"4200{_digits(24)}"
        row = self._base_row(appid, merchant.mchid, at, transaction_id, extra["out_trade_no"])
        amount = fen_to_yuan(extra["amount_fen"])
        if extra["kind"] == "refund":
            row.update(
                {
                    "交易状态": "REFUND",
                    "应结订单金额": "0.00",
                    "微信退款单号": f"50{_digits(27)}",
                    "商户退款单号": extra.get("out_refund_no") or f"R{secrets.token_hex(8)}",
                    "退款金额": amount,
                    "退款类型": "ORIGINAL",
                    "退款状态": "SUCCESS",
                    "订单金额": "0.00",
                    "申请退款金额": amount,
                }
            )
        else:
            row.update(
                {
                    "交易状态": "SUCCESS",
                    "应结订单金额": amount,
                    "微信退款单号": "0",
                    "商户退款单号": "0",
                    "退款金额": "0.00",
                    "订单金额": amount,
                    "申请退款金额": "0.00",
                }
            )
        return row

    def bill_csv(self, rows: list[dict[str, str]]) -> bytes:
        """The trade bill file: header, backtick-prefixed rows, the summary header and line."""
        out = [",".join(BILL_COLUMNS)]
        out += [",".join("`" + row[c].replace(",", "，") for c in BILL_COLUMNS) for row in rows]
        paid = sum(_fen(r["应结订单金额"]) for r in rows)
        refunded = sum(_fen(r["退款金额"]) for r in rows if r["交易状态"] == "REFUND")
        totals = sum(_fen(r["订单金额"]) for r in rows)
        summary = [str(len(rows)), fen_to_yuan(paid), fen_to_yuan(refunded), "0.00", "0.00000"]
        summary += [fen_to_yuan(totals), fen_to_yuan(refunded)]
        out += [",".join(BILL_SUMMARY_COLUMNS), ",".join("`" + v for v in summary)]
        return ("\r\n".join(out) + "\r\n").encode("utf-8")

    def trade_bill(self, merchant: Merchant, args: dict[str, str], base_url: str) -> dict:
        bill_date = args.get("bill_date") or ""
        try:
            day = date.fromisoformat(bill_date) if re.fullmatch(r"\d{4}-\d{2}-\d{2}", bill_date) else None
        except ValueError:
            day = None
        if day is None:
            raise PayError(400, "PARAM_ERROR", "bill_date格式不正确", {"field": "bill_date", "location": "query"})
        if args.get("bill_type", "ALL") not in ("ALL", "SUCCESS", "REFUND"):
            raise PayError(400, "PARAM_ERROR", "bill_type不正确", {"field": "bill_type", "location": "query"})
        if day > datetime.now(CHINA).date():
            raise PayError(400, "INVALID_REQUEST", "账单日期不能大于今天")
        rows = self.bill_lines(merchant, day)
        wanted = args.get("bill_type", "ALL")
        if wanted != "ALL":
            rows = [r for r in rows if (r["交易状态"] == "REFUND") == (wanted == "REFUND")]
        if not rows:
            raise PayError(400, "NO_STATEMENT_EXIST", "账单文件不存在")
        content = self.bill_csv(rows)
        token = secrets.token_urlsafe(24)
        tampered = (merchant.mchid, day.isoformat()) in self.tamper_next
        self.tamper_next.discard((merchant.mchid, day.isoformat()))
        self.bill_files[token] = BillFile(content, tampered)
        return {
            "hash_type": "SHA1",
            "hash_value": hashlib.sha1(content).hexdigest(),
            "download_url": f"{base_url}/v3/billdownload/file?token={token}",
        }

    def bill_file(self, token: str | None) -> bytes:
        bill = self.bill_files.get(token or "")
        if bill is None:
            raise PayError(400, "INVALID_REQUEST", "下载链接已失效")
        return bill.content + b"\r\n" if bill.tampered else bill.content

    def add_bill_rows(self, mchid: str, bill_date: str, rows: list[dict[str, Any]]) -> int:
        if mchid not in self.merchants:
            raise SimError(404, "not_found", "商户不存在", {"mchid": mchid})
        self.extra_bill_rows.setdefault((mchid, bill_date), []).extend(rows)
        return len(self.extra_bill_rows[(mchid, bill_date)])

    # pay-sign check and stats --------------------------------------------------------------

    def check_pay_sign(self, body: dict) -> dict:
        """What the WeChat client does with wx.requestPayment's parameters."""
        appid = body.get("appId") or body.get("appid")
        parts = [appid, body.get("timeStamp"), body.get("nonceStr"), body.get("package")]
        if not all(isinstance(p, str) and p for p in parts) or not isinstance(body.get("paySign"), str):
            return {"valid": False, "reason": "missing_fields"}
        prepay_id = parts[3].removeprefix("prepay_id=")
        order = next((o for o in self.orders.values() if o.prepay_id == prepay_id), None)
        if order is None:
            return {"valid": False, "reason": "unknown_prepay_id"}
        if order.appid != appid:
            return {"valid": False, "reason": "appid_mismatch"}
        if signature_type := body.get("signType"):
            if signature_type != "RSA":
                return {"valid": False, "reason": "sign_type"}
        if not rsa_verify(self.merchants[order.mchid].public_key, signing_message(*parts), body["paySign"]):
            return {"valid": False, "reason": "signature"}
        return {"valid": True, "reason": None, "out_trade_no": order.out_trade_no}

    def count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def stats(self) -> dict:
        return {
            "calls": dict(self.calls),
            "orders": len(self.orders),
            "refunds": len(self.refunds),
            "notifies": len(self.notifies),
            "deliveries": len(self.deliveries),
        }

    def order_view(self, order: SimOrder) -> dict:
        view = self.transaction(order)
        view.update(
            {
                "prepay_id": order.prepay_id,
                "notify_url": order.notify_url,
                "description": order.description,
                "time_expire": order.time_expire,
                "notify_mode": order.notify_mode,
                "refunds": [self.refund_view(self.refunds[(order.mchid, no)]) for no in order.refunds],
            }
        )
        return view

    async def close_client(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None


def _fen(yuan: str) -> int:
    whole, _, cents = yuan.partition(".")
    return int(whole) * 100 + int((cents + "00")[:2])


def _self_signed(key: RSAPrivateKey) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tenpay.com"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Tenpay.com CA Center"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Tenpay.com Root CA (simulator)"),
        ]
    )
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=5 * 365))
        .sign(key, hashes.SHA256())
    )


def _validated_prepay(body: dict) -> dict[str, Any]:
    """The JSAPI order's fields, checked as WeChat checks them (PARAM_ERROR names the first bad field)."""
    out: dict[str, Any] = {}
    for name, max_len in (("appid", 32), ("mchid", 32), ("description", 127), ("notify_url", 256)):
        value = body.get(name)
        if not isinstance(value, str) or not value.strip():
            raise _param_error(name, "不能为空")
        if len(value) > max_len:
            raise _param_error(name, f"长度不能超过{max_len}", value)
        out[name] = value
    if not re.match(r"^https?://", out["notify_url"]):
        raise _param_error("notify_url", "格式不正确，应为http或https地址", out["notify_url"])
    out_trade_no = body.get("out_trade_no")
    if not isinstance(out_trade_no, str) or not _OUT_TRADE_NO.match(out_trade_no):
        raise _param_error("out_trade_no", "应为6-32位数字、大小写字母、_-*", out_trade_no)
    out["out_trade_no"] = out_trade_no
    amount = body.get("amount")
    if not isinstance(amount, dict):
        raise _param_error("amount", "不能为空")
    total = amount.get("total")
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise _param_error("amount.total", "应为不小于1的整数", total)
    if amount.get("currency", "CNY") != "CNY":
        raise _param_error("amount.currency", "应为CNY", amount.get("currency"))
    out["total"] = total
    payer = body.get("payer")
    openid = payer.get("openid") if isinstance(payer, dict) else None
    if not isinstance(openid, str) or not openid:
        raise _param_error("payer.openid", "不能为空")
    out["openid"] = openid
    attach = body.get("attach", "")
    if not isinstance(attach, str) or len(attach) > 128:
        raise _param_error("attach", "长度不能超过128", attach)
    out["attach"] = attach
    time_expire = body.get("time_expire")
    if time_expire is not None:
        try:
            if not isinstance(time_expire, str) or datetime.fromisoformat(time_expire).tzinfo is None:
                raise ValueError
        except ValueError:
            raise _param_error("time_expire", "格式不正确，应为rfc3339格式", time_expire) from None
    out["time_expire"] = time_expire
    return out


# -- routes --------------------------------------------------------------------------------


def _signed_response(state: WeChatPayState, body: dict | None, status: int = 200) -> HTTPResponse:
    text = "" if body is None else dumps(body)
    headers = state.signed_headers(text)
    headers["Request-ID"] = f"08{secrets.token_hex(16).upper()}"
    return HTTPResponse(text.encode("utf-8"), status=status, headers=headers, content_type="application/json")


def _pay_json(request: Request) -> dict:
    if not request.body:
        raise PayError(400, "PARAM_ERROR", "请求体不能为空")
    try:
        data = json.loads(request.body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise PayError(400, "PARAM_ERROR", "请求体不是有效的JSON") from None
    if not isinstance(data, dict):
        raise PayError(400, "PARAM_ERROR", "请求体应为JSON对象")
    return data


def _text(body: dict, name: str, errors: dict[str, str], *, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        if required:
            errors[name] = "此项为必填项"
        return None
    if not isinstance(value, str):
        errors[name] = "应为文本"
        return None
    return value


def wechatpay_blueprint(state: WeChatPayState, url_prefix: str = "") -> Blueprint:
    """The simulator's routes (WeChat Pay v3 and the `/__sim__/` control API) over `state`."""
    bp = Blueprint("wechatpay_sim", url_prefix=url_prefix or None)
    prefix = url_prefix.rstrip("/")

    def pay_route(path: str, method: str, name: str):
        """A WeChat Pay endpoint: counts, authenticates the merchant, answers signed JSON or a signed error."""

        def register(handler) -> None:
            async def route(request: Request, **params: str) -> HTTPResponse:
                state.count(name)
                try:
                    merchant = state.authenticate(request)
                    result = handler(request, merchant, **params)
                except PayError as error:
                    return _signed_response(state, error.body(), error.status)
                except Exception:
                    log.exception("wechatpay simulator error on %s", request.path)
                    return _signed_response(state, {"code": "SYSTEM_ERROR", "message": "系统错误"}, 500)
                if isinstance(result, HTTPResponse):
                    return result
                return _signed_response(state, result, 204 if result is None else 200)

            bp.add_route(route, path, methods=[method], name=name)

        return register

    def base_url(request: Request) -> str:
        return f"{request.scheme}://{request.host}{prefix}"

    @pay_route("/v3/pay/transactions/jsapi", "POST", "jsapi")
    def _jsapi(request: Request, merchant: Merchant) -> dict:
        return state.jsapi_prepay(merchant, _pay_json(request))

    @pay_route("/v3/pay/transactions/out-trade-no/<out_trade_no>", "GET", "query")
    def _query(request: Request, merchant: Merchant, out_trade_no: str) -> dict:
        return state.query(merchant, out_trade_no, request.args.get("mchid"))

    @pay_route("/v3/pay/transactions/out-trade-no/<out_trade_no>/close", "POST", "close")
    def _close(request: Request, merchant: Merchant, out_trade_no: str) -> None:
        state.close(merchant, out_trade_no, _pay_json(request))

    @pay_route("/v3/refund/domestic/refunds", "POST", "refund")
    def _refund(request: Request, merchant: Merchant) -> dict:
        return state.refund(merchant, _pay_json(request))

    @pay_route("/v3/refund/domestic/refunds/<out_refund_no>", "GET", "query_refund")
    def _query_refund(request: Request, merchant: Merchant, out_refund_no: str) -> dict:
        return state.query_refund(merchant, out_refund_no)

    @pay_route("/v3/bill/tradebill", "GET", "tradebill")
    def _tradebill(request: Request, merchant: Merchant) -> dict:
        args = {k: request.args.get(k) for k in ("bill_date", "bill_type") if request.args.get(k) is not None}
        return state.trade_bill(merchant, args, base_url(request))

    @pay_route("/v3/billdownload/file", "GET", "billdownload")
    def _billdownload(request: Request, merchant: Merchant) -> HTTPResponse:
        content = state.bill_file(request.args.get("token"))
        return HTTPResponse(content, status=200, content_type="text/plain; charset=utf-8")

    # -- control ---------------------------------------------------------------------------

    def control(path: str, methods: tuple[str, ...] = ("POST",)):
        def register(handler) -> None:
            name = "sim" + path.removeprefix("/__sim__").replace("/", "_").replace("-", "_").replace("<", "").replace(
                ">", ""
            )
            inner = simserver.control_route(handler, log=log, path=path)

            async def route(request: Request, **_params: str) -> HTTPResponse:
                return await inner(request)

            bp.add_route(route, path, methods=list(methods), name=name)

        return register

    def order_of(body: dict) -> SimOrder:
        errors: dict[str, str] = {}
        out_trade_no = _text(body, "out_trade_no", errors)
        mchid = _text(body, "mchid", errors, required=False)
        simserver.check_fields(errors)
        return state.find_order(out_trade_no, mchid)

    @control("/__sim__/merchants")
    def _merchants(request: Request) -> dict:
        body = simserver.json_object(request, empty_ok=False)
        errors: dict[str, str] = {}
        mchid, serial_no = _text(body, "mchid", errors), _text(body, "serial_no", errors)
        pem, apiv3_key = _text(body, "public_key_pem", errors), _text(body, "apiv3_key", errors)
        appids = body.get("appids")
        if not isinstance(appids, list) or not appids or not all(isinstance(a, str) and a for a in appids):
            errors["appids"] = "应为非空的 appid 列表"
        if apiv3_key is not None and len(apiv3_key.encode("utf-8")) != 32:
            errors["apiv3_key"] = "应为 32 字节"
        simserver.check_fields(errors)
        try:
            return state.register_merchant(
                mchid=mchid, appids=appids, serial_no=serial_no, public_key_pem=pem, apiv3_key=apiv3_key
            )
        except ValueError as error:
            fields = {"public_key_pem": str(error)}
            raise SimError(422, "validation_failed", "提交的内容有误", {"fields": fields}) from None

    @control("/__sim__/platform", ("GET",))
    def _platform(request: Request) -> dict:
        return state.platform_info()

    @control("/__sim__/pay")
    def _pay(request: Request) -> dict:
        body = simserver.json_object(request)
        force = body.get("force", False)
        if not isinstance(force, bool):
            simserver.check_fields({"force": "应为是或否"})
        return state.order_view(state.pay(order_of(body), force=force))

    @control("/__sim__/fail")
    def _fail(request: Request) -> dict:
        return state.order_view(state.fail(order_of(simserver.json_object(request))))

    @control("/__sim__/notify-mode")
    def _notify_mode(request: Request) -> dict:
        body = simserver.json_object(request)
        order = order_of(body)
        errors: dict[str, str] = {}
        mode = body.get("mode")
        if mode not in NOTIFY_MODES:
            errors["mode"] = f"应为 {'、'.join(NOTIFY_MODES)} 之一"
        count, delay_s = body.get("count", 2), body.get("delay_s", 0)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 100:
            errors["count"] = "应为 1-100 的整数"
        if isinstance(delay_s, bool) or not isinstance(delay_s, (int, float)) or delay_s < 0:
            errors["delay_s"] = "应为不小于 0 的数字"
        simserver.check_fields(errors)
        order.notify_mode, order.notify_count, order.notify_delay_s = mode, count, float(delay_s)
        return {"out_trade_no": order.out_trade_no, "mode": mode, "count": count, "delay_s": float(delay_s)}

    @control("/__sim__/resend")
    def _resend(request: Request) -> dict:
        notify = state.resend(order_of(simserver.json_object(request)))
        return {"notify_id": notify.notify_id, "event_type": notify.event_type}

    @control("/__sim__/refund-outcome")
    def _refund_outcome(request: Request) -> dict:
        body = simserver.json_object(request)
        errors: dict[str, str] = {}
        out_refund_no = _text(body, "out_refund_no", errors)
        status = body.get("status")
        if status not in REFUND_OUTCOMES:
            errors["status"] = f"应为 {'、'.join(REFUND_OUTCOMES)} 之一"
        simserver.check_fields(errors)
        return state.refund_view(state.settle_refund(state.find_refund(out_refund_no), status))

    @control("/__sim__/config")
    def _config(request: Request) -> dict:
        body = simserver.json_object(request)
        errors: dict[str, str] = {}
        for name in ("time_scale", "refund_settle_s"):
            value = body.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                errors[name] = "应为不小于 0 的数字"
        simserver.check_fields(errors)
        if body.get("time_scale") is not None:
            state.time_scale = float(body["time_scale"])
        if body.get("refund_settle_s") is not None:
            state.refund_settle_s = float(body["refund_settle_s"])
        return {"time_scale": state.time_scale, "refund_settle_s": state.refund_settle_s}

    @control("/__sim__/deliveries", ("GET",))
    def _deliveries(request: Request) -> dict:
        wanted = request.args.get("out_trade_no")
        return {
            "notifies": [n for n in state.notifies if wanted in (None, n["out_trade_no"])],
            "deliveries": [d for d in state.deliveries if wanted in (None, d["out_trade_no"])],
        }

    @control("/__sim__/orders/<out_trade_no>", ("GET",))
    def _order(request: Request) -> dict:
        out_trade_no = request.match_info.get("out_trade_no", "")
        return state.order_view(state.find_order(out_trade_no, request.args.get("mchid")))

    @control("/__sim__/pay-sign-check")
    def _pay_sign_check(request: Request) -> dict:
        return state.check_pay_sign(simserver.json_object(request))

    @control("/__sim__/sign-notify")
    def _sign_notify(request: Request) -> dict:
        body = simserver.json_object(request, empty_ok=False)
        errors: dict[str, str] = {}
        mchid, event_type = _text(body, "mchid", errors), _text(body, "event_type", errors)
        prefix_value = _text(body, "signature_prefix", errors, required=False) or ""
        notify_id = _text(body, "id", errors, required=False)
        resource, timestamp = body.get("resource"), body.get("timestamp")
        if not isinstance(resource, dict):
            errors["resource"] = "应为 JSON 对象"
        if timestamp is not None and (isinstance(timestamp, bool) or not isinstance(timestamp, int)):
            errors["timestamp"] = "应为整数"
        if not isinstance(body.get("use_wrong_key", False), bool):
            errors["use_wrong_key"] = "应为是或否"
        simserver.check_fields(errors)
        merchant = state.merchants.get(mchid)
        if merchant is None:
            raise SimError(404, "not_found", "商户不存在", {"mchid": mchid})
        headers, text = state.build_notify(
            merchant,
            event_type,
            resource,
            notify_id=notify_id,
            timestamp=timestamp,
            signature_prefix=prefix_value,
            use_wrong_key=body.get("use_wrong_key", False),
        )
        return {"headers": headers, "body": text}

    @control("/__sim__/bill-rows")
    def _bill_rows(request: Request) -> dict:
        body = simserver.json_object(request, empty_ok=False)
        errors: dict[str, str] = {}
        bill_date = _text(body, "bill_date", errors)
        rows = body.get("rows")
        mchid = _text(body, "mchid", errors, required=False) or next(iter(state.merchants), None)
        day = _date_or_none(bill_date)
        if bill_date is not None and day is None:
            errors["bill_date"] = "应为 YYYY-MM-DD"
        checked = _checked_bill_rows(rows, day, errors)
        simserver.check_fields(errors)
        if mchid is None:
            raise SimError(404, "not_found", "还没有商户")
        return {"bill_date": bill_date, "rows": state.add_bill_rows(mchid, bill_date, checked)}

    @control("/__sim__/bill-tamper")
    def _bill_tamper(request: Request) -> dict:
        body = simserver.json_object(request, empty_ok=False)
        errors: dict[str, str] = {}
        bill_date = _text(body, "bill_date", errors)
        mchid = _text(body, "mchid", errors, required=False) or next(iter(state.merchants), None)
        if bill_date is not None and _date_or_none(bill_date) is None:
            errors["bill_date"] = "应为 YYYY-MM-DD"
        simserver.check_fields(errors)
        state.tamper_next.add((mchid or "", bill_date))
        return {"bill_date": bill_date, "mchid": mchid}

    @control("/__sim__/stats", ("GET",))
    def _stats(request: Request) -> dict:
        return state.stats()

    @control("/__sim__/reset")
    def _reset(request: Request) -> dict:
        state.reset()
        return {"ok": True}

    @bp.listener("before_server_stop")
    async def _stop(app: Sanic) -> None:
        await state.close_client()

    return bp


def _date_or_none(text: str | None) -> date | None:
    if not text or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def _checked_bill_rows(rows: Any, day: date | None, errors: dict[str, str]) -> list[dict[str, Any]]:
    """Extra bill rows, checked; `at` defaults to noon China time of the bill's day."""
    if not isinstance(rows, list) or not rows:
        errors["rows"] = "应为非空列表"
        return []
    checked = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            errors[f"rows[{i}]"] = "应为 JSON 对象"
            continue
        kind, no, amount = row.get("kind"), row.get("out_trade_no"), row.get("amount_fen")
        if kind not in ("pay", "refund"):
            errors[f"rows[{i}].kind"] = "应为 pay 或 refund"
        if not isinstance(no, str) or not no:
            errors[f"rows[{i}].out_trade_no"] = "此项为必填项"
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
            errors[f"rows[{i}].amount_fen"] = "应为不小于 0 的整数"
        at = row.get("at")
        if at is None and day is not None:
            at = datetime(day.year, day.month, day.day, 12, tzinfo=CHINA).isoformat()
        try:
            if not isinstance(at, str) or datetime.fromisoformat(at).tzinfo is None:
                raise ValueError
        except ValueError:
            errors[f"rows[{i}].at"] = "应为带时区的 ISO 8601 时间"
        checked.append({**row, "at": at})
    return checked


# -- standalone app ------------------------------------------------------------------------


def create_wechatpay_app(state: WeChatPayState | None = None) -> Sanic:
    """A standalone Sanic app serving the simulator at the root, answering JSON for every error."""
    state = state or WeChatPayState()
    return simserver.create_app("wechatpay_sim", wechatpay_blueprint(state), state=state, log=log)


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key-mode", choices=KEY_MODES, default="public_key", help="how the platform key is named")
    parser.add_argument("--time-scale", type=float, default=1.0, help="multiplies every notify delay (e.g. 0.01)")


def main(argv: list[str] | None = None) -> None:
    """Serves the simulator standalone until stopped: `python -m payments.wechatpay_sim [--port 8703]`."""
    simserver.main(
        argv,
        prog="python -m payments.wechatpay_sim",
        description=__doc__.splitlines()[0],
        port=8703,
        build=lambda args: create_wechatpay_app(WeChatPayState(key_mode=args.key_mode, time_scale=args.time_scale)),
        options=_options,
    )


if __name__ == "__main__":
    main()
