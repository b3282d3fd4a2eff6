"""WeChat Pay API v3 for a directly connected merchant: JSAPI prepay, query, close, refund, bills, notifies.

Async httpx + `cryptography` (wechatpy's v3 support is partner-only and synchronous). The protocol:

Requests. Every call carries

    Authorization: WECHATPAY2-SHA256-RSA2048 mchid="…",nonce_str="…",signature="…",timestamp="…",serial_no="…"

where `signature` is base64 RSASSA-PKCS1-v1_5 / SHA-256, with the merchant's API private key, over

    METHOD\\nCANONICAL_URL\\ntimestamp\\nnonce\\nbody\\n

CANONICAL_URL is the path and query exactly as sent (for an `api_base` with a path prefix, such as a
mounted simulator, the full path the server sees); `body` is empty for a GET. `Accept: application/json`.

Answers. WeChat signs every answer (and every notify) with its platform key:
`Wechatpay-Timestamp`, `Wechatpay-Nonce`, `Wechatpay-Signature`, `Wechatpay-Serial` over
`timestamp\\nnonce\\nbody\\n`. `Wechatpay-Serial` names the key: the hex serial of a platform
certificate, or `PUB_KEY_ID_…` for the WeChat Pay public key that new merchants get. An answer that
cannot be verified is `PaymentError(code="SIGN_ERROR")`. Errors are JSON `{"code", "message", "detail"?}`
with a meaningful HTTP status: 5xx, 429, `SYSTEM_ERROR` and `FREQUENCY_LIMITED` are retryable; other
4xx are refusals (`PaymentError(retryable=False, code=<WeChat code>, status=<HTTP status>)`).

Endpoints used:

    POST /v3/pay/transactions/jsapi                       -> {"prepay_id"}
    GET  /v3/pay/transactions/out-trade-no/{no}?mchid=    -> a transaction (404 ORDER_NOT_EXIST)
    POST /v3/pay/transactions/out-trade-no/{no}/close     {"mchid"} -> 204
    POST /v3/refund/domestic/refunds                      -> a refund
    GET  /v3/refund/domestic/refunds/{out_refund_no}      -> a refund
    GET  /v3/bill/tradebill?bill_date=&bill_type=ALL      -> {"download_url", "hash_type": "SHA1", "hash_value"}
    GET  <download_url>                                   the bill CSV, not signed: checked by its SHA1

wx.requestPayment. `pay_params` gives the mini-program appId, timeStamp, nonceStr,
package=`prepay_id=…`, signType `RSA` and paySign: base64 RSA-SHA256 over
`appId\\ntimeStamp\\nnonceStr\\npackage\\n` with the merchant key.

Notifies (`parse_notify`). The body is JSON `{"id", "create_time", "event_type", "resource_type":
"encrypt-resource", "summary", "resource": {"algorithm": "AEAD_AES_256_GCM", "ciphertext",
"associated_data", "nonce", "original_type"}}`. The check, in order: the serial must be a known key;
a signature starting `WECHATPAY/SIGNTEST/` (WeChat's probe of the merchant's verification) is refused;
a timestamp more than `timestamp_skew_s` off is refused; the signature must verify; the resource is
decrypted with AES-256-GCM (key: the APIv3 key, nonce and associated data from the resource; the
ciphertext ends with the 16-byte tag). `TRANSACTION.SUCCESS` gives a trade, `REFUND.SUCCESS` /
`REFUND.ABNORMAL` / `REFUND.CLOSED` a refund. Comparing mchid, appid and amount with the order is the
caller's job: the adapter only returns them.

Trade bills. A CSV, every value prefixed with a backtick, in the trade bill's column layout
(`BILL_COLUMNS`), then a summary header (`总交易单数,…`) and its line. Rows whose 交易状态 is `REFUND`
are refunds (amount: 退款金额); the others are payments (amount: 订单金额). A day without trades
answers 400 `NO_STATEMENT_EXIST`, read as an empty bill.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import secrets
import string
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.china_time import CHINA
from payments.base import (
    BillRow,
    ChannelRefund,
    ChannelTrade,
    Notify,
    NotifyRejected,
    PaymentError,
    RefundState,
    TradeState,
    yuan_to_fen,
)

SIGN_SCHEME = "WECHATPAY2-SHA256-RSA2048"
TEST_SIGNATURE_PREFIX = "WECHATPAY/SIGNTEST/"
PUBLIC_KEY_ID_PREFIX = "PUB_KEY_ID_"
AEAD_ALGORITHM = "AEAD_AES_256_GCM"

TRADE_STATES: dict[str, TradeState] = {
    "SUCCESS": "paid",
    "REFUND": "refunded",
    "NOTPAY": "pending",
    "USERPAYING": "pending",
    "CLOSED": "closed",
    "REVOKED": "closed",
    "PAYERROR": "closed",
}
REFUND_STATES: dict[str, RefundState] = {
    "SUCCESS": "success",
    "PROCESSING": "processing",
    "ABNORMAL": "failed",
    "CLOSED": "closed",
}
REFUND_EVENTS = ("REFUND.SUCCESS", "REFUND.ABNORMAL", "REFUND.CLOSED")
TRADE_EVENT = "TRANSACTION.SUCCESS"
RETRYABLE_CODES = frozenset({"SYSTEM_ERROR", "SYSTEMERROR", "FREQUENCY_LIMITED", "BANK_ERROR", "BANKERROR"})

# The trade bill (bill_type=ALL): its columns, then the summary's.
BILL_COLUMNS = (
    "交易时间",
    "公众账号ID",
    "商户号",
    "特约商户号",
    "设备号",
    "微信订单号",
    "商户订单号",
    "用户标识",
    "交易类型",
    "交易状态",
    "付款银行",
    "货币种类",
    "应结订单金额",
    "代金券金额",
    "微信退款单号",
    "商户退款单号",
    "退款金额",
    "充值券退款金额",
    "退款类型",
    "退款状态",
    "商品名称",
    "商户数据包",
    "手续费",
    "费率",
    "订单金额",
    "申请退款金额",
    "费率备注",
)
BILL_SUMMARY_COLUMNS = (
    "总交易单数",
    "应结订单总金额",
    "退款总金额",
    "充值券退款总金额",
    "手续费总金额",
    "订单总金额",
    "申请退款总金额",
)
BILL_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

_NONCE_ALPHABET = string.ascii_uppercase + string.digits


# -- keys ----------------------------------------------------------------------------------


def _pem_bytes(path_or_pem: str | bytes) -> bytes:
    """PEM bytes as given, or read from the path a str names (a str holding a PEM is taken as is)."""
    if isinstance(path_or_pem, bytes):
        return path_or_pem
    if "-----BEGIN" in path_or_pem:
        return path_or_pem.encode("ascii")
    return Path(path_or_pem).read_bytes()


def load_private_key(path_or_pem: str | bytes) -> RSAPrivateKey:
    """The merchant's API private key: PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1 (`BEGIN RSA PRIVATE KEY`) PEM."""
    key = serialization.load_pem_private_key(_pem_bytes(path_or_pem), password=None)
    if not isinstance(key, RSAPrivateKey):
        raise ValueError("the WeChat Pay merchant key must be an RSA key")
    return key


