"""Alipay open platform adapter: face-to-face QR (precreate), mobile-web pay, query, close, refund, bills, notifies.

Wire protocol (https://opendocs.alipay.com, gateway `https://openapi.alipay.com/gateway.do`):

- A request is the common parameters `app_id, method, format=JSON, charset=utf-8, sign_type=RSA2,
  timestamp` (China time, `%Y-%m-%d %H:%M:%S`), `version=1.0`, optionally `notify_url` / `return_url`,
  plus `biz_content` (the business parameters as one JSON text). Its `sign` is base64 SHA256withRSA
  (PKCS#1 v1.5) with the app's private key over the *sign content*: every parameter but `sign`, sorted
  by name, written `k=v&k=v` with the raw values. Like alipay-sdk-python, the common parameters travel in
  the query string and `biz_content` in the form-encoded body.
- The answer is `{"<method, dots as underscores>_response": {...}, "sign": "..."}`; the signature covers
  the exact JSON text of the response node as it appears in the body, so it is cut out of the raw text,
  never re-serialised. `code` "10000" is success; "40004" (business failure) carries `sub_code`
  (e.g. `ACQ.TRADE_NOT_EXIST`); "20000" and `ACQ.SYSTEM_ERROR` are Alipay's own failures, worth a retry.
- A notify is a form POST to `notify_url`; its signature covers every field but `sign` and `sign_type`,
  sorted, `k=v&...` with the decoded values, verified with the Alipay public key. The answer body must
  be exactly `success`, or Alipay retries (4 m, 10 m, 10 m, 1 h, 2 h, 6 h, 15 h).
- Amounts are yuan strings with two decimals ("12.34"), converted exactly with `yuan_to_fen` / `fen_to_yuan`.

alipay-sdk-python gives the request models (`AlipayTradePrecreateModel`, ...) and the canonical sign content
(`SignatureUtils.get_sign_content`); signing and verifying use `cryptography` (the SDK's pure-Python RSA takes
about 30 ms a signature and would block the event loop) and the requests go out with httpx (the SDK's HTTP
layer is synchronous and breaks on a gateway URL that carries a port).
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
from alipay.aop.api.constant.ParamConstants import COMMON_PARAM_KEYS
from alipay.aop.api.domain.AlipayDataDataserviceBillDownloadurlQueryModel import (
    AlipayDataDataserviceBillDownloadurlQueryModel,
)
from alipay.aop.api.domain.AlipayTradeCloseModel import AlipayTradeCloseModel
from alipay.aop.api.domain.AlipayTradeFastpayRefundQueryModel import AlipayTradeFastpayRefundQueryModel
from alipay.aop.api.domain.AlipayTradePrecreateModel import AlipayTradePrecreateModel
from alipay.aop.api.domain.AlipayTradeQueryModel import AlipayTradeQueryModel
from alipay.aop.api.domain.AlipayTradeRefundModel import AlipayTradeRefundModel
from alipay.aop.api.domain.AlipayTradeWapPayModel import AlipayTradeWapPayModel
from alipay.aop.api.request.AlipayDataDataserviceBillDownloadurlQueryRequest import (
    AlipayDataDataserviceBillDownloadurlQueryRequest,
)
from alipay.aop.api.request.AlipayTradeCloseRequest import AlipayTradeCloseRequest
from alipay.aop.api.request.AlipayTradeFastpayRefundQueryRequest import AlipayTradeFastpayRefundQueryRequest
from alipay.aop.api.request.AlipayTradePrecreateRequest import AlipayTradePrecreateRequest
from alipay.aop.api.request.AlipayTradeQueryRequest import AlipayTradeQueryRequest
from alipay.aop.api.request.AlipayTradeRefundRequest import AlipayTradeRefundRequest
from alipay.aop.api.request.AlipayTradeWapPayRequest import AlipayTradeWapPayRequest
from alipay.aop.api.util.SignatureUtils import get_sign_content
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from core.china_time import CHINA
from payments.base import (
    BillRow,
    ChannelRefund,
    ChannelTrade,
    Notify,
    NotifyRejected,
    PaymentError,
    TradeState,
    fen_to_yuan,
    yuan_to_fen,
)

GATEWAY = "https://openapi.alipay.com/gateway.do"
SANDBOX_GATEWAY = "https://openapi-sandbox.dl.alipaydev.com/gateway.do"

SUCCESS = "10000"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
NOTIFY_ANSWER = "success"  # the exact body that tells Alipay a notify was taken

# Codes worth another try: Alipay's own failures, not refusals.
RETRYABLE_CODES = frozenset({"20000", "20001"})
RETRYABLE_SUB_CODES = frozenset({"ACQ.SYSTEM_ERROR", "isp.unknow-error", "aop.ACQ.SYSTEM_ERROR", "ACQ.SYSTEM_BUSY"})
# Gateway-level refusals Alipay may answer without a signature (nothing in them is a fact to act on).
UNSIGNED_GATEWAY_CODES = frozenset({"20000", "20001", "40001", "40002", "40006"})

TRADE_STATES: dict[str, TradeState] = {
    "WAIT_BUYER_PAY": "pending",
    "TRADE_SUCCESS": "paid",
    "TRADE_FINISHED": "paid",
    "TRADE_CLOSED": "closed",
}

# The trade bill's detail file and its columns (Alipay's names).
BILL_DETAIL_SUFFIX = "_业务明细.csv"
BILL_MARKER = "业务明细列表"
COL_TRADE_NO, COL_OUT_TRADE_NO, COL_KIND = "支付宝交易号", "商户订单号", "业务类型"
COL_FINISHED, COL_AMOUNT, COL_REFUND_NO = "完成时间", "订单金额", "退款批次号/请求号"


# -- keys and signatures -------------------------------------------------------------------


def _key_text(path_or_pem: str | bytes | Path) -> str:
    """The key text itself: a Path or an existing file's name is read, anything else is the key."""
    if isinstance(path_or_pem, Path):
        return path_or_pem.read_text(encoding="ascii")
    if isinstance(path_or_pem, bytes):
        return path_or_pem.decode("ascii")
    if "-----BEGIN" not in path_or_pem and os.path.isfile(path_or_pem):
        return Path(path_or_pem).read_text(encoding="ascii")
    return path_or_pem


