"""Official-account callback security: signatures, the replay window and the safe-mode AES envelope.

WeChat signs every callback to our URL:

- plain mode and the GET URL verification: `signature = sha1(sorted([token, timestamp, nonce]))`;
- safe mode (`encrypt_type=aes`) also sends `msg_signature = sha1(sorted([token, timestamp, nonce,
  Encrypt]))`, and the body is `<xml><ToUserName/><Encrypt/></xml>` where
  `Encrypt = base64(AES-256-CBC(key, iv=key[:16], pkcs7_32(random(16) + len(4, big-endian) + xml +
  appid)))` and `key = base64decode(EncodingAESKey + "=")`.

The cipher and padding come from wechatpy's `PrpCrypto`. What wechatpy's `WeChatCrypto` leaves out is
added here: constant-time signature comparisons, a replay window on `timestamp`, an envelope parser
that refuses DTDs and entities, strict padding/length/appid checks on the plaintext, and a CSPRNG for
the 16-byte prefix (wechatpy uses `random.sample`).

Modes. The account's console offers plain (明文), compatible (兼容) and safe (安全) mode. With an
EncodingAESKey configured only safe mode is taken: a plain-mode body is covered by no signature
(`signature` signs only token, timestamp and nonce), so a captured query string would carry any
body, any sender. `mode="compatible"` also takes plain messages, for the switch-over in WeChat's
console, and only when set explicitly.

Replays. `open` answers a `Verified` whose `replay_key` names the (timestamp, nonce) pair that
every signature of the request is made of, with `body_digest` over what was signed or sent and
`ttl_s` (how much longer the timestamp is accepted). The caller remembers the pair in Redis for
that long: the same pair with another body is a replay and is refused; the same pair with the
same body is WeChat resending a message, answered from the first delivery and never acted on.

Every refusal raises `CallbackRejected` with a short English reason for the log; the caller answers
WeChat without detail.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from xml.etree.ElementTree import ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring
from wechatpy.crypto import PrpCrypto
from wechatpy.crypto.pkcs7 import PKCS7Encoder

MAX_SKEW_S = 300  # a timestamp further than this from our clock is a replay (or a broken clock)
MAX_ENVELOPE_BYTES = 256 * 1024  # a 64 KiB message is ~86 KiB once encrypted and base64-encoded
_BLOCK = PKCS7Encoder.block_size  # WeChat pads to 32 bytes, not AES's 16
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_NONCE = re.compile(r"[0-9A-Za-z_-]{1,64}")  # WeChat sends digits; anything else is not WeChat
_ENVELOPE = (
    "<xml><Encrypt><![CDATA[{encrypt}]]></Encrypt><MsgSignature><![CDATA[{signature}]]></MsgSignature>"
    "<TimeStamp>{timestamp}</TimeStamp><Nonce><![CDATA[{nonce}]]></Nonce></xml>"
)


class CallbackRejected(Exception):
    """A callback that must not be processed; `reason` is a short English phrase for the log."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


Mode = Literal["safe", "compatible"]
MODES: tuple[Mode, ...] = ("safe", "compatible")


@dataclass(frozen=True)
class Verified:
    """A callback whose signatures hold: its plaintext XML (None for the GET verification) and
    what to remember against replays."""

    xml: bytes | None
    encrypted: bool
    replay_key: str  # hex digest of (timestamp, nonce): every signature of the request is made of them
    body_digest: str  # hex digest of the method and what the request carried
    ttl_s: int  # seconds the timestamp stays acceptable; the pair must be remembered that long