def load_platform_key(path_or_pem: str | bytes) -> RSAPublicKey:
    """WeChat's verification key: a WeChat Pay public key PEM or an X.509 platform certificate PEM."""
    pem = _pem_bytes(path_or_pem)
    if b"BEGIN CERTIFICATE" in pem:
        key = x509.load_pem_x509_certificate(pem).public_key()
    else:
        key = serialization.load_pem_public_key(pem)
    if not isinstance(key, RSAPublicKey):
        raise ValueError("the WeChat Pay platform key must be an RSA key")
    return key


def certificate_serial(pem: str | bytes) -> str:
    """The serial WeChat names a platform certificate by: its serial number in upper-case hex."""
    return f"{x509.load_pem_x509_certificate(_pem_bytes(pem)).serial_number:X}"


# -- signatures and encryption -------------------------------------------------------------


def new_nonce(length: int = 32) -> str:
    """A random nonce of upper-case letters and digits."""
    return "".join(secrets.choice(_NONCE_ALPHABET) for _ in range(length))


def signing_message(*parts: str) -> bytes:
    """Every WeChat Pay signed string: each part followed by a newline, UTF-8."""
    return "".join(part + "\n" for part in parts).encode("utf-8")


def rsa_sign(key: RSAPrivateKey, message: bytes) -> str:
    """base64 RSASSA-PKCS1-v1_5 with SHA-256."""
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode("ascii")


def rsa_verify(key: RSAPublicKey, message: bytes, signature: str) -> bool:
    """True when `signature` (base64) is `key`'s RSA-SHA256 signature of `message`."""
    try:
        raw = base64.b64decode(signature, validate=True)
        key.verify(raw, message, padding.PKCS1v15(), hashes.SHA256())
    except (ValueError, InvalidSignature):
        return False
    return True


