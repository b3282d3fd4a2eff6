"""The wire protocol between Zhangban and the core platform: JSON over HTTP, signed with HMAC-SHA256.

Both directions use it: Zhangban signs its calls to the platform, and the platform signs the status
callbacks it sends to Zhangban. Every signed request carries four headers:

    X-App-Key    the caller's application key
    X-Timestamp  unix seconds, as decimal digits
    X-Nonce      16-64 characters of [A-Za-z0-9_-], never reused
    X-Signature  lowercase hex HMAC-SHA256(secret, string_to_sign)

where string_to_sign joins with "\\n":

    METHOD            upper case: POST, GET
    PATH_WITH_QUERY   the request target as sent: "/api/cases/ZB1/withdraw", "/cb?x=1"
    TIMESTAMP         the X-Timestamp value
    NONCE             the X-Nonce value
    sha256_hex(body)  lowercase hex SHA-256 of the raw body bytes (of b"" when there is none)

The receiver verifies with `Verifier.verify()` over the raw body bytes it received (never a re-encoded
JSON), which refuses missing headers, an unknown app key, a timestamp more than `max_skew_s` away from
its clock, a malformed nonce and a wrong signature (compared in constant time). Nonce replay is the
caller's check, because it needs shared storage (Redis `SET key NX EX`): take `nonce_of(headers)`
after a successful `verify()` and refuse the request when the nonce was seen within the skew window.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

HEADER_APP_KEY = "X-App-Key"
HEADER_TIMESTAMP = "X-Timestamp"
HEADER_NONCE = "X-Nonce"
HEADER_SIGNATURE = "X-Signature"
SIGNED_HEADERS = (HEADER_APP_KEY, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)

DEFAULT_MAX_SKEW_S = 300

NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}\Z")
_TIMESTAMP_RE = re.compile(r"^[0-9]{1,12}\Z")
_SIGNATURE_RE = re.compile(r"^[0-9a-f]{64}\Z")

# Reasons carried by SignatureRejected.reason (stable, snake_case: safe to log and to count).
MISSING_HEADER = "missing_header"
UNKNOWN_APP_KEY = "unknown_app_key"
TIMESTAMP_INVALID = "timestamp_invalid"
TIMESTAMP_STALE = "timestamp_stale"
TIMESTAMP_FUTURE = "timestamp_future"
NONCE_INVALID = "nonce_invalid"
SIGNATURE_MALFORMED = "signature_malformed"
SIGNATURE_MISMATCH = "signature_mismatch"
NONCE_REPLAYED = "nonce_replayed"  # raised by callers that keep the nonce store, not by Verifier


class SignatureRejected(Exception):
    """A request whose signature cannot be accepted; `reason` is one of the constants above."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dumps_body(obj: Any) -> bytes:
    """The JSON body bytes both sides send: UTF-8, no ASCII escaping, compact."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def new_nonce() -> str:
    """32 characters of [A-Za-z0-9_-]."""
    return secrets.token_urlsafe(24)


def path_with_query(path: str, query: str | None = None) -> str:
    """The signed request target: `path`, plus `?query` when there is one."""
    return f"{path}?{query}" if query else path


def target_of_url(url: str) -> str:
    """The request target of a full URL, as signed: `/path?query` (`/` for an empty path)."""
    parts = urlsplit(url)
    return path_with_query(parts.path or "/", parts.query)


def string_to_sign(method: str, path: str, timestamp: str, nonce: str, body: bytes) -> str:
    return "\n".join([method.upper(), path, timestamp, nonce, sha256_hex(body)])


def compute_signature(secret: str, method: str, path: str, timestamp: str, nonce: str, body: bytes) -> str:
    message = string_to_sign(method, path, timestamp, nonce, body).encode("utf-8")
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def _as_bytes(body: bytes | bytearray | memoryview | str | None) -> bytes:
    if body is None:
        return b""
    if isinstance(body, str):
        return body.encode("utf-8")
    return bytes(body)


def sign(
    method: str,
    path: str,
    body: bytes,
    *,
    app_key: str,
    secret: str,
    timestamp: int | str | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The four signature headers for a request; `path` includes the query string, if any.

    A fresh nonce and the current time are used unless given (give them only in tests)."""
    if not app_key or not secret:
        raise ValueError("app_key and secret are required")
    ts = str(int(time.time()) if timestamp is None else timestamp)
    if not _TIMESTAMP_RE.match(ts):
        raise ValueError(f"timestamp must be unix seconds, got {ts!r}")
    nonce = new_nonce() if nonce is None else nonce
    if not NONCE_RE.match(nonce):
        raise ValueError("nonce must be 16-64 characters of [A-Za-z0-9_-]")
    return {
        HEADER_APP_KEY: app_key,
        HEADER_TIMESTAMP: ts,
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: compute_signature(secret, method, path, ts, nonce, _as_bytes(body)),
    }


