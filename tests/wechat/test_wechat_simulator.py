"""The WeChat simulator over real HTTP: `python -m wechat.simulator` in a subprocess, driven with httpx.

Every test starts from `POST /__sim__/reset` (default apps only, real-time clock).
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port
from wechat.simulator import (
    DEFAULT_MP_APPID,
    DEFAULT_MP_SECRET,
    DEFAULT_OA_APPID,
    DEFAULT_OA_SECRET,
    cert_hash,
)

CERT = {"cert_type": "IDENTITY_CARD", "cert_name": "张三", "cert_no": "51050219900307001X"}
TEMPLATE = "tmpl_case_progress_0001"


def _spawn(args: list[str], log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*args, str(port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"simulator exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            httpx.get(url + "/", timeout=0.5)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    _stop(proc)
    raise AssertionError(f"simulator did not start:\n{log_path.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def sim_url(tmp_path_factory) -> Iterator[str]:
    log_path = tmp_path_factory.mktemp("wechat_sim") / "simulator.log"
    proc, url = _spawn([sys.executable, "-m", "wechat.simulator", "--port"], log_path)
    yield url
    _stop(proc)


@pytest.fixture
def c(sim_url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim_url, timeout=10) as client:
        assert client.post("/__sim__/reset").json() == {"ok": True}
        yield client


# -- helpers -------------------------------------------------------------------------------


def ok(response: httpx.Response) -> dict:
    """The JSON body of a WeChat-style answer, which is always HTTP 200 application/json."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def assert_errcode(body: dict, errcode: int, errmsg: str) -> None:
    assert body["errcode"] == errcode, body
    assert body["errmsg"].startswith(errmsg), body
    assert ", rid: " in body["errmsg"]


def control(c: httpx.Client, path: str, payload: dict | None = None) -> dict:
    response = c.post("/__sim__/" + path, json=payload or {})
    assert response.status_code == 200, response.text
    return response.json()


def stable_token(c: httpx.Client, appid=DEFAULT_MP_APPID, secret=DEFAULT_MP_SECRET, force=False) -> dict:
    body = {"grant_type": "client_credential", "appid": appid, "secret": secret, "force_refresh": force}
    return ok(c.post("/cgi-bin/stable_token", json=body))


def mp_token(c: httpx.Client) -> str:
    return stable_token(c)["access_token"]


def oa_token(c: httpx.Client) -> str:
    return stable_token(c, DEFAULT_OA_APPID, DEFAULT_OA_SECRET)["access_token"]


def call(c: httpx.Client, path: str, token: str, payload: dict) -> dict:
    return ok(c.post(path, params={"access_token": token}, json=payload))


def login(c: httpx.Client, code: str, appid=DEFAULT_MP_APPID, secret=DEFAULT_MP_SECRET) -> dict:
    params = {"appid": appid, "secret": secret, "js_code": code, "grant_type": "authorization_code"}
    return ok(c.get("/sns/jscode2session", params=params))


def new_user(c: httpx.Client, appid=DEFAULT_MP_APPID, **extra) -> str:
    return control(c, "users", {"appid": appid, **extra})["openid"]


# -- login ---------------------------------------------------------------------------------


def test_login_code_happy_path(c):
    user = control(c, "users", {"appid": DEFAULT_MP_APPID, "unionid": "oUnion_0123456789abcdefghijk"})
    assert len(user["openid"]) == 28 and user["openid"].startswith("o")
    assert user["unionid"] == "oUnion_0123456789abcdefghijk"

    code = control(c, "login-code", {"appid": DEFAULT_MP_APPID, "openid": user["openid"]})["code"]
    assert len(code) == 32
    first = login(c, code)
    assert set(first) == {"openid", "session_key", "unionid"}  # no errcode on success
    assert first["openid"] == user["openid"] and first["unionid"] == user["unionid"]
    assert len(base64.b64decode(first["session_key"], validate=True)) == 16

    second = login(c, control(c, "login-code", {"appid": DEFAULT_MP_APPID, "openid": user["openid"]})["code"])
    assert second["openid"] == user["openid"]
    assert second["session_key"] != first["session_key"]  # a new session key per login