class _Prp(PrpCrypto):
    """wechatpy's PrpCrypto with a CSPRNG prefix and a strict `open` instead of its lax `decrypt`."""

    def get_random_string(self) -> bytes:  # type: ignore[override]
        return secrets.token_bytes(16)

    def open(self, encrypt: str, appid: str) -> bytes:
        """The inner XML of `encrypt`, after checking padding, the length field and the appid."""
        try:
            ciphertext = base64.b64decode(encrypt, validate=True)
        except (binascii.Error, ValueError):
            raise CallbackRejected("bad base64") from None
        if not ciphertext or len(ciphertext) % 16:
            raise CallbackRejected("bad ciphertext length")
        plaintext = self.cipher.decrypt(ciphertext)
        pad = plaintext[-1]
        if not 1 <= pad <= _BLOCK or len(plaintext) < pad or plaintext[-pad:] != bytes([pad]) * pad:
            raise CallbackRejected("bad padding")
        content = plaintext[16:-pad]
        if len(content) < 4:
            raise CallbackRejected("bad length")
        (length,) = struct.unpack(">I", content[:4])
        if length > len(content) - 4:
            raise CallbackRejected("bad length")
        xml, from_appid = content[4 : 4 + length], content[4 + length :]
        if not hmac.compare_digest(from_appid, appid.encode("utf-8")):
            raise CallbackRejected("appid mismatch")
        return xml


