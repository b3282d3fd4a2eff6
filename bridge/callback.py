"""`POST /bridge/callback`: the core platform tells us what happened to a case.

The signature is checked (constant time, timestamp within 5 minutes) and the nonce is taken
in Redis (SET NX) before the body is read; a forged, stale or replayed request is `401` and
changes nothing. Duplicates and late events are acknowledged without effect (see
`handlers.cases.platform_events.apply_platform_event`).
"""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from bridge.signing import HEADER_APP_KEY, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP, SignatureRejected, nonce_of
from container import Services
from core.errors import NotFound, Unauthenticated, ValidationFailed
from core.http import field_errors, parse_json, validate
from core.openapi import document
from core.schema import StrictOpen
from handlers.cases.platform_events import apply_platform_event

log = logging.getLogger("zhangban.bridge")
bp = Blueprint("bridge_callback")
NONCE_TTL_S = 600  # longer than the accepted clock skew both ways


class Callback(BaseModel):
    case_no: str = Field(pattern=r"^ZB\d{14}$")
    platform_case_id: str | None = Field(None, max_length=64)
    seq: int = Field(ge=1, le=10_000_000)
    event: Literal[
        "accepted",
        "in_review",
        "correction_requested",
        "fee_assessed",
        "approved",
        "rejected",
        "result_issued",
        "closed",
    ]
    at: str | None = Field(None, max_length=40)
    data: dict = Field(default_factory=dict)


class CorrectionData(StrictOpen):
    fields: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(default_factory=list, max_length=100)
    materials: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(default_factory=list, max_length=50)
    reason: str = Field("", max_length=500)

    @model_validator(mode="after")
    def _something_to_fix(self):
        if not self.fields and not self.materials:
            raise ValueError("补正通知应列出需补正的字段或材料")
        return self


class FeeData(StrictOpen):
    amount_fen: int = Field(ge=0, le=100_000_000)
    # The public payment platform's notice number (缴款码/缴款书号), shown with the fee.
    notice_no: str | None = Field(None, pattern=r"^[0-9A-Za-z-]{1,64}$")


class RejectionData(StrictOpen):
    reason: str = Field(min_length=1, max_length=500)


class ResultData(StrictOpen):
    kind: Literal["electronic", "mail"]
    licence_no: str | None = Field(None, min_length=1, max_length=64)
    tracking_no: str | None = Field(None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _record(self):
        if self.kind == "electronic" and not self.licence_no:
            raise ValueError("电子证照应给出证照编号 licence_no")
        if self.kind == "mail" and not self.tracking_no:
            raise ValueError("邮寄结果应给出快递单号 tracking_no")
        return self


# What each event must carry; the others carry nothing we read.
EVENT_DATA: dict[str, type[BaseModel]] = {
    "correction_requested": CorrectionData,
    "fee_assessed": FeeData,
    "rejected": RejectionData,
    "result_issued": ResultData,
}


class CallbackOut(BaseModel):
    ok: bool
    result: str


SIGNATURE_HEADERS = {
    HEADER_APP_KEY: {"required": True, "description": "the platform's application key", "schema": {"type": "string"}},
    HEADER_TIMESTAMP: {"required": True, "description": "Unix seconds", "schema": {"type": "string"}},
    HEADER_NONCE: {
        "required": True,
        "description": "16-64 of [A-Za-z0-9_-], never reused",
        "schema": {"type": "string"},
    },
    HEADER_SIGNATURE: {
        "required": True,
        "description": "lowercase hex HMAC-SHA256 of the request (bridge/signing.py)",
        "schema": {"type": "string"},
    },
}


@bp.post("/bridge/callback")
@document(
    summary="The core platform reports a case's progress (signed callback)",
    tag="platform",
    body=Callback,
    headers=SIGNATURE_HEADERS,
    response=CallbackOut,
    errors=(400, 401, 404, 422),
)
async def callback(request: Request) -> HTTPResponse:
    services = Services.of(request)
    target = request.path + (f"?{request.query_string}" if request.query_string else "")
    try:
        services.platform_verifier.verify("POST", target, request.headers, request.body)
    except SignatureRejected as exc:
        log.warning("platform callback refused: %s", exc)
        raise Unauthenticated("签名校验失败", code="signature_invalid") from None
    nonce_key = services.keys("bridge", "nonce", nonce_of(request.headers))
    if not await services.redis.set(nonce_key, b"1", nx=True, ex=NONCE_TTL_S):
        raise Unauthenticated("请求已处理过（nonce 重复）", code="nonce_reused")
    body = validate(Callback, parse_json(request.body or b"null"))
    model = EVENT_DATA.get(body.event)
    if model is not None:
        try:
            model.model_validate(body.data)
        except ValidationError as exc:
            raise ValidationFailed(
                {("data" if k == "body" else f"data.{k}"): v for k, v in field_errors(exc).items()}
            ) from None
    result = await apply_platform_event(
        case_no=body.case_no, seq=body.seq, event=body.event, data=body.data, at=body.at, kicks=services.kicks
    )
    if result == "unknown_case":
        raise NotFound("办件不存在", code="case_not_found")
    return json({"ok": True, "result": result})