def authorization(
    *, mchid: str, serial_no: str, key: RSAPrivateKey, method: str, url: str, body: str, timestamp: int, nonce: str
) -> str:
    """The `Authorization` header of a request to `url` (path and query as sent) with `body`."""
    signature = rsa_sign(key, signing_message(method.upper(), url, str(timestamp), nonce, body))
    return (
        f'{SIGN_SCHEME} mchid="{mchid}",nonce_str="{nonce}",signature="{signature}",'
        f'timestamp="{timestamp}",serial_no="{serial_no}"'
    )


def decrypt_resource(apiv3_key: bytes, resource: Mapping[str, Any]) -> bytes:
    """The plaintext of a notify's AEAD_AES_256_GCM `resource`; ValueError when it does not decrypt."""
    if resource.get("algorithm") != AEAD_ALGORITHM:
        raise ValueError(f"unsupported algorithm {resource.get('algorithm')!r}")
    nonce, ciphertext = resource.get("nonce"), resource.get("ciphertext")
    associated = resource.get("associated_data") or ""
    if not isinstance(nonce, str) or not isinstance(ciphertext, str) or not isinstance(associated, str):
        raise ValueError("resource lacks nonce or ciphertext")
    try:
        raw = base64.b64decode(ciphertext, validate=True)
        return AESGCM(apiv3_key).decrypt(nonce.encode("utf-8"), raw, associated.encode("utf-8"))
    except (ValueError, InvalidTag) as error:
        raise ValueError("resource does not decrypt") from error


def encrypt_resource(apiv3_key: bytes, plaintext: bytes, *, associated_data: str, original_type: str) -> dict:
    """A notify `resource` as WeChat builds it (used by the simulator)."""
    nonce = new_nonce(12)
    ciphertext = AESGCM(apiv3_key).encrypt(nonce.encode("utf-8"), plaintext, associated_data.encode("utf-8"))
    return {
        "original_type": original_type,
        "algorithm": AEAD_ALGORITHM,
        "ciphertext": base64.b64encode(ciphertext).decode("ascii"),
        "associated_data": associated_data,
        "nonce": nonce,
    }


def dumps(obj: Any) -> str:
    """Compact JSON, Chinese left readable: the body that is signed is the body that is sent."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


# -- wire format ---------------------------------------------------------------------------


def rfc3339(moment: datetime) -> str:
    """`2018-06-08T10:34:56+08:00`: WeChat's time format, in China time."""
    if moment.tzinfo is None:
        raise ValueError("an aware datetime is required")
    return moment.astimezone(CHINA).isoformat(timespec="seconds")


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def trade_from_transaction(data: Mapping[str, Any]) -> ChannelTrade:
    """A transaction object (query answer or notify resource) as a ChannelTrade."""
    amount = data.get("amount") if isinstance(data.get("amount"), dict) else {}
    payer = data.get("payer") if isinstance(data.get("payer"), dict) else {}
    total = amount.get("total")
    return ChannelTrade(
        out_trade_no=str(data.get("out_trade_no", "")),
        state=TRADE_STATES.get(str(data.get("trade_state")), "pending"),
        amount_fen=total if isinstance(total, int) and not isinstance(total, bool) else None,
        transaction_id=data.get("transaction_id") or None,
        paid_at=_parse_time(data.get("success_time")),
        merchant_id=data.get("mchid") or None,
        app_id=data.get("appid") or None,
        payer=payer.get("openid") or None,
        raw=dict(data),
    )


def refund_from_wire(data: Mapping[str, Any]) -> ChannelRefund:
    """A refund object (refund API answer: `status`; refund notify: `refund_status`) as a ChannelRefund."""
    amount = data.get("amount") if isinstance(data.get("amount"), dict) else {}
    status = data.get("status") or data.get("refund_status")
    refunded = amount.get("refund")
    return ChannelRefund(
        out_refund_no=str(data.get("out_refund_no", "")),
        out_trade_no=str(data.get("out_trade_no", "")),
        state=REFUND_STATES.get(str(status), "processing"),
        amount_fen=refunded if isinstance(refunded, int) and not isinstance(refunded, bool) else 0,
        refund_id=data.get("refund_id") or None,
        refunded_at=_parse_time(data.get("success_time")),
        raw=dict(data),
    )


