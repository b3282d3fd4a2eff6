"""`/api/v1/identity` (实名, 实人) and `/api/v1/me` (profile, phone, addresses)."""

from __future__ import annotations

from pydantic import BaseModel, Field, StrictBool
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from container import Services
from core.http import client_ip, json_body
from core.openapi import BEARER, document, secure
from handlers import identity
from miniprogram_api.deps import citizen

bp = Blueprint("mp_identity", url_prefix="/api/v1")
secure(bp, BEARER)


class DeclareIn(BaseModel):
    name: str = Field(max_length=64)
    id_number: str = Field(max_length=32)
    transfer: StrictBool = Field(False, description="move an ID verified by another account here (needs a face check)")


class LevelOut(BaseModel):
    identity_level: str


class FaceStartOut(BaseModel):
    verify_id: str
    expires_in: int


class FaceFinishIn(BaseModel):
    verify_id: str = Field(min_length=1, max_length=128)


class PhoneIn(BaseModel):
    code: str = Field(min_length=1, max_length=128, description="the code from getPhoneNumber")


class AddressIn(BaseModel):
    recipient: str = Field(max_length=64)
    phone: str = Field(max_length=20)
    region_code: str = Field(max_length=6)
    detail: str = Field(max_length=200)
    is_default: StrictBool = False


class AddressOut(BaseModel):
    id: int
    recipient_masked: str
    phone_masked: str
    region_code: str
    detail: str
    is_default: bool


class PhoneOut(BaseModel):
    phone_masked: str


class AddressList(BaseModel):
    items: list[AddressOut]


class ProfileOut(BaseModel):
    id: int
    identity_level: str
    name_masked: str | None
    id_number_masked: str | None
    phone_masked: str | None
    face_verified: bool
    addresses: list[AddressOut]


@bp.post("/identity/declare")
@document(
    summary="Declare real name and ID number (L2)",
    tag="identity",
    body=DeclareIn,
    response=LevelOut,
    errors=(401, 409, 422, 429),
)
@citizen
async def declare(request: Request) -> HTTPResponse:
    body = json_body(request, DeclareIn)
    ctx, user = Services.of(request), request.ctx.user
    await ctx.limiter.hit("declare", "user", user.id)
    await ctx.limiter.hit("declare", "ip", client_ip(request))
    user = await identity.declare(
        user=user,
        name=body.name,
        id_number=body.id_number,
        transfer=body.transfer,
        cipher=ctx.cipher,
        ip=client_ip(request),
    )
    return json({"identity_level": user.identity_level.value})


@bp.post("/identity/face/start")
@document(
    summary="Start a face check (getVerifyId) for wx.requestFacialVerify",
    tag="identity",
    response=FaceStartOut,
    errors=(401, 409, 429, 503),
)
@citizen
async def face_start(request: Request) -> HTTPResponse:
    ctx, user = Services.of(request), request.ctx.user
    await ctx.limiter.hit("face", "user", user.id)
    await ctx.limiter.hit("face", "ip", client_ip(request))
    session = await identity.start_face(user=user, wechat=ctx.wechat_mp, cipher=ctx.cipher)
    expires_in = int((session.expires_at - session.created_at).total_seconds())
    return json({"verify_id": session.verify_id, "expires_in": expires_in})


@bp.post("/identity/face/finish")
@document(
    summary="Finish a face check (queryVerifyInfo); 10000 gives L3",
    tag="identity",
    body=FaceFinishIn,
    response=LevelOut,
    errors=(401, 404, 409, 422, 503),
)
@citizen
async def face_finish(request: Request) -> HTTPResponse:
    body = json_body(request, FaceFinishIn)
    ctx = Services.of(request)
    await ctx.limiter.hit("face", "user", request.ctx.user.id)
    user = await identity.finish_face(
        user=request.ctx.user, verify_id=body.verify_id, wechat=ctx.wechat_mp, ip=client_ip(request)
    )
    return json({"identity_level": user.identity_level.value})


@bp.get("/me")
@document(summary="My profile, personal data masked", tag="identity", response=ProfileOut, errors=(401,))
@citizen
async def me(request: Request) -> HTTPResponse:
    return json(await identity.own_profile(user=request.ctx.user, cipher=Services.of(request).cipher))


@bp.post("/me/phone")
@document(
    summary="Bind my mobile number from a getPhoneNumber code",
    tag="identity",
    body=PhoneIn,
    response=PhoneOut,
    errors=(400, 401, 422, 429, 503),
)
@citizen
async def bind_phone(request: Request) -> HTTPResponse:
    body = json_body(request, PhoneIn)
    ctx, user = Services.of(request), request.ctx.user
    await ctx.limiter.hit("phone", "user", user.id)
    masked = await identity.bind_phone(
        user=user, code=body.code, wechat=ctx.wechat_mp, cipher=ctx.cipher, ip=client_ip(request)
    )
    return json({"phone_masked": masked})


@bp.get("/me/addresses")
@document(summary="My mailing addresses", tag="identity", response=AddressList, errors=(401,))
@citizen
async def list_addresses(request: Request) -> HTTPResponse:
    return json({"items": await identity.own_addresses(user=request.ctx.user, cipher=Services.of(request).cipher)})


@bp.post("/me/addresses")
@document(
    summary="Add a mailing address",
    tag="identity",
    body=AddressIn,
    response=AddressOut,
    status=201,
    errors=(401, 409, 422),
)
@citizen
async def add_address(request: Request) -> HTTPResponse:
    body = json_body(request, AddressIn)
    address = await identity.add_address(
        user=request.ctx.user, data=body.model_dump(), cipher=Services.of(request).cipher
    )
    return json(identity.address_view(address, Services.of(request).cipher), status=201)


@bp.put("/me/addresses/<address_id:int>")
@document(
    summary="Replace a mailing address", tag="identity", body=AddressIn, response=AddressOut, errors=(401, 404, 422)
)
@citizen
async def update_address(request: Request, address_id: int) -> HTTPResponse:
    body = json_body(request, AddressIn)
    address = await identity.update_address(
        user=request.ctx.user, address_id=address_id, data=body.model_dump(), cipher=Services.of(request).cipher
    )
    return json(identity.address_view(address, Services.of(request).cipher))


@bp.delete("/me/addresses/<address_id:int>")
@document(summary="Delete a mailing address", tag="identity", status=204, errors=(401, 404))
@citizen
async def delete_address(request: Request, address_id: int) -> HTTPResponse:
    await identity.delete_address(user=request.ctx.user, address_id=address_id)
    return HTTPResponse(status=204)