def test_login_code_for_unknown_user_creates_one_without_unionid(c):
    issued = control(c, "login-code", {"appid": DEFAULT_MP_APPID})
    body = login(c, issued["code"])
    assert body["openid"] == issued["openid"]
    assert set(body) == {"openid", "session_key"}


def test_login_code_errors(c):
    assert_errcode(login(c, "0" * 32), 40029, "invalid code")

    code = control(c, "login-code", {"appid": DEFAULT_MP_APPID})["code"]
    assert "openid" in login(c, code)
    assert_errcode(login(c, code), 40163, "code been used")

    stale = control(c, "login-code", {"appid": DEFAULT_MP_APPID})["code"]
    control(c, "clock", {"advance_s": 301})
    assert_errcode(login(c, stale), 40029, "invalid code")

    control(c, "apps", {"appid": "wx_other_mp", "secret": "other_secret_0123456789abcdef"})
    foreign = control(c, "login-code", {"appid": "wx_other_mp"})["code"]
    assert_errcode(login(c, foreign), 40029, "invalid code")  # another app's code
    assert "openid" in login(c, foreign, "wx_other_mp", "other_secret_0123456789abcdef")


def test_bad_appid_secret_and_grant_type(c):
    code = control(c, "login-code", {"appid": DEFAULT_MP_APPID})["code"]
    assert_errcode(login(c, code, appid="wx_nobody"), 40013, "invalid appid")
    assert_errcode(login(c, code, secret="wrong"), 40125, "invalid appsecret")
    params = {"appid": DEFAULT_MP_APPID, "secret": DEFAULT_MP_SECRET, "js_code": code, "grant_type": "password"}
    assert_errcode(ok(c.get("/sns/jscode2session", params=params)), 40002, "invalid grant_type")
    assert "openid" in login(c, code)  # the failed attempts did not use the code up

    assert_errcode(stable_token(c, appid="wx_nobody"), 40013, "invalid appid")
    assert_errcode(stable_token(c, secret="wrong"), 40125, "invalid appsecret")
    no_grant = ok(c.post("/cgi-bin/stable_token", json={"appid": DEFAULT_MP_APPID, "secret": DEFAULT_MP_SECRET}))
    assert_errcode(no_grant, 40002, "invalid grant_type")
    assert_errcode(ok(c.get("/cgi-bin/stable_token")), 43002, "require POST method")
    assert_errcode(ok(c.post("/cgi-bin/stable_token", content=b"{not json")), 47001, "data format error")
    assert c.get("/__sim__/stats").json()["tokens_issued"] == {}


# -- access tokens -------------------------------------------------------------------------


def test_stable_token_same_until_expired_then_new(c):
    first = stable_token(c)
    assert set(first) == {"access_token", "expires_in"}  # no errcode on success
    assert first["expires_in"] == 7200 and len(first["access_token"]) >= 128

    control(c, "clock", {"advance_s": 1000})
    again = stable_token(c)
    assert again["access_token"] == first["access_token"]
    assert 6199 <= again["expires_in"] <= 6200

    assert control(c, "tokens/expire", {"appid": DEFAULT_MP_APPID})["expired"] == 1
    renewed = stable_token(c)
    assert renewed["access_token"] != first["access_token"] and renewed["expires_in"] == 7200

    control(c, "clock", {"advance_s": 7200 - 200})  # inside the last 5 minutes: WeChat renews early
    early = stable_token(c)
    assert early["access_token"] != renewed["access_token"] and early["expires_in"] == 7200
    assert call(c, "/wxa/business/getuserphonenumber", renewed["access_token"], {"code": "x"})["errcode"] == 40029

    stats = c.get("/__sim__/stats").json()
    assert stats["tokens_issued"] == {DEFAULT_MP_APPID: 3}
    assert stats["calls"]["/cgi-bin/stable_token"] == 4


def test_force_refresh_keeps_old_token_five_minutes(c):
    old = stable_token(c)["access_token"]
    new = stable_token(c, force=True)
    assert new["access_token"] != old and new["expires_in"] == 7200
    assert stable_token(c, force=True)["access_token"] == new["access_token"]  # forced again within 30 s
    assert stable_token(c)["access_token"] == new["access_token"]

    assert call(c, "/wxa/business/getuserphonenumber", old, {"code": "x"})["errcode"] == 40029  # still accepted
    control(c, "clock", {"advance_s": 301})
    assert_errcode(call(c, "/wxa/business/getuserphonenumber", old, {"code": "x"}), 40001, "invalid credential")
    assert call(c, "/wxa/business/getuserphonenumber", new["access_token"], {"code": "x"})["errcode"] == 40029
    assert c.get("/__sim__/stats").json()["tokens_issued"] == {DEFAULT_MP_APPID: 2}