def _header(headers: Mapping[str, str] | Any, name: str) -> str | None:
    """A header value, case-insensitively, from a dict, Sanic's Header or http.server's message."""
    if headers is None:
        return None
    for key in (name, name.lower()):
        value = headers.get(key)
        if value is not None:
            return value if isinstance(value, str) else str(value)
    wanted = name.lower()
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == wanted:
            return value if isinstance(value, str) else str(value)
    return None


def nonce_of(headers: Mapping[str, str] | Any) -> str | None:
    """The X-Nonce of a request, for the caller's replay check (call it after `verify()` passed)."""
    return _header(headers, HEADER_NONCE)


def app_key_of(headers: Mapping[str, str] | Any) -> str | None:
    return _header(headers, HEADER_APP_KEY)


class Verifier:
    """Checks signed requests from one peer (one app key and secret)."""

    def __init__(
        self,
        app_key: str,
        secret: str,
        *,
        max_skew_s: float = DEFAULT_MAX_SKEW_S,
        now: Callable[[], float] = time.time,
    ):
        if not app_key or not secret:
            raise ValueError("app_key and secret are required")
        self.app_key = app_key
        self._secret = secret
        self.max_skew_s = max_skew_s
        self._now = now

    nonce_of = staticmethod(nonce_of)

    def verify(self, method: str, path: str, headers: Mapping[str, str] | Any, body: bytes | None) -> None:
        """Returns when the request is signed by our peer within the time window; raises
        `SignatureRejected` otherwise. `path` is the request target as received, query included."""
        values: dict[str, str] = {}
        missing = []
        for name in SIGNED_HEADERS:
            value = _header(headers, name)
            if value is None or value == "":
                missing.append(name)
            else:
                values[name] = value.strip()
        if missing:
            raise SignatureRejected(MISSING_HEADER, ", ".join(missing))

        app_key = values[HEADER_APP_KEY]
        if not hmac.compare_digest(app_key.encode("utf-8"), self.app_key.encode("utf-8")):
            raise SignatureRejected(UNKNOWN_APP_KEY, app_key[:64])

        ts = values[HEADER_TIMESTAMP]
        if not _TIMESTAMP_RE.match(ts):
            raise SignatureRejected(TIMESTAMP_INVALID, "not unix seconds")
        skew = int(ts) - self._now()
        if skew < -self.max_skew_s:
            raise SignatureRejected(TIMESTAMP_STALE, f"{-skew:.0f} s old")
        if skew > self.max_skew_s:
            raise SignatureRejected(TIMESTAMP_FUTURE, f"{skew:.0f} s ahead")

        nonce = values[HEADER_NONCE]
        if not NONCE_RE.match(nonce):
            raise SignatureRejected(NONCE_INVALID, "must be 16-64 characters of [A-Za-z0-9_-]")

        given = values[HEADER_SIGNATURE]
        if not _SIGNATURE_RE.match(given):
            raise SignatureRejected(SIGNATURE_MALFORMED, "must be 64 lowercase hex characters")
        expected = compute_signature(self._secret, method, path, ts, nonce, _as_bytes(body))
        if not hmac.compare_digest(given.encode("ascii"), expected.encode("ascii")):
            raise SignatureRejected(SIGNATURE_MISMATCH)
