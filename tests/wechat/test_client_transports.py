"""The WeChat client behaves the same on both of its transports (aiohttp, what the services use,
and an httpx client), against the WeChat simulator: 5xx and busy answers retried, a hung call
given up on, and a token WeChat no longer takes replaced, this process's copy included."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import SIM_MP_APPID, SIM_MP_SECRET
from wechat.client import AiohttpSender, WeChatClient, WeChatUnavailable

PHONE_PATH = "/wxa/business/getuserphonenumber"


@pytest.fixture(params=["aiohttp", "httpx"])
async def client(request, redis, keys, wechat_sim):
    if request.param == "aiohttp":
        http = AiohttpSender(timeout_s=0.5)
    else:
        http = httpx.AsyncClient(timeout=0.5)
    yield WeChatClient(
        appid=SIM_MP_APPID,
        secret=SIM_MP_SECRET,
        base_url=wechat_sim.url,
        redis=redis,
        token_key=keys("wechat", "token", SIM_MP_APPID),
        http=http,
        backoff_s=0.01,
    )
    await http.aclose()


def phone_code(wechat_sim, phone: str) -> str:
    openid = wechat_sim.control("users", {"appid": SIM_MP_APPID})["openid"]
    return wechat_sim.control("phone-code", {"appid": SIM_MP_APPID, "openid": openid, "phone": phone})["code"]


def calls(wechat_sim, path: str) -> int:
    return wechat_sim.control("stats")["calls"].get(path, 0)


async def test_a_5xx_and_a_busy_answer_are_retried(client, wechat_sim):
    await client.access_token()
    code = phone_code(wechat_sim, "13500000001")
    wechat_sim.control("fail", {"path": PHONE_PATH, "http_status": 503})
    wechat_sim.control("fail", {"path": PHONE_PATH, "errcode": -1})
    before = calls(wechat_sim, PHONE_PATH)
    assert await client.phone_number(code) == "13500000001"
    assert calls(wechat_sim, PHONE_PATH) - before == 3


async def test_a_call_that_hangs_every_time_is_given_up(client, wechat_sim):
    await client.access_token()
    code = phone_code(wechat_sim, "13500000002")
    wechat_sim.control("fail", {"path": PHONE_PATH, "delay_s": 2, "times": 3})
    with pytest.raises(WeChatUnavailable):
        await client.phone_number(code)


async def test_a_token_wechat_refuses_is_replaced_in_this_process_too(client, wechat_sim):
    old = await client.access_token()
    assert await client.access_token() == old  # this process's copy: no Redis read, same token
    wechat_sim.control("tokens/expire", {"appid": SIM_MP_APPID})
    issued = wechat_sim.control("stats")["tokens_issued"].get(SIM_MP_APPID, 0)
    code = phone_code(wechat_sim, "13500000003")
    assert await client.phone_number(code) == "13500000003"  # 40001, token dropped, fetched, retried
    new = await client.access_token()
    assert new != old
    assert wechat_sim.control("stats")["tokens_issued"].get(SIM_MP_APPID, 0) == issued + 1