def test_expired_unknown_missing_and_foreign_tokens(c):
    token = mp_token(c)
    control(c, "tokens/expire", {"appid": DEFAULT_MP_APPID})
    assert_errcode(call(c, "/wxa/business/getuserphonenumber", token, {"code": "x"}), 42001, "access_token expired")
    assert_errcode(
        call(c, "/wxa/business/getuserphonenumber", "72_notatoken", {"code": "x"}),
        40001,
        "invalid credential, access_token is invalid or not latest",
    )
    missing = ok(c.post("/wxa/business/getuserphonenumber", json={"code": "x"}))
    assert_errcode(missing, 41001, "access_token missing")
    # the official account's token is not valid for a mini-program API, and the other way round
    assert_errcode(call(c, "/wxa/business/getuserphonenumber", oa_token(c), {"code": "x"}), 40001, "invalid credential")
    assert_errcode(call(c, "/cgi-bin/menu/create", mp_token(c), {"button": []}), 40001, "invalid credential")


async def test_fifty_concurrent_stable_token_calls_issue_one_token(sim_url):
    async with httpx.AsyncClient(base_url=sim_url, timeout=20) as ac:
        assert (await ac.post("/__sim__/reset")).status_code == 200
        body = {"grant_type": "client_credential", "appid": DEFAULT_MP_APPID, "secret": DEFAULT_MP_SECRET}

        async def batch() -> set[str]:
            answers = await asyncio.gather(*(ac.post("/cgi-bin/stable_token", json=body) for _ in range(50)))
            assert all(a.status_code == 200 for a in answers)
            return {a.json()["access_token"] for a in answers}

        first = await batch()
        assert len(first) == 1
        stats = (await ac.get("/__sim__/stats")).json()
        assert stats["tokens_issued"] == {DEFAULT_MP_APPID: 1}
        assert stats["calls"]["/cgi-bin/stable_token"] == 50

        await ac.post("/__sim__/tokens/expire", json={"appid": DEFAULT_MP_APPID})
        second = await batch()
        assert len(second) == 1 and second != first
        assert (await ac.get("/__sim__/stats")).json()["tokens_issued"] == {DEFAULT_MP_APPID: 2}


# -- phone number --------------------------------------------------------------------------


def test_phone_number(c):
    openid = new_user(c)
    code = control(c, "phone-code", {"appid": DEFAULT_MP_APPID, "openid": openid, "phone": "13800138000"})["code"]
    token = mp_token(c)
    body = call(c, "/wxa/business/getuserphonenumber", token, {"code": code})
    assert body["errcode"] == 0 and body["errmsg"] == "ok"
    info = body["phone_info"]
    assert info["phoneNumber"] == "13800138000" and info["purePhoneNumber"] == "13800138000"
    assert info["countryCode"] == "86"
    assert info["watermark"]["appid"] == DEFAULT_MP_APPID
    assert abs(info["watermark"]["timestamp"] - time.time()) < 60

    assert_errcode(call(c, "/wxa/business/getuserphonenumber", token, {"code": code}), 40029, "invalid code")
    assert_errcode(call(c, "/wxa/business/getuserphonenumber", token, {"code": "f" * 64}), 40029, "invalid code")

    hk_phone = {"appid": DEFAULT_MP_APPID, "openid": openid, "phone": "91234567", "country_code": "852"}
    hk = control(c, "phone-code", hk_phone)
    info = call(c, "/wxa/business/getuserphonenumber", token, {"code": hk["code"]})["phone_info"]
    assert (info["phoneNumber"], info["purePhoneNumber"], info["countryCode"]) == ("+85291234567", "91234567", "852")

    bad = c.post("/__sim__/phone-code", json={"appid": DEFAULT_MP_APPID, "openid": openid, "phone": "12345"})
    assert bad.status_code == 422 and bad.json()["code"] == "validation_failed"
    assert "phone" in bad.json()["details"]["fields"]


