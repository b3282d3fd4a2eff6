"""The official-account bot over real HTTP, with WeChat's side played by an independent implementation."""

from __future__ import annotations

import secrets
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import OA_AES_KEY, OA_TOKEN, SIM_MP_APPID, make_server, run_cli
from tests.helpers import (
    RENEWAL,
    auth,
    id_number,
    login,
    new_draft,
    photo_id,
    renewal_answers,
    to_l3,
)
from tests.oa_pusher import (
    OA_APPID,
    OAPusher,
    event_message,
    location_message,
    new_aes_key,
    text_message,
    voice_message,
)


@pytest.fixture(scope="module", autouse=True)
def catalogue(server):
    assert server.cli("load-demo").returncode == 0


def follower(wechat_sim, unionid: str | None = None) -> str:
    payload = {"appid": OA_APPID, **({"unionid": unionid} if unionid else {})}
    return wechat_sim.control("users", payload)["openid"]


def ask(oa: OAPusher, openid: str, text: str) -> str | None:
    return oa.reply_text(oa.post(text_message(openid, text)))


def test_url_verification(server, oa):
    params = oa.params()
    ok = httpx.get(server.url + "/wechat/oa", params={**params, "echostr": "4913742689"})
    assert ok.status_code == 200 and ok.text == "4913742689"
    bad = httpx.get(server.url + "/wechat/oa", params={**params, "signature": "0" * 40, "echostr": "x"})
    assert bad.status_code == 403


def test_encrypted_round_trip(oa, wechat_sim):
    reply = ask(oa, follower(wechat_sim), "身份证过期了怎么办")
    assert reply is not None and "【居民身份证换领" in reply
    assert "20元" in reply and "承诺时限" in reply and "需准备" in reply


def test_wrong_signature_and_stale_timestamp_are_403(server, oa, wechat_sim):
    openid = follower(wechat_sim)
    assert oa.post(text_message(openid, "你好"), tamper="msg_signature").status_code == 403
    stale = oa.post(text_message(openid, "你好"), timestamp=int(time.time()) - 400)
    assert stale.status_code == 403
    forged = OAPusher(server.url + "/wechat/oa", token="not-the-token", aes_key=OA_AES_KEY)
    assert forged.post(text_message(openid, "你好")).status_code == 403
    other_key = OAPusher(server.url + "/wechat/oa", token=OA_TOKEN, aes_key=new_aes_key())
    assert other_key.post(text_message(openid, "你好")).status_code == 403


def test_xxe_and_billion_laughs_are_400_and_read_nothing(server, oa, tmp_path, wechat_sim):
    secret_file = tmp_path / "secret.txt"
    marker = "TOP-SECRET-" + secrets.token_hex(8)
    secret_file.write_text(marker)
    openid = follower(wechat_sim)
    xxe = (
        f'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file://{secret_file}">]>'
        f"<xml><ToUserName>gh</ToUserName><FromUserName>{openid}</FromUserName><CreateTime>{int(time.time())}</CreateTime>"
        "<MsgType>text</MsgType><Content>&e;</Content><MsgId>1</MsgId></xml>"
    )
    laughs = (
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        + "".join(f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10))
        + f"]><xml><FromUserName>{openid}</FromUserName><MsgType>text</MsgType><Content>&lol9;</Content></xml>"
    )
    # Safe mode only on this server; plain-mode bodies are tried on a compatible-mode server in
    # tests/test_hardening_oa_replay.py.
    for body in (xxe, laughs):
        response = oa.post(body)
        assert response.status_code == 400, response.text
        assert marker not in response.text and response.json()["code"] == "bad_message"
    assert marker not in server.log()


def test_same_message_three_times_concurrently(server, oa, wechat_sim):
    openid = follower(wechat_sim)
    xml = text_message(openid, "咨询 公积金提取后多久能到账？", msg_id=str(secrets.randbelow(10**18)))
    with ThreadPoolExecutor(3) as pool:
        responses = list(pool.map(lambda _: oa.post(xml), range(3)))
    replies = [oa.reply_text(r) for r in responses]
    assert replies[0] and "已受理" in replies[0] and replies.count(replies[0]) == 3
    rows = server.database.query(f"SELECT ticket_no, kind, department FROM tickets WHERE oa_openid = '{openid}'")
    assert len(rows) == 1
    assert rows[0][1] == "consultation" and rows[0][0].startswith("ZX") and rows[0][0] in replies[0]
    assert rows[0][2] == "泸州市住房公积金管理中心"  # routed by the matched service


