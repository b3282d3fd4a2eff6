"""Encryption of personal data at rest, and blind indexes to look it up.

Field values are sealed with AES-256-GCM. The blob carries a format byte, the id of the key
that sealed it (so keys can rotate: old keys still open old rows, `rotate-keys` reseals them)
and a random nonce. The column name is bound in as associated data, so a ciphertext copied
into another column does not open. Lookups and uniqueness use a keyed HMAC of the normalised
value (a blind index), never the clear value.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_FORMAT = 1
_KEY_ID_LEN = 4
_NONCE_LEN = 12


class DecryptionError(Exception):
    """A sealed value could not be opened: unknown key, wrong column, or tampered bytes."""


def _derive(master: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"zhangban " + purpose).derive(master)


def key_id(master: bytes) -> bytes:
    """A short, non-secret id of a master key."""
    return hashlib.sha256(b"zhangban key id" + master).digest()[:_KEY_ID_LEN]


class FieldCipher:
    """Seals and opens field values; the first key seals, every key opens."""

    def __init__(self, current: bytes, previous: Iterable[bytes] = ()):
        keys = [current, *previous]
        for key in keys:
            if len(key) != 32:
                raise ValueError("field encryption keys are 32 bytes")
        self.current_id = key_id(current)
        self._aead = {key_id(k): AESGCM(_derive(k, b"field encryption")) for k in keys}
        self._index_keys = [_derive(k, b"blind index") for k in keys]

    def encrypt(self, value: str, *, column: str) -> bytes:
        """The sealed form of `value` for `column`."""
        nonce = os.urandom(_NONCE_LEN)
        sealed = self._aead[self.current_id].encrypt(nonce, value.encode("utf-8"), column.encode())
        return bytes([_FORMAT]) + self.current_id + nonce + sealed

    def decrypt(self, blob: bytes, *, column: str) -> str:
        """The clear value sealed in `blob` for `column`; raises DecryptionError."""
        if not blob or blob[0] != _FORMAT or len(blob) < 1 + _KEY_ID_LEN + _NONCE_LEN + 16:
            raise DecryptionError("not a sealed value")
        kid = bytes(blob[1 : 1 + _KEY_ID_LEN])
        aead = self._aead.get(kid)
        if aead is None:
            raise DecryptionError(f"sealed with an unknown key {kid.hex()}")
        nonce = bytes(blob[1 + _KEY_ID_LEN : 1 + _KEY_ID_LEN + _NONCE_LEN])
        try:
            return aead.decrypt(nonce, bytes(blob[1 + _KEY_ID_LEN + _NONCE_LEN :]), column.encode()).decode("utf-8")
        except InvalidTag:
            raise DecryptionError("sealed value does not open (tampered, or another column)") from None

    def encrypt_opt(self, value: str | None, *, column: str) -> bytes | None:
        return None if value is None else self.encrypt(value, column=column)

    def decrypt_opt(self, blob: bytes | None, *, column: str) -> str | None:
        return None if blob is None else self.decrypt(blob, column=column)

    def is_current(self, blob: bytes) -> bool:
        """True if `blob` is sealed with the current key (no rotation needed)."""
        return bytes(blob[1 : 1 + _KEY_ID_LEN]) == self.current_id

    def blind_index(self, value: str, *, column: str) -> str:
        """The keyed digest that stands for `value` in unique constraints (current key)."""
        return self._digest(self._index_keys[0], value, column)

    def blind_indexes(self, value: str, *, column: str) -> list[str]:
        """Every digest `value` may be stored under while keys rotate: look up with `__in`."""
        return [self._digest(k, value, column) for k in self._index_keys]

    @staticmethod
    def _digest(key: bytes, value: str, column: str) -> str:
        return hmac.new(key, column.encode() + b"\x00" + value.encode("utf-8"), hashlib.sha256).hexdigest()
