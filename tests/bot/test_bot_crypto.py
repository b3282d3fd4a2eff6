"""Official-account callback security and messages.

The AES envelope is checked against an independent implementation of WeChat's scheme written here
with `cryptography` only (no wechatpy): messages it encrypts must open with OACrypto, and replies
OACrypto encrypts must open with it and carry a valid msg_signature. Then signatures and the replay
window, hostile XML (XXE, billion laughs, oversize) with an audit hook proving nothing is read,
real-shaped samples from WeChat's guide, dedup keys and the passive replies parsed back.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import string
import struct
import sys
import time
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from defusedxml.ElementTree import fromstring
from hypothesis import given, settings
from hypothesis import strategies as st

import bot.crypto
from bot.crypto import CallbackRejected, OACrypto
from bot.messages import (
    BadMessage,
    Location,
    Message,
    dedup_key,
    news_reply,
    parse,
    success,
    text_reply,
)

NOW = 1_714_037_059
OPENID = "oIDrpjqASyTPnxRmpS9O_ruZGsfk"
ACCOUNT = "gh_680bdefc8c5d"

# -- an independent implementation of WeChat's scheme --------------------------------------------


def ref_key(encoding_aes_key: str) -> bytes:
    return base64.b64decode(encoding_aes_key + "=")


def ref_sign(token: str, *parts: str) -> str:
    return hashlib.sha1("".join(sorted([token, *parts])).encode()).hexdigest()


def ref_seal(key: bytes, plaintext: bytes) -> str:
    cipher = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(cipher.update(plaintext) + cipher.finalize()).decode()


def ref_pad(body: bytes) -> bytes:
    pad = 32 - len(body) % 32
    return body + bytes([pad]) * pad


def ref_encrypt(key: bytes, xml: bytes, appid: str) -> str:
    return ref_seal(key, ref_pad(os.urandom(16) + struct.pack(">I", len(xml)) + xml + appid.encode()))


def ref_decrypt(key: bytes, encrypt: str) -> tuple[bytes, bytes, str]:
    """(random prefix, xml, appid) of an Encrypt value."""
    cipher = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    plain = cipher.update(base64.b64decode(encrypt)) + cipher.finalize()
    pad = plain[-1]
    assert len(plain) % 32 == 0 and 1 <= pad <= 32 and plain[-pad:] == bytes([pad]) * pad
    content = plain[16:-pad]
    (length,) = struct.unpack(">I", content[:4])
    return plain[:16], content[4 : 4 + length], content[4 + length :].decode()


def wechat_key() -> str:
    """A key like the one the WeChat console generates: 43 letters and digits."""
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(43))


@dataclass
class Account:
    token: str
    aes_key: str
    appid: str
    clock: list[float]
    crypto: OACrypto

    @property
    def key(self) -> bytes:
        return ref_key(self.aes_key)

    def envelope(self, xml: bytes, *, appid: str | None = None) -> tuple[bytes, str]:
        """What WeChat POSTs in safe mode, and the Encrypt value inside."""
        encrypt = ref_encrypt(self.key, xml, appid or self.appid)
        body = f"<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
        return body.encode(), encrypt


def make_account(aes_key: str | None = None) -> Account:
    token, appid, clock = secrets.token_urlsafe(24), "wx" + secrets.token_hex(8), [float(NOW)]
    aes_key = aes_key or wechat_key()
    return Account(token, aes_key, appid, clock, OACrypto(token, aes_key, appid, now=lambda: clock[0]))


@pytest.fixture(params=["console", "urandom"])
def acct(request) -> Account:
    if request.param == "urandom":  # any 32 bytes, standard alphabet (+ and / included)
        return make_account(base64.b64encode(os.urandom(32)).decode().rstrip("="))
    return make_account()


TEXT = (
    f"<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName><FromUserName><![CDATA[{OPENID}]]></FromUserName>"
    f"<CreateTime>{NOW}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
    "<Content><![CDATA[身份证过期了怎么办]]></Content><MsgId>24602147258866734</MsgId></xml>"
).encode()


# -- safe mode against the independent implementation -------------------------------------------


def test_decrypts_what_the_independent_code_encrypts(acct: Account):
    body, encrypt = acct.envelope(TEXT)
    ts, nonce = str(NOW), "1320562132"
    xml = acct.crypto.decrypt(body, msg_signature=ref_sign(acct.token, ts, nonce, encrypt), timestamp=ts, nonce=nonce)
    assert xml == TEXT
    m = parse(xml)
    assert (m.msg_type, m.content, m.from_user, m.msg_id) == ("text", "身份证过期了怎么办", OPENID, "24602147258866734")


def test_encrypted_reply_opens_with_the_independent_code(acct: Account):
    reply = text_reply(parse(TEXT), "您好，请在“掌办”小程序中搜索“身份证换领”。", create_time=NOW)
    envelope = acct.crypto.encrypt(reply, nonce="1320562132", timestamp=str(NOW))

    root = fromstring(envelope)
    assert root.tag == "xml"
    assert [child.tag for child in root] == ["Encrypt", "MsgSignature", "TimeStamp", "Nonce"]
    assert "<TimeStamp>1714037059</TimeStamp>" in envelope and "<Nonce><![CDATA[1320562132]]></Nonce>" in envelope
    encrypt, signature = root.findtext("Encrypt"), root.findtext("MsgSignature")
    assert signature == ref_sign(acct.token, root.findtext("TimeStamp"), root.findtext("Nonce"), encrypt)
    prefix, xml, appid = ref_decrypt(acct.key, encrypt)
    assert appid == acct.appid and xml == reply.encode()
    back = parse(xml)
    assert (back.to_user, back.from_user, back.content) == (
        OPENID,
        ACCOUNT,
        "您好，请在“掌办”小程序中搜索“身份证换领”。",
    )

    # a fresh random prefix every time, and the timestamp defaults to the injected clock
    acct.clock[0] = NOW + 42
    again = fromstring(acct.crypto.encrypt(reply, nonce="1320562132"))
    assert again.findtext("TimeStamp") == str(NOW + 42)
    assert ref_decrypt(acct.key, again.findtext("Encrypt"))[0] != prefix


@settings(max_examples=60, deadline=None)
@given(text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=300), nonce=st.from_regex(r"\A[0-9]{1,12}\Z"))
def test_round_trips_any_payload_both_ways(text: str, nonce: str):
    acct = make_account()
    payload, ts = text.encode(), str(NOW)
    # WeChat -> us
    body, encrypt = acct.envelope(payload)
    signature = ref_sign(acct.token, ts, nonce, encrypt)
    assert acct.crypto.decrypt(body, msg_signature=signature, timestamp=ts, nonce=nonce) == payload
    # us -> WeChat
    root = fromstring(acct.crypto.encrypt(text, nonce=nonce, timestamp=ts))
    assert root.findtext("MsgSignature") == ref_sign(acct.token, ts, nonce, root.findtext("Encrypt"))
    assert ref_decrypt(acct.key, root.findtext("Encrypt"))[1:] == (payload, acct.appid)


# -- signatures and the replay window ------------------------------------------------------------


def test_url_verification_matches_wechats_published_example():
    # 微信开发者平台「消息推送」: Token=AAAAA, timestamp=1714036504, nonce=1514711492
    crypto = OACrypto("AAAAA", wechat_key(), "wx0123456789abcdef", now=lambda: 1714036504.0)
    signature, echostr = "f464b24fc39322e44b38aa78f5edd27bd1441696", "4375120948345356249"
    assert crypto.verify_url(signature, "1714036504", "1514711492", echostr) == echostr
    with pytest.raises(CallbackRejected, match="bad signature"):
        crypto.verify_url("f464b24fc39322e44b38aa78f5edd27bd1441697", "1714036504", "1514711492", "4375120948345356249")
    with pytest.raises(CallbackRejected, match="missing parameter"):
        crypto.verify_url("f464b24fc39322e44b38aa78f5edd27bd1441696", "1714036504", "1514711492", "")
    # the plain-mode push example of the same guide
    OACrypto("AAAAA", wechat_key(), "wx0", now=lambda: 1714037059.0).check_signature(
        "899cf89e464efb63f54ddac96b0a0a235f53aa78", "1714037059", "486452656"
    )


def test_url_verification_echo(acct: Account):
    ts, nonce = str(NOW), "486452656"
    assert acct.crypto.verify_url(ref_sign(acct.token, ts, nonce), ts, nonce, "echo-123") == "echo-123"


@pytest.mark.parametrize(
    ("signature", "timestamp", "nonce", "reason"),
    [
        ("WRONG", str(NOW), "486452656", "bad signature"),
        (None, str(NOW), "486452656", "missing parameter"),
        ("", str(NOW), "486452656", "missing parameter"),
        ("SIGN", None, "486452656", "missing parameter"),
        ("SIGN", str(NOW), "", "missing parameter"),
        ("SIGN", "17140370a9", "486452656", "bad timestamp"),
        ("SIGN", "-1714037059", "486452656", "bad timestamp"),
        ("SIGN", "1714037059.0", "486452656", "bad timestamp"),
        ("SIGN", str(NOW - 400), "486452656", "stale timestamp"),
        ("SIGN", str(NOW + 400), "486452656", "future timestamp"),
        ("SIGN", str(NOW), "48645<2656", "bad nonce"),
        ("签名", str(NOW), "486452656", "bad signature"),
    ],
)
def test_signature_rejections(acct: Account, signature, timestamp, nonce, reason):
    if signature == "SIGN":  # a signature that would be right, so only the named check can fail
        signature = ref_sign(acct.token, timestamp or "", nonce or "")
    with pytest.raises(CallbackRejected) as exc:
        acct.crypto.check_signature(signature, timestamp, nonce)
    assert exc.value.reason == reason


def test_replay_window_is_300_seconds_each_way(acct: Account):
    nonce = "486452656"
    for ts in (NOW - 300, NOW + 300, NOW):
        acct.crypto.check_signature(ref_sign(acct.token, str(ts), nonce), str(ts), nonce)
    # the same signed request, replayed 400 s later, is refused
    ts = str(NOW)
    signature = ref_sign(acct.token, ts, nonce)
    acct.clock[0] = NOW + 400
    with pytest.raises(CallbackRejected, match="stale timestamp"):
        acct.crypto.check_signature(signature, ts, nonce)


def test_signatures_are_compared_in_constant_time(acct: Account, monkeypatch):
    calls = []
    real = bot.crypto.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(bot.crypto.hmac, "compare_digest", spy)
    ts, nonce = str(NOW), "486452656"
    acct.crypto.check_signature(ref_sign(acct.token, ts, nonce), ts, nonce)
    assert calls and calls[-1][0] == ref_sign(acct.token, ts, nonce).encode()
    calls.clear()
    body, encrypt = acct.envelope(TEXT)
    acct.crypto.decrypt(body, msg_signature=ref_sign(acct.token, ts, nonce, encrypt), timestamp=ts, nonce=nonce)
    assert ref_sign(acct.token, ts, nonce, encrypt).encode() in [a for a, _ in calls]


def _decrypt(acct: Account, body: bytes, encrypt: str | None, **overrides):
    ts, nonce = overrides.pop("timestamp", str(NOW)), overrides.pop("nonce", "1320562132")
    signature = overrides.pop("msg_signature", ref_sign(acct.token, ts, nonce, encrypt or ""))
    return acct.crypto.decrypt(body, msg_signature=signature, timestamp=ts, nonce=nonce)


def test_safe_mode_rejections(acct: Account):
    body, encrypt = acct.envelope(TEXT)
    with pytest.raises(CallbackRejected, match="bad msg_signature"):
        _decrypt(acct, body, encrypt, msg_signature=ref_sign(acct.token, str(NOW), "1320562132"))  # plain signature
    with pytest.raises(CallbackRejected, match="bad msg_signature"):
        _decrypt(acct, body, encrypt, msg_signature=ref_sign("another-token", str(NOW), "1320562132", encrypt))
    with pytest.raises(CallbackRejected, match="missing parameter"):
        _decrypt(acct, body, encrypt, msg_signature=None)
    ts = str(NOW - 400)
    with pytest.raises(CallbackRejected, match="stale timestamp"):
        _decrypt(acct, body, encrypt, timestamp=ts, msg_signature=ref_sign(acct.token, ts, "1320562132", encrypt))
    ts = str(NOW + 400)
    with pytest.raises(CallbackRejected, match="future timestamp"):
        _decrypt(acct, body, encrypt, timestamp=ts, msg_signature=ref_sign(acct.token, ts, "1320562132", encrypt))


def test_wrong_appid_inside_the_payload_is_rejected(acct: Account):
    body, encrypt = acct.envelope(TEXT, appid="wx_someone_else")
    with pytest.raises(CallbackRejected, match="appid mismatch"):
        _decrypt(acct, body, encrypt)
    # an appid that merely starts like ours is not ours
    body, encrypt = acct.envelope(TEXT, appid=acct.appid + "x")
    with pytest.raises(CallbackRejected, match="appid mismatch"):
        _decrypt(acct, body, encrypt)


def _wrap(encrypt: str) -> bytes:
    return f"<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>".encode()


def test_tampered_ciphertext_is_rejected(acct: Account):
    _, encrypt = acct.envelope(TEXT)
    raw = bytearray(base64.b64decode(encrypt))
    raw[-20] ^= 0x01  # in the second-to-last AES block: garbles the appid and padding block
    tampered = base64.b64encode(bytes(raw)).decode()
    # without the token the attacker cannot re-sign: the signature over the original no longer fits
    with pytest.raises(CallbackRejected, match="bad msg_signature"):
        _decrypt(acct, _wrap(tampered), tampered, msg_signature=ref_sign(acct.token, str(NOW), "1320562132", encrypt))
    # even correctly signed (a token leak), the plaintext checks refuse it
    with pytest.raises(CallbackRejected) as exc:
        _decrypt(acct, _wrap(tampered), tampered)
    assert exc.value.reason in {"bad padding", "bad length", "appid mismatch"}
    for bad, reason in [
        (base64.b64encode(bytes(raw[:-16])).decode(), {"bad padding", "bad length", "appid mismatch"}),
        (base64.b64encode(bytes(raw[:-3])).decode(), {"bad ciphertext length"}),
        (encrypt[:-4] + "!!!!", {"bad base64"}),
    ]:
        with pytest.raises(CallbackRejected) as exc:
            _decrypt(acct, _wrap(bad), bad)
        assert exc.value.reason in reason


def test_padding_and_length_are_checked_strictly(acct: Account):
    xml = TEXT
    head = os.urandom(16) + struct.pack(">I", len(xml)) + xml + acct.appid.encode()
    while 32 - len(head) % 32 < 4:  # room for a padding run with an interior byte to corrupt
        xml += b" "
        head = head[:16] + struct.pack(">I", len(xml)) + xml + acct.appid.encode()
    filler = 32 - len(head) % 32
    good = head + bytes([filler]) * filler
    encrypt = ref_seal(acct.key, good)
    assert _decrypt(acct, _wrap(encrypt), encrypt) == xml  # the control: well-formed opens
    cases = {
        "zero pad byte": head + bytes(filler - 1) + b"\x00",
        "pad byte over 32": head + b"\x00" * (filler - 1 + 32) + b"\x21",
        # the last byte gives the right length, so only the check of every padding byte catches it
        "inconsistent pad": head + b"\x00" + bytes([filler]) * (filler - 1),
        "pad reaching into the random prefix": os.urandom(16) + b"\x20" * 16,
    }
    for name, plaintext in cases.items():
        assert len(plaintext) % 32 == 0, name
        encrypt = ref_seal(acct.key, plaintext)
        with pytest.raises(CallbackRejected) as exc:
            _decrypt(acct, _wrap(encrypt), encrypt)
        assert exc.value.reason == "bad padding", name
    # a length field pointing past the end of the plaintext
    encrypt = ref_seal(acct.key, ref_pad(os.urandom(16) + struct.pack(">I", 10_000) + TEXT + acct.appid.encode()))
    with pytest.raises(CallbackRejected, match="bad length"):
        _decrypt(acct, _wrap(encrypt), encrypt)


def test_signature_is_checked_before_decrypting(acct: Account, monkeypatch):
    opened = []
    monkeypatch.setattr(bot.crypto._Prp, "open", lambda self, *a: opened.append(a) or b"")
    body, encrypt = acct.envelope(TEXT)
    with pytest.raises(CallbackRejected, match="bad msg_signature"):
        _decrypt(acct, body, encrypt, msg_signature="0" * 40)
    assert opened == []


def test_hostile_or_broken_envelopes_are_rejected(acct: Account):
    _, encrypt = acct.envelope(TEXT)
    xxe = (
        '<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        f"<xml><Encrypt><![CDATA[{encrypt}]]></Encrypt><ToUserName>&e;</ToUserName></xml>"
    ).encode()
    cases = {
        xxe: "forbidden XML in envelope",
        b"<xml><Encrypt>": "malformed envelope",
        b"": "empty body",
        b"<xml><ToUserName>gh_1</ToUserName></xml>": "missing Encrypt",
        f"<xml><Encrypt>{encrypt}</Encrypt><Encrypt>{encrypt}</Encrypt></xml>".encode(): "missing Encrypt",
        f"<root><Encrypt>{encrypt}</Encrypt></root>".encode(): "missing Encrypt",
        b"<xml><Encrypt>" + b"A" * (300 * 1024) + b"</Encrypt></xml>": "body too large",
    }
    for body, reason in cases.items():
        with pytest.raises(CallbackRejected) as exc:
            _decrypt(acct, body, encrypt)
        assert exc.value.reason == reason, body[:60]


def test_configuration_errors_are_not_callback_rejections():
    for bad in ("short", "!" * 43, wechat_key() + "A"):
        with pytest.raises(ValueError):
            OACrypto("token", bad, "wx1")
    with pytest.raises(ValueError):
        OACrypto("", wechat_key(), "wx1")
    with pytest.raises(ValueError):
        OACrypto("token", wechat_key(), "")
    crypto = make_account().crypto
    with pytest.raises(ValueError):
        crypto.encrypt("<xml/>", nonce="]]><evil/>")
    with pytest.raises(ValueError):
        crypto.encrypt("<xml/>", nonce="123", timestamp="soon")


# -- hostile XML in messages ------------------------------------------------------------------------

_RECORDING: list[list[tuple[str, tuple]]] = []


def _audit(event: str, args: tuple) -> None:
    if _RECORDING and event in {"open", "socket.connect", "socket.getaddrinfo", "urllib.Request", "os.listdir"}:
        _RECORDING[-1].append((event, args))


sys.addaudithook(_audit)  # audit hooks cannot be removed; it records only inside `recording()`


class recording:
    def __enter__(self) -> list[tuple[str, tuple]]:
        _RECORDING.append([])
        return _RECORDING[-1]

    def __exit__(self, *exc) -> None:
        _RECORDING.pop()


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text("TOP-SECRET-" + secrets.token_hex(8))
    return path


def test_the_audit_hook_does_see_file_reads(secret_file):
    with recording() as seen:
        secret_file.read_text()
    assert any(event == "open" and str(secret_file) in str(args[0]) for event, args in seen)


def test_xxe_is_refused_and_nothing_is_read(secret_file):
    secret = secret_file.read_text()
    bodies = [
        f'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file://{secret_file}">]>'
        f"<xml><ToUserName>{ACCOUNT}</ToUserName><FromUserName>{OPENID}</FromUserName><CreateTime>{NOW}</CreateTime>"
        f"<MsgType>text</MsgType><Content>&e;</Content><MsgId>1</MsgId></xml>",
        f'<!DOCTYPE x [<!ENTITY % p SYSTEM "file://{secret_file}"> %p;]><xml/>',
        '<!DOCTYPE xml SYSTEM "http://127.0.0.1:9/evil.dtd"><xml/>',
        f'<xml xmlns:xi="http://www.w3.org/2001/XInclude"><ToUserName>{ACCOUNT}</ToUserName><FromUserName>{OPENID}'
        f"</FromUserName><CreateTime>{NOW}</CreateTime><MsgType>text</MsgType>"
        f'<Content><xi:include href="file://{secret_file}" parse="text"/></Content></xml>',
    ]
    for body in bodies:
        with recording() as seen:
            try:
                m = parse(body.encode())
            except BadMessage as exc:
                assert secret not in str(exc)
            else:  # only the XInclude body parses, and XInclude is never processed
                assert "xi:include" not in body or secret not in repr(m)
                assert "DOCTYPE" not in body
        assert seen == [], body[:40]


def test_billion_laughs_is_refused_quickly():
    lol = ['<!DOCTYPE lolz [<!ENTITY lol "lol">']
    lol += [f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10)]
    body = "".join(lol) + "]>" + "<xml><Content>&lol9;</Content></xml>"
    started = time.perf_counter()
    with pytest.raises(BadMessage, match="forbidden XML"):
        parse(body.encode())
    assert time.perf_counter() - started < 1


def _text_body(content: str) -> bytes:
    return (
        f"<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName><FromUserName><![CDATA[{OPENID}]]></FromUserName>"
        f"<CreateTime>{NOW}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
        f"<Content><![CDATA[{content}]]></Content><MsgId>1</MsgId></xml>"
    ).encode()


def test_oversized_bodies_are_refused():
    overhead = len(_text_body(""))
    exact = _text_body("a" * (64 * 1024 - overhead))
    assert len(exact) == 64 * 1024
    assert parse(exact).content == "a" * (64 * 1024 - overhead)
    with pytest.raises(BadMessage, match="body too large"):
        parse(_text_body("a" * (64 * 1024 - overhead + 1)))
    with pytest.raises(BadMessage, match="body too large"):
        parse(TEXT, limit=100)


def _fields(*elements: str, to: str = ACCOUNT, sender: str = OPENID, create_time: str = "1") -> bytes:
    head = f"<ToUserName>{to}</ToUserName><FromUserName>{sender}</FromUserName><CreateTime>{create_time}</CreateTime>"
    return ("<xml>" + head + "".join(elements) + "</xml>").encode()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty body"),
        (b"not xml", "malformed XML"),
        (b"<xml><Content>unclosed</xml>", "malformed XML"),
        (b"<root><MsgType>text</MsgType></root>", "root element is not <xml>"),
        (_fields("<MsgType>text</MsgType>", to=""), "missing ToUserName"),
        (_fields("<MsgType>text</MsgType>", create_time="soon"), "bad CreateTime"),
        (_fields(), "missing MsgType"),
        (_fields("<FromUserName>oOther</FromUserName><MsgType>text</MsgType>"), "duplicate FromUserName"),
        (_fields("<MsgType>text</MsgType>", sender="o:1"), "bad user name"),
        (_fields("<MsgType>text</MsgType><MsgId>1:2</MsgId>"), "bad MsgId"),
        (_fields("<MsgType>text/plain</MsgType>"), "bad MsgType"),
        (_fields("<MsgType>event</MsgType>"), "missing Event"),
        (_fields("<MsgType>location</MsgType><Location_X>91</Location_X><Location_Y>1</Location_Y>"), "bad location"),
        (_fields("<MsgType>location</MsgType><Location_X>nan</Location_X><Location_Y>1</Location_Y>"), "bad location"),
        (_fields("<MsgType>location</MsgType><Location_Y>113.3</Location_Y>"), "missing Location_X"),
        (b"<xml>" + b"<a>" * 50 + b"</a>" * 50 + b"</xml>", "too deeply nested"),
        (b"<xml><List>" + b"<item/>" * 600 + b"</List></xml>", "too many elements"),
    ],
)
def test_malformed_messages(body: bytes, reason: str):
    with pytest.raises(BadMessage) as exc:
        parse(body)
    assert exc.value.reason == reason


# -- real-shaped samples from WeChat's guide -------------------------------------------------------


def _sample(fields: str, *, create_time: int = 1357290913) -> bytes:
    return (
        f"<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName>\n<FromUserName><![CDATA[{OPENID}]]></FromUserName>\n"
        f"<CreateTime>{create_time}</CreateTime>\n{fields}\n</xml>"
    ).encode()


def test_text_message():
    m = parse(
        _sample(
            "<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[社保卡 补办\n要带什么]]></Content>"
            "<MsgId>1234567890123456</MsgId>"
        )
    )
    assert m == Message(
        to_user=ACCOUNT,
        from_user=OPENID,
        create_time=1357290913,
        msg_type="text",
        msg_id="1234567890123456",
        content="社保卡 补办\n要带什么",
        raw=m.raw,
    )
    assert m.raw["Content"] == "社保卡 补办\n要带什么" and m.raw["MsgType"] == "text"
    assert dedup_key(m) == f"msg:{OPENID}:1234567890123456"


def test_voice_message_with_recognition():
    m = parse(
        _sample(
            "<MsgType><![CDATA[voice]]></MsgType><MediaId><![CDATA[media_id]]></MediaId><Format><![CDATA[amr]]></Format>"
            "<Recognition><![CDATA[腾讯微信团队]]></Recognition><MsgId>1234567890123456</MsgId>"
        )
    )
    assert (m.msg_type, m.media_id, m.recognition, m.raw["Format"]) == ("voice", "media_id", "腾讯微信团队", "amr")
    # recognition switched off: an empty Recognition element
    off = parse(
        _sample(
            "<MsgType><![CDATA[voice]]></MsgType><MediaId><![CDATA[m2]]></MediaId><Format><![CDATA[amr]]></Format>"
            "<MsgId>5912592682802219078</MsgId><Recognition><![CDATA[]]></Recognition>"
        )
    )
    assert off.recognition is None and off.msg_id == "5912592682802219078"


def test_image_message():
    m = parse(
        _sample(
            "<MsgType><![CDATA[image]]></MsgType><PicUrl><![CDATA[http://mmbiz.qpic.cn/abc/0]]></PicUrl>"
            "<MediaId><![CDATA[media_id]]></MediaId><MsgId>1234567890123456</MsgId>"
        )
    )
    assert (m.msg_type, m.pic_url, m.media_id) == ("image", "http://mmbiz.qpic.cn/abc/0", "media_id")
    assert m.msg_id == "1234567890123456"


def test_location_message():
    m = parse(
        _sample(
            "<MsgType><![CDATA[location]]></MsgType><Location_X>23.134521</Location_X><Location_Y>113.358803</Location_Y>"
            "<Scale>20</Scale><Label><![CDATA[位置信息]]></Label><MsgId>1234567890123456</MsgId>",
            create_time=1351776360,
        )
    )
    assert m.location == Location(23.134521, 113.358803, 20, "位置信息")
    assert m.location == (23.134521, 113.358803, 20, "位置信息")
    assert m.event is None and dedup_key(m) == f"msg:{OPENID}:1234567890123456"


def test_link_and_video_messages():
    link = parse(
        _sample(
            "<MsgType><![CDATA[link]]></MsgType><Title><![CDATA[公众平台官网链接]]></Title>"
            "<Description><![CDATA[公众平台官网链接]]></Description><Url><![CDATA[url]]></Url><MsgId>1234567890123456</MsgId>"
        )
    )
    assert link.msg_type == "link" and link.raw["Title"] == "公众平台官网链接" and link.raw["Url"] == "url"
    video = parse(
        _sample(
            "<MsgType><![CDATA[shortvideo]]></MsgType><MediaId><![CDATA[media_id]]></MediaId>"
            "<ThumbMediaId><![CDATA[thumb_media_id]]></ThumbMediaId><MsgId>1234567890123456</MsgId>"
        )
    )
    assert (video.msg_type, video.media_id, video.raw["ThumbMediaId"]) == ("shortvideo", "media_id", "thumb_media_id")


def test_subscribe_by_qr_code_and_scan():
    m = parse(
        _sample(
            "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe]]></Event>"
            "<EventKey><![CDATA[qrscene_123123]]></EventKey><Ticket><![CDATA[TICKET]]></Ticket>",
            create_time=123456789,
        )
    )
    assert (m.msg_type, m.event, m.event_key, m.scene) == ("event", "subscribe", "qrscene_123123", "123123")
    assert m.raw["Ticket"] == "TICKET"
    assert m.msg_id is None
    assert dedup_key(m) == f"evt:{OPENID}:123456789:subscribe:qrscene_123123"
    scan = parse(
        _sample(
            "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[SCAN]]></Event>"
            "<EventKey><![CDATA[SCENE_VALUE]]></EventKey><Ticket><![CDATA[TICKET]]></Ticket>",
            create_time=123456789,
        )
    )
    assert (scan.event, scan.scene) == ("scan", "SCENE_VALUE")
    plain = parse(_sample("<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe]]></Event>"))
    assert (plain.event, plain.event_key, plain.scene) == ("subscribe", None, None)


def test_unsubscribe_event():
    m = parse(_sample("<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[unsubscribe]]></Event>", create_time=123456))
    assert (m.event, m.event_key) == ("unsubscribe", None)
    assert dedup_key(m) == f"evt:{OPENID}:123456:unsubscribe:"


def test_menu_click_and_view_events():
    click = parse(
        _sample(
            "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[CLICK]]></Event>"
            "<EventKey><![CDATA[MENU_GUIDE]]></EventKey>"
        )
    )
    assert (click.event, click.event_key) == ("click", "MENU_GUIDE")
    assert dedup_key(click) == f"evt:{OPENID}:1357290913:click:MENU_GUIDE"
    view = parse(
        _sample(
            "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[VIEW]]></Event>"
            "<EventKey><![CDATA[https://zhangban.example.gov.cn/a?b=1]]></EventKey><MenuId>MENUID</MenuId>"
        )
    )
    assert (view.event, view.event_key) == ("view", "https://zhangban.example.gov.cn/a?b=1")
    assert view.raw["MenuId"] == "MENUID"


def test_location_events():
    m = parse(
        _sample(
            "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[LOCATION]]></Event>"
            "<Latitude>23.137466</Latitude><Longitude>113.352425</Longitude><Precision>119.385040</Precision>",
            create_time=123456789,
        )
    )
    assert (m.event, m.location) == ("location", Location(23.137466, 113.352425, None, None))
    assert m.raw["Precision"] == "119.385040"
    assert dedup_key(m) == f"evt:{OPENID}:123456789:location:"
    picked = parse(
        _sample(
            "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[location_select]]></Event>"
            "<EventKey><![CDATA[6]]></EventKey><SendLocationInfo>"
            "<Location_X><![CDATA[23]]></Location_X><Location_Y><![CDATA[113]]></Location_Y>"
            "<Scale><![CDATA[15]]></Scale><Label><![CDATA[ 广州市海珠区客村艺苑路 106号]]></Label>"
            "<Poiname><![CDATA[]]></Poiname>"
            "</SendLocationInfo>"
        )
    )
    assert picked.location == Location(23.0, 113.0, 15, "广州市海珠区客村艺苑路 106号")
    assert picked.raw["SendLocationInfo.Poiname"] == ""


def test_repeated_nested_items_are_kept():
    m = parse(
        _sample(
            "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[pic_weixin]]></Event><EventKey><![CDATA[6]]></EventKey>"
            "<SendPicsInfo><Count>2</Count><PicList><item><PicMd5Sum><![CDATA[aaa]]></PicMd5Sum></item>"
            "<item><PicMd5Sum><![CDATA[bbb]]></PicMd5Sum></item></PicList></SendPicsInfo>"
        )
    )
    assert m.raw["SendPicsInfo.PicList.item.PicMd5Sum"] == "aaa"
    assert m.raw["SendPicsInfo.PicList.item.PicMd5Sum[1]"] == "bbb"


def test_dedup_keys_recognise_retries_and_nothing_else():
    first = parse(TEXT)
    assert dedup_key(parse(TEXT)) == dedup_key(first)  # WeChat's retry: same body
    other = parse(TEXT.replace(b"24602147258866734", b"24602147258866735"))
    assert dedup_key(other) != dedup_key(first)
    a = parse(_sample("<MsgType>event</MsgType><Event>CLICK</Event><EventKey>A</EventKey>"))
    b = parse(_sample("<MsgType>event</MsgType><Event>CLICK</Event><EventKey>B</EventKey>"))
    v = parse(_sample("<MsgType>event</MsgType><Event>VIEW</Event><EventKey>A</EventKey>"))
    assert len({dedup_key(a), dedup_key(b), dedup_key(v)}) == 3
    again = parse(_sample("<MsgType>event</MsgType><Event>CLICK</Event><EventKey>A</EventKey>"))
    assert dedup_key(a) == dedup_key(again)


def test_message_is_frozen_and_hashable():
    m = parse(TEXT)
    with pytest.raises(AttributeError):
        m.content = "x"  # type: ignore[misc]
    assert hash(m) == hash(parse(TEXT))


# -- passive replies -------------------------------------------------------------------------------


def test_text_reply_is_wechats_xml():
    m = parse(TEXT)
    assert text_reply(m, "你好", create_time=12345678) == (
        f"<xml><ToUserName><![CDATA[{OPENID}]]></ToUserName><FromUserName><![CDATA[{ACCOUNT}]]></FromUserName>"
        "<CreateTime>12345678</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[你好]]></Content></xml>"
    )
    before = int(time.time())
    back = parse(text_reply(m, "第一行\n第二行"))
    assert (back.to_user, back.from_user, back.msg_type, back.content) == (OPENID, ACCOUNT, "text", "第一行\n第二行")
    assert before <= back.create_time <= int(time.time())
    with pytest.raises(ValueError):
        text_reply(m, "  ")


def _expected_in_xml(s: str) -> str:
    """What an XML parser gives back for `s`: no characters XML forbids, newlines normalised."""
    allowed = [
        c for c in s if c in "\t\n\r" or "\x20" <= c <= "\ud7ff" or "\ue000" <= c <= "\ufffd" or c >= "\U00010000"
    ]
    return "".join(allowed).replace("\r\n", "\n").replace("\r", "\n")


@pytest.mark.slow
@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=200).filter(lambda s: _expected_in_xml(s).strip()))
def test_text_reply_survives_any_content(content: str):
    reply = text_reply(parse(TEXT), content, create_time=NOW)
    root = fromstring(reply.encode())
    assert root.findtext("Content") == _expected_in_xml(content)
    assert [child.tag for child in root] == ["ToUserName", "FromUserName", "CreateTime", "MsgType", "Content"]


def test_cdata_terminator_cannot_inject_elements():
    reply = text_reply(parse(TEXT), "a]]><MsgType>news</MsgType><![CDATA[b", create_time=NOW)
    root = fromstring(reply.encode())
    assert root.findtext("MsgType") == "text" and len(root.findall("MsgType")) == 1
    assert root.findtext("Content") == "a]]><MsgType>news</MsgType><![CDATA[b"


def test_news_reply_is_wechats_xml():
    event = parse(_sample("<MsgType>event</MsgType><Event>subscribe</Event>"))
    articles = [
        {
            "title": "欢迎关注掌办",
            "description": "办事指南、进度查询",
            "url": "https://zhangban.example.gov.cn/",
            "picurl": "https://zhangban.example.gov.cn/a.png",
        },
        {"title": "新生儿出生一件事", "description": "", "url": "https://zhangban.example.gov.cn/newborn"},
    ]
    reply = news_reply(event, articles, create_time=12345678)
    assert reply.startswith(
        f"<xml><ToUserName><![CDATA[{OPENID}]]></ToUserName><FromUserName><![CDATA[{ACCOUNT}]]></FromUserName>"
        "<CreateTime>12345678</CreateTime><MsgType><![CDATA[news]]></MsgType>"
        "<ArticleCount>2</ArticleCount><Articles><item>"
        "<Title><![CDATA[欢迎关注掌办]]></Title><Description><![CDATA[办事指南、进度查询]]></Description>"
        "<PicUrl><![CDATA[https://zhangban.example.gov.cn/a.png]]></PicUrl>"
        "<Url><![CDATA[https://zhangban.example.gov.cn/]]></Url></item>"
    )
    root = fromstring(reply.encode())
    assert root.findtext("ArticleCount") == "2"
    items = root.findall("Articles/item")
    assert [[c.tag for c in item] for item in items] == [["Title", "Description", "PicUrl", "Url"]] * 2
    assert [item.findtext("Title") for item in items] == ["欢迎关注掌办", "新生儿出生一件事"]
    assert items[1].findtext("PicUrl") == "" and items[1].findtext("Url") == "https://zhangban.example.gov.cn/newborn"
    back = parse(reply)
    assert (back.msg_type, back.to_user, back.from_user) == ("news", OPENID, ACCOUNT)


def test_news_reply_limits():
    event = parse(_sample("<MsgType>event</MsgType><Event>CLICK</Event><EventKey>K</EventKey>"))
    one = {"title": "t", "url": "https://a.example/"}
    assert fromstring(news_reply(event, [one] * 8).encode()).findtext("ArticleCount") == "8"
    with pytest.raises(ValueError):
        news_reply(event, [one] * 9)
    with pytest.raises(ValueError):
        news_reply(event, [])
    text = parse(TEXT)  # WeChat shows one article in answer to a user's own message
    assert fromstring(news_reply(text, [one]).encode()).findtext("ArticleCount") == "1"
    with pytest.raises(ValueError):
        news_reply(text, [one, one])
    for bad in (
        {"title": "t", "url": "javascript:alert(1)"},
        {"title": "", "url": "https://a.example/"},
        {"title": "t", "url": "https://a.example/", "pic_url": "https://a.example/p.png"},
        {"title": "t", "url": "https://a.example/", "picurl": "file:///etc/passwd"},
    ):
        with pytest.raises(ValueError):
            news_reply(event, [bad])


def test_success_body():
    assert success() == "success"


def test_whole_safe_mode_exchange(acct: Account):
    """WeChat encrypts a push, we open, parse and answer; WeChat opens and checks the answer."""
    ts, nonce = str(NOW), "1320562132"
    pushed = _sample(
        "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[CLICK]]></Event>"
        "<EventKey><![CDATA[MENU_PROGRESS]]></EventKey>"
    )
    body, encrypt = acct.envelope(pushed)
    acct.crypto.check_signature(ref_sign(acct.token, ts, nonce), ts, nonce)  # the plain signature comes along too
    signature = ref_sign(acct.token, ts, nonce, encrypt)
    m = parse(acct.crypto.decrypt(body, msg_signature=signature, timestamp=ts, nonce=nonce))
    assert (m.event, m.event_key) == ("click", "MENU_PROGRESS")
    envelope = fromstring(acct.crypto.encrypt(text_reply(m, "您的办件正在审核中。"), nonce=nonce, timestamp=ts))
    assert envelope.findtext("MsgSignature") == ref_sign(acct.token, ts, nonce, envelope.findtext("Encrypt"))
    _, xml, appid = ref_decrypt(acct.key, envelope.findtext("Encrypt"))
    answer = parse(xml)
    assert (appid, answer.to_user, answer.from_user, answer.content) == (
        acct.appid,
        OPENID,
        ACCOUNT,
        "您的办件正在审核中。",
    )