def _bare_der(text: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except binascii.Error:
        raise ValueError("not a PEM key nor a base64 key") from None


def load_private_key(path_or_pem: str | bytes | Path) -> RSAPrivateKey:
    """The app's RSA private key from PKCS#1 or PKCS#8 PEM, or Alipay's bare base64 key text (or a file of one)."""
    text = _key_text(path_or_pem).strip()
    if "-----BEGIN" in text:
        key = serialization.load_pem_private_key(text.encode("ascii"), password=None)
    else:
        key = serialization.load_der_private_key(_bare_der(text), password=None)
    if not isinstance(key, RSAPrivateKey):
        raise ValueError("not an RSA private key")
    return key


def load_public_key(path_or_pem: str | bytes | Path) -> RSAPublicKey:
    """An RSA public key from PEM (SubjectPublicKeyInfo or PKCS#1) or Alipay's bare base64 text (or a file)."""
    text = _key_text(path_or_pem).strip()
    if "-----BEGIN" in text:
        key = serialization.load_pem_public_key(text.encode("ascii"))
    else:
        key = serialization.load_der_public_key(_bare_der(text))
    if not isinstance(key, RSAPublicKey):
        raise ValueError("not an RSA public key")
    return key


def public_key_pem(key: RSAPublicKey) -> str:
    """`key` as SubjectPublicKeyInfo PEM text."""
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def sign_rsa2(private_key: RSAPrivateKey, content: str) -> str:
    """Alipay's RSA2: base64 of SHA256withRSA (PKCS#1 v1.5) over the UTF-8 bytes of `content`."""
    signature = private_key.sign(content.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(signature).decode("ascii")


def verify_rsa2(public_key: RSAPublicKey, content: str, signature: str) -> bool:
    """Whether `signature` (base64) is `public_key`'s RSA2 signature of `content`; never raises."""
    try:
        raw = base64.b64decode(signature, validate=True)
        public_key.verify(raw, content.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def sign_content(params: Mapping[str, Any]) -> str:
    """The SDK's canonical content: sorted `k=v` joined by `&`, raw values (non-strings as JSON)."""
    return get_sign_content(dict(params))


def notify_sign_content(form: Mapping[str, str]) -> str:
    """What a notify's signature covers: every field but `sign` and `sign_type`, sorted."""
    return sign_content({k: v for k, v in form.items() if k not in ("sign", "sign_type")})


def signed_response_node(text: str, node_name: str) -> tuple[str, str | None] | None:
    """(the exact JSON text of `node_name`'s object, the top-level `sign`) cut out of a raw answer; None if absent."""
    start = _node_start(text, node_name)
    if start is None:
        return None
    end = _object_end(text, start)
    if end is None:
        return None
    try:
        whole = json.loads(text)
    except ValueError:
        return None
    sign = whole.get("sign") if isinstance(whole, dict) else None
    return text[start:end], sign if isinstance(sign, str) else None


def _node_start(text: str, node_name: str) -> int | None:
    key = f'"{node_name}"'
    at = text.find(key)
    if at < 0:
        return None
    i = at + len(key)
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    if i >= len(text) or text[i] != ":":
        return None
    i += 1
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i if i < len(text) and text[i] == "{" else None


def _object_end(text: str, start: int) -> int | None:
    """The index just past the `}` closing the object opened at `start`, minding strings and escapes."""
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        char = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def china_time(text: str | None) -> datetime | None:
    """Alipay's China-time text ("2024-01-02 03:04:05", optionally with ".123") as an aware datetime."""
    if not text:
        return None
    try:
        moment = datetime.strptime(text.strip()[:19], TIME_FORMAT)
    except ValueError:
        return None
    return moment.replace(tzinfo=CHINA)


def _china_text(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("a timezone-aware datetime is required")
    return moment.astimezone(CHINA).strftime(TIME_FORMAT)


# -- the adapter ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AlipayConfig:
    gateway: str  # GATEWAY, or a simulator URL such as http://127.0.0.1:8000/_sim/alipay/gateway.do
    app_id: str
    private_key: RSAPrivateKey
    alipay_public_key: RSAPublicKey
    notify_url: str
    seller_id: str | None = None  # the merchant PID (2088…); when set, a notify for another seller is refused


class Alipay:
    """One Alipay app: signed calls to the gateway and verified notifies. Amounts in fen."""

    def __init__(self, config: AlipayConfig, *, http: httpx.AsyncClient | None = None):
        self.config = config
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(15.0, connect=5.0))

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    # -- requests --------------------------------------------------------------------------

    def _signed_params(self, request: Any) -> dict[str, str]:
        """The request's parameters with the common ones and `sign`, as the SDK builds them."""
        params = request.get_params()
        params.update(
            app_id=self.config.app_id,
            format="JSON",
            charset="utf-8",
            sign_type="RSA2",
            timestamp=datetime.now(CHINA).strftime(TIME_FORMAT),
        )
        params = {k: v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for k, v in params.items() if v}
        params["sign"] = sign_rsa2(self.config.private_key, sign_content(params))
        return params

    def _gateway_base(self) -> str:
        return self.config.gateway.split("?", 1)[0]

    async def _call(self, request: Any) -> dict[str, Any]:
        """Sends `request`, verifies the answer's signature and returns its response node on code 10000."""
        params = self._signed_params(request)
        method = params["method"]
        query = {k: v for k, v in params.items() if k in COMMON_PARAM_KEYS}
        body = {k: v for k, v in params.items() if k not in COMMON_PARAM_KEYS}
        url = f"{self._gateway_base()}?{urlencode(query)}"
        try:
            response = await self._http.post(
                url, data=body, headers={"Content-Type": "application/x-www-form-urlencoded;charset=utf-8"}
            )
        except httpx.TimeoutException as error:
            raise PaymentError(f"{method}: timed out", code="TIMEOUT", retryable=True) from error
        except httpx.HTTPError as error:
            raise PaymentError(f"{method}: {error}", code="NETWORK_ERROR", retryable=True) from error
        if response.status_code >= 500:
            raise PaymentError(
                f"{method}: HTTP {response.status_code}", code="HTTP_ERROR", retryable=True, status=response.status_code
            )
        if response.status_code != 200:
            raise PaymentError(f"{method}: HTTP {response.status_code}", code="HTTP_ERROR", status=response.status_code)
        return self._verified_node(method, response.content.decode("utf-8", errors="replace"))

    def _verified_node(self, method: str, text: str) -> dict[str, Any]:
        node_name = method.replace(".", "_") + "_response"
        found = signed_response_node(text, node_name) or signed_response_node(text, "error_response")
        if found is None:
            raise PaymentError(f"{method}: no response node in the answer", code="SIGN_ERROR")
        node_text, sign = found
        try:
            node = json.loads(node_text)
        except ValueError:
            raise PaymentError(f"{method}: the response node is not JSON", code="SIGN_ERROR") from None
        code = str(node.get("code", ""))
        if sign is None:
            if code in UNSIGNED_GATEWAY_CODES:
                raise _error(method, node)
            raise PaymentError(f"{method}: the answer is not signed", code="SIGN_ERROR")
        if not verify_rsa2(self.config.alipay_public_key, node_text, sign):
            raise PaymentError(f"{method}: the answer's signature does not verify", code="SIGN_ERROR")
        if code != SUCCESS:
            raise _error(method, node)
        return node

    # -- payments --------------------------------------------------------------------------

    async def precreate(self, *, out_trade_no: str, subject: str, amount_fen: int, expires_at: datetime) -> str:
        """alipay.trade.precreate: the `qr_code` text (https://qr.alipay.com/...) the citizen scans."""
        model = AlipayTradePrecreateModel()
        model.out_trade_no, model.subject = out_trade_no, subject
        model.total_amount, model.time_expire = fen_to_yuan(amount_fen), _china_text(expires_at)
        request = AlipayTradePrecreateRequest(biz_model=model)
        request.notify_url = self.config.notify_url
        node = await self._call(request)
        qr_code = node.get("qr_code")
        if not isinstance(qr_code, str) or not qr_code:
            raise PaymentError("alipay.trade.precreate: no qr_code in the answer", code="BAD_RESPONSE")
        return qr_code

    def wap_pay_url(
        self,
        *,
        out_trade_no: str,
        subject: str,
        amount_fen: int,
        expires_at: datetime,
        return_url: str | None = None,
    ) -> str:
        """alipay.trade.wap.pay as a signed GET URL to the gateway's cashier (the SDK's page_execute "GET")."""
        model = AlipayTradeWapPayModel()
        model.out_trade_no, model.subject, model.product_code = out_trade_no, subject, "QUICK_WAP_WAY"
        model.total_amount, model.time_expire = fen_to_yuan(amount_fen), _china_text(expires_at)
        if return_url:
            model.quit_url = return_url
        request = AlipayTradeWapPayRequest(biz_model=model)
        request.notify_url = self.config.notify_url
        if return_url:
            request.return_url = return_url
        params = self._signed_params(request)
        return f"{self._gateway_base()}?{urlencode(params)}"

    async def query(self, out_trade_no: str) -> ChannelTrade:
        """alipay.trade.query; ACQ.TRADE_NOT_EXIST (also: a QR code nobody scanned yet) is state "not_found"."""
        model = AlipayTradeQueryModel()
        model.out_trade_no = out_trade_no
        try:
            node = await self._call(AlipayTradeQueryRequest(biz_model=model))
        except PaymentError as error:
            if error.code == "ACQ.TRADE_NOT_EXIST":
                return ChannelTrade(out_trade_no=out_trade_no, state="not_found")
            raise
        return _trade_from_query(out_trade_no, node)

    async def close(self, out_trade_no: str) -> None:
        """alipay.trade.close. A trade never scanned (ACQ.TRADE_NOT_EXIST) or already closed is fine;
        a paid one raises PaymentError(code="ACQ.TRADE_STATUS_ERROR")."""
        model = AlipayTradeCloseModel()
        model.out_trade_no = out_trade_no
        try:
            await self._call(AlipayTradeCloseRequest(biz_model=model))
        except PaymentError as error:
            if error.code == "ACQ.TRADE_NOT_EXIST":
                return
            if error.code == "ACQ.TRADE_STATUS_ERROR" and (await self.query(out_trade_no)).state == "closed":
                return
            raise

    async def refund(self, *, out_trade_no: str, out_request_no: str, amount_fen: int, reason: str) -> ChannelRefund:
        """alipay.trade.refund, idempotent by `out_request_no`. `fund_change` "Y" is a refund done; "N" (a repeat,
        or Alipay unsure) is confirmed with alipay.trade.fastpay.refund.query, as Alipay asks."""
        model = AlipayTradeRefundModel()
        model.out_trade_no, model.out_request_no = out_trade_no, out_request_no
        model.refund_amount, model.refund_reason = fen_to_yuan(amount_fen), reason
        node = await self._call(AlipayTradeRefundRequest(biz_model=model))
        if node.get("fund_change") != "Y":
            return await self.query_refund(out_trade_no=out_trade_no, out_request_no=out_request_no)
        return ChannelRefund(
            out_refund_no=out_request_no,
            out_trade_no=out_trade_no,
            state="success",
            amount_fen=amount_fen,
            refund_id=None,
            refunded_at=china_time(node.get("gmt_refund_pay")),
            raw=node,
        )

    async def query_refund(self, *, out_trade_no: str, out_request_no: str) -> ChannelRefund:
        """alipay.trade.fastpay.refund.query. Alipay answers an unknown refund with no data: that is
        PaymentError(code="REFUND_NOT_EXIST") (the refund may be sent again with the same out_request_no)."""
        model = AlipayTradeFastpayRefundQueryModel()
        model.out_trade_no, model.out_request_no = out_trade_no, out_request_no
        model.query_options = ["gmt_refund_pay"]
        node = await self._call(AlipayTradeFastpayRefundQueryRequest(biz_model=model))
        amount = node.get("refund_amount")
        status = node.get("refund_status")
        if not amount or status not in (None, "", "REFUND_SUCCESS"):
            raise PaymentError(f"refund {out_request_no} of {out_trade_no} not found", code="REFUND_NOT_EXIST")
        return ChannelRefund(
            out_refund_no=out_request_no,
            out_trade_no=out_trade_no,
            state="success",
            amount_fen=_amount(amount, "refund_amount"),
            refund_id=None,
            refunded_at=china_time(node.get("gmt_refund_pay")),
            raw=node,
        )

    # -- bills -----------------------------------------------------------------------------

    async def bill(self, bill_date: date) -> list[BillRow]:
        """The day's trade bill: alipay.data.dataservice.bill.downloadurl.query (bill_type "trade"), then the zip
        at bill_download_url, then its GBK CSV `..._业务明细.csv`: one row per payment and per refund."""
        model = AlipayDataDataserviceBillDownloadurlQueryModel()
        model.bill_type, model.bill_date = "trade", bill_date.isoformat()
        node = await self._call(AlipayDataDataserviceBillDownloadurlQueryRequest(biz_model=model))
        url = node.get("bill_download_url")
        if not isinstance(url, str) or not url:
            raise PaymentError("no bill_download_url in the answer", code="BAD_RESPONSE")
        try:
            response = await self._http.get(url, follow_redirects=True)
        except httpx.HTTPError as error:
            raise PaymentError(f"bill download: {error}", code="NETWORK_ERROR", retryable=True) from error
        if response.status_code != 200:
            raise PaymentError(
                f"bill download: HTTP {response.status_code}",
                code="HTTP_ERROR",
                retryable=response.status_code >= 500,
                status=response.status_code,
            )
        return parse_bill_zip(response.content)

    # -- notifies --------------------------------------------------------------------------

    def parse_notify(self, form: Mapping[str, str]) -> Notify:
        """A verified notify (trade status sync, or the same notify after a refund); raises NotifyRejected."""
        form = dict(form)
        signature = form.get("sign")
        if not signature or not verify_rsa2(self.config.alipay_public_key, notify_sign_content(form), signature):
            raise NotifyRejected("signature", "the notify's signature does not verify")
        if form.get("app_id") != self.config.app_id:
            raise NotifyRejected("app_id", f"notify for app {form.get('app_id')!r}")
        if self.config.seller_id and form.get("seller_id") != self.config.seller_id:
            raise NotifyRejected("seller_id", f"notify for seller {form.get('seller_id')!r}")
        out_trade_no, notify_id = form.get("out_trade_no"), form.get("notify_id")
        if not out_trade_no or not notify_id:
            raise NotifyRejected("malformed", "notify without out_trade_no or notify_id")
        total = _notify_amount(form.get("total_amount"))
        is_refund = bool(form.get("out_biz_no")) and bool(form.get("refund_fee") or form.get("gmt_refund"))
        if is_refund:
            refunded = _notify_amount(form.get("refund_fee"))
            refund = ChannelRefund(
                out_refund_no=form["out_biz_no"],
                out_trade_no=out_trade_no,
                state="success",
                amount_fen=refunded,  # Alipay's refund_fee: the trade's total refunded so far
                refund_id=None,
                refunded_at=china_time(form.get("gmt_refund")),
                raw=form,
            )
            return Notify(channel="alipay", notify_id=notify_id, refund=refund)
        state = TRADE_STATES.get(form.get("trade_status", ""))
        if state is None:
            raise NotifyRejected("malformed", f"unknown trade_status {form.get('trade_status')!r}")
        trade = ChannelTrade(
            out_trade_no=out_trade_no,
            state=state,
            amount_fen=total,
            transaction_id=form.get("trade_no") or None,
            paid_at=china_time(form.get("gmt_payment")) if state == "paid" else None,
            merchant_id=form.get("seller_id") or None,
            app_id=form.get("app_id"),
            payer=form.get("buyer_logon_id") or None,
            raw=form,
        )
        return Notify(channel="alipay", notify_id=notify_id, trade=trade)


def _error(method: str, node: Mapping[str, Any]) -> PaymentError:
    code, sub_code = str(node.get("code", "")), str(node.get("sub_code") or "")
    message = f"{method}: {node.get('sub_msg') or node.get('msg') or code}"
    retryable = code in RETRYABLE_CODES or sub_code in RETRYABLE_SUB_CODES
    return PaymentError(message, code=sub_code or code, retryable=retryable)


def _amount(text: Any, field: str) -> int:
    try:
        return yuan_to_fen(text)
    except ValueError:
        raise PaymentError(f"{field} is not an amount: {text!r}", code="BAD_RESPONSE") from None


def _notify_amount(text: str | None) -> int:
    try:
        return yuan_to_fen(text)
    except ValueError:
        raise NotifyRejected("amount", f"not an amount in yuan: {text!r}") from None


def _trade_from_query(out_trade_no: str, node: Mapping[str, Any]) -> ChannelTrade:
    status = node.get("trade_status")
    state = TRADE_STATES.get(status or "")
    if state is None:
        raise PaymentError(f"alipay.trade.query: unknown trade_status {status!r}", code="BAD_RESPONSE")
    paid_at = china_time(node.get("send_pay_date"))
    if state == "closed" and paid_at is not None:
        state = "refunded"  # closed after payment: refunded in full
    return ChannelTrade(
        out_trade_no=node.get("out_trade_no") or out_trade_no,
        state=state,
        amount_fen=_amount(node.get("total_amount"), "total_amount"),
        transaction_id=node.get("trade_no") or None,
        paid_at=paid_at if state in ("paid", "refunded") else None,
        merchant_id=None,
        app_id=None,
        payer=node.get("buyer_logon_id") or None,
        raw=dict(node),
    )


# -- the bill file -------------------------------------------------------------------------


def _zip_name(info: zipfile.ZipInfo) -> str:
    """A member's name: Alipay writes GBK names without the UTF-8 flag, which zipfile reads as cp437."""
    if info.flag_bits & 0x800:
        return info.filename
    try:
        return info.filename.encode("cp437").decode("gbk")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return info.filename


def parse_bill_zip(data: bytes) -> list[BillRow]:
    """The rows of the `..._业务明细.csv` file (not the `(汇总)` summary) inside Alipay's bill zip."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise PaymentError("the bill is not a zip file", code="BILL_MALFORMED") from None
    with archive:
        for info in archive.infolist():
            if _zip_name(info).endswith(BILL_DETAIL_SUFFIX):
                return parse_bill_csv(archive.read(info).decode("gb18030"))
    raise PaymentError("no 业务明细 file in the bill zip", code="BILL_MALFORMED")


def parse_bill_csv(text: str) -> list[BillRow]:
    """The rows between Alipay's `#---业务明细列表---` header line and the next `#` line."""
    lines = text.splitlines()
    start = next(
        (i for i, line in enumerate(lines) if line.startswith("#") and BILL_MARKER in line and "结束" not in line),
        None,
    )
    if start is None or start + 1 >= len(lines):
        raise PaymentError("no 业务明细列表 in the bill", code="BILL_MALFORMED")
    header = [cell.strip() for cell in next(csv.reader([lines[start + 1]]))]
    body = []
    for line in lines[start + 2 :]:
        if line.startswith("#"):
            break
        if line.strip():
            body.append(line)
    columns = _bill_columns(header)
    return [_bill_row([cell.strip() for cell in cells], columns) for cells in csv.reader(body)]


def _bill_columns(header: list[str]) -> dict[str, int]:
    wanted = (COL_TRADE_NO, COL_OUT_TRADE_NO, COL_KIND, COL_FINISHED, COL_AMOUNT, COL_REFUND_NO)
    columns = {}
    for name in wanted:
        index = next((i for i, cell in enumerate(header) if cell.startswith(name)), None)
        if index is None:
            raise PaymentError(f"the bill has no column {name}", code="BILL_MALFORMED")
        columns[name] = index
    return columns


def _bill_row(cells: list[str], columns: dict[str, int]) -> BillRow:
    def cell(name: str) -> str:
        index = columns[name]
        return cells[index] if index < len(cells) else ""

    kind_text = cell(COL_KIND)
    if kind_text not in ("交易", "退款"):
        raise PaymentError(f"unknown 业务类型 {kind_text!r} in the bill", code="BILL_MALFORMED")
    at = china_time(cell(COL_FINISHED))
    if at is None:
        raise PaymentError(f"bad 完成时间 {cell(COL_FINISHED)!r} in the bill", code="BILL_MALFORMED")
    amount_text = cell(COL_AMOUNT).removeprefix("-")
    try:
        amount = yuan_to_fen(amount_text)
    except ValueError:
        raise PaymentError(f"bad 订单金额 {cell(COL_AMOUNT)!r} in the bill", code="BILL_MALFORMED") from None
    refund = kind_text == "退款"
    return BillRow(
        kind="refund" if refund else "pay",
        out_trade_no=cell(COL_OUT_TRADE_NO),
        transaction_id=cell(COL_TRADE_NO),
        amount_fen=amount,
        at=at,
        out_refund_no=(cell(COL_REFUND_NO) or None) if refund else None,
    )
