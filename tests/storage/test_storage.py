"""The Redis module: the same API, Lua included, on fakeredis and on real Redis."""

from __future__ import annotations

import secrets

import pytest

from core.settings import load_settings
from storage.redis import Keys, create_redis
from tests.conftest import TEST_REDIS_URL

# Check-and-set in one atomic step: the kind of script later issues rely on (replay guards).
SET_IF_ABSENT_AND_COUNT = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', 60) then
  return redis.call('INCR', KEYS[2])
end
return -1
"""


def _settings(kind: str, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    if kind == "redis":
        return load_settings(REDIS_URL=TEST_REDIS_URL, SECRET_KEY="s" * 40, FIELD_ENCRYPTION_KEY="q" * 43 + "=")
    return load_settings(REDIS_URL=None)


@pytest.mark.parametrize("kind", ["fakeredis", pytest.param("redis", marks=pytest.mark.production)])
async def test_lua_scripts_run(kind, monkeypatch, tmp_path):
    settings = _settings(kind, monkeypatch, tmp_path)
    redis = create_redis(settings)
    keys = Keys(f"zbt{secrets.token_hex(4)}:")
    try:
        script = redis.register_script(SET_IF_ABSENT_AND_COUNT)
        first = await script(keys=[keys("guard", "a"), keys("count")], args=["1"])
        again = await script(keys=[keys("guard", "a"), keys("count")], args=["1"])
        other = await script(keys=[keys("guard", "b"), keys("count")], args=["1"])
        assert (first, again, other) == (1, -1, 2)
        assert 0 < await redis.ttl(keys("guard", "a")) <= 60
    finally:
        await redis.delete(keys("guard", "a"), keys("guard", "b"), keys("count"))
        await redis.aclose()


def test_keys_are_namespaced():
    assert Keys("zb:")("console", "session", "abc") == "zb:console:session:abc"