# -- face verification ---------------------------------------------------------------------


def _verify_id(c, token, openid, out_seq_no, cert=CERT) -> dict:
    return call(
        c,
        "/cityservice/face/identify/getverifyid",
        token,
        {"out_seq_no": out_seq_no, "cert_info": cert, "openid": openid},
    )


def _query(c, token, verify_id, out_seq_no, openid, hash_=None) -> dict:
    payload = {
        "verify_id": verify_id,
        "out_seq_no": out_seq_no,
        "cert_hash": hash_ or cert_hash(CERT["cert_type"], CERT["cert_name"], CERT["cert_no"]),
        "openid": openid,
    }
    return call(c, "/cityservice/face/identify/queryverifyinfo", token, payload)


def test_cert_hash_recipe():
    b64 = {k: base64.b64encode(v.encode()).decode() for k, v in CERT.items()}
    assert b64["cert_name"] == "5byg5LiJ"
    import hashlib

    raw = f"cert_type={b64['cert_type']}&cert_name={b64['cert_name']}&cert_no={b64['cert_no']}"
    assert cert_hash(**CERT) == hashlib.sha256(raw.encode()).hexdigest()


def test_face_flow_end_to_end(c):
    token, openid, other = mp_token(c), new_user(c), new_user(c)
    started = _verify_id(c, token, openid, "ZB-case_0001")
    assert started["errcode"] == 0 and started["errmsg"] == "ok" and started["expires_in"] == 3600
    verify_id = started["verify_id"]
    assert 0 < len(verify_id) <= 256

    pending = _query(c, token, verify_id, "ZB-case_0001", openid)
    assert pending == {"errcode": 0, "errmsg": "ok", "verify_ret": 90000}  # scan not finished yet

    assert control(c, "face/complete", {"verify_id": verify_id, "verify_ret": 10000})["verify_ret"] == 10000
    assert _query(c, token, verify_id, "ZB-case_0001", openid) == {"errcode": 0, "errmsg": "ok", "verify_ret": 10000}

    wrong_hash = cert_hash("IDENTITY_CARD", "李四", CERT["cert_no"])
    mismatch = _query(c, token, verify_id, "ZB-case_0001", openid, wrong_hash)
    assert_errcode(mismatch, 40097, "invalid args, cert_hash")
    assert "verify_ret" not in mismatch
    assert_errcode(_query(c, token, verify_id, "ZB-case_0001", other), 40003, "invalid openid")
    assert_errcode(_query(c, token, verify_id, "ZB-case_0002", openid), 40097, "invalid out_seq_no")
    assert_errcode(_query(c, token, "nope" * 8, "ZB-case_0001", openid), 40097, "invalid args, verify_id not exist")

    control(c, "clock", {"advance_s": 3601})
    assert_errcode(_query(c, token, verify_id, "ZB-case_0001", openid), 40097, "invalid args, verify_id expired")


def test_face_failed_scan_and_getverifyid_validation(c):
    token, openid = mp_token(c), new_user(c)
    verify_id = _verify_id(c, token, openid, "ZB-case_0100")["verify_id"]
    control(c, "face/complete", {"verify_id": verify_id, "verify_ret": 90004})  # user cancelled while scanning
    assert _query(c, token, verify_id, "ZB-case_0100", openid)["verify_ret"] == 90004

    reused = _verify_id(c, token, openid, "ZB-case_0100")
    assert_errcode(reused, 40097, "invalid out_seq_no, out_seq_no has been used")
    assert "verify_id" not in reused
    assert_errcode(_verify_id(c, token, openid, "abc"), 40097, "invalid out_seq_no")  # too short
    assert_errcode(_verify_id(c, token, openid, "bad seq no!"), 40097, "invalid out_seq_no")
    assert_errcode(_verify_id(c, token, "o" + "x" * 27, "ZB-case_0101"), 40003, "invalid openid")
    bad_cert = dict(CERT, cert_no="12345")
    assert_errcode(_verify_id(c, token, openid, "ZB-case_0102", bad_cert), 40097, "invalid args, cert_info.cert_no")
    assert _verify_id(c, token, openid, "ZB-case_0103")["errcode"] == 0  # failures did not use the numbers up

    bad_ret = c.post("/__sim__/face/complete", json={"verify_id": verify_id, "verify_ret": 12})
    assert bad_ret.status_code == 422 and "verify_ret" in bad_ret.json()["details"]["fields"]
    unknown = c.post("/__sim__/face/complete", json={"verify_id": "nope"})
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"


