"""`POST /pay/notify/wechat` and `POST /pay/notify/alipay`: the channels tell us a trade or a
refund moved. The adapters verify the signature (and WeChat's timestamp, then decrypt) before
any content is read; what they vouch for is applied once (`handlers.payments.notifies`).

Answers are the channels' own: WeChat Pay v3 takes `204` for done and a 4xx/5xx with
`{"code": "FAIL", "message"}` to retry later; Alipay takes the exact body `success`, anything
else meaning "send it again".
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, empty, json
from sanic.response import text as text_response

from container import Services
from core.errors import DomainError
from core.http import status_of
from core.openapi import document
from core.outages import outage_of

log = logging.getLogger("zhangban.payments")
# The channels' own failure answers: WeChat Pay v3 wants {"code": "FAIL", "message"}, Alipay any
# body but `success`.
WECHAT_FAIL = {
    "application/json": {
        "schema": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"const": "FAIL"}, "message": {"type": "string"}},
        }
    }
}
ALIPAY_FAIL = {"text/plain": {"schema": {"type": "string", "const": "fail"}}}
bp = Blueprint("pay_notify", url_prefix="/pay/notify")
MAX_NOTIFY_BYTES = 64 * 1024


@bp.post("/wechat")
@document(
    summary="WeChat Pay v3 notify (signed headers, AES-256-GCM resource)",
    tag="callbacks",
    raw_body="application/json",
    status=204,
    errors=(400, 409, 413, 503),
    error_content=WECHAT_FAIL,
)
async def wechat(request: Request) -> HTTPResponse:
    body = request.body or b""
    try:
        if len(body) > MAX_NOTIFY_BYTES:
            return json({"code": "FAIL", "message": "通知过大"}, status=413)
        await Services.of(request).notifies.wechat(request.headers, body)
    except DomainError as error:
        return json({"code": "FAIL", "message": error.message}, status=status_of(error))
    except Exception as exc:
        part = outage_of(exc)
        if part is None:
            log.exception("wechat pay notify failed")
        else:
            log.warning("wechat pay notify: %s unavailable", part)
        return json({"code": "FAIL", "message": "系统繁忙"}, status=503)
    return empty(status=204)


@bp.post("/alipay")
@document(
    summary="Alipay async notify (form fields, RSA2); answers the exact body `success`",
    tag="callbacks",
    raw_body="application/x-www-form-urlencoded",
    response=None,
    content_type="text/plain",
    errors=(400, 409, 413, 503),
    error_content=ALIPAY_FAIL,
)
async def alipay(request: Request) -> HTTPResponse:
    if len(request.body or b"") > MAX_NOTIFY_BYTES:
        return text_response("fail", status=413)
    # Parsed here, not by Sanic's form parser: the body is Alipay's urlencoded form in the charset
    # we asked for (utf-8), whatever Content-Type a forger puts on it.
    try:
        text = (request.body or b"").decode("utf-8")
    except UnicodeDecodeError:
        return text_response("fail", status=400)
    form: dict[str, str] = {}
    for name, value in parse_qsl(text, keep_blank_values=True):
        form.setdefault(name, value)
    try:
        await Services.of(request).notifies.alipay(form)
    except DomainError as error:
        return text_response("fail", status=status_of(error))
    except Exception as exc:
        part = outage_of(exc)
        if part is None:
            log.exception("alipay notify failed")
        else:
            log.warning("alipay notify: %s unavailable", part)
        return text_response("fail", status=503)
    return text_response("success")
