"""Identity over real HTTP, against the WeChat simulator running as its own server."""

from __future__ import annotations

import asyncio
import random
import secrets
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import SIM_MP_APPID, make_server
from tests.helpers import (
    auth,
    id_number,
    login,
    to_l3,
)


def test_happy_path_to_l3(server, wechat_sim):
    number = id_number()
    tokens, openid = login(server, wechat_sim)
    assert tokens["user"]["identity_level"] == "L1"
    assert tokens["expires_in"] > 0 and "session_key" not in str(tokens)
    with server.client(headers=auth(tokens)) as c:
        declared = c.post(
            "/api/v1/identity/declare", json={"name": "张三丰", "id_number": number[:-1] + number[-1].lower()}
        )
        assert declared.status_code == 200, declared.text
        assert declared.json() == {"identity_level": "L2"}
        start = c.post("/api/v1/identity/face/start")
        assert start.status_code == 200, start.text
        verify_id = start.json()["verify_id"]
        assert start.json()["expires_in"] > 0
        wechat_sim.control("face/complete", {"verify_id": verify_id, "verify_ret": 10000})
        finished = c.post("/api/v1/identity/face/finish", json={"verify_id": verify_id})
        assert finished.status_code == 200, finished.text
        assert finished.json() == {"identity_level": "L3"}
        me = c.get("/api/v1/me").json()
    assert me["identity_level"] == "L3" and me["face_verified"] is True
    assert me["name_masked"] == "张**"
    assert me["id_number_masked"] == number[:4] + "*" * 10 + number[-4:].upper()
    # The same person logging in again is the same user at the same level.
    again, _ = login(server, wechat_sim, openid)
    assert again["user"] == {"id": tokens["user"]["id"], "identity_level": "L3"}


def test_reused_code_is_a_clear_error_and_creates_no_user(server, wechat_sim):
    code, openid = wechat_sim.login_code()
    # Someone else used the code first (as a replayed request would).
    first = httpx.get(
        wechat_sim.url + "/sns/jscode2session",
        params={
            "appid": SIM_MP_APPID,
            "secret": "sim_mp_secret_0123456789abcdef",
            "js_code": code,
            "grant_type": "authorization_code",
        },
    )
    assert first.json()["openid"] == openid
    response = httpx.post(server.url + "/api/v1/auth/login", json={"code": code})
    assert response.status_code == 400
    assert response.json()["code"] == "wechat_code_used"
    assert "重新进入小程序" in response.json()["message"]
    assert server.database.query(f"SELECT count(*) FROM users WHERE openid = '{openid}'") == [(0,)]
    bogus = httpx.post(server.url + "/api/v1/auth/login", json={"code": "never-issued"})
    assert bogus.status_code == 400 and bogus.json()["code"] == "wechat_code_invalid"


def test_every_api_route_needs_a_bearer_token(client):
    for method, path in [
        ("GET", "/api/v1/me"),
        ("POST", "/api/v1/identity/face/start"),
        ("POST", "/api/v1/auth/logout"),
    ]:
        response = client.request(method, path)
        assert response.status_code == 401 and response.json()["code"] == "unauthenticated"
        bad = client.request(method, path, headers={"Authorization": "Bearer not-a-token"})
        assert bad.status_code == 401


@pytest.fixture(scope="module")
def short_token_server(tmp_path_factory, databases, wechat_sim):
    srv, _ = make_server(tmp_path_factory, databases, wechat_sim, "shorttoken", ACCESS_TOKEN_TTL="1")
    yield srv
    srv.stop()


def test_expired_access_token_then_refresh(short_token_server, wechat_sim):
    import time

    tokens, _ = login(short_token_server, wechat_sim)
    with short_token_server.client() as c:
        assert c.get("/api/v1/me", headers=auth(tokens)).status_code == 200
        time.sleep(1.5)
        expired = c.get("/api/v1/me", headers=auth(tokens))
        assert expired.status_code == 401 and expired.json()["code"] == "unauthenticated"
        renewed = c.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert renewed.status_code == 200
        fresh = renewed.json()
        assert fresh["refresh_token"] != tokens["refresh_token"]
        assert c.get("/api/v1/me", headers=auth(fresh)).status_code == 200