def parse_trade_bill(text: str) -> list[BillRow]:
    """The rows of a trade bill CSV (backtick-prefixed values); the summary lines are skipped."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    header = [name.strip() for name in next(reader, [])]
    if tuple(header[: len(BILL_COLUMNS)]) != BILL_COLUMNS[: len(header)] or "商户订单号" not in header:
        raise PaymentError("trade bill has an unexpected header", code="BILL_FORMAT")
    rows: list[BillRow] = []
    for line in reader:
        if not line or not any(cell.strip() for cell in line):
            continue
        if line[0].strip() == BILL_SUMMARY_COLUMNS[0]:
            break
        cells = dict(zip(header, (cell.strip().removeprefix("`") for cell in line), strict=False))
        rows.append(_bill_row(cells))
    return rows


def _bill_row(cells: Mapping[str, str]) -> BillRow:
    try:
        at = datetime.strptime(cells["交易时间"], BILL_TIME_FORMAT).replace(tzinfo=CHINA)
        if cells.get("交易状态") == "REFUND":
            return BillRow(
                kind="refund",
                out_trade_no=cells["商户订单号"],
                transaction_id=cells["微信订单号"],
                amount_fen=yuan_to_fen(cells["退款金额"]),
                at=at,
                out_refund_no=cells.get("商户退款单号") or None,
            )
        return BillRow(
            kind="pay",
            out_trade_no=cells["商户订单号"],
            transaction_id=cells["微信订单号"],
            amount_fen=yuan_to_fen(cells.get("订单金额") or cells["应结订单金额"]),
            at=at,
        )
    except (KeyError, ValueError) as error:
        raise PaymentError(f"trade bill row unreadable: {error}", code="BILL_FORMAT") from error


# -- the client ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WeChatPayConfig:
    """One merchant's WeChat Pay v3 settings."""

    api_base: str  # https://api.mch.weixin.qq.com, or a simulator URL incl. a path prefix
    mchid: str
    appid: str  # the mini-program's appid
    serial_no: str  # the merchant API certificate serial
    private_key: RSAPrivateKey
    apiv3_key: bytes  # 32 bytes
    platform_keys: Mapping[str, RSAPublicKey]  # serial -> key: a cert serial (hex) or "PUB_KEY_ID_..."
    notify_url: str
    timestamp_skew_s: int = 300


