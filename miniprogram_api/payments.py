"""`/api/v1/.../payments`: a citizen pays a case's fee (WeChat Pay in the mini-program, Alipay
by QR code or a mobile web link for a payer outside WeChat) and follows the order."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from container import Services
from core.errors import BadRequest
from core.http import json_body, query_args
from core.openapi import BEARER, document, secure
from handlers.payments.orders import KEY
from miniprogram_api.deps import citizen

bp = Blueprint("mp_payments", url_prefix="/api/v1")
secure(bp, BEARER)
PRIVATE = {"Cache-Control": "no-store"}

IDEMPOTENCY_KEY = {
    "Idempotency-Key": {
        "required": True,
        "description": "a unique key per payment attempt (8-128 of A-Z a-z 0-9 . _ : -); a retry gets the same order",
        "schema": {"type": "string", "pattern": KEY.pattern},
    }
}


class CreateIn(BaseModel):
    channel: Literal["wechat", "alipay_qr", "alipay_wap"] = Field(
        description="wechat: wx.requestPayment in the mini-program; alipay_qr: a QR code for the Alipay app; "
        "alipay_wap: Alipay's mobile web checkout"
    )


class RequestPayment(BaseModel):
    appId: str
    timeStamp: str
    nonceStr: str
    package: str
    signType: str
    paySign: str


class RefundOut(BaseModel):
    amount_fen: int
    status: str
    reason: str
    at: str


class PaymentOut(BaseModel):
    payment_id: str
    out_trade_no: str
    case_no: str
    amount_fen: int
    channel: str
    channel_label: str
    status: str = Field(description="created | paying | paid | refunding | refunded | partially_refunded | closed")
    status_label: str
    expires_at: str
    created_at: str
    paid_at: str | None
    notice_no: str | None
    refunded_fen: int
    refunds: list[RefundOut]
    receipt: dict | None
    request_payment: RequestPayment | None = Field(None, description="wechat, while paying: wx.requestPayment's")
    qr_code: str | None = Field(None, description="alipay_qr, while paying: the QR code's text")
    qr_png_base64: str | None = Field(None, description="alipay_qr, while paying: the QR code as a PNG")
    pay_url: str | None = Field(None, description="alipay_wap, while paying: open it to pay")


class PaymentList(BaseModel):
    items: list[PaymentOut]


class ListQuery(BaseModel):
    case_no: str = Field(min_length=1, max_length=32)


@bp.post("/cases/<case_no:str>/payments")
@document(
    summary="Pay the case's fee: an order at WeChat Pay or Alipay (Idempotency-Key header required)",
    tag="payments",
    body=CreateIn,
    headers=IDEMPOTENCY_KEY,
    response=PaymentOut,
    status=201,
    errors=(400, 401, 404, 409, 422, 502, 503),
)
@citizen
async def create(request: Request, case_no: str) -> HTTPResponse:
    key = request.headers.get("idempotency-key", "")
    if not KEY.fullmatch(key):
        raise BadRequest("请在请求头 Idempotency-Key 中提供8至128位的唯一标识", code="idempotency_key_required")
    body = json_body(request, CreateIn)
    view = await Services.of(request).payments.create(
        user=request.ctx.user, case_no=case_no, channel=body.channel, idempotency_key=key
    )
    return json(view, status=201, headers=PRIVATE)


@bp.get("/payments/<payment_id:str>")
@document(
    summary="One of my payment orders (asks the channel once if the notify has not come yet)",
    tag="payments",
    response=PaymentOut,
    errors=(401, 404),
)
@citizen
async def read(request: Request, payment_id: str) -> HTTPResponse:
    view = await Services.of(request).payments.poll(user=request.ctx.user, payment_id=payment_id)
    return json(view, headers=PRIVATE)


@bp.get("/payments")
@document(
    summary="The payment orders of one of my cases",
    tag="payments",
    query=ListQuery,
    response=PaymentList,
    errors=(401, 404, 422),
)
@citizen
async def of_case(request: Request) -> HTTPResponse:
    query = query_args(request, ListQuery)
    return json(
        await Services.of(request).payments.list_for_case(user=request.ctx.user, case_no=query.case_no), headers=PRIVATE
    )
