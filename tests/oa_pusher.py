"""Plays WeChat's side of the official-account callback: signs, encrypts and posts messages.

Written from WeChat's documented scheme with `cryptography` directly (not wechatpy), so the
server's crypto is checked against an independent implementation.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import string
import struct
import time
from xml.etree import ElementTree

import httpx
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

OA_APPID = "wx_sim_officialacct"
OA_SECRET = "sim_oa_secret_0123456789abcdef"


def new_aes_key() -> str:
    """A fresh 43-character EncodingAESKey."""
    return base64.b64encode(os.urandom(32)).decode()[:-1]


def _sha1(*parts: str) -> str:
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


class OAPusher:
    """Sends messages to `/wechat/oa` the way WeChat's servers do."""

    def __init__(self, url: str, *, token: str, aes_key: str, appid: str = OA_APPID):
        self.url, self.token, self.appid = url, token, appid
        self.key = base64.b64decode(aes_key + "=")

    # -- WeChat's AES scheme -------------------------------------------------------------

    def encrypt(self, xml: str) -> str:
        body = os.urandom(16) + struct.pack(">I", len(xml.encode())) + xml.encode() + self.appid.encode()
        pad = 32 - len(body) % 32
        body += bytes([pad]) * pad
        encryptor = Cipher(algorithms.AES(self.key), modes.CBC(self.key[:16])).encryptor()
        return base64.b64encode(encryptor.update(body) + encryptor.finalize()).decode()

    def decrypt(self, encrypted: str) -> str:
        decryptor = Cipher(algorithms.AES(self.key), modes.CBC(self.key[:16])).decryptor()
        plain = decryptor.update(base64.b64decode(encrypted)) + decryptor.finalize()
        plain = plain[: -plain[-1]]
        length = struct.unpack(">I", plain[16:20])[0]
        assert plain[20 + length :].decode() == self.appid
        return plain[20 : 20 + length].decode()

    # -- sending ---------------------------------------------------------------------------

    def params(self, *, timestamp: int | None = None, nonce: str | None = None) -> dict:
        timestamp = str(timestamp if timestamp is not None else int(time.time()))
        nonce = nonce or "".join(secrets.choice(string.digits) for _ in range(9))
        return {
            "signature": _sha1(self.token, timestamp, nonce),
            "timestamp": timestamp,
            "nonce": nonce,
            "openid": "ignored-by-server",
        }

    def post(
        self,
        xml: str,
        *,
        encrypted: bool = True,
        timestamp: int | None = None,
        tamper: str | None = None,
        timeout: float = 10,
    ) -> httpx.Response:
        params = self.params(timestamp=timestamp)
        if not encrypted:
            return httpx.post(self.url, params=params, content=xml.encode(), timeout=timeout)
        cipher = self.encrypt(xml)
        params.update(encrypt_type="aes", msg_signature=_sha1(self.token, params["timestamp"], params["nonce"], cipher))
        if tamper == "msg_signature":
            params["msg_signature"] = "0" * 40
        envelope = f"<xml><ToUserName><![CDATA[gh_sim]]></ToUserName><Encrypt><![CDATA[{cipher}]]></Encrypt></xml>"
        return httpx.post(self.url, params=params, content=envelope.encode(), timeout=timeout)

    def reply_text(self, response: httpx.Response, *, encrypted: bool = True) -> str | None:
        """The Content of the server's reply (None for `success`), checking its signature."""
        assert response.status_code == 200, response.text
        if response.text == "success":
            return None
        root = ElementTree.fromstring(response.text)
        if encrypted:
            cipher = root.findtext("Encrypt")
            assert root.findtext("MsgSignature") == _sha1(
                self.token, root.findtext("TimeStamp"), root.findtext("Nonce"), cipher
            )
            root = ElementTree.fromstring(self.decrypt(cipher))
        assert root.findtext("MsgType") == "text"
        return root.findtext("Content")


def text_message(from_user: str, content: str, msg_id: str | None = None, create_time: int | None = None) -> str:
    return (
        f"<xml><ToUserName><![CDATA[gh_sim]]></ToUserName><FromUserName><![CDATA[{from_user}]]></FromUserName>"
        f"<CreateTime>{create_time or int(time.time())}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
        f"<Content><![CDATA[{content}]]></Content><MsgId>{msg_id or secrets.randbelow(10**18)}</MsgId></xml>"
    )


def event_message(from_user: str, event: str, key: str = "", create_time: int | None = None) -> str:
    return (
        f"<xml><ToUserName><![CDATA[gh_sim]]></ToUserName><FromUserName><![CDATA[{from_user}]]></FromUserName>"
        f"<CreateTime>{create_time or int(time.time())}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
        f"<Event><![CDATA[{event}]]></Event><EventKey><![CDATA[{key}]]></EventKey></xml>"
    )


def location_message(from_user: str, lat: float, lng: float) -> str:
    return (
        f"<xml><ToUserName><![CDATA[gh_sim]]></ToUserName><FromUserName><![CDATA[{from_user}]]></FromUserName>"
        f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[location]]></MsgType>"
        f"<Location_X>{lat}</Location_X><Location_Y>{lng}</Location_Y><Scale>15</Scale>"
        f"<Label><![CDATA[泸州市江阳区]]></Label><MsgId>{secrets.randbelow(10**18)}</MsgId></xml>"
    )


def voice_message(from_user: str, recognition: str) -> str:
    return (
        f"<xml><ToUserName><![CDATA[gh_sim]]></ToUserName><FromUserName><![CDATA[{from_user}]]></FromUserName>"
        f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[voice]]></MsgType>"
        f"<MediaId><![CDATA[media1]]></MediaId><Format><![CDATA[amr]]></Format>"
        f"<Recognition><![CDATA[{recognition}]]></Recognition><MsgId>{secrets.randbelow(10**18)}</MsgId></xml>"
    )
