"""Issue 12, finding 10: the official-account callback takes only safe mode when it has an
EncodingAESKey, and a signature used once cannot carry another body.

A plain-mode body is covered by no signature (`signature` signs token, timestamp and nonce only),
so before the fix a query string captured from any request could be replayed within five minutes
with another follower's openid in a plain body, and the bot answered as if that follower asked.
"""

from __future__ import annotations

import hashlib
import secrets
import time

import httpx
import pytest

from bot.crypto import CallbackRejected, OACrypto
from tests.conftest import OA_AES_KEY, OA_TOKEN, base_env, make_server, run_cli
from tests.oa_pusher import OA_APPID, OAPusher, text_message


@pytest.fixture(scope="module", autouse=True)
def catalogue(server):
    # Before any question: the server caches the catalogue revision it first sees, and a
    # question asked before the demo is loaded would leave it empty for other test files.
    assert server.cli("load-demo").returncode == 0


def follower(wechat_sim) -> str:
    return wechat_sim.control("users", {"appid": OA_APPID})["openid"]


def tickets(server, openid: str) -> list[tuple]:
    return server.database.query(f"SELECT ticket_no FROM tickets WHERE oa_openid = '{openid}'")


def safe_request(oa: OAPusher, xml: str) -> tuple[dict, bytes]:
    """(query, body) of a safe-mode message exactly as WeChat sends it."""
    params = oa.params()
    cipher = oa.encrypt(xml)
    params.update(
        encrypt_type="aes",
        msg_signature=hashlib.sha1(
            "".join(sorted([OA_TOKEN, params["timestamp"], params["nonce"], cipher])).encode()
        ).hexdigest(),
    )
    body = f"<xml><ToUserName><![CDATA[gh_sim]]></ToUserName><Encrypt><![CDATA[{cipher}]]></Encrypt></xml>"
    return params, body.encode()


@pytest.fixture(scope="module")
def compatible(tmp_path_factory, databases, wechat_sim):
    """A server whose official account is explicitly in WeChat's compatible mode."""
    srv, _ = make_server(tmp_path_factory, databases, wechat_sim, "oacompat", WECHAT_OA_MODE="compatible")
    assert srv.cli("load-demo").returncode == 0
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def compatible_oa(compatible) -> OAPusher:
    return OAPusher(compatible.url + "/wechat/oa", token=OA_TOKEN, aes_key=OA_AES_KEY)


# -- safe mode is the default with a key -------------------------------------------------------


def test_plain_message_is_refused_when_a_key_is_set(server, oa, wechat_sim):
    openid = follower(wechat_sim)
    response = oa.post(text_message(openid, "咨询 居住证怎么办理？"), encrypted=False)
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "oa_signature_invalid"
    assert tickets(server, openid) == []  # nothing was acted on
    assert "plain-mode message refused in safe mode" in server.log()
    # The same follower in safe mode is answered.
    assert "已受理" in oa.reply_text(oa.post(text_message(openid, "咨询 居住证怎么办理？")))


# -- compatible mode, by explicit setting ------------------------------------------------------


def test_compatible_mode_takes_plain_messages_safely(compatible, compatible_oa, wechat_sim, tmp_path):
    response = compatible_oa.post(text_message(follower(wechat_sim), "公积金怎么取"), encrypted=False)
    assert "【公积金提取" in compatible_oa.reply_text(response, encrypted=False)
    secret_file = tmp_path / "secret.txt"
    marker = "TOP-SECRET-" + secrets.token_hex(8)
    secret_file.write_text(marker)
    xxe = (
        f'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file://{secret_file}">]>'
        f"<xml><ToUserName>gh</ToUserName><FromUserName>{follower(wechat_sim)}</FromUserName>"
        f"<CreateTime>{int(time.time())}</CreateTime><MsgType>text</MsgType><Content>&e;</Content><MsgId>1</MsgId></xml>"
    )
    refused = compatible_oa.post(xxe, encrypted=False)
    assert refused.status_code == 400 and refused.json()["code"] == "bad_message"
    assert marker not in refused.text and marker not in compatible.log()