def test_refresh_token_reuse_revokes_the_family(server, wechat_sim):
    tokens, _ = login(server, wechat_sim)
    with server.client() as c:
        second = c.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).json()
        assert c.get("/api/v1/me", headers=auth(second)).status_code == 200
        replay = c.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert replay.status_code == 401 and replay.json()["code"] == "token_reused"
        # Everything of that login is gone, the newest tokens included.
        assert c.get("/api/v1/me", headers=auth(second)).status_code == 401
        again = c.post("/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
        assert again.status_code == 401 and again.json()["code"] == "token_reused"


def test_concurrent_refresh_with_one_token_yields_one_pair(server, wechat_sim):
    tokens, _ = login(server, wechat_sim)

    def refresh(_):
        return httpx.post(
            server.url + "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
        ).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(refresh, range(8)))
    assert codes.count(200) <= 1 and all(c in (200, 401) for c in codes)


def test_logout_revokes(server, wechat_sim):
    tokens, _ = login(server, wechat_sim)
    with server.client(headers=auth(tokens)) as c:
        assert c.post("/api/v1/auth/logout").status_code == 204
        assert c.get("/api/v1/me").status_code == 401
    refresh = httpx.post(server.url + "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refresh.status_code == 401


@pytest.mark.parametrize(
    ("number", "message"),
    [
        (lambda n: n[:-1] + ("0" if n[-1] != "0" else "1"), "校验位错误"),
        (lambda n: n[:10] + "0231" + n[14:], "出生日期无效"),
        (lambda n: "99" + n[2:], "地区码不存在"),
        (lambda n: n[:-1], "应为18位"),
        (lambda n: n[:5] + "A" + n[6:], "前17位应为数字"),
    ],
    ids=["check-digit", "date", "region", "length", "letters"],
)
def test_invalid_id_numbers(server, wechat_sim, number, message):
    tokens, _ = login(server, wechat_sim)
    bad = number(id_number())
    response = httpx.post(
        server.url + "/api/v1/identity/declare", json={"name": "李四", "id_number": bad}, headers=auth(tokens)
    )
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "invalid_id_number"
    assert message in body["details"]["fields"]["id_number"]
    assert bad not in response.text


def test_invalid_name(server, wechat_sim):
    tokens, _ = login(server, wechat_sim)
    response = httpx.post(
        server.url + "/api/v1/identity/declare", json={"name": "张3", "id_number": id_number()}, headers=auth(tokens)
    )
    assert response.status_code == 422 and response.json()["code"] == "invalid_name"


def test_identity_taken_and_transfer_by_face_check(server, wechat_sim):
    number = id_number(birth="19851111")
    first = to_l3(server, wechat_sim, "王五", number)
    second, _ = login(server, wechat_sim)
    with server.client(headers=auth(second)) as c:
        taken = c.post("/api/v1/identity/declare", json={"name": "王五", "id_number": number})
        assert taken.status_code == 409 and taken.json()["code"] == "identity_taken"
        moving = c.post("/api/v1/identity/declare", json={"name": "王五", "id_number": number, "transfer": True})
        assert moving.json() == {"identity_level": "L1"}
        verify_id = c.post("/api/v1/identity/face/start").json()["verify_id"]
        wechat_sim.control("face/complete", {"verify_id": verify_id, "verify_ret": 10000})
        assert c.post("/api/v1/identity/face/finish", json={"verify_id": verify_id}).json() == {"identity_level": "L3"}
    old = httpx.get(server.url + "/api/v1/me", headers=auth(first)).json()
    assert old["identity_level"] == "L1"


@pytest.mark.parametrize(("verify_ret", "reason"), [(90002, "取消"), (90008, "相机"), (90017, "超时")])
def test_face_failure_codes(server, wechat_sim, verify_ret, reason):
    tokens, _ = login(server, wechat_sim)
    with server.client(headers=auth(tokens)) as c:
        c.post("/api/v1/identity/declare", json={"name": "赵六", "id_number": id_number()})
        verify_id = c.post("/api/v1/identity/face/start").json()["verify_id"]
        wechat_sim.control("face/complete", {"verify_id": verify_id, "verify_ret": verify_ret})
        failed = c.post("/api/v1/identity/face/finish", json={"verify_id": verify_id})
        assert failed.status_code == 422
        assert failed.json()["code"] == "face_verify_failed" and reason in failed.json()["message"]
        assert failed.json()["details"]["verify_ret"] == verify_ret
        assert c.get("/api/v1/me").json()["identity_level"] == "L2"
        # A verify_id is used once.
        reused = c.post("/api/v1/identity/face/finish", json={"verify_id": verify_id})
        assert reused.status_code == 409 and reused.json()["code"] == "verify_id_used"


def test_cannot_use_another_users_verify_id(server, wechat_sim):
    owner, _ = login(server, wechat_sim)
    thief, _ = login(server, wechat_sim)
    number = id_number()
    with server.client(headers=auth(owner)) as c:
        c.post("/api/v1/identity/declare", json={"name": "钱七", "id_number": number})
        verify_id = c.post("/api/v1/identity/face/start").json()["verify_id"]
    wechat_sim.control("face/complete", {"verify_id": verify_id, "verify_ret": 10000})
    with server.client(headers=auth(thief)) as c:
        c.post("/api/v1/identity/declare", json={"name": "孙八", "id_number": id_number()})
        stolen = c.post("/api/v1/identity/face/finish", json={"verify_id": verify_id})
        assert stolen.status_code == 404 and stolen.json()["code"] == "verify_id_not_found"
        assert c.get("/api/v1/me").json()["identity_level"] == "L2"
    with server.client(headers=auth(owner)) as c:
        assert c.post("/api/v1/identity/face/finish", json={"verify_id": verify_id}).json() == {"identity_level": "L3"}


def test_phone_and_addresses(server, wechat_sim):
    tokens, openid = login(server, wechat_sim)
    phone = f"139{random.randint(10000000, 99999999)}"
    code = wechat_sim.control("phone-code", {"appid": SIM_MP_APPID, "openid": openid, "phone": phone})["code"]
    with server.client(headers=auth(tokens)) as c:
        bound = c.post("/api/v1/me/phone", json={"code": code})
        assert bound.status_code == 200, bound.text
        assert bound.json() == {"phone_masked": phone[:3] + "****" + phone[-4:]}
        bad = c.post(
            "/api/v1/me/addresses", json={"recipient": "1", "phone": "123", "region_code": "990000", "detail": "x"}
        )
        assert bad.status_code == 422 and set(bad.json()["details"]["fields"]) == {
            "recipient",
            "phone",
            "region_code",
            "detail",
        }
        added = c.post(
            "/api/v1/me/addresses",
            json={"recipient": "周九", "phone": phone, "region_code": "510502", "detail": "江阳区酒城大道三段18号"},
        )
        assert added.status_code == 201, added.text
        address = added.json()
        assert address["is_default"] and address["recipient_masked"] == "周*" and phone not in added.text
        changed = c.put(
            f"/api/v1/me/addresses/{address['id']}",
            json={"recipient": "周九", "phone": phone, "region_code": "510502", "detail": "江阳区酒城大道三段20号"},
        )
        assert changed.json()["detail"].endswith("20号")
        me = c.get("/api/v1/me").json()
        assert me["phone_masked"] == phone[:3] + "****" + phone[-4:] and len(me["addresses"]) == 1
    other, _ = login(server, wechat_sim)
    with server.client(headers=auth(other)) as c:
        assert c.delete(f"/api/v1/me/addresses/{address['id']}").status_code == 404
    with server.client(headers=auth(tokens)) as c:
        assert c.delete(f"/api/v1/me/addresses/{address['id']}").status_code == 204
        assert c.get("/api/v1/me/addresses").json() == {"items": []}


def test_declare_is_rate_limited(server, wechat_sim):
    tokens, _ = login(server, wechat_sim)
    with server.client(headers=auth(tokens)) as c:
        codes = [c.post("/api/v1/identity/declare", json={"name": "吴十", "id_number": id_number()}) for _ in range(11)]
    assert [r.status_code for r in codes[:10]] == [200] * 10
    assert codes[10].status_code == 429 and codes[10].json()["code"] == "rate_limited"
    assert int(codes[10].headers["retry-after"]) > 0


def test_database_holds_no_clear_personal_data(server, wechat_sim):
    number = id_number(birth="19771203")
    tokens = to_l3(server, wechat_sim, "郑十一", number)
    rows = server.database.query(f"SELECT * FROM users WHERE id = {tokens['user']['id']}")
    raw = repr(rows).encode() + b"".join(bytes(v) for v in rows[0] if isinstance(v, (bytes, memoryview)))
    assert number.encode() not in raw and "郑十一".encode() not in raw
    assert number[-8:].encode() not in raw


def test_log_of_a_full_journey_holds_no_clear_id_or_phone(server, wechat_sim):
    number = id_number(birth="19660606")
    tokens, openid = login(server, wechat_sim)
    phone = f"137{random.randint(10000000, 99999999)}"
    with server.client(headers=auth(tokens)) as c:
        c.post("/api/v1/identity/declare", json={"name": "冯十二", "id_number": number})
        c.post(
            "/api/v1/identity/declare",
            json={"name": "冯十二", "id_number": number[:-1] + "0" if number[-1] != "0" else number[:-1] + "1"},
        )
        c.post("/api/v1/identity/declare", json={"name": "冯十二", "id_number": number})
        verify_id = c.post("/api/v1/identity/face/start").json()["verify_id"]
        wechat_sim.control("face/complete", {"verify_id": verify_id, "verify_ret": 10000})
        c.post("/api/v1/identity/face/finish", json={"verify_id": verify_id})
        code = wechat_sim.control("phone-code", {"appid": SIM_MP_APPID, "openid": openid, "phone": phone})["code"]
        c.post("/api/v1/me/phone", json={"code": code})
        c.get(f"/api/v1/me?debug={number}&p={phone}")
    log = server.log()
    assert number not in log and number[:-1] not in log and phone not in log
    assert tokens["access_token"] not in log and tokens["refresh_token"] not in log


@pytest.mark.slow
def test_token_refresh_storm_fetches_one_token(server, wechat_sim):
    """50 concurrent calls on an expired token, from 3 'processes' sharing Redis: one refresh."""
    from core.settings import load_settings
    from storage.redis import create_redis
    from tests.conftest import SIM_MP_SECRET, TEST_REDIS_URL
    from wechat.client import WeChatClient

    async def storm() -> int:
        if TEST_REDIS_URL:
            settings = load_settings(REDIS_URL=TEST_REDIS_URL, SECRET_KEY="s" * 40, FIELD_ENCRYPTION_KEY="q" * 43 + "=")
        else:
            settings = load_settings(REDIS_URL=None)
        redis = create_redis(settings)
        key = f"zbt-storm-{secrets.token_hex(4)}"
        async with httpx.AsyncClient() as http:
            clients = [
                WeChatClient(
                    appid=SIM_MP_APPID,
                    secret=SIM_MP_SECRET,
                    base_url=wechat_sim.url,
                    redis=redis,
                    token_key=key,
                    http=http,
                )
                for _ in range(3)
            ]
            token = await clients[0].access_token()
            wechat_sim.control("tokens/expire", {"appid": SIM_MP_APPID})
            before = wechat_sim.control("stats")["tokens_issued"].get(SIM_MP_APPID, 0)
            openid = wechat_sim.control("users", {"appid": SIM_MP_APPID})["openid"]

            codes = [
                wechat_sim.control("phone-code", {"appid": SIM_MP_APPID, "openid": openid, "phone": f"135{i:08d}"})[
                    "code"
                ]
                for i in range(50)
            ]
            results = await asyncio.gather(*(clients[i % 3].phone_number(code) for i, code in enumerate(codes)))
            assert sorted(results) == sorted(f"135{i:08d}" for i in range(50))
            after = wechat_sim.control("stats")["tokens_issued"].get(SIM_MP_APPID, 0)
            assert await clients[1].access_token() != token
            await redis.delete(key)
            await redis.aclose()
            return after - before

    assert asyncio.run(storm()) == 1


@pytest.mark.slow
def test_login_is_rate_limited_per_ip(tmp_path_factory, databases, wechat_sim):
    srv, _ = make_server(tmp_path_factory, databases, wechat_sim, "loginlimit", RATE_LIMITS="login.ip=3/minute")
    try:
        statuses = []
        for _ in range(4):
            code, _openid = wechat_sim.login_code()
            statuses.append(httpx.post(srv.url + "/api/v1/auth/login", json={"code": code}))
        assert [r.status_code for r in statuses[:3]] == [200, 200, 200]
        assert statuses[3].status_code == 429 and statuses[3].json()["code"] == "rate_limited"
        assert 0 < int(statuses[3].headers["retry-after"]) <= 60
    finally:
        srv.stop()