def test_complaint_is_routed_and_sealed(server, oa, wechat_sim):
    openid = follower(wechat_sim)
    reply = ask(oa, openid, "投诉 驾驶证换证窗口排队两个小时没人办理，电话13812345678")
    assert "投诉已受理" in reply and "泸州市公安局" in reply
    raw = server.database.query(f"SELECT content_enc FROM tickets WHERE oa_openid = '{openid}'")[0][0]
    assert b"13812345678" not in bytes(raw)


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory, databases, wechat_sim):
    srv, _ = make_server(tmp_path_factory, databases, wechat_sim, "slowbot", BOT_DEADLINE_S="0.001")
    assert srv.cli("load-demo").returncode == 0
    yield srv
    srv.stop()


def test_slow_answer_goes_out_as_customer_service_message(slow_server, wechat_sim):
    oa = OAPusher(slow_server.url + "/wechat/oa", token=OA_TOKEN, aes_key=OA_AES_KEY)
    # A first message warms the new server (its first request loads scripts and caches), so
    # what is timed below is the deadline path, not a cold start on a loaded machine.
    assert oa.post(text_message(follower(wechat_sim), "你好")).status_code == 200
    openid = follower(wechat_sim)
    started = time.monotonic()
    response = oa.post(text_message(openid, "驾照到期了怎么换"))
    assert response.status_code == 200 and response.text == "success"
    assert time.monotonic() - started < 4.5
    deadline = time.monotonic() + 10
    sent = []
    while time.monotonic() < deadline and not sent:
        sent = [m for m in wechat_sim.control("messages")["messages"] if m.get("touser") == openid]
        time.sleep(0.1)
    assert sent, "the late answer reached WeChat as a customer-service message"
    assert sent[0]["msgtype"] == "text" and "【机动车驾驶证换证" in sent[0]["content"]["content"]


def test_unlinked_follower_asking_progress_gets_a_login_card(oa, wechat_sim):
    reply = ask(oa, follower(wechat_sim), "查进度")
    assert "需要先登录" in reply and "data-miniprogram-appid" in reply


def test_progress_only_for_the_senders_own_cases(server, oa, wechat_sim):
    unionid = "oU" + uuid.uuid4().hex[:26]
    mp_openid = wechat_sim.control("users", {"appid": SIM_MP_APPID, "unionid": unionid})["openid"]
    tokens, _ = login(server, wechat_sim, mp_openid)
    with server.client(headers=auth(tokens)) as c:
        c.post("/api/v1/identity/declare", json={"name": "蒋十六", "id_number": id_number()})
        verify_id = c.post("/api/v1/identity/face/start").json()["verify_id"]
        wechat_sim.control("face/complete", {"verify_id": verify_id, "verify_ret": 10000})
        c.post("/api/v1/identity/face/finish", json={"verify_id": verify_id})
        draft = new_draft(c, service_code=RENEWAL)
        answers = renewal_answers(photo_id(server, tokens))
        answers["applicant"]["phone"] = "13700001111"
        c.patch(f"/api/v1/drafts/{draft['id']}", json={"version": 1, "data": answers})
        mine = c.post(f"/api/v1/drafts/{draft['id']}/submit", headers={"Idempotency-Key": uuid.uuid4().hex}).json()[
            "case_no"
        ]
    stranger_tokens = to_l3(server, wechat_sim, "沈十七", id_number())
    with server.client(headers=auth(stranger_tokens)) as c:
        draft = new_draft(c, service_code=RENEWAL)
        answers = renewal_answers(photo_id(server, stranger_tokens))
        answers["applicant"]["phone"] = "13700002222"
        c.patch(f"/api/v1/drafts/{draft['id']}", json={"version": 1, "data": answers})
        theirs = c.post(f"/api/v1/drafts/{draft['id']}/submit", headers={"Idempotency-Key": uuid.uuid4().hex}).json()[
            "case_no"
        ]

    oa_openid = follower(wechat_sim, unionid=unionid)
    own = ask(oa, oa_openid, f"{mine}")
    assert mine in own and "居民身份证换领" in own
    listing = ask(oa, oa_openid, "查进度")
    assert mine in listing and theirs not in listing
    someone_elses = ask(oa, oa_openid, theirs)
    unknown_no = theirs[:-6] + "999999"
    unknown = ask(oa, oa_openid, unknown_no)
    assert someone_elses.replace(theirs, "X") == unknown.replace(unknown_no, "X")
    assert "未找到" in someone_elses