class WeChatPay:
    """The WeChat Pay API v3 of one merchant, async."""

    def __init__(
        self,
        config: WeChatPayConfig,
        *,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
    ):
        if len(config.apiv3_key) != 32:
            raise ValueError("the APIv3 key must be 32 bytes")
        self.config = config
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=5.0), trust_env=False)
        self._clock = clock

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    # requests ------------------------------------------------------------------------------

    def _url(self, path: str, params: Mapping[str, str] | None = None) -> httpx.URL:
        url = httpx.URL(self.config.api_base.rstrip("/") + path)
        return url.copy_merge_params(dict(params)) if params else url

    async def _call(
        self,
        method: str,
        url: httpx.URL,
        body: Mapping[str, Any] | None = None,
        *,
        signed_answer: bool = True,
    ) -> httpx.Response:
        """Sends a signed request; returns a verified 2xx answer, else raises PaymentError."""
        content = dumps(body) if body is not None else ""
        headers = {
            "Accept": "application/json",
            "User-Agent": "zhangban-wechatpay/1",
            "Authorization": authorization(
                mchid=self.config.mchid,
                serial_no=self.config.serial_no,
                key=self.config.private_key,
                method=method,
                url=url.raw_path.decode("ascii"),
                body=content,
                timestamp=int(self._clock()),
                nonce=new_nonce(),
            ),
        }
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            response = await self._http.request(method, url, content=content.encode("utf-8"), headers=headers)
        except httpx.TimeoutException as error:
            raise PaymentError(f"WeChat Pay timed out: {error!r}", code="TIMEOUT", retryable=True) from error
        except httpx.HTTPError as error:
            raise PaymentError(f"WeChat Pay unreachable: {error!r}", code="NETWORK", retryable=True) from error
        if response.status_code >= 500:
            raise PaymentError(
                f"WeChat Pay answered {response.status_code}",
                code=_error_code(response) or "SYSTEM_ERROR",
                retryable=True,
                status=response.status_code,
            )
        if signed_answer or response.status_code >= 300:
            self._verify_answer(response)
        if response.status_code >= 300:
            code = _error_code(response)
            raise PaymentError(
                f"WeChat Pay refused: {response.status_code} {code} {_error_message(response)}",
                code=code,
                retryable=code in RETRYABLE_CODES or response.status_code == 429,
                status=response.status_code,
            )
        return response

    def _verify_answer(self, response: httpx.Response) -> None:
        try:
            self.verify_signed(response.headers, response.content)
        except NotifyRejected as error:
            raise PaymentError(
                f"WeChat Pay answer not verifiable ({error.reason})", code="SIGN_ERROR", status=response.status_code
            ) from None

    async def _json(self, method: str, url: httpx.URL, body: Mapping[str, Any] | None = None) -> dict:
        response = await self._call(method, url, body)
        try:
            data = response.json()
        except ValueError as error:
            raise PaymentError("WeChat Pay answered no JSON", code="BAD_ANSWER", retryable=True) from error
        if not isinstance(data, dict):
            raise PaymentError("WeChat Pay answered no JSON object", code="BAD_ANSWER", retryable=True)
        return data

    # API -----------------------------------------------------------------------------------

    async def jsapi_prepay(
        self,
        *,
        out_trade_no: str,
        description: str,
        amount_fen: int,
        payer_openid: str,
        expires_at: datetime,
        attach: str = "",
    ) -> str:
        """Creates the JSAPI (mini-program) order; returns its prepay_id (valid 2 hours)."""
        body: dict[str, Any] = {
            "appid": self.config.appid,
            "mchid": self.config.mchid,
            "description": description,
            "out_trade_no": out_trade_no,
            "time_expire": rfc3339(expires_at),
            "notify_url": self.config.notify_url,
            "amount": {"total": amount_fen, "currency": "CNY"},
            "payer": {"openid": payer_openid},
        }
        if attach:
            body["attach"] = attach
        data = await self._json("POST", self._url("/v3/pay/transactions/jsapi"), body)
        prepay_id = data.get("prepay_id")
        if not isinstance(prepay_id, str) or not prepay_id:
            raise PaymentError("WeChat Pay answered no prepay_id", code="BAD_ANSWER", retryable=True)
        return prepay_id

    def pay_params(self, prepay_id: str) -> dict[str, str]:
        """What the mini-program passes to wx.requestPayment."""
        timestamp, nonce, package = str(int(self._clock())), new_nonce(), f"prepay_id={prepay_id}"
        signature = rsa_sign(self.config.private_key, signing_message(self.config.appid, timestamp, nonce, package))
        return {
            "appId": self.config.appid,
            "timeStamp": timestamp,
            "nonceStr": nonce,
            "package": package,
            "signType": "RSA",
            "paySign": signature,
        }

    async def query(self, out_trade_no: str) -> ChannelTrade:
        """The trade as WeChat holds it; an order WeChat never saw is state `not_found`."""
        url = self._url(f"/v3/pay/transactions/out-trade-no/{out_trade_no}", {"mchid": self.config.mchid})
        try:
            data = await self._json("GET", url)
        except PaymentError as error:
            if error.code in ("ORDER_NOT_EXIST", "ORDERNOTEXIST"):
                return ChannelTrade(out_trade_no=out_trade_no, state="not_found")
            raise
        return trade_from_transaction(data)

    async def close(self, out_trade_no: str) -> None:
        """Closes an unpaid order; one already closed is fine; a paid one raises PaymentError(code="ORDERPAID")."""
        url = self._url(f"/v3/pay/transactions/out-trade-no/{out_trade_no}/close")
        try:
            await self._call("POST", url, {"mchid": self.config.mchid})
        except PaymentError as error:
            if error.code != "ORDER_CLOSED":
                raise

    async def refund(
        self,
        *,
        out_trade_no: str,
        out_refund_no: str,
        amount_fen: int,
        total_fen: int,
        reason: str,
        notify_url: str | None = None,
    ) -> ChannelRefund:
        """Asks for a refund; the same out_refund_no again is the same refund at WeChat."""
        body: dict[str, Any] = {
            "out_trade_no": out_trade_no,
            "out_refund_no": out_refund_no,
            "notify_url": notify_url or self.config.notify_url,
            "amount": {"refund": amount_fen, "total": total_fen, "currency": "CNY"},
        }
        if reason:
            body["reason"] = reason
        return refund_from_wire(await self._json("POST", self._url("/v3/refund/domestic/refunds"), body))

    async def query_refund(self, out_refund_no: str) -> ChannelRefund:
        """The refund as WeChat holds it (an unknown one: PaymentError code RESOURCE_NOT_EXISTS)."""
        return refund_from_wire(await self._json("GET", self._url(f"/v3/refund/domestic/refunds/{out_refund_no}")))

    async def trade_bill(self, bill_date: date) -> list[BillRow]:
        """The day's trade bill (China time), downloaded and checked against its SHA1; [] for a day without trades."""
        url = self._url("/v3/bill/tradebill", {"bill_date": bill_date.isoformat(), "bill_type": "ALL"})
        try:
            data = await self._json("GET", url)
        except PaymentError as error:
            if error.code == "NO_STATEMENT_EXIST":
                return []
            raise
        download_url, hash_value = data.get("download_url"), data.get("hash_value")
        if not isinstance(download_url, str) or not isinstance(hash_value, str):
            raise PaymentError("WeChat Pay answered no download_url", code="BAD_ANSWER", retryable=True)
        if str(data.get("hash_type", "SHA1")).upper() != "SHA1":
            raise PaymentError(f"unsupported bill hash {data.get('hash_type')!r}", code="BAD_ANSWER")
        response = await self._call("GET", httpx.URL(download_url), signed_answer=False)
        if not secrets.compare_digest(hashlib.sha1(response.content).hexdigest(), hash_value.lower()):
            raise PaymentError("trade bill does not match its hash", code="BILL_HASH_MISMATCH", retryable=True)
        try:
            text = response.content.decode("utf-8")
        except UnicodeDecodeError as error:
            raise PaymentError("trade bill is not UTF-8", code="BILL_FORMAT") from error
        return parse_trade_bill(text)

    # notifies ------------------------------------------------------------------------------

    def verify_signed(self, headers: Mapping[str, str], body: bytes) -> None:
        """Checks WeChat's signature headers over `body`; raises NotifyRejected with the reason."""
        lowered = {k.lower(): v for k, v in headers.items()}
        serial = lowered.get("wechatpay-serial", "")
        signature = lowered.get("wechatpay-signature", "")
        timestamp = lowered.get("wechatpay-timestamp", "")
        nonce = lowered.get("wechatpay-nonce", "")
        if not (serial and signature and timestamp and nonce):
            raise NotifyRejected("headers", "Wechatpay-* signature headers missing")
        key = self.config.platform_keys.get(serial)
        if key is None:
            raise NotifyRejected("unknown_serial", f"no WeChat Pay key with serial {serial}")
        if signature.startswith(TEST_SIGNATURE_PREFIX):
            raise NotifyRejected("test_signature", "WeChat Pay signature probe")
        if not timestamp.isdigit() or abs(self._clock() - int(timestamp)) > self.config.timestamp_skew_s:
            raise NotifyRejected("stale", f"timestamp {timestamp} too far from now")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise NotifyRejected("signature", "body is not UTF-8") from None
        if not rsa_verify(key, signing_message(timestamp, nonce, text), signature):
            raise NotifyRejected("signature", "signature does not verify")

    def parse_notify(self, headers: Mapping[str, str], body: bytes) -> Notify:
        """A verified, decrypted notify; NotifyRejected(reason) otherwise."""
        self.verify_signed(headers, body)
        try:
            envelope = json.loads(body)
        except ValueError:
            raise NotifyRejected("malformed", "notify body is not JSON") from None
        if not isinstance(envelope, dict) or not isinstance(envelope.get("resource"), dict):
            raise NotifyRejected("malformed", "notify has no resource")
        try:
            plaintext = json.loads(decrypt_resource(self.config.apiv3_key, envelope["resource"]))
        except ValueError as error:
            raise NotifyRejected("decrypt", str(error)) from None
        if not isinstance(plaintext, dict):
            raise NotifyRejected("decrypt", "resource is not a JSON object")
        event_type, notify_id = envelope.get("event_type"), str(envelope.get("id", ""))
        if event_type == TRADE_EVENT:
            return Notify(channel="wechat", notify_id=notify_id, trade=trade_from_transaction(plaintext))
        if event_type in REFUND_EVENTS:
            return Notify(channel="wechat", notify_id=notify_id, refund=refund_from_wire(plaintext))
        raise NotifyRejected("event_type", f"unexpected event_type {event_type!r}")


def _error_body(response: httpx.Response) -> dict:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _error_code(response: httpx.Response) -> str:
    code = _error_body(response).get("code")
    return code if isinstance(code, str) else ""


def _error_message(response: httpx.Response) -> str:
    message = _error_body(response).get("message")
    return message if isinstance(message, str) else ""
