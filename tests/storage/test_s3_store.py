"""S3FileStore against a real S3-speaking server: moto's server mode, in-process on a free port."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets

import boto3
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

from storage.s3 import S3FileStore
from tests.conftest import free_port

REGION = "eu-west-1"  # not us-east-1, so bucket creation sends a LocationConstraint
PREFIX = "materials/"


def _name() -> str:
    return hashlib.sha256(os.urandom(16)).hexdigest()  # shaped like FileSealer.object_name


@pytest.fixture(scope="module")
def s3_server():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    creds = {"access_key_id": "testing" + secrets.token_hex(4), "secret_access_key": secrets.token_hex(20)}
    try:
        yield {"endpoint_url": f"http://127.0.0.1:{port}", **creds}
    finally:
        server.stop()


@pytest.fixture(scope="module")
def bucket() -> str:
    return "zhangban-test-" + secrets.token_hex(4)


@pytest.fixture(scope="module")
def raw_client(s3_server):
    """A plain boto3 client, to look at the bucket without going through the store."""
    client = boto3.client(
        "s3",
        endpoint_url=s3_server["endpoint_url"],
        region_name=REGION,
        aws_access_key_id=s3_server["access_key_id"],
        aws_secret_access_key=s3_server["secret_access_key"],
        config=Config(s3={"addressing_style": "path"}),
    )
    yield client
    client.close()


def _make_store(s3_server, bucket: str) -> S3FileStore:
    return S3FileStore(
        bucket=bucket,
        endpoint_url=s3_server["endpoint_url"],
        region=REGION,
        access_key_id=s3_server["access_key_id"],
        secret_access_key=s3_server["secret_access_key"],
        prefix=PREFIX,
    )


@pytest.fixture(scope="module")
async def store(s3_server, bucket):
    store = _make_store(s3_server, bucket)
    await store.ensure_bucket()
    yield store
    await store.close()


async def test_ensure_bucket_creates_once_and_is_idempotent(s3_server, raw_client):
    name = "zhangban-fresh-" + secrets.token_hex(4)
    fresh = _make_store(s3_server, name)
    try:
        await fresh.ensure_bucket()
        await fresh.ensure_bucket()  # second start: bucket already there
        buckets = [b["Name"] for b in raw_client.list_buckets()["Buckets"]]
        assert buckets.count(name) == 1
        assert raw_client.get_bucket_location(Bucket=name)["LocationConstraint"] == REGION
    finally:
        await fresh.close()


@pytest.mark.parametrize("size", [0, 1, 4096, 5 * 1024 * 1024])
async def test_round_trip(store, size):
    name, data = _name(), os.urandom(size)
    await store.put(name, data)
    assert await store.get(name) == data


async def test_overwrite_replaces(store):
    name = _name()
    await store.put(name, b"first")
    await store.put(name, b"second")
    assert await store.get(name) == b"second"


async def test_exists_before_and_after(store):
    name = _name()
    assert await store.exists(name) is False
    await store.put(name, os.urandom(100))
    assert await store.exists(name) is True
    await store.delete(name)
    assert await store.exists(name) is False


async def test_delete_is_idempotent(store):
    name = _name()
    await store.delete(name)  # never existed
    await store.put(name, b"x")
    await store.delete(name)
    await store.delete(name)  # already gone
    assert await store.exists(name) is False
    with pytest.raises(FileNotFoundError):
        await store.get(name)


async def test_get_missing_raises_file_not_found(store):
    with pytest.raises(FileNotFoundError):
        await store.get(_name())


@pytest.mark.parametrize("bad", ["", "../etc", "a/b", "a b", "abc.def", "x-y", "名字", "ab\x00cd", "%2e%2e"])
async def test_bad_names_rejected(store, raw_client, bucket, bad):
    with pytest.raises(ValueError):
        await store.put(bad, b"data")
    with pytest.raises(ValueError):
        await store.get(bad)
    with pytest.raises(ValueError):
        await store.delete(bad)
    with pytest.raises(ValueError):
        await store.exists(bad)
    keys = [o["Key"] for o in raw_client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert all(k.startswith(PREFIX) and k[len(PREFIX) :].isalnum() for k in keys)


async def test_concurrent_puts_and_gets(store):
    items = {_name(): os.urandom(secrets.randbelow(256 * 1024) + 1) for _ in range(20)}
    await asyncio.gather(*(store.put(n, d) for n, d in items.items()))
    got = await asyncio.gather(*(store.get(n) for n in items))
    assert got == list(items.values())
    # mixed: re-put half while reading the other half
    names = list(items)
    new = {n: os.urandom(1024) for n in names[:10]}
    results = await asyncio.gather(
        *(store.put(n, d) for n, d in new.items()),
        *(store.get(n) for n in names[10:]),
    )
    assert results[10:] == [items[n] for n in names[10:]]
    assert await asyncio.gather(*(store.get(n) for n in names[:10])) == list(new.values())
    assert all(await asyncio.gather(*(store.exists(n) for n in names)))


async def test_stored_bytes_are_exactly_what_was_put(store, raw_client, bucket):
    name, data = _name(), os.urandom(1024 * 1024 + 7)
    await store.put(name, data)
    obj = raw_client.get_object(Bucket=bucket, Key=PREFIX + name)
    assert obj["Body"].read() == data
    assert obj["ContentLength"] == len(data)
    head = raw_client.head_object(Bucket=bucket, Key=PREFIX + name)
    assert head["ContentType"] == "application/octet-stream"
    assert "ServerSideEncryption" not in head
    assert head.get("ContentEncoding") in (None, "")
    assert head["ETag"].strip('"') == hashlib.md5(data).hexdigest()  # single PutObject, untransformed


async def test_object_written_outside_store_is_read_back(store, raw_client, bucket):
    name, data = _name(), os.urandom(333)
    raw_client.put_object(Bucket=bucket, Key=PREFIX + name, Body=data)
    assert await store.exists(name)
    assert await store.get(name) == data
    assert not await store.exists(name[:-1])  # no prefix matching


async def test_event_loop_is_not_blocked(store):
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    try:
        name, data = _name(), os.urandom(5 * 1024 * 1024)
        await store.put(name, data)
        assert await store.get(name) == data
    finally:
        task.cancel()
    assert ticks >= 3


async def test_closed_store_refuses_work(s3_server, bucket):
    other = _make_store(s3_server, bucket)
    await other.close()
    await other.close()  # idempotent
    with pytest.raises(RuntimeError):
        await other.get(_name())