EVERYDAY = [
    ("身份证过期了怎么办", "居民身份证换领"),
    ("身份证到期换证要带什么", "居民身份证换领"),
    ("公积金提取要带什么", "公积金提取"),
    ("租房怎么提公积金", "公积金提取"),
    ("驾驶证到期换证", "机动车驾驶证换证"),
    ("驾照过期了", "机动车驾驶证换证"),
    ("社保卡丢了怎么补", "社保卡补办"),
    ("医保卡补办", "社保卡补办"),
    ("老人优待证怎么办", "老年人优待证"),
    ("老年证在哪办", "老年人优待证"),
    ("查一下名下有没有房", "不动产登记信息查询"),
    ("开无房证明", "不动产登记信息查询"),
    ("迁户口要什么材料", "户口迁移"),
    ("买房落户", "户口迁移"),
    ("居住证怎么办理", "居住证办理"),
    ("暂住证", "居住证办理"),
    ("个体户营业执照怎么办", "个体工商户登记"),
    ("开店要办什么执照", "个体工商户登记"),
    ("出生证明怎么办", "出生医学证明"),
    ("新生儿出生医学证明", "出生医学证明"),
]


@pytest.mark.parametrize(("question", "name"), EVERYDAY)
def test_everyday_questions_get_the_right_guide(oa, wechat_sim, question, name):
    reply = ask(oa, follower(wechat_sim), question)
    assert reply.startswith(f"【{name}"), reply


def test_unknown_question_offers_a_consultation(oa, wechat_sim):
    reply = ask(oa, follower(wechat_sim), "今天天气怎么样")
    assert "没有找到" in reply and "咨询" in reply


def test_subscribe_welcome_and_unsubscribe(server, oa, wechat_sim):
    openid = follower(wechat_sim)
    welcome = oa.reply_text(oa.post(event_message(openid, "subscribe", "qrscene_hall1")))
    assert "感谢关注" in welcome and "data-miniprogram-appid" in welcome
    assert oa.post(event_message(openid, "unsubscribe")).text == "success"
    assert server.database.query(f"SELECT subscribed FROM followers WHERE oa_openid = '{openid}'")[0][0] in (0, False)
    clicked = oa.reply_text(oa.post(event_message(openid, "CLICK", "MENU_HALLS")))
    assert "发送您的位置" in clicked


def subscribed(server, openid: str) -> bool:
    return server.database.query(f"SELECT subscribed FROM followers WHERE oa_openid = '{openid}'")[0][0] in (1, True)


def test_a_follower_unsubscribed_behind_the_bots_cache_is_subscribed_again(server, oa, wechat_sim):
    """The bot keeps the follower it just read; a record changed elsewhere must not hide behind it."""
    openid = follower(wechat_sim)
    assert ask(oa, openid, "你好") and subscribed(server, openid)
    # The push worker, told by WeChat that the follower left (43004), marks the record directly.
    server.database.query(f"UPDATE followers SET subscribed = false WHERE oa_openid = '{openid}'")
    assert ask(oa, openid, "公积金怎么取") and not subscribed(server, openid)
    assert "感谢关注" in oa.reply_text(oa.post(event_message(openid, "subscribe")))
    assert subscribed(server, openid)
    assert oa.post(event_message(openid, "unsubscribe", create_time=int(time.time()) + 1)).text == "success"
    assert ask(oa, openid, "你好") and not subscribed(server, openid)
    assert "感谢关注" in oa.reply_text(oa.post(event_message(openid, "subscribe", create_time=int(time.time()) + 2)))
    assert subscribed(server, openid)