def _aes_key(encoding_aes_key: str) -> bytes:
    if not isinstance(encoding_aes_key, str) or len(encoding_aes_key) != 43:
        raise ValueError("EncodingAESKey must be 43 characters")
    try:
        key = base64.b64decode(encoding_aes_key + "=", validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("EncodingAESKey is not base64") from None
    if len(key) != 32:
        raise ValueError("EncodingAESKey must decode to 32 bytes")
    return key


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison; bytes so that a non-ASCII value is a mismatch, not a TypeError."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


class OACrypto:
    """Checks and opens official-account callbacks for one account (token, EncodingAESKey, appid)."""

    def __init__(
        self,
        token: str,
        encoding_aes_key: str,
        appid: str,
        *,
        mode: Mode = "safe",
        max_skew_s: int = MAX_SKEW_S,
        now: Callable[[], float] = time.time,
    ):
        if not token:
            raise ValueError("token is required")
        if not appid:
            raise ValueError("appid is required")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        self._token, self.appid, self.mode = token, appid, mode
        self._prp = _Prp(_aes_key(encoding_aes_key))
        self._max_skew_s, self._now = max_skew_s, now

    # -- checks ---------------------------------------------------------------------------

    def _sign(self, *parts: str) -> str:
        return hashlib.sha1("".join(sorted([self._token, *parts])).encode("utf-8")).hexdigest()

    def _check_common(self, timestamp: str | None, nonce: str | None, **named: str | None) -> None:
        """Presence of every parameter, a fresh numeric timestamp and a sane nonce."""
        if not timestamp or not nonce or not all(named.values()):
            raise CallbackRejected("missing parameter")
        if not _TIMESTAMP.fullmatch(timestamp):
            raise CallbackRejected("bad timestamp")
        skew = int(timestamp) - self._now()
        if skew < -self._max_skew_s:
            raise CallbackRejected("stale timestamp")
        if skew > self._max_skew_s:
            raise CallbackRejected("future timestamp")
        if not _NONCE.fullmatch(nonce):
            raise CallbackRejected("bad nonce")

    def check_signature(self, signature: str | None, timestamp: str | None, nonce: str | None) -> None:
        """The `signature` query parameter (plain mode and URL verification); raises CallbackRejected."""
        self._check_common(timestamp, nonce, signature=signature)
        if not _same(signature, self._sign(timestamp, nonce)):  # type: ignore[arg-type]
            raise CallbackRejected("bad signature")

    def check_msg_signature(
        self, msg_signature: str | None, timestamp: str | None, nonce: str | None, encrypt: str
    ) -> None:
        """The `msg_signature` query parameter over the envelope's Encrypt value."""
        self._check_common(timestamp, nonce, msg_signature=msg_signature, encrypt=encrypt)
        if not _same(msg_signature, self._sign(timestamp, nonce, encrypt)):  # type: ignore[arg-type]
            raise CallbackRejected("bad msg_signature")

    def verify_url(self, signature: str | None, timestamp: str | None, nonce: str | None, echostr: str | None) -> str:
        """The GET verification WeChat sends when the URL is configured: the echostr to answer with."""
        if not echostr:
            raise CallbackRejected("missing parameter")
        self.check_signature(signature, timestamp, nonce)
        return echostr

    def _verified(
        self, method: str, timestamp: str, nonce: str, carried: bytes, xml: bytes | None, encrypted: bool
    ) -> Verified:
        # Remembered until the timestamp leaves the window (at most twice the skew, for a timestamp
        # from the future), so no replay outlives its memory.
        ttl = int(timestamp) + self._max_skew_s - int(self._now()) + 1
        return Verified(
            xml=xml,
            encrypted=encrypted,
            replay_key=hashlib.sha256(f"{timestamp}\n{nonce}".encode()).hexdigest(),
            body_digest=hashlib.sha256(method.encode() + b"\n" + carried).hexdigest(),
            ttl_s=max(1, min(ttl, 2 * self._max_skew_s + 1)),
        )

    def open_verification(
        self, signature: str | None, timestamp: str | None, nonce: str | None, echostr: str | None
    ) -> Verified:
        """`verify_url`, with what to remember: the same signature must not come back with another echostr
        or as a plain-mode POST."""
        echo = self.verify_url(signature, timestamp, nonce, echostr)
        return self._verified("GET", timestamp, nonce, echo.encode("utf-8"), None, False)  # type: ignore[arg-type]

    def open(
        self,
        body: bytes,
        *,
        signature: str | None,
        timestamp: str | None,
        nonce: str | None,
        encrypt_type: str | None,
        msg_signature: str | None,
    ) -> Verified:
        """A POSTed callback checked for the account's mode: signatures, freshness, and in safe mode the
        decrypted message. Raises CallbackRejected."""
        self.check_signature(signature, timestamp, nonce)
        if isinstance(body, str):
            body = body.encode("utf-8")
        if encrypt_type == "aes":
            xml = self.decrypt(body, msg_signature=msg_signature, timestamp=timestamp, nonce=nonce)
            return self._verified("POST", timestamp, nonce, bytes(body), xml, True)  # type: ignore[arg-type]
        if self.mode != "compatible":
            raise CallbackRejected("plain-mode message refused in safe mode")
        return self._verified("POST", timestamp, nonce, bytes(body), bytes(body), False)  # type: ignore[arg-type]

    # -- safe mode ------------------------------------------------------------------------

    def decrypt(self, body: bytes, *, msg_signature: str | None, timestamp: str | None, nonce: str | None) -> bytes:
        """The inner plaintext XML of a safe-mode (`encrypt_type=aes`) callback body.

        The msg_signature is verified over the Encrypt element before anything is decrypted.
        """
        self._check_common(timestamp, nonce, msg_signature=msg_signature)
        encrypt = _envelope_encrypt(body)
        self.check_msg_signature(msg_signature, timestamp, nonce, encrypt)
        return self._prp.open(encrypt, self.appid)

    def encrypt(self, reply_xml: str, *, nonce: str, timestamp: str | None = None) -> str:
        """The encrypted envelope for a passive reply (`success` may also be answered unencrypted).

        WeChat's guide reuses the request's timestamp and nonce; the timestamp defaults to now.
        """
        if not isinstance(nonce, str) or not _NONCE.fullmatch(nonce):
            raise ValueError("nonce must be 1-64 letters, digits, '_' or '-'")
        ts = str(int(self._now())) if timestamp is None else str(timestamp)
        if not _TIMESTAMP.fullmatch(ts):
            raise ValueError("timestamp must be decimal seconds")
        encrypt = self._prp.encrypt(reply_xml, self.appid).decode("ascii")
        return _ENVELOPE.format(encrypt=encrypt, signature=self._sign(ts, nonce, encrypt), timestamp=ts, nonce=nonce)


def _envelope_encrypt(body: bytes) -> str:
    """The Encrypt value of a safe-mode envelope, parsed without DTDs, entities or external loads."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    if not body:
        raise CallbackRejected("empty body")
    if len(body) > MAX_ENVELOPE_BYTES:
        raise CallbackRejected("body too large")
    try:
        root = fromstring(bytes(body), forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException:
        raise CallbackRejected("forbidden XML in envelope") from None
    except (ParseError, ValueError, LookupError):
        raise CallbackRejected("malformed envelope") from None
    nodes = root.findall("Encrypt") if root.tag == "xml" else []
    if len(nodes) != 1 or not nodes[0].text:
        raise CallbackRejected("missing Encrypt")
    return nodes[0].text
