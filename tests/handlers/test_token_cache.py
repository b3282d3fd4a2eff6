"""Tokens resolved from memory (issue 16): what makes a kept token go. The stores here keep a
token for an hour, so only an announcement or a save, never the short life of an entry, can
make them look it up again; two stores stand for two processes sharing one Redis."""

from __future__ import annotations

import asyncio
import time

import pytest

from core.errors import Unauthenticated
from handlers.auth import TokenStore, account_changed
from storage.models import IdentityLevel, User
from tests.factories import create_user

HOUR = 3600.0


async def _refused_within_a_second(store: TokenStore, token: str) -> Unauthenticated:
    announced = time.monotonic()
    while True:
        try:
            await store.signed_in(token)
        except Unauthenticated as refused:
            return refused
        assert time.monotonic() - announced < 1.0, "the revocation did not reach the other process"
        await asyncio.sleep(0.02)


async def test_a_revocation_in_one_process_drops_the_token_another_kept(db, redis, keys):
    issuer = TokenStore(redis=redis, keys=keys, cache_ttl_s=HOUR)
    other = TokenStore(redis=redis, keys=keys, cache_ttl_s=HOUR)
    listening = asyncio.get_running_loop().create_task(other.listen())
    try:
        user = await create_user()
        pair = await issuer.issue(user)
        principal, seen = await other.signed_in(pair.access_token)
        assert seen.id == user.id
        await asyncio.sleep(0.2)  # the listener has subscribed (it forgets everything when it does)
        await other.signed_in(pair.access_token)  # kept again
        await issuer.revoke_family(principal.family)
        refused = await _refused_within_a_second(other, pair.access_token)
        assert refused.code == "unauthenticated"
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)


async def test_a_saved_account_is_read_again_and_each_request_gets_its_own_copy(db, redis, keys):
    store = TokenStore(redis=redis, keys=keys, cache_ttl_s=HOUR)
    user = await create_user()
    pair = await store.issue(user)
    _, first = await store.signed_in(pair.access_token)
    first.identity_level = IdentityLevel.L3  # a request changing its copy, not saving it
    _, second = await store.signed_in(pair.access_token)
    assert second.identity_level == IdentityLevel.L1 and second is not first
    second.identity_level = IdentityLevel.L2
    await second.save(update_fields=["identity_level", "updated_at"])
    _, third = await store.signed_in(pair.access_token)
    assert third.identity_level == IdentityLevel.L2
    # A bulk update says so itself.
    await User.filter(id=user.id).update(is_active=False)
    await account_changed(user.id)
    with pytest.raises(Unauthenticated) as refused:
        await store.signed_in(pair.access_token)
    assert refused.value.code == "account_disabled"