def test_a_captured_plain_signature_cannot_carry_another_senders_message(compatible, compatible_oa, wechat_sim):
    attacker, victim = follower(wechat_sim), follower(wechat_sim)
    params = compatible_oa.params()
    first = httpx.post(compatible_oa.url, params=params, content=text_message(attacker, "你好").encode())
    assert first.status_code == 200
    replayed = httpx.post(compatible_oa.url, params=params, content=text_message(victim, "咨询 帮我查进度").encode())
    assert replayed.status_code == 403 and replayed.json()["code"] == "oa_signature_invalid"
    assert tickets(compatible, victim) == []
    assert "replayed signature" in compatible.log()


def test_a_captured_safe_mode_signature_cannot_be_replayed_as_plain(compatible, compatible_oa, wechat_sim):
    attacker, victim = follower(wechat_sim), follower(wechat_sim)
    params, body = safe_request(compatible_oa, text_message(attacker, "你好"))
    assert httpx.post(compatible_oa.url, params=params, content=body).status_code == 200
    # Strip the safe-mode parameters: `signature`, timestamp and nonce are still valid.
    plain = {k: v for k, v in params.items() if k not in ("encrypt_type", "msg_signature")}
    replayed = httpx.post(compatible_oa.url, params=plain, content=text_message(victim, "咨询 帮我查进度").encode())
    assert replayed.status_code == 403 and replayed.json()["code"] == "oa_signature_invalid"
    assert tickets(compatible, victim) == []


def test_the_url_verification_signature_cannot_be_reused_for_a_message(compatible, compatible_oa, wechat_sim):
    params = compatible_oa.params()
    verified = httpx.get(compatible_oa.url, params={**params, "echostr": "4913742689"})
    assert verified.status_code == 200 and verified.text == "4913742689"
    victim = follower(wechat_sim)
    replayed = httpx.post(compatible_oa.url, params=params, content=text_message(victim, "咨询 帮我查进度").encode())
    assert replayed.status_code == 403
    assert httpx.get(compatible_oa.url, params={**params, "echostr": "other"}).status_code == 403
    assert tickets(compatible, victim) == []


# -- resends ----------------------------------------------------------------------------------


def test_a_byte_identical_resend_gets_the_first_answer_and_acts_once(server, oa, wechat_sim):
    """WeChat resends a message it got no answer to; if it reuses the query string, the replay
    guard must let the resend through to the first delivery's answer, never a second action."""
    openid = follower(wechat_sim)
    params, body = safe_request(oa, text_message(openid, "咨询 公积金提取后多久能到账？"))
    first = httpx.post(oa.url, params=params, content=body, timeout=10)
    again = httpx.post(oa.url, params=params, content=body, timeout=10)
    reply = oa.reply_text(first)
    assert reply and "已受理" in reply and oa.reply_text(again) == reply
    assert len(tickets(server, openid)) == 1


# -- the setting ------------------------------------------------------------------------------


def test_an_unknown_mode_stops_start_up(tmp_path):
    result = run_cli("migrate", env=base_env(WECHAT_OA_MODE="plain"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "WECHAT_OA_MODE: must be 'safe' or 'compatible', got 'plain'"


# -- OACrypto on its own ----------------------------------------------------------------------


def _signed(timestamp: str, nonce: str) -> dict:
    signature = hashlib.sha1("".join(sorted([OA_TOKEN, timestamp, nonce])).encode()).hexdigest()
    return {"signature": signature, "timestamp": timestamp, "nonce": nonce}


def test_the_crypto_takes_plain_messages_only_in_compatible_mode():
    now = 1_800_000_000
    body = text_message("o_sender", "你好", create_time=now).encode()
    safe = OACrypto(OA_TOKEN, OA_AES_KEY, OA_APPID, now=lambda: now)
    with pytest.raises(CallbackRejected, match="plain-mode"):
        safe.open(body, **_signed(str(now), "12345"), encrypt_type=None, msg_signature=None)
    compatible = OACrypto(OA_TOKEN, OA_AES_KEY, OA_APPID, mode="compatible", now=lambda: now)
    opened = compatible.open(body, **_signed(str(now), "12345"), encrypt_type=None, msg_signature=None)
    assert opened.xml == body and not opened.encrypted
    # Remembered for as long as the timestamp is accepted, from the past or the future.
    assert opened.ttl_s == 301
    future = compatible.open(body, **_signed(str(now + 300), "12345"), encrypt_type=None, msg_signature=None)
    assert future.ttl_s == 601 and future.replay_key != opened.replay_key
    with pytest.raises(ValueError):
        OACrypto(OA_TOKEN, OA_AES_KEY, OA_APPID, mode="plain")  # type: ignore[arg-type]