# -- messages ------------------------------------------------------------------------------


def _subscribe(c, token, openid, data=None) -> dict:
    payload = {
        "touser": openid,
        "template_id": TEMPLATE,
        "page": "pages/case/detail?id=42",
        "data": data
        or {"thing1": {"value": "户籍迁移"}, "phrase2": {"value": "已受理"}, "time3": {"value": "2026-11-22 10:30"}},
        "miniprogram_state": "formal",
        "lang": "zh_CN",
    }
    return call(c, "/cgi-bin/message/subscribe/send", token, payload)


def test_subscribe_send_consumes_subscriptions_then_43101(c):
    token, openid = mp_token(c), new_user(c)
    assert_errcode(_subscribe(c, token, openid), 43101, "user refuse to accept the msg")
    grant = {"appid": DEFAULT_MP_APPID, "openid": openid, "template_id": TEMPLATE, "count": 2}
    granted = control(c, "subscriptions", grant)
    assert granted["remaining"] == 2

    assert _subscribe(c, token, openid) == {"errcode": 0, "errmsg": "ok"}
    too_long = {"thing1": {"value": "这是一条超过二十个字符限制的事项名称用于测试参数校验"}}
    assert_errcode(_subscribe(c, token, openid, too_long), 47003, "argument invalid! data.thing1.value")
    assert_errcode(_subscribe(c, token, openid, {"thing1": {"value": ""}}), 47003, "argument invalid!")
    assert _subscribe(c, token, openid) == {"errcode": 0, "errmsg": "ok"}  # bad data did not use one up
    assert_errcode(_subscribe(c, token, openid), 43101, "user refuse to accept the msg")
    assert_errcode(_subscribe(c, token, "o" + "y" * 27), 40003, "invalid openid")

    sent = c.get("/__sim__/messages", params={"type": "subscribe"}).json()["messages"]
    assert len(sent) == 2
    assert sent[0]["touser"] == openid and sent[0]["template_id"] == TEMPLATE
    assert sent[0]["data"]["thing1"]["value"] == "户籍迁移" and sent[0]["page"] == "pages/case/detail?id=42"


def test_custom_send_45015_after_48_hours(c):
    token = oa_token(c)
    openid = new_user(c, DEFAULT_OA_APPID)
    payload = {"touser": openid, "msgtype": "text", "text": {"content": "您的材料已收到"}}
    assert call(c, "/cgi-bin/message/custom/send", token, payload) == {"errcode": 0, "errmsg": "ok"}

    long_ago = time.time() - 49 * 3600
    control(c, "followers", {"appid": DEFAULT_OA_APPID, "openid": openid, "last_interaction_at": long_ago})
    assert_errcode(
        call(c, "/cgi-bin/message/custom/send", token, payload),
        45015,
        "response out of time limit or subscription is canceled",
    )
    control(c, "followers", {"appid": DEFAULT_OA_APPID, "openid": openid, "last_interaction_at": time.time()})
    assert call(c, "/cgi-bin/message/custom/send", token, payload)["errcode"] == 0
    control(c, "clock", {"advance_s": 48 * 3600 + 1})
    assert call(c, "/cgi-bin/message/custom/send", oa_token(c), payload)["errcode"] == 45015

    empty = {"touser": openid, "msgtype": "text", "text": {"content": ""}}
    assert_errcode(call(c, "/cgi-bin/message/custom/send", oa_token(c), empty), 44004, "empty content")
    bad_type = {"touser": openid, "msgtype": "fax", "fax": {}}
    assert_errcode(call(c, "/cgi-bin/message/custom/send", oa_token(c), bad_type), 40008, "invalid message type")

    sent = c.get("/__sim__/messages").json()["messages"]
    assert [m["type"] for m in sent] == ["custom", "custom"]
    assert sent[0]["content"] == {"content": "您的材料已收到"} and sent[0]["msgtype"] == "text"


