"""`FileStore` on an S3-compatible object store (AWS S3, MinIO, Ceph RGW, ...).

Use it instead of `LocalFileStore` when the application runs on more than one host, or when
material files must live outside the server's disk. The bytes it is given are already sealed
client-side by `FileSealer` (AES-GCM, per-file keys), so they are stored exactly as given: no
server-side encryption is requested and nothing is transformed. Objects are `<prefix><name>`.

boto3 is synchronous; every call runs in this store's own bounded thread pool so the event loop
is never blocked and S3 traffic cannot starve the loop's default executor.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

T = TypeVar("T")

_MAX_WORKERS = 8
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_NO_BUCKET = {"404", "NoSuchBucket", "NotFound"}


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _http_status(error: ClientError) -> int | None:
    return error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


class S3FileStore:
    """Objects as `<prefix><name>` in one bucket; the four `FileStore` methods plus setup and close."""

    def __init__(
        self,
        *,
        bucket: str,
        endpoint_url: str | None,
        region: str,
        access_key_id: str,
        secret_access_key: str,
        prefix: str = "materials/",
    ):
        if not bucket:
            raise ValueError("bucket is required")
        if prefix.startswith("/"):
            raise ValueError("prefix must not start with '/'")
        self.bucket = bucket
        self.prefix = prefix
        self.region = region
        config = Config(
            region_name=region,
            signature_version="s3v4",
            s3={"addressing_style": "path"},  # S3-compatible stores rarely have per-bucket DNS
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=3,
            read_timeout=20,
            max_pool_connections=16,
            # botocore >= 1.36 adds CRC checksums (aws-chunked trailers) to every upload, which
            # older MinIO/Ceph reject; send them only where required and give Content-MD5 ourselves.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = boto3.session.Session(
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            region_name=region,
        )
        self._client = session.client("s3", endpoint_url=endpoint_url, config=config)
        self._executor = ThreadPoolExecutor(max_workers=_MAX_WORKERS, thread_name_prefix="s3store")
        self._closed = False

    # -- helpers ---------------------------------------------------------------------------------

    def _key(self, name: str) -> str:
        if not (isinstance(name, str) and name.isascii() and name.isalnum()):
            raise ValueError("object names are alphanumeric")
        return self.prefix + name

    async def _run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        if self._closed:
            raise RuntimeError("S3FileStore is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    # -- FileStore -------------------------------------------------------------------------------

    async def put(self, name: str, data: bytes) -> None:
        key = self._key(name)
        body = data if isinstance(data, bytes) else bytes(data)
        md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
        await self._run(
            self._client.put_object,
            Bucket=self.bucket,
            Key=key,
            Body=body,
            ContentType="application/octet-stream",
            ContentMD5=md5,  # the store rejects a body damaged in transit
        )

    async def get(self, name: str) -> bytes:
        return await self._run(self._get, self._key(name), name)

    def _get(self, key: str, name: str) -> bytes:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if _error_code(error) in _NOT_FOUND:
                raise FileNotFoundError(name) from None
            raise
        body = response["Body"]
        try:
            return body.read()
        finally:
            body.close()

    async def delete(self, name: str) -> None:
        await self._run(self._delete, self._key(name))

    def _delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if _error_code(error) not in _NOT_FOUND:  # S3 answers 204 anyway; some stores 404
                raise

    async def exists(self, name: str) -> bool:
        return await self._run(self._exists, self._key(name))

    def _exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if _http_status(error) == 404 or _error_code(error) in _NOT_FOUND:
                return False
            raise
        return True

    # -- lifecycle -------------------------------------------------------------------------------

    async def ensure_bucket(self) -> None:
        """Creates the bucket if it does not exist yet (first start); harmless if it does."""
        await self._run(self._ensure_bucket)

    def _ensure_bucket(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as error:
            if not (_http_status(error) == 404 or _error_code(error) in _NO_BUCKET):
                raise
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.region and self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._client.create_bucket(**kwargs)
        except ClientError as error:
            # Another instance created it meanwhile. (BucketAlreadyExists = someone else's: raise.)
            if _error_code(error) != "BucketAlreadyOwnedByYou":
                raise

    async def close(self) -> None:
        """Waits for calls in flight, then releases the threads and connections. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._executor.shutdown, True)
        self._client.close()