def test_a_follower_linked_after_the_bot_read_it_is_answered_as_linked(server, oa, wechat_sim):
    unionid = "oU" + uuid.uuid4().hex[:26]
    oa_openid = follower(wechat_sim, unionid=unionid)
    assert "需要先登录" in ask(oa, oa_openid, "查进度")
    mp_openid = wechat_sim.control("users", {"appid": SIM_MP_APPID, "unionid": unionid})["openid"]
    login(server, wechat_sim, mp_openid)  # the citizen signs in to the mini-program: a user with the unionid
    assert "您还没有办件" in ask(oa, oa_openid, "查进度")


def test_location_gives_the_three_nearest_halls(oa, wechat_sim):
    reply = oa.reply_text(oa.post(location_message(follower(wechat_sim), 28.8890, 105.4270)))
    lines = [line for line in reply.splitlines() if line[:2] in ("1.", "2.", "3.")]
    assert len(lines) == 3 and lines[0].startswith("1. 江阳区政务服务中心")


def test_voice_uses_recognition(oa, wechat_sim):
    reply = oa.reply_text(oa.post(voice_message(follower(wechat_sim), "公积金怎么取")))
    assert reply.startswith("【公积金提取")


@pytest.mark.slow
def test_menu_push_reaches_wechat(server, wechat_sim, tmp_path):
    result = run_cli("menu", "push", env=server.env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    menu = httpx.get(wechat_sim.url + "/__sim__/menu", params={"appid": OA_APPID}).json()
    names = [b["name"] for b in menu["menu"]["button"]] if "menu" in menu else [b["name"] for b in menu["button"]]
    assert names == ["办事指南", "掌上办理", "我的"]


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("大厅几点上班", "周一至周五"),
        ("12345热线", "12345"),
        ("怎么实名认证", "刷脸"),
        ("能用支付宝交钱吗", "支付宝"),
    ],
)
def test_faq_answers(oa, wechat_sim, question, expected):
    assert expected in ask(oa, follower(wechat_sim), question)


def test_outbound_messages_reach_wechat(wechat_sim):
    """Customer-service text, news and mini-program cards, and template messages, as WeChat receives them."""
    import asyncio

    from core.settings import load_settings
    from storage.redis import create_redis
    from tests.oa_pusher import OA_SECRET
    from wechat.client import OfficialAccountAPI, WeChatClient

    openid = follower(wechat_sim)

    async def send() -> str:
        redis = create_redis(load_settings(REDIS_URL=None))
        async with httpx.AsyncClient() as http:
            oa_api = OfficialAccountAPI(
                WeChatClient(
                    appid=OA_APPID,
                    secret=OA_SECRET,
                    base_url=wechat_sim.url,
                    redis=redis,
                    token_key=f"zbt-oa-{secrets.token_hex(4)}",
                    http=http,
                )
            )
            await oa_api.send_text(openid, "您的办件已受理")
            await oa_api.send_news(
                openid,
                [
                    {
                        "title": "办事指南",
                        "description": "居民身份证换领",
                        "url": "https://example.gov.cn/g",
                        "picurl": "https://example.gov.cn/p.png",
                    }
                ],
            )
            await oa_api.send_miniprogram_page(
                openid, title="掌办", appid=SIM_MP_APPID, pagepath="pages/index/index", thumb_media_id="MEDIA_ID"
            )
            msgid = await oa_api.send_template(
                openid,
                "TPL_PROGRESS",
                {"first": {"value": "办件进度"}},
                miniprogram={"appid": SIM_MP_APPID, "pagepath": "pages/case/index"},
            )
            await redis.aclose()
            return msgid

    msgid = asyncio.run(send())
    sent = [m for m in wechat_sim.control("messages")["messages"] if m.get("touser") == openid]
    kinds = [(m["type"], m.get("msgtype")) for m in sent]
    assert kinds == [("custom", "text"), ("custom", "news"), ("custom", "miniprogrampage"), ("template", None)], kinds
    assert sent[0]["content"]["content"] == "您的办件已受理"  # Chinese arrives as Chinese, not \\u escapes
    assert msgid and str(sent[3]["msgid"]) == msgid