def test_template_send_43004_after_unsubscribe(c):
    token = oa_token(c)
    openid = control(c, "followers", {"appid": DEFAULT_OA_APPID, "subscribed": True})["openid"]
    payload = {
        "touser": openid,
        "template_id": "oa_tmpl_result",
        "url": "https://zhangban.example.gov.cn/cases/42",
        "miniprogram": {"appid": DEFAULT_MP_APPID, "pagepath": "pages/case/detail?id=42"},
        "data": {"thing1": {"value": "办结"}, "time2": {"value": "2026-11-22 10:30"}},
    }
    first = call(c, "/cgi-bin/message/template/send", token, payload)
    assert first["errcode"] == 0 and first["errmsg"] == "ok" and isinstance(first["msgid"], int)
    second = call(c, "/cgi-bin/message/template/send", token, payload)
    assert second["msgid"] == first["msgid"] + 1

    control(c, "followers", {"appid": DEFAULT_OA_APPID, "openid": openid, "subscribed": False})
    refused = call(c, "/cgi-bin/message/template/send", token, payload)
    assert_errcode(refused, 43004, "require subscribe")
    assert "msgid" not in refused
    no_template = call(c, "/cgi-bin/message/template/send", token, dict(payload, template_id=""))
    assert_errcode(no_template, 40037, "invalid template_id")

    sent = c.get("/__sim__/messages", params={"type": "template"}).json()["messages"]
    assert [m["msgid"] for m in sent] == [first["msgid"], second["msgid"]]
    assert sent[0]["url"] == payload["url"] and sent[0]["miniprogram"] == payload["miniprogram"]


def test_menu_create(c):
    token = oa_token(c)
    menu = {
        "button": [
            {"type": "click", "name": "办事指南", "key": "GUIDE"},
            {
                "name": "掌上办",
                "sub_button": [
                    {"type": "view", "name": "进度查询", "url": "https://zhangban.example.gov.cn/cases"},
                    {
                        "type": "miniprogram",
                        "name": "小程序",
                        "url": "https://zhangban.example.gov.cn",
                        "appid": DEFAULT_MP_APPID,
                        "pagepath": "pages/index/index",
                    },
                ],
            },
        ]
    }
    assert call(c, "/cgi-bin/menu/create", token, menu) == {"errcode": 0, "errmsg": "ok"}
    assert c.get("/__sim__/menu", params={"appid": DEFAULT_OA_APPID}).json()["menu"] == menu

    click = {"type": "click", "name": "A", "key": "A"}
    assert_errcode(call(c, "/cgi-bin/menu/create", token, {"button": [click] * 4}), 40016, "invalid button size")
    assert_errcode(call(c, "/cgi-bin/menu/create", token, {"button": []}), 40016, "invalid button size")
    bad_type = {"button": [{"type": "teleport", "name": "A", "key": "A"}]}
    assert_errcode(call(c, "/cgi-bin/menu/create", token, bad_type), 40017, "invalid button type")
    long_name = {"button": [dict(click, name="一个很长的菜单名字")]}
    assert_errcode(call(c, "/cgi-bin/menu/create", token, long_name), 40018, "invalid button name size")
    six_subs = {"button": [{"name": "更多", "sub_button": [click] * 6}]}
    assert_errcode(call(c, "/cgi-bin/menu/create", token, six_subs), 40023, "invalid sub button size")
    bad_sub = {"button": [{"name": "更多", "sub_button": [{"type": "view", "name": "X", "url": "ftp://x"}]}]}
    assert_errcode(call(c, "/cgi-bin/menu/create", token, bad_sub), 40054, "invalid sub button url domain")
    assert c.get("/__sim__/menu", params={"appid": DEFAULT_OA_APPID}).json()["menu"] == menu  # unchanged


# -- injected failures ---------------------------------------------------------------------


