"""Alipay open platform simulator: the real gateway wire format and real RSA2 signatures, in memory.

Alipay cannot be reached from development and test machines, so Zhangban talks to this simulator
instead. Mount it in-process (`alipay_blueprint(state, url_prefix="/_sim/alipay")`, gateway
`<base>/_sim/alipay/gateway.do`) or run it standalone:

    python -m payments.alipay_sim --host 127.0.0.1 --port 8704 [--time-scale 0.001] [--url-prefix /_sim/alipay]
                                  [--app-id A --app-public-key FILE --seller-id 2088...]

Alipay's RSA key pair is generated at start; `register_app` (or `POST /__sim__/apps`) takes the app's
public key and answers Alipay's public key, which the app needs to verify answers and notifies.

Gateway (`GET|POST /gateway.do`; common parameters in the query string and/or the form body):

    alipay.trade.precreate                           -> qr_code https://qr.alipay.com/...
    alipay.trade.wap.pay                             page execute: an HTML cashier (pay with /__sim__/pay)
    alipay.trade.query / .close / .refund
    alipay.trade.fastpay.refund.query
    alipay.data.dataservice.bill.downloadurl.query   -> bill_download_url, a zip served by the simulator
    GET /downloadBillFile.resource?fileId=...        the bill zip (valid 30 s, like Alipay's)

Wire behaviour, as Alipay does it:

- the app's RSA2 signature is checked over every parameter but `sign`, sorted, `k=v&...`; a bad one is
  `{"<method>_response": {"code": "40002", "msg": "Invalid Arguments", "sub_code": "isv.invalid-signature", ...}}`;
- every answer is `{"<method with dots as underscores>_response": {...}, "sign": "..."}`, the sign being
  RSA2 with Alipay's key over the exact JSON text of the response node; success is `code` "10000",
  a business refusal "40004" "Business Failed" with `sub_code`/`sub_msg` (ACQ.TRADE_NOT_EXIST, ...);
- precreate makes a QR code, not yet a trade: query and close answer ACQ.TRADE_NOT_EXIST until the
  buyer scans (`/__sim__/pay` or `/__sim__/fail`); the wap cashier page counts as the buyer arriving;
- close: a paid or closed trade -> ACQ.TRADE_STATUS_ERROR; refund: idempotent by out_request_no
  (`fund_change` "Y" the first time, "N" on a repeat), more than paid -> ACQ.REFUND_AMT_NOT_EQUAL_TOTAL;
  a full refund closes the trade (TRADE_CLOSED), a partial one leaves it TRADE_SUCCESS;
- the bill is a zip of GBK CSV files named in GBK (no UTF-8 flag) `<pid>_<yyyymmdd>_业务明细.csv` and
  `<pid>_<yyyymmdd>_业务明细(汇总).csv`, with Alipay's `#` header and footer lines; any day up to today
  (today holds what happened so far); a future day -> isp.bill_not_exist.

Notifies: on payment, and after each refund (with refund_fee = the total refunded, gmt_refund,
out_biz_no = out_request_no), a form POST to the trade's notify_url, signed over every field but `sign`
and `sign_type`. Only the exact body `success` ends it; otherwise it is retried after 4 m, 10 m, 10 m,
1 h, 2 h, 6 h, 15 h, each multiplied by `time_scale`.

Control API (not Alipay; JSON in and out; errors are `{"code", "message", "details"}`):

    POST /__sim__/apps          {"app_id", "app_public_key_pem", "seller_id"?} -> {"app_id", "seller_id",
                                 "alipay_public_key_pem"}
    GET  /__sim__/alipay-public-key                 -> {"alipay_public_key_pem"}
    POST /__sim__/pay           {"out_trade_no", "app_id"?, "force"?: bool}  the buyer pays (force: even a
                                 trade closed or expired: "paid after close")
    POST /__sim__/fail          {"out_trade_no", "app_id"?}  the buyer scans and abandons (WAIT_BUYER_PAY)
    POST /__sim__/notify-mode   {"out_trade_no", "mode": normal|lose|duplicate|delay, "count"?: 2, "delay_s"?}
                                 for the trade's next notify only: lose it, deliver it `count` times, or
                                 start its delivery `delay_s` seconds late
    POST /__sim__/resend        {"out_trade_no"}   the trade's last notify again, as a new delivery
    POST /__sim__/config        {"time_scale"}
    GET  /__sim__/deliveries?out_trade_no=          {"deliveries": [...]} every delivery attempt, in order
    GET  /__sim__/trades/<out_trade_no>             the trade as the simulator holds it
    POST /__sim__/sign-notify   {"fields": {...}, "sign_type_in_content"?: bool, "use_wrong_key"?: bool}
                                 -> {"form"}: a notify form signed by "Alipay" that a test sends itself
    POST /__sim__/bill-rows     {"date": "YYYY-MM-DD", "app_id"?, "rows": [{"kind": "pay"|"refund",
                                 "out_trade_no", "amount_fen", "trade_no"?, "out_refund_no"?, "at"?}]}
    GET  /__sim__/stats         {"calls": {method: n}, "notifies": {...}, "trades": n}
    POST /__sim__/reset         back to no apps and no trades (Alipay's key is kept)
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import logging
import secrets
import time
import zipfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from sanic import Blueprint, Request, Sanic
from sanic.response import HTTPResponse
from sanic.response import html as html_response
from sanic.response import raw as raw_response
from sanic.response import text as text_response

from core import simserver
from core.china_time import CHINA
from core.simserver import SimError
from payments.alipay import (
    TIME_FORMAT,
    load_public_key,
    notify_sign_content,
    public_key_pem,
    sign_content,
    sign_rsa2,
    verify_rsa2,
)
from payments.base import fen_to_yuan, yuan_to_fen

log = logging.getLogger("zhangban.alipay_sim")

RETRY_SCHEDULE_S = (240.0, 600.0, 600.0, 3600.0, 7200.0, 21600.0, 54000.0)
NOTIFY_MODES = ("normal", "lose", "duplicate", "delay")
BILL_URL_TTL_S = 30.0
DEFAULT_EXPIRY = timedelta(hours=2)
MAX_TOTAL_FEN = 10_000_000_000  # 100000000.00 yuan, Alipay's ceiling

PRECREATE = "alipay.trade.precreate"
WAP_PAY = "alipay.trade.wap.pay"
QUERY = "alipay.trade.query"
CLOSE = "alipay.trade.close"
REFUND = "alipay.trade.refund"
REFUND_QUERY = "alipay.trade.fastpay.refund.query"
BILL_URL = "alipay.data.dataservice.bill.downloadurl.query"
METHODS = (PRECREATE, WAP_PAY, QUERY, CLOSE, REFUND, REFUND_QUERY, BILL_URL)

WAIT_BUYER_PAY, TRADE_SUCCESS, TRADE_FINISHED, TRADE_CLOSED = (
    "WAIT_BUYER_PAY",
    "TRADE_SUCCESS",
    "TRADE_FINISHED",
    "TRADE_CLOSED",
)

BILL_DETAIL_HEADER = (
    "支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,操作员,终端号,对方账户,"
    "订单金额（元）,商家实收（元）,支付宝红包（元）,集分宝（元）,支付宝优惠（元）,商家优惠（元）,券核销金额（元）,"
    "券名称,商家红包消费金额（元）,卡消费金额（元）,退款批次号/请求号,服务费（元）,分润（元）,备注"
)
BILL_SUMMARY_HEADER = (
    "门店编号,门店名称,交易订单总笔数,退款订单总笔数,订单金额（元）,商家实收（元）,支付宝优惠（元）,商家优惠（元）,"
    "卡消费金额（元）,服务费（元）,分润（元）,实收净额（元）"
)
_DASHES = "-" * 41


def _now() -> datetime:
    return datetime.now(CHINA)


def _text(moment: datetime) -> str:
    return moment.astimezone(CHINA).strftime(TIME_FORMAT)


def _digits(n: int) -> str:
    return "".join(secrets.choice("0123456789") for _ in range(n))


# -- errors --------------------------------------------------------------------------------


class AlipayApiError(Exception):
    """An Alipay failure, answered inside the signed `<method>_response` node."""

    def __init__(self, code: str, msg: str, sub_code: str, sub_msg: str):
        super().__init__(f"{code} {sub_code}: {sub_msg}")
        self.code, self.msg, self.sub_code, self.sub_msg = code, msg, sub_code, sub_msg

    def node(self) -> dict[str, str]:
        return {"code": self.code, "msg": self.msg, "sub_code": self.sub_code, "sub_msg": self.sub_msg}


def _missing(sub_code: str, sub_msg: str) -> AlipayApiError:
    return AlipayApiError("40001", "Missing Required Arguments", sub_code, sub_msg)


def _invalid(sub_code: str, sub_msg: str) -> AlipayApiError:
    return AlipayApiError("40002", "Invalid Arguments", sub_code, sub_msg)


def _business(sub_code: str, sub_msg: str) -> AlipayApiError:
    return AlipayApiError("40004", "Business Failed", sub_code, sub_msg)


def _trade_not_exist() -> AlipayApiError:
    return _business("ACQ.TRADE_NOT_EXIST", "交易不存在")


def _bad_parameter(name: str) -> AlipayApiError:
    return _business("ACQ.INVALID_PARAMETER", f"参数无效: {name}")


# -- state ---------------------------------------------------------------------------------


@dataclass
class SimApp:
    app_id: str
    public_key: RSAPublicKey
    seller_id: str


@dataclass
class SimRefund:
    out_request_no: str
    amount_fen: int
    reason: str
    at: datetime


@dataclass
class SimTrade:
    app_id: str
    out_trade_no: str
    trade_no: str
    subject: str
    total_fen: int
    notify_url: str | None
    product: str
    created_at: datetime
    expires_at: datetime
    status: str = WAIT_BUYER_PAY
    scanned: bool = False  # precreate: the trade exists at Alipay only once the buyer scans
    closed_by_merchant: bool = False
    paid_at: datetime | None = None
    closed_at: datetime | None = None
    buyer_id: str = ""
    buyer_logon_id: str = ""
    refunds: dict[str, SimRefund] = field(default_factory=dict)
    notify_mode: str = "normal"
    notify_count: int = 2
    notify_delay_s: float = 0.0
    last_notify: dict[str, str] | None = None

    @property
    def refunded_fen(self) -> int:
        return sum(r.amount_fen for r in self.refunds.values())

    def view(self) -> dict[str, Any]:
        return {
            "app_id": self.app_id,
            "out_trade_no": self.out_trade_no,
            "trade_no": self.trade_no,
            "trade_status": self.status,
            "scanned": self.scanned,
            "closed_by_merchant": self.closed_by_merchant,
            "subject": self.subject,
            "total_amount": fen_to_yuan(self.total_fen),
            "refunded_amount": fen_to_yuan(self.refunded_fen),
            "notify_url": self.notify_url,
            "product_code": self.product,
            "time_expire": _text(self.expires_at),
            "gmt_payment": _text(self.paid_at) if self.paid_at else None,
            "refunds": [
                {"out_request_no": r.out_request_no, "refund_amount": fen_to_yuan(r.amount_fen), "at": _text(r.at)}
                for r in self.refunds.values()
            ],
        }


@dataclass
class _BillFile:
    content: bytes
    name: str
    expires: float


class AlipayState:
    """Everything the simulator holds: Alipay's key, apps, trades, notify deliveries, bills. In memory."""

    def __init__(
        self,
        *,
        time_scale: float = 1.0,
        http: httpx.AsyncClient | None = None,
        private_key: RSAPrivateKey | None = None,
    ):
        # Alipay's key: generated here, or handed in (the embedded default keeps one per node).
        self.private_key: RSAPrivateKey = private_key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_key_pem = public_key_pem(self.private_key.public_key())
        self.time_scale = float(time_scale)
        self._http = http
        self._wrong_key: RSAPrivateKey | None = None
        self._tasks: set[asyncio.Task] = set()
        self.reset()

    def reset(self) -> None:
        for task in list(getattr(self, "_tasks", ())):
            task.cancel()
        self.apps: dict[str, SimApp] = {}
        self.trades: dict[tuple[str, str], SimTrade] = {}
        self.deliveries: list[dict[str, Any]] = []
        self.calls: dict[str, int] = {}
        self.notifies = {"sent": 0, "succeeded": 0, "lost": 0, "attempts": 0}
        self.bill_rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.bill_files: dict[str, _BillFile] = {}

    # apps ----------------------------------------------------------------------------------

    def register_app(self, *, app_id: str, app_public_key_pem: str, seller_id: str | None = None) -> dict[str, str]:
        """Registers (or updates) an app with its public key; answers Alipay's public key and the seller id."""
        existing = self.apps.get(app_id)
        seller = seller_id or (existing.seller_id if existing else "2088" + _digits(12))
        self.apps[app_id] = SimApp(app_id, load_public_key(app_public_key_pem), seller)
        return {"app_id": app_id, "seller_id": seller, "alipay_public_key_pem": self.public_key_pem}

    def sign(self, content: str) -> str:
        return sign_rsa2(self.private_key, content)

    # the gateway ---------------------------------------------------------------------------

    def authenticate(self, params: dict[str, str]) -> tuple[SimApp, str, dict[str, Any]]:
        """(app, method, biz_content) of a gateway request whose common parameters and signature are right."""
        method = params.get("method")
        if not method:
            raise _missing("isv.missing-method", "缺少方法名参数")
        if not params.get("app_id"):
            raise _missing("isv.missing-app-id", "缺少AppID参数")
        for name, sub in (("sign_type", "signature-type"), ("sign", "signature"), ("timestamp", "timestamp")):
            if not params.get(name):
                raise _missing(f"isv.missing-{sub}", f"缺少{name}参数")
        if not params.get("version"):
            raise _missing("isv.missing-version", "缺少版本参数")
        app = self.apps.get(params["app_id"])
        if app is None:
            raise _invalid("isv.invalid-app-id", "无效的AppID参数")
        if method not in METHODS:
            raise _invalid("isv.invalid-method", "不存在的方法名")
        if params["sign_type"] != "RSA2":
            raise _invalid("isv.invalid-signature-type", "无效的签名类型")
        if params.get("charset", "utf-8").lower() not in ("utf-8", "utf8"):
            raise _invalid("isv.invalid-charset", "字符集错误")
        try:
            datetime.strptime(params["timestamp"], TIME_FORMAT)
        except ValueError:
            raise _invalid("isv.invalid-timestamp", "非法的时间戳参数") from None
        content = sign_content({k: v for k, v in params.items() if k != "sign"})
        if not verify_rsa2(app.public_key, content, params["sign"]):
            raise _invalid(
                "isv.invalid-signature",
                f"验签出错，建议检查签名字符串或签名私钥与应用公钥是否匹配，网关生成的验签字符串为：{content}",
            )
        try:
            biz = json.loads(params.get("biz_content") or "{}")
        except (ValueError, RecursionError):
            raise _invalid("isv.invalid-biz-content", "biz_content 不是有效的 JSON") from None
        if not isinstance(biz, dict):
            raise _invalid("isv.invalid-biz-content", "biz_content 不是 JSON 对象")
        return app, method, biz

    def call(self, params: dict[str, str], *, base_url: str = "") -> dict[str, Any]:
        """The response node of a JSON gateway method (success or failure); `base_url` is where the
        simulator is reached (for the bill download link)."""
        self.calls[params.get("method") or ""] = self.calls.get(params.get("method") or "", 0) + 1
        try:
            app, method, biz = self.authenticate(params)
            handler: Callable[[SimApp, dict[str, Any], dict[str, str]], dict[str, Any]] = {
                PRECREATE: self.precreate,
                QUERY: self.query,
                CLOSE: self.close,
                REFUND: self.refund,
                REFUND_QUERY: self.refund_query,
                BILL_URL: self.bill_url,
            }.get(method, self._not_json)
            fields = handler(app, biz, {**params, "_base_url": base_url})
        except AlipayApiError as error:
            return error.node()
        return {"code": "10000", "msg": "Success", **fields}

    def signed_body(self, method: str | None, node: dict[str, Any]) -> str:
        """`{"<method>_response": node, "sign": ...}`, the sign over the node's exact JSON text."""
        name = method.replace(".", "_") + "_response" if method in METHODS else "error_response"
        node_text = simserver.dumps(node)
        return f'{{"{name}":{node_text},"sign":"{self.sign(node_text)}"}}'

    def _not_json(self, app: SimApp, biz: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
        raise _invalid("isv.invalid-method", "该接口为页面跳转接口")

    # trades --------------------------------------------------------------------------------

    def _order_fields(self, biz: dict[str, Any]) -> tuple[str, str, int, datetime]:
        out_trade_no, subject, total = biz.get("out_trade_no"), biz.get("subject"), biz.get("total_amount")
        if not isinstance(out_trade_no, str) or not 1 <= len(out_trade_no) <= 64:
            raise _bad_parameter("out_trade_no")
        if not isinstance(subject, str) or not subject or len(subject) > 256:
            raise _bad_parameter("subject")
        try:
            total_fen = yuan_to_fen(total)
        except ValueError:
            raise _bad_parameter("total_amount") from None
        if not 1 <= total_fen <= MAX_TOTAL_FEN:
            raise _business("ACQ.TOTAL_FEE_EXCEED", "订单金额超过限额")
        expires = _now() + DEFAULT_EXPIRY
        if biz.get("time_expire"):
            try:
                expires = datetime.strptime(biz["time_expire"], TIME_FORMAT).replace(tzinfo=CHINA)
            except (TypeError, ValueError):
                raise _bad_parameter("time_expire") from None
        return out_trade_no, subject, total_fen, expires

    def create_trade(self, app: SimApp, biz: dict[str, Any], params: dict[str, str], product: str) -> SimTrade:
        out_trade_no, subject, total_fen, expires = self._order_fields(biz)
        trade = self.trades.get((app.app_id, out_trade_no))
        if trade is not None:
            self._expire(trade)
            if trade.status in (TRADE_SUCCESS, TRADE_FINISHED):
                raise _business("ACQ.TRADE_HAS_SUCCESS", "交易已被支付")
            if trade.status == TRADE_CLOSED or trade.closed_by_merchant:
                raise _business("ACQ.TRADE_HAS_CLOSE", "交易已经关闭")
            if trade.total_fen != total_fen or trade.subject != subject:
                raise _business("ACQ.CONTEXT_INCONSISTENT", "交易信息被篡改")
            trade.notify_url = params.get("notify_url") or trade.notify_url
            return trade
        now = _now()
        trade = SimTrade(
            app_id=app.app_id,
            out_trade_no=out_trade_no,
            trade_no=now.strftime("%Y%m%d") + "22001" + _digits(15),
            subject=subject,
            total_fen=total_fen,
            notify_url=params.get("notify_url"),
            product=product,
            created_at=now,
            expires_at=expires,
        )
        self.trades[(app.app_id, out_trade_no)] = trade
        return trade

    def precreate(self, app: SimApp, biz: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
        trade = self.create_trade(app, biz, params, "FACE_TO_FACE_PAYMENT")
        return {"out_trade_no": trade.out_trade_no, "qr_code": f"https://qr.alipay.com/bax0{trade.trade_no[-20:]}"}

    def wap_pay(self, params: dict[str, str]) -> SimTrade:
        """The cashier page: the buyer arrives, so the trade exists (WAIT_BUYER_PAY)."""
        self.calls[WAP_PAY] = self.calls.get(WAP_PAY, 0) + 1
        app, method, biz = self.authenticate(params)
        if method != WAP_PAY:
            raise _invalid("isv.invalid-method", "该接口不是页面跳转接口")
        if biz.get("product_code") not in (None, "QUICK_WAP_WAY", "QUICK_WAP_PAY"):
            raise _bad_parameter("product_code")
        trade = self.create_trade(app, biz, params, "QUICK_WAP_WAY")
        trade.scanned = True
        return trade

    def _expire(self, trade: SimTrade) -> None:
        if trade.status == WAIT_BUYER_PAY and _now() >= trade.expires_at:
            if trade.scanned:
                trade.status, trade.closed_at = TRADE_CLOSED, trade.expires_at
            else:
                trade.closed_by_merchant = True

    def _existing(self, app: SimApp, biz: dict[str, Any]) -> SimTrade:
        """The trade named by out_trade_no or trade_no, if the buyer ever reached it; else ACQ.TRADE_NOT_EXIST."""
        out_trade_no, trade_no = biz.get("out_trade_no"), biz.get("trade_no")
        if not out_trade_no and not trade_no:
            raise _bad_parameter("out_trade_no")
        trade = None
        if trade_no:
            trade = next((t for t in self.trades.values() if t.app_id == app.app_id and t.trade_no == trade_no), None)
        elif isinstance(out_trade_no, str):
            trade = self.trades.get((app.app_id, out_trade_no))
        if trade is None or not trade.scanned:
            raise _trade_not_exist()
        self._expire(trade)
        return trade

    def query(self, app: SimApp, biz: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
        trade = self._existing(app, biz)
        paid = trade.paid_at is not None
        answer: dict[str, Any] = {
            "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no,
            "buyer_logon_id": trade.buyer_logon_id,
            "trade_status": trade.status,
            "total_amount": fen_to_yuan(trade.total_fen),
            "buyer_pay_amount": fen_to_yuan(trade.total_fen if paid else 0),
            "point_amount": "0.00",
            "invoice_amount": fen_to_yuan(trade.total_fen if paid else 0),
            "receipt_amount": fen_to_yuan(trade.total_fen if paid else 0),
            "buyer_user_id": trade.buyer_id,
            "buyer_open_id": "",
        }
        if paid:
            answer["send_pay_date"] = _text(trade.paid_at)
            answer["fund_bill_list"] = [{"fund_channel": "ALIPAYACCOUNT", "amount": fen_to_yuan(trade.total_fen)}]
        return {k: v for k, v in answer.items() if v != ""}

    def close(self, app: SimApp, biz: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
        out_trade_no = biz.get("out_trade_no")
        trade = self.trades.get((app.app_id, out_trade_no)) if isinstance(out_trade_no, str) else None
        if trade is not None and not trade.scanned:
            trade.closed_by_merchant = True  # the QR code stays scannable at Alipay: "paid after close"
        trade = self._existing(app, biz)
        if trade.status != WAIT_BUYER_PAY:
            raise _business("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
        trade.status, trade.closed_at, trade.closed_by_merchant = TRADE_CLOSED, _now(), True
        return {"trade_no": trade.trade_no, "out_trade_no": trade.out_trade_no}

    def refund(self, app: SimApp, biz: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
        trade = self._existing(app, biz)
        try:
            amount = yuan_to_fen(biz.get("refund_amount"))
        except ValueError:
            raise _bad_parameter("refund_amount") from None
        if amount <= 0:
            raise _bad_parameter("refund_amount")
        out_request_no = biz.get("out_request_no") or trade.out_trade_no
        if not isinstance(out_request_no, str) or len(out_request_no) > 64:
            raise _bad_parameter("out_request_no")
        previous = trade.refunds.get(out_request_no)
        if previous is not None:
            if previous.amount_fen != amount:
                raise _business("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额与原退款请求不一致")
            return self._refund_answer(trade, previous, fund_change="N")
        if trade.status == TRADE_FINISHED:
            raise _business("ACQ.TRADE_HAS_FINISHED", "交易已完结")
        if trade.status != TRADE_SUCCESS:
            raise _business("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
        if trade.refunded_fen + amount > trade.total_fen:
            raise _business("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额超限")
        reason = biz.get("refund_reason") if isinstance(biz.get("refund_reason"), str) else ""
        refund = trade.refunds[out_request_no] = SimRefund(out_request_no, amount, reason, _now())
        if trade.refunded_fen == trade.total_fen:
            trade.status, trade.closed_at = TRADE_CLOSED, refund.at
        self.send_notify(trade, self.notify_form(trade, refund))
        return self._refund_answer(trade, refund, fund_change="Y")

    def _refund_answer(self, trade: SimTrade, refund: SimRefund, *, fund_change: str) -> dict[str, Any]:
        return {
            "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no,
            "buyer_logon_id": trade.buyer_logon_id,
            "fund_change": fund_change,
            "refund_fee": fen_to_yuan(trade.refunded_fen),
            "gmt_refund_pay": _text(refund.at),
            "buyer_user_id": trade.buyer_id,
            "send_back_fee": fen_to_yuan(refund.amount_fen),
        }

    def refund_query(self, app: SimApp, biz: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
        trade = self._existing(app, biz)
        out_request_no = biz.get("out_request_no")
        if not isinstance(out_request_no, str) or not out_request_no:
            raise _bad_parameter("out_request_no")
        refund = trade.refunds.get(out_request_no)
        if refund is None:
            return {}  # Alipay: no refund data means no refund was made
        answer = {
            "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no,
            "out_request_no": out_request_no,
            "total_amount": fen_to_yuan(trade.total_fen),
            "refund_amount": fen_to_yuan(refund.amount_fen),
            "refund_status": "REFUND_SUCCESS",
        }
        options = biz.get("query_options")
        if isinstance(options, list) and "gmt_refund_pay" in options:
            answer["gmt_refund_pay"] = _text(refund.at)
        if refund.reason:
            answer["refund_reason"] = refund.reason
        return answer

    # control: the buyer --------------------------------------------------------------------

    def find_trade(self, out_trade_no: str, app_id: str | None = None) -> SimTrade:
        found = [t for (a, o), t in self.trades.items() if o == out_trade_no and (app_id is None or a == app_id)]
        if not found:
            raise SimError(404, "not_found", "交易不存在", {"out_trade_no": out_trade_no})
        if len(found) > 1:
            raise SimError(409, "ambiguous", "多个应用有此订单号，请给出 app_id", {"out_trade_no": out_trade_no})
        return found[0]

    def pay(self, out_trade_no: str, *, app_id: str | None = None, force: bool = False) -> SimTrade:
        """The buyer pays: TRADE_SUCCESS and a notify. `force` pays a trade closed or expired ("paid after close")."""
        trade = self.find_trade(out_trade_no, app_id)
        self._expire(trade)
        if trade.status in (TRADE_SUCCESS, TRADE_FINISHED) or trade.paid_at is not None:
            raise SimError(409, "already_paid", "交易已支付", {"out_trade_no": out_trade_no})
        if (trade.status == TRADE_CLOSED or trade.closed_by_merchant) and not force:
            raise SimError(409, "trade_closed", "交易已关闭（用 force 模拟关单后支付）", {"out_trade_no": out_trade_no})
        now = _now()
        trade.scanned, trade.status, trade.paid_at = True, TRADE_SUCCESS, now
        trade.buyer_id = trade.buyer_id or "2088" + _digits(12)
        trade.buyer_logon_id = trade.buyer_logon_id or f"1{_digits(2)}******{_digits(2)}"
        self.send_notify(trade, self.notify_form(trade))
        return trade

    def abandon(self, out_trade_no: str, *, app_id: str | None = None) -> SimTrade:
        """The buyer scans and leaves: the trade exists, WAIT_BUYER_PAY, and closes at its expiry."""
        trade = self.find_trade(out_trade_no, app_id)
        trade.scanned = True
        trade.buyer_id = trade.buyer_id or "2088" + _digits(12)
        trade.buyer_logon_id = trade.buyer_logon_id or f"1{_digits(2)}******{_digits(2)}"
        self._expire(trade)
        return trade

    # notifies ------------------------------------------------------------------------------

    def notify_form(self, trade: SimTrade, refund: SimRefund | None = None) -> dict[str, str]:
        """The signed notify form for the trade's current state (after `refund`, if given)."""
        now = _now()
        total = fen_to_yuan(trade.total_fen)
        form = {
            "notify_time": _text(now),
            "notify_type": "trade_status_sync",
            "notify_id": now.strftime("%Y%m%d") + secrets.token_hex(14),
            "app_id": trade.app_id,
            "auth_app_id": trade.app_id,
            "charset": "utf-8",
            "version": "1.0",
            "sign_type": "RSA2",
            "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no,
            "buyer_id": trade.buyer_id,
            "buyer_logon_id": trade.buyer_logon_id,
            "seller_id": self.apps[trade.app_id].seller_id if trade.app_id in self.apps else "",
            "trade_status": trade.status,
            "total_amount": total,
            "receipt_amount": total,
            "invoice_amount": total,
            "buyer_pay_amount": total,
            "point_amount": "0.00",
            "gmt_create": _text(trade.created_at),
            "gmt_payment": _text(trade.paid_at) if trade.paid_at else "",
            "subject": trade.subject,
            "fund_bill_list": json.dumps([{"amount": total, "fundChannel": "ALIPAYACCOUNT"}], separators=(",", ":")),
        }
        if refund is not None:
            form["refund_fee"] = fen_to_yuan(trade.refunded_fen)
            form["gmt_refund"] = refund.at.strftime(TIME_FORMAT) + f".{refund.at.microsecond // 1000:03d}"
            form["out_biz_no"] = refund.out_request_no
            if trade.status == TRADE_CLOSED and trade.closed_at:
                form["gmt_close"] = _text(trade.closed_at)
        form = {k: v for k, v in form.items() if v != ""}
        form["sign"] = self.sign(notify_sign_content(form))
        return form

    def sign_notify(
        self, fields: dict[str, str], *, sign_type_in_content: bool = False, use_wrong_key: bool = False
    ) -> dict[str, str]:
        """A notify form over `fields` signed by Alipay's key, or over the wrong content or with another key."""
        form = {k: v for k, v in fields.items() if k != "sign"}
        form.setdefault("sign_type", "RSA2")
        content = sign_content(form) if sign_type_in_content else notify_sign_content(form)
        key = self.private_key
        if use_wrong_key:
            self._wrong_key = self._wrong_key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
            key = self._wrong_key
        form["sign"] = sign_rsa2(key, content)
        return form

    def set_notify_mode(self, trade: SimTrade, mode: str, *, count: int = 2, delay_s: float = 0.0) -> None:
        trade.notify_mode, trade.notify_count, trade.notify_delay_s = mode, count, delay_s

    def send_notify(self, trade: SimTrade, form: dict[str, str]) -> None:
        """Delivers `form` to the trade's notify_url as the trade's notify mode says (then back to normal)."""
        trade.last_notify = form
        mode, count, delay = trade.notify_mode, trade.notify_count, trade.notify_delay_s
        trade.notify_mode, trade.notify_count, trade.notify_delay_s = "normal", 2, 0.0
        if not trade.notify_url:
            return
        self.notifies["sent"] += 1
        if mode == "lose":
            self.notifies["lost"] += 1
            self._record(trade.out_trade_no, form, attempt=0, outcome="lost")
            return
        copies = count if mode == "duplicate" else 1
        for _ in range(copies):
            self._spawn(self._deliver(trade.notify_url, trade.out_trade_no, form, delay if mode == "delay" else 0.0))

    def resend(self, trade: SimTrade) -> None:
        if trade.last_notify is None:
            raise SimError(409, "no_notify", "该交易还没有通知", {"out_trade_no": trade.out_trade_no})
        self.send_notify(trade, trade.last_notify)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=5.0))
        return self._http

    async def _deliver(self, url: str, out_trade_no: str, form: dict[str, str], delay_s: float) -> None:
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        for attempt, wait in enumerate((0.0, *RETRY_SCHEDULE_S)):
            if wait:
                await asyncio.sleep(wait * self.time_scale)
            self.notifies["attempts"] += 1
            try:
                response = await self._client().post(url, data=form)
                answer, status = response.text, response.status_code
            except httpx.HTTPError as error:
                answer, status = f"{type(error).__name__}: {error}", None
            ok = status == 200 and answer == "success"
            self._record(
                out_trade_no, form, attempt=attempt, outcome="success" if ok else "fail", status=status, answer=answer
            )
            if ok:
                self.notifies["succeeded"] += 1
                return

    def _record(self, out_trade_no: str, form: dict[str, str], *, attempt: int, outcome: str, **extra: Any) -> None:
        self.deliveries.append(
            {
                "out_trade_no": out_trade_no,
                "notify_id": form.get("notify_id"),
                "kind": "refund" if form.get("out_biz_no") else "trade",
                "trade_status": form.get("trade_status"),
                "attempt": attempt,
                "at": time.time(),
                "outcome": outcome,
                "status": extra.get("status"),
                "answer": (extra.get("answer") or "")[:200],
            }
        )

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._http is not None:
            await self._http.aclose()

    # bills ---------------------------------------------------------------------------------

    def bill_url(self, app: SimApp, biz: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
        if biz.get("bill_type") not in ("trade", "signcustomer"):
            raise _bad_parameter("bill_type")
        if biz["bill_type"] != "trade":
            raise _business("isp.bill_not_exist", "账单不存在")
        try:
            day = date.fromisoformat(biz.get("bill_date") or "")
        except (TypeError, ValueError):
            raise _bad_parameter("bill_date") from None
        if day > _now().date():
            raise _business("isp.bill_not_exist", "账单不存在")
        content = self.bill_zip(app, day)
        file_id = secrets.token_hex(16)
        name = f"{app.seller_id}0156_{day:%Y%m%d}.csv.zip"
        self.bill_files[file_id] = _BillFile(content, name, time.monotonic() + BILL_URL_TTL_S)
        query = urlencode(
            {
                "bizType": "trade",
                "userId": app.seller_id,
                "fileType": "csv.zip",
                "bizDates": f"{day:%Y%m%d}",
                "downloadFileName": name,
                "fileId": file_id,
            }
        )
        return {"bill_download_url": f"{params['_base_url']}/downloadBillFile.resource?{query}"}

    def add_bill_rows(self, app_id: str, day: date, rows: list[dict[str, Any]]) -> int:
        bucket = self.bill_rows.setdefault((app_id, day.isoformat()), [])
        bucket.extend(rows)
        return len(bucket)

    def _bill_lines(self, app: SimApp, day: date) -> list[dict[str, Any]]:
        lines: list[dict[str, Any]] = []
        for trade in self.trades.values():
            if trade.app_id != app.app_id:
                continue
            if trade.paid_at and trade.paid_at.astimezone(CHINA).date() == day:
                lines.append(_bill_line(trade, "pay", trade.total_fen, trade.paid_at))
            for refund in trade.refunds.values():
                if refund.at.astimezone(CHINA).date() == day:
                    lines.append(_bill_line(trade, "refund", refund.amount_fen, refund.at, refund.out_request_no))
        for row in self.bill_rows.get((app.app_id, day.isoformat()), []):
            lines.append(row)
        return sorted(lines, key=lambda line: line["at"])

    def bill_zip(self, app: SimApp, day: date) -> bytes:
        lines = self._bill_lines(app, day)
        account = f"{app.seller_id}0156"
        stem = f"{app.seller_id}_{day:%Y%m%d}"
        buffer = BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, text in (
                (f"{stem}_业务明细.csv", _detail_csv(account, day, lines)),
                (f"{stem}_业务明细(汇总).csv", _summary_csv(account, day, lines)),
            ):
                info = _GbkZipInfo(name, date_time=_now().timetuple()[:6])
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, text.encode("gbk"))
        return buffer.getvalue()

    def bill_file(self, file_id: str) -> _BillFile | None:
        found = self.bill_files.get(file_id)
        if found is None or time.monotonic() > found.expires:
            return None
        return found

    def stats(self) -> dict[str, Any]:
        return {"calls": dict(self.calls), "notifies": dict(self.notifies), "trades": len(self.trades)}


class _GbkZipInfo(zipfile.ZipInfo):
    """A zip member named in GBK without the UTF-8 flag, as Alipay's bill zips are (zipfile has no public way)."""

    def _encodeFilenameFlags(self) -> tuple[bytes, int]:  # noqa: N802 - zipfile's own name
        return self.filename.encode("gbk"), self.flag_bits & ~0x800


def _bill_line(
    trade: SimTrade, kind: str, amount_fen: int, at: datetime, out_refund_no: str | None = None
) -> dict[str, Any]:
    return {
        "kind": kind,
        "trade_no": trade.trade_no,
        "out_trade_no": trade.out_trade_no,
        "subject": trade.subject,
        "created_at": trade.created_at,
        "at": at,
        "buyer": trade.buyer_logon_id,
        "amount_fen": amount_fen,
        "out_refund_no": out_refund_no or "",
    }


def _cn_time(moment: datetime) -> str:
    return moment.astimezone(CHINA).strftime("%Y年%m月%d日 %H:%M:%S")


def _signed_yuan(fen: int, negative: bool) -> str:
    return ("-" if negative and fen else "") + fen_to_yuan(fen)


def _bill_head(title: str, account: str, day: date, listing: str) -> list[str]:
    start = datetime.combine(day, datetime.min.time(), tzinfo=CHINA)
    return [
        f"#{title}",
        f"#账号：[{account}]",
        f"#起始日期：[{_cn_time(start)}]   终止日期：[{_cn_time(start + timedelta(days=1))}]",
        f"#{_DASHES}{listing}{_DASHES}",
    ]


def _detail_csv(account: str, day: date, lines: list[dict[str, Any]]) -> str:
    rows = _bill_head("支付宝业务明细查询", account, day, "业务明细列表") + [BILL_DETAIL_HEADER]
    for line in lines:
        refund = line["kind"] == "refund"
        amount = _signed_yuan(line["amount_fen"], refund)
        cells = [
            line["trade_no"],
            line["out_trade_no"],
            "退款" if refund else "交易",
            line.get("subject", ""),
            _text(line.get("created_at") or line["at"]),
            _text(line["at"]),
            "",
            "",
            "",
            "",
            line.get("buyer", ""),
            amount,
            amount,
            "0.00",
            "0.00",
            "0.00",
            "0.00",
            "0.00",
            "",
            "0.00",
            "0.00",
            line.get("out_refund_no", "") if refund else "",
            "0.00",
            "0.00",
            "",
        ]
        rows.append(",".join(f"{cell}\t" for cell in cells))
    pays = [line for line in lines if line["kind"] == "pay"]
    refunds = [line for line in lines if line["kind"] == "refund"]
    paid = sum(line["amount_fen"] for line in pays)
    refunded = sum(line["amount_fen"] for line in refunds)
    rows += [
        f"#{_DASHES}业务明细列表结束{_DASHES[:-5]}",
        f"#交易合计：{len(pays)}笔，商家实收共{fen_to_yuan(paid)}元，商家优惠共0.00元",
        f"#退款合计：{len(refunds)}笔，商家实收退款共{_signed_yuan(refunded, True)}元，商家优惠退款共0.00元",
        f"#导出时间：[{_cn_time(_now())}]",
    ]
    return "\r\n".join(rows) + "\r\n"


def _summary_csv(account: str, day: date, lines: list[dict[str, Any]]) -> str:
    pays = [line for line in lines if line["kind"] == "pay"]
    refunds = [line for line in lines if line["kind"] == "refund"]
    paid = sum(line["amount_fen"] for line in pays)
    refunded = sum(line["amount_fen"] for line in refunds)
    net = paid - refunded
    net_text = ("-" if net < 0 else "") + fen_to_yuan(abs(net))
    total = [
        "合计",
        "",
        str(len(pays)),
        str(len(refunds)),
        net_text,
        net_text,
        "0.00",
        "0.00",
        "0.00",
        "0.00",
        "0.00",
        net_text,
    ]
    rows = _bill_head("支付宝业务汇总查询", account, day, "业务汇总列表") + [BILL_SUMMARY_HEADER]
    rows.append(",".join(total))
    rows += [f"#{_DASHES}业务汇总列表结束{_DASHES[:-5]}", f"#导出时间：[{_cn_time(_now())}]"]
    return "\r\n".join(rows) + "\r\n"


# -- HTTP ----------------------------------------------------------------------------------


def _gateway_params(request: Request) -> dict[str, str]:
    """The query string's and the form body's parameters, first value of each (as decoded text)."""
    params: dict[str, str] = {}
    pairs = parse_qsl(request.query_string, keep_blank_values=True, encoding="utf-8")
    content_type = request.headers.get("content-type", "")
    if request.body and "application/x-www-form-urlencoded" in content_type:
        pairs += parse_qsl(request.body.decode("utf-8", errors="replace"), keep_blank_values=True)
    for key, value in pairs:
        params.setdefault(key, value)
    return params


def _cashier_page(trade: SimTrade, pay_path: str) -> str:
    data = json.dumps({"out_trade_no": trade.out_trade_no, "app_id": trade.app_id})
    return f"""<!DOCTYPE html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>支付宝 - 网上支付 安全快速！（模拟收银台）</title></head>
<body data-out-trade-no="{html.escape(trade.out_trade_no)}" data-trade-status="{trade.status}">
<h1>支付宝收银台（模拟）</h1>
<p>商品：{html.escape(trade.subject)}</p>
<p>订单号：{html.escape(trade.out_trade_no)}</p>
<p>应付金额：<strong>{fen_to_yuan(trade.total_fen)}</strong> 元</p>
<button onclick='fetch("{pay_path}", {{method: "POST", headers: {{"Content-Type": "application/json"}},
  body: JSON.stringify({html.escape(data)})}})
  .then(r => r.json()).then(t => document.body.append(" " + t.trade_status))'>
确认付款</button>
</body></html>"""


def _error_page(error: AlipayApiError) -> str:
    return f"""<!DOCTYPE html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>支付宝 - 出错了（模拟）</title></head>
<body data-code="{error.sub_code}"><h1>抱歉，支付遇到问题</h1>
<p>错误代码 {html.escape(error.sub_code)}</p><p>{html.escape(error.sub_msg)}</p></body></html>"""


class _Fields:
    """Reads control-API fields, collecting every problem before failing with 422."""

    def __init__(self, body: dict[str, Any]):
        self.body, self.errors = body, {}

    def text(self, name: str, *, required: bool = True, max_len: int = 256) -> str | None:
        value = self.body.get(name)
        if value is None or value == "":
            if required:
                self.errors[name] = "此项为必填项"
            return None
        if not isinstance(value, str) or len(value) > max_len:
            self.errors[name] = f"应为不超过 {max_len} 个字符的文本"
            return None
        return value

    def boolean(self, name: str) -> bool:
        value = self.body.get(name, False)
        if not isinstance(value, bool):
            self.errors[name] = "应为是或否"
            return False
        return value

    def number(self, name: str, default: float) -> float:
        value = self.body.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            self.errors[name] = "应为不小于 0 的数字"
            return default
        return float(value)

    def done(self) -> None:
        simserver.check_fields(self.errors)


def _bill_row_fields(raw: Any, index: int, errors: dict[str, str]) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        errors[f"rows[{index}]"] = "应为对象"
        return None
    kind, amount = raw.get("kind"), raw.get("amount_fen")
    if kind not in ("pay", "refund"):
        errors[f"rows[{index}].kind"] = "应为 pay 或 refund"
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        errors[f"rows[{index}].amount_fen"] = "应为正整数（分）"
    if not isinstance(raw.get("out_trade_no"), str) or not raw.get("out_trade_no"):
        errors[f"rows[{index}].out_trade_no"] = "此项为必填项"
    at = _now()
    if raw.get("at"):
        try:
            at = datetime.strptime(raw["at"], TIME_FORMAT).replace(tzinfo=CHINA)
        except (TypeError, ValueError):
            errors[f"rows[{index}].at"] = "应为 YYYY-MM-DD HH:MM:SS（北京时间）"
    if any(key.startswith(f"rows[{index}]") for key in errors):
        return None
    return {
        "kind": kind,
        "trade_no": raw.get("trade_no") or at.strftime("%Y%m%d") + "22001" + _digits(15),
        "out_trade_no": raw["out_trade_no"],
        "subject": raw.get("subject") or "",
        "created_at": at,
        "at": at,
        "buyer": "",
        "amount_fen": amount,
        "out_refund_no": raw.get("out_refund_no") or "",
    }


def alipay_blueprint(state: AlipayState, url_prefix: str = "") -> Blueprint:
    """The simulator's routes (Alipay's gateway, the bill download and the `/__sim__/` control API) over `state`."""
    prefix = "/" + url_prefix.strip("/") if url_prefix.strip("/") else ""
    bp = Blueprint("alipay_sim", url_prefix=prefix or None)

    async def gateway(request: Request) -> HTTPResponse:
        params = _gateway_params(request)
        method = params.get("method")
        if method == WAP_PAY:
            try:
                trade = state.wap_pay(params)
            except AlipayApiError as error:
                return html_response(_error_page(error))
            return html_response(_cashier_page(trade, f"{prefix}/__sim__/pay"))
        try:
            node = state.call(params, base_url=f"{request.scheme}://{request.host}{prefix}")
        except Exception:
            log.exception("alipay simulator error on %s", method)
            node = AlipayApiError("20000", "Service Currently Unavailable", "isp.unknow-error", "系统繁忙").node()
        body = state.signed_body(method, node)
        return raw_response(body.encode("utf-8"), content_type="application/json;charset=utf-8")

    bp.add_route(gateway, "/gateway.do", methods=["GET", "POST"], name="alipay_gateway")

    async def download(request: Request) -> HTTPResponse:
        found = state.bill_file(request.args.get("fileId") or "")
        if found is None:
            return text_response("文件不存在或链接已过期", status=404)
        return raw_response(
            found.content,
            content_type="application/oct-stream",
            headers={"Content-Disposition": f"attachment; filename={found.name}"},
        )

    bp.add_route(download, "/downloadBillFile.resource", methods=["GET"], name="alipay_bill_download")

    def control(path: str, methods: tuple[str, ...] = ("POST",)):
        def register(handler: Callable[[Request], Any]) -> None:
            name = "sim" + path.removeprefix("/__sim__").replace("/", "_").replace("-", "_").replace("<", "")
            name = name.replace(">", "").replace(":", "_")
            bp.add_route(simserver.control_route(handler, log=log, path=path), path, methods=list(methods), name=name)

        return register

    def trade_of(fields: _Fields) -> SimTrade:
        out_trade_no = fields.text("out_trade_no", max_len=64)
        app_id = fields.text("app_id", required=False, max_len=64)
        fields.done()
        return state.find_trade(out_trade_no, app_id)

    @control("/__sim__/apps")
    def _apps(request: Request) -> dict:
        fields = _Fields(simserver.json_object(request))
        app_id = fields.text("app_id", max_len=64)
        pem = fields.text("app_public_key_pem", max_len=4096)
        seller_id = fields.text("seller_id", required=False, max_len=32)
        fields.done()
        try:
            return state.register_app(app_id=app_id, app_public_key_pem=pem, seller_id=seller_id)
        except ValueError:
            simserver.check_fields({"app_public_key_pem": "不是 RSA 公钥"})
            raise

    @control("/__sim__/alipay-public-key", ("GET",))
    def _public_key(request: Request) -> dict:
        return {"alipay_public_key_pem": state.public_key_pem}

    @control("/__sim__/pay")
    def _pay(request: Request) -> dict:
        fields = _Fields(simserver.json_object(request))
        force = fields.boolean("force")
        out_trade_no = fields.text("out_trade_no", max_len=64)
        app_id = fields.text("app_id", required=False, max_len=64)
        fields.done()
        return state.pay(out_trade_no, app_id=app_id, force=force).view()

    @control("/__sim__/fail")
    def _fail(request: Request) -> dict:
        trade = trade_of(_Fields(simserver.json_object(request)))
        return state.abandon(trade.out_trade_no, app_id=trade.app_id).view()

    @control("/__sim__/notify-mode")
    def _notify_mode(request: Request) -> dict:
        fields = _Fields(simserver.json_object(request))
        mode = fields.text("mode", max_len=16)
        if mode is not None and mode not in NOTIFY_MODES:
            fields.errors["mode"] = "应为 normal、lose、duplicate 或 delay"
        count = fields.body.get("count", 2)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 20:
            fields.errors["count"] = "应为 1 到 20 的整数"
        delay_s = fields.number("delay_s", 0.0)
        trade = trade_of(fields)
        state.set_notify_mode(trade, mode, count=count, delay_s=delay_s)
        return {"out_trade_no": trade.out_trade_no, "mode": mode, "count": count, "delay_s": delay_s}

    @control("/__sim__/resend")
    def _resend(request: Request) -> dict:
        trade = trade_of(_Fields(simserver.json_object(request)))
        state.resend(trade)
        return {"out_trade_no": trade.out_trade_no, "notify_id": (trade.last_notify or {}).get("notify_id")}

    @control("/__sim__/config")
    def _config(request: Request) -> dict:
        fields = _Fields(simserver.json_object(request))
        time_scale = fields.number("time_scale", state.time_scale)
        fields.done()
        state.time_scale = time_scale
        return {"time_scale": state.time_scale}

    @control("/__sim__/deliveries", ("GET",))
    def _deliveries(request: Request) -> dict:
        wanted = request.args.get("out_trade_no")
        return {"deliveries": [d for d in state.deliveries if not wanted or d["out_trade_no"] == wanted]}

    async def _trade(request: Request, out_trade_no: str) -> HTTPResponse:
        try:
            trade = state.find_trade(out_trade_no, request.args.get("app_id"))
        except SimError as error:
            return simserver.json_response(error.body(), status=error.status)
        return simserver.json_response(trade.view())

    bp.add_route(_trade, "/__sim__/trades/<out_trade_no>", methods=["GET"], name="sim_trade")

    @control("/__sim__/sign-notify")
    def _sign_notify(request: Request) -> dict:
        fields = _Fields(simserver.json_object(request))
        raw = fields.body.get("fields")
        if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
            fields.errors["fields"] = "应为文本值的对象"
        in_content, wrong_key = fields.boolean("sign_type_in_content"), fields.boolean("use_wrong_key")
        fields.done()
        return {"form": state.sign_notify(raw, sign_type_in_content=in_content, use_wrong_key=wrong_key)}

    @control("/__sim__/bill-rows")
    def _bill_rows(request: Request) -> dict:
        fields = _Fields(simserver.json_object(request))
        day_text = fields.text("date", max_len=10)
        app_id = fields.text("app_id", required=False, max_len=64)
        raw_rows = fields.body.get("rows")
        day = None
        if day_text:
            try:
                day = date.fromisoformat(day_text)
            except ValueError:
                fields.errors["date"] = "应为 YYYY-MM-DD"
        if not isinstance(raw_rows, list) or not raw_rows:
            fields.errors["rows"] = "应为非空列表"
            raw_rows = []
        rows = [_bill_row_fields(raw, i, fields.errors) for i, raw in enumerate(raw_rows)]
        if app_id is None and len(state.apps) != 1:
            fields.errors["app_id"] = "有多个（或没有）应用时必填"
        elif app_id is not None and app_id not in state.apps:
            fields.errors["app_id"] = "应用不存在"
        fields.done()
        app_id = app_id or next(iter(state.apps))
        return {"date": day.isoformat(), "rows": state.add_bill_rows(app_id, day, rows)}

    @control("/__sim__/stats", ("GET",))
    def _stats(request: Request) -> dict:
        return state.stats()

    @control("/__sim__/reset")
    def _reset(request: Request) -> dict:
        state.reset()
        return {"ok": True}

    return bp


# -- standalone app ------------------------------------------------------------------------


def create_alipay_app(state: AlipayState | None = None, *, url_prefix: str = "") -> Sanic:
    """A standalone Sanic app serving the simulator (at `url_prefix`), answering JSON for every control error."""
    state = state or AlipayState()
    app = simserver.create_app("alipay_sim", alipay_blueprint(state, url_prefix), state=state, log=log)

    @app.after_server_stop
    async def _close(app: Sanic, loop: Any) -> None:
        await state.aclose()

    return app


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--time-scale", type=float, default=1.0, help="multiplies the notify retry delays")
    parser.add_argument("--url-prefix", default="", help="serve everything under this path, e.g. /_sim/alipay")
    parser.add_argument("--app-id", help="an app to register at start (with --app-public-key)")
    parser.add_argument("--app-public-key", type=Path, help="the app's RSA public key: a PEM or bare base64 file")
    parser.add_argument("--seller-id", help="the app's seller id (2088...); generated if absent")


def _build(args: argparse.Namespace) -> Sanic:
    state = AlipayState(time_scale=args.time_scale)
    if args.app_id and args.app_public_key:
        keys = state.register_app(
            app_id=args.app_id, app_public_key_pem=args.app_public_key.read_text(), seller_id=args.seller_id
        )
        log.warning("alipay simulator: app %s, seller %s", args.app_id, keys["seller_id"])
    return create_alipay_app(state, url_prefix=args.url_prefix)


def main(argv: list[str] | None = None) -> None:
    """Serves the simulator standalone until stopped: `python -m payments.alipay_sim [--port 8704] ...`."""
    simserver.main(
        argv,
        prog="python -m payments.alipay_sim",
        description=__doc__.splitlines()[0],
        port=8704,
        build=_build,
        options=_options,
    )


if __name__ == "__main__":
    main()
