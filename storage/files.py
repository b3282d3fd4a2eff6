"""Encrypted file storage: every file sealed with its own key, the key wrapped by the master key.

Objects are named by a keyed digest of their owner and content, so a file uploaded twice by
the same citizen is stored once, and no name can be guessed or derived from the content alone.
`LocalFileStore` keeps objects under MEDIA_ROOT; any store with the same four methods (an
S3-compatible one in production) can take its place.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from storage.crypto import DecryptionError, key_id

_NONCE = 12


class FileStore(Protocol):
    async def put(self, name: str, data: bytes) -> None: ...
    async def get(self, name: str) -> bytes: ...
    async def delete(self, name: str) -> None: ...
    async def exists(self, name: str) -> bool: ...


class LocalFileStore:
    """Objects as files under `root/<2 chars>/<name>`, written atomically (temp file + rename)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _path(self, name: str) -> Path:
        if not (name.isascii() and name.isalnum()):
            raise ValueError("object names are alphanumeric")
        return self.root / name[:2] / name

    async def put(self, name: str, data: bytes) -> None:
        await asyncio.to_thread(self._put, self._path(name), data)

    @staticmethod
    def _put(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}{id(data)}")
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)  # readers see the whole object or nothing

    async def get(self, name: str) -> bytes:
        return await asyncio.to_thread(self._path(name).read_bytes)

    async def delete(self, name: str) -> None:
        await asyncio.to_thread(self._path(name).unlink, True)

    async def exists(self, name: str) -> bool:
        return await asyncio.to_thread(self._path(name).exists)


class FileSealer:
    """Seals file contents with per-file keys wrapped by the master key; names objects."""

    def __init__(self, master: bytes, previous: list[bytes] | tuple = ()):
        self.current_id = key_id(master)
        self._wrap = {key_id(k): AESGCM(self._derive(k, b"file key wrap")) for k in [master, *previous]}
        self._naming = self._derive(master, b"object names")

    @staticmethod
    def _derive(master: bytes, purpose: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"zhangban " + purpose).derive(master)

    def object_name(self, owner: str, content_sha256: str, variant: str = "file") -> str:
        """The unguessable name of an owner's object."""
        return hmac.new(self._naming, f"{owner}:{content_sha256}:{variant}".encode(), hashlib.sha256).hexdigest()

    def seal(self, data: bytes) -> tuple[bytes, bytes]:
        """(sealed bytes, wrapped file key)."""
        file_key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(_NONCE)
        sealed = nonce + AESGCM(file_key).encrypt(nonce, data, None)
        wrap_nonce = os.urandom(_NONCE)
        wrapped = self.current_id + wrap_nonce + self._wrap[self.current_id].encrypt(wrap_nonce, file_key, b"file key")
        return sealed, wrapped

    def open(self, sealed: bytes, wrapped: bytes) -> bytes:
        """The clear bytes of a sealed file; raises DecryptionError if anything does not match."""
        wrap = self._wrap.get(bytes(wrapped[:4]))
        if wrap is None:
            raise DecryptionError("file key wrapped by an unknown master key")
        try:
            file_key = wrap.decrypt(bytes(wrapped[4:16]), bytes(wrapped[16:]), b"file key")
            return AESGCM(file_key).decrypt(sealed[:_NONCE], sealed[_NONCE:], None)
        except Exception:
            raise DecryptionError("sealed file does not open") from None


def create_file_store(settings) -> FileStore:
    """The S3-compatible store when S3_BUCKET is set, else the local directory MEDIA_ROOT."""
    if settings.S3_BUCKET:
        # Imported only when configured: boto3 takes about half a second to import.
        from storage.s3 import S3FileStore

        return S3FileStore(
            bucket=settings.S3_BUCKET,
            endpoint_url=settings.S3_ENDPOINT_URL,
            region=settings.S3_REGION,
            access_key_id=settings.S3_ACCESS_KEY_ID,
            secret_access_key=settings.S3_SECRET_ACCESS_KEY,
        )
    return LocalFileStore(settings.MEDIA_ROOT)