def test_injected_system_error_and_http_500(c):
    assert control(c, "fail", {"path": "/cgi-bin/stable_token", "times": 2})["pending"] == 2
    for _ in range(2):
        failed = stable_token(c)
        assert failed["errcode"] == -1 and failed["errmsg"].startswith("system error")
    assert "access_token" in stable_token(c)

    control(c, "fail", {"path": "/wxa/business/getuserphonenumber", "http_status": 500})
    token = mp_token(c)
    response = c.post("/wxa/business/getuserphonenumber", params={"access_token": token}, json={"code": "x"})
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["errcode"] == -1
    assert call(c, "/wxa/business/getuserphonenumber", token, {"code": "x"})["errcode"] == 40029

    control(c, "fail", {"path": "sns/jscode2session", "errcode": 45011})
    assert_errcode(login(c, "whatever"), 45011, "api minute-quota reach limit")

    stats = c.get("/__sim__/stats").json()
    assert stats["calls"]["/cgi-bin/stable_token"] == 4  # failed calls are counted too
    assert stats["calls"]["/wxa/business/getuserphonenumber"] == 2
    assert stats["tokens_issued"] == {DEFAULT_MP_APPID: 1}

    bad = c.post("/__sim__/fail", json={"path": "/cgi-bin/nope"})
    assert bad.status_code == 422 and "path" in bad.json()["details"]["fields"]


async def test_injected_delay_does_not_block_other_requests(sim_url):
    async with httpx.AsyncClient(base_url=sim_url, timeout=20) as ac:
        await ac.post("/__sim__/reset")
        await ac.post("/__sim__/fail", json={"path": "/cgi-bin/stable_token", "delay_s": 1.0})
        body = {"grant_type": "client_credential", "appid": DEFAULT_MP_APPID, "secret": DEFAULT_MP_SECRET}
        start = time.monotonic()
        slow = asyncio.create_task(ac.post("/cgi-bin/stable_token", json=body))
        await asyncio.sleep(0.1)
        stats = await ac.get("/__sim__/stats")
        assert stats.status_code == 200 and time.monotonic() - start < 0.9  # answered while the other waits
        answer = await slow
        assert time.monotonic() - start >= 1.0
        assert answer.json()["expires_in"] == 7200  # a pure delay, then the normal answer


# -- errors and mounting -------------------------------------------------------------------


def test_unknown_routes_and_bad_control_input_answer_json(c):
    missing = c.get("/nope")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    wrong_method = c.delete("/__sim__/stats")
    assert wrong_method.status_code == 405 and wrong_method.json()["code"] == "method_not_allowed"
    malformed = c.post("/__sim__/users", content=b"{oops")
    assert malformed.status_code == 400 and malformed.json()["code"] == "malformed_json"
    unknown_app = c.post("/__sim__/login-code", json={"appid": "wx_nobody"})
    assert unknown_app.status_code == 404 and unknown_app.json()["code"] == "not_found"
    empty = ok(c.post("/wxa/business/getuserphonenumber", params={"access_token": mp_token(c)}))
    assert_errcode(empty, 44002, "empty post data")


_HOST_APP = """
import sys
from sanic import Sanic
from wechat.simulator import SimState, simulator_blueprint

app = Sanic("host_probe")
app.config.AUTO_EXTEND = False
app.blueprint(simulator_blueprint(SimState(), url_prefix="/_sim/wechat"))
app.run(host="127.0.0.1", port=int(sys.argv[1]), single_process=True, access_log=False, motd=False)
"""


def test_blueprint_mounted_under_a_prefix(tmp_path):
    proc, url = _spawn([sys.executable, "-c", _HOST_APP], tmp_path / "host.log")
    try:
        with httpx.Client(base_url=url + "/_sim/wechat", timeout=10) as host:
            control(host, "fail", {"path": "/_sim/wechat/cgi-bin/stable_token"})
            assert stable_token(host)["errcode"] == -1
            token = stable_token(host)["access_token"]
            openid = control(host, "users", {"appid": DEFAULT_MP_APPID})["openid"]
            code = control(host, "phone-code", {"appid": DEFAULT_MP_APPID, "openid": openid, "phone": "13900139000"})
            phone = call(host, "/wxa/business/getuserphonenumber", token, {"code": code["code"]})
            assert phone["phone_info"]["purePhoneNumber"] == "13900139000"
            stats = host.get("/__sim__/stats").json()
            assert stats["calls"] == {"/cgi-bin/stable_token": 2, "/wxa/business/getuserphonenumber": 1}
    finally:
        _stop(proc)
