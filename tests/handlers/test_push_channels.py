"""Which channel carries a progress push (handlers.push.Pusher), on factory rows.

WeChat is the simulator, run as its own server for this module (so no other test's server
pushes through it meanwhile) and reset before each test. Over HTTP, tests/miniprogram_api/test_push.py keeps
the whole journey, quiet hours, SIGKILLed workers and what officials see.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from handlers.push import Pusher
from storage.models import Case, CaseStatus, Follower, Notification, PushAttempt, SubscriptionGrant, User
from tests import factories
from tests.conftest import MP_TEMPLATE, OA_TEMPLATE, SIM_MP_APPID, SIM_MP_SECRET, start_wechat_sim
from tests.oa_pusher import OA_APPID, OA_SECRET
from wechat.client import OfficialAccountAPI, WeChatClient

SUBSCRIBE_PATH = "/cgi-bin/message/subscribe/send"
TEMPLATE_PATH = "/cgi-bin/message/template/send"


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    sim = start_wechat_sim(tmp_path_factory.mktemp("push-channels-sim"))
    yield sim
    sim.process.terminate()
    sim.process.wait(10)


@pytest.fixture
async def pusher(db, redis, keys, sim):
    sim.control("reset", {})
    async with httpx.AsyncClient(timeout=5) as http:

        def client(appid: str, secret: str) -> WeChatClient:
            return WeChatClient(
                appid=appid,
                secret=secret,
                base_url=sim.url,
                redis=redis,
                token_key=keys("wechat", "token", appid),
                http=http,
                backoff_s=0.01,
            )

        yield Pusher(
            mp=client(SIM_MP_APPID, SIM_MP_SECRET),
            oa=OfficialAccountAPI(client(OA_APPID, OA_SECRET)),
            mp_appid=SIM_MP_APPID,
            mp_template_id=MP_TEMPLATE,
            oa_template_id=OA_TEMPLATE,
        )


async def citizen(sim, *, grants: int = 0, at_wechat: int | None = None, follows: bool = False) -> User:
    """An L3 citizen known to WeChat, with `grants` subscribe grants in our database (WeChat
    holds `at_wechat`, the same unless told) and, if `follows`, following the official account."""
    made = sim.control("users", {"appid": SIM_MP_APPID, "unionid": True})
    user = await factories.create_user(level="L3", openid=made["openid"], unionid=made["unionid"])
    if grants:
        await factories.create_grant(user=user, template_id=MP_TEMPLATE, remaining=grants)
    count = grants if at_wechat is None else at_wechat
    if count:
        sim.control(
            "subscriptions",
            {"appid": SIM_MP_APPID, "openid": user.openid, "template_id": MP_TEMPLATE, "count": count},
        )
    if follows:
        oa_openid = sim.control("users", {"appid": OA_APPID, "unionid": user.unionid})["openid"]
        # Known to the bot by unionid only: the pusher links the follower to the citizen.
        await factories.create_follower(unionid=user.unionid, oa_openid=oa_openid)
    return user


async def news(user: User, kind: str = "accepted") -> tuple[Case, Notification]:
    case = await factories.create_case(user=user, status=CaseStatus(kind))
    return case, await factories.create_notification(case=case, kind=kind)


async def attempts(notification: Notification) -> list[tuple]:
    rows = await PushAttempt.filter(notification_id=notification.id).order_by("id")
    return [(a.channel, a.result, a.errcode) for a in rows]


async def remaining(user: User) -> int:
    return (await SubscriptionGrant.get(user_id=user.id, template_id=MP_TEMPLATE)).remaining


def messages(sim, case: Case) -> list[dict]:
    return [
        m
        for m in sim.control("messages")["messages"]
        if m.get("data", {}).get("character_string2", {}).get("value") == case.case_no
    ]


async def test_a_subscribe_message_while_a_grant_is_left(db, sim, pusher):
    user = await citizen(sim, grants=1, follows=True)
    case, notification = await news(user)
    assert await pusher.run_one(notification.id) == "sent"
    fresh = await Notification.get(id=notification.id)
    assert (fresh.push_status, fresh.channel, fresh.sent_at is not None) == ("sent", "subscribe", True)
    assert await attempts(notification) == [("subscribe", "ok", 0)]
    assert await remaining(user) == 0
    [message] = messages(sim, case)
    assert (message["type"], message["touser"], message["template_id"]) == ("subscribe", user.openid, MP_TEMPLATE)
    assert message["page"] == f"pages/case/detail?case_no={case.case_no}"
    # The grant is spent: the next one goes to the official account.
    _, second = await news(user, "in_review")
    assert await pusher.run_one(second.id) == "sent"
    assert (await Notification.get(id=second.id)).channel == "template"


async def test_a_template_message_to_a_follower_linked_by_unionid(db, sim, pusher):
    user = await citizen(sim, follows=True)
    case, notification = await news(user)
    assert await pusher.run_one(notification.id) == "sent"
    assert (await Notification.get(id=notification.id)).channel == "template"
    assert await attempts(notification) == [("template", "ok", 0)]
    follower = await Follower.get(unionid=user.unionid)
    assert follower.user_id == user.id  # linked now
    [message] = messages(sim, case)
    assert (message["type"], message["touser"], message["template_id"]) == (
        "template",
        follower.oa_openid,
        OA_TEMPLATE,
    )
    assert message["miniprogram"] == {"appid": SIM_MP_APPID, "pagepath": f"pages/case/detail?case_no={case.case_no}"}


async def test_the_inbox_alone_when_no_channel_reaches_the_citizen(db, sim, pusher):
    user = await citizen(sim)
    # A follower of someone else with no unionid in common is not this citizen.
    await factories.create_follower(unionid="someone-else")
    case, notification = await news(user)
    assert await pusher.run_one(notification.id) == "inbox_only"
    fresh = await Notification.get(id=notification.id)
    assert (fresh.push_status, fresh.channel, fresh.sent_at) == ("inbox_only", "inbox", None)
    [attempt] = await PushAttempt.filter(notification_id=notification.id)
    assert (attempt.channel, attempt.result) == ("inbox", "inbox_only")
    assert attempt.detail == "无剩余订阅授权，未关注公众号，仅站内消息"
    assert messages(sim, case) == []


async def test_43101_falls_through_to_the_template_message_and_clears_the_grant(db, sim, pusher):
    # We believe in grants WeChat does not hold (the citizen turned them off in WeChat).
    user = await citizen(sim, grants=3, at_wechat=0, follows=True)
    case, notification = await news(user)
    assert await pusher.run_one(notification.id) == "sent"
    assert await attempts(notification) == [("subscribe", "no_grant", 43101), ("template", "ok", 0)]
    assert (await Notification.get(id=notification.id)).channel == "template"
    assert await remaining(user) == 0
    assert [m["type"] for m in messages(sim, case)] == ["template"]


async def test_43004_marks_the_follower_gone_and_falls_through(db, sim, pusher):
    user = await citizen(sim, follows=True)
    follower = await Follower.get(unionid=user.unionid)
    sim.control("followers", {"appid": OA_APPID, "openid": follower.oa_openid, "subscribed": False})
    case, notification = await news(user)
    assert await pusher.run_one(notification.id) == "inbox_only"
    assert await attempts(notification) == [("template", "not_following", 43004), ("inbox", "inbox_only", None)]
    assert (await Follower.get(oa_openid=follower.oa_openid)).subscribed is False
    # The next push does not try the official account again.
    _, second = await news(user, "in_review")
    assert await pusher.run_one(second.id) == "inbox_only"
    assert await attempts(second) == [("inbox", "inbox_only", None)]


@pytest.mark.parametrize(
    "failure, recorded",
    [
        ({"errcode": -1, "times": 3}, ("subscribe", "transient", -1)),  # busy, through the client's own retries
        ({"errcode": 45009, "times": 1}, ("subscribe", "transient", 45009)),  # daily quota
        ({"http_status": 503, "times": 3}, ("subscribe", "transient", None)),  # unreachable
    ],
)
async def test_a_transient_failure_is_retried_later_with_the_grant_given_back(db, sim, pusher, failure, recorded):
    user = await citizen(sim, grants=1, follows=True)
    case, notification = await news(user)
    sim.control("fail", {"path": SUBSCRIBE_PATH, **failure})
    before = datetime.now(UTC)
    assert await pusher.run_one(notification.id) == "retry"
    fresh = await Notification.get(id=notification.id)
    assert fresh.push_status == "pending" and fresh.next_attempt_at > before and fresh.attempts == 1
    assert await attempts(notification) == [recorded]  # not fallen through to the template message
    assert await remaining(user) == 1
    assert await pusher.run_one(notification.id) == "not_due"  # it waits for its backoff
    await Notification.filter(id=notification.id).update(next_attempt_at=datetime.now(UTC) - timedelta(seconds=1))
    assert await pusher.run_one(notification.id) == "sent"
    assert await attempts(notification) == [recorded, ("subscribe", "ok", 0)]
    assert await remaining(user) == 0
    assert [m["type"] for m in messages(sim, case)] == ["subscribe"]


async def test_a_push_failing_every_time_is_given_up_after_its_attempts(db, sim, pusher):
    pusher.max_attempts = 2
    user = await citizen(sim, grants=1)
    _, notification = await news(user)
    sim.control("fail", {"path": SUBSCRIBE_PATH, "errcode": 45009, "times": 2})
    assert await pusher.run_one(notification.id) == "retry"
    await Notification.filter(id=notification.id).update(next_attempt_at=datetime.now(UTC))
    assert await pusher.run_one(notification.id) == "failed"
    assert (await Notification.get(id=notification.id)).push_status == "failed"
    assert await remaining(user) == 1  # never used


async def test_two_drains_at_once_send_each_push_exactly_once(db, sim, pusher):
    # A second worker's pusher on the same database and WeChat: small batches, a few calls in
    # flight, so the two drains take turns claiming while the other's sends are under way.
    other = Pusher(
        mp=pusher.mp,
        oa=pusher.oa,
        mp_appid=SIM_MP_APPID,
        mp_template_id=MP_TEMPLATE,
        oa_template_id=OA_TEMPLATE,
        batch=4,
        concurrency=3,
    )
    pusher.batch, pusher.concurrency = 4, 3
    users = [await citizen(sim, grants=2) for _ in range(10)]
    made = []  # (user, case, [notifications in the order of the changes])
    for user in users:
        case = await factories.create_case(user=user, status=CaseStatus.IN_REVIEW)
        first = await factories.create_notification(case=case, kind="accepted")
        second = await factories.create_notification(case=case, kind="in_review")
        made.append((user, case, [first, second]))
    settled = await asyncio.gather(pusher.drain(), other.drain())
    assert sum(settled) == 20
    for user, case, notifications in made:
        sent = messages(sim, case)
        # One message per change, each by the citizen's own grant.
        assert sorted(m["data"]["phrase3"]["value"] for m in sent) == sorted(["已受理", "审核中"])
        assert {m["touser"] for m in sent} == {user.openid}
        for notification in notifications:
            assert await attempts(notification) == [("subscribe", "ok", 0)]
            assert (await Notification.get(id=notification.id)).push_status == "sent"
        assert await remaining(user) == 0
    assert await pusher.drain() == 0 and await other.run_due() == 0  # nothing left, nothing sent again


async def test_lanes_never_send_a_citizens_pushes_out_of_order(db, sim, pusher):
    # Two lanes of small batches (PostgreSQL; SQLite drains in one lane): three changes of each
    # of three citizens, made in turn, so every batch holds the next change of each citizen. The
    # first message is held up at WeChat: a lane free to claim that citizen's next change would
    # send it ahead.
    pusher.batch, pusher.concurrency, pusher.lanes = 3, 4, 2
    users = [await citizen(sim, grants=3) for _ in range(3)]
    cases = [await factories.create_case(user=user, status=CaseStatus.APPROVED) for user in users]
    kinds = ["accepted", "in_review", "approved"]
    for kind in kinds:
        for case in cases:
            await factories.create_notification(case=case, kind=kind)
    sim.control("fail", {"path": SUBSCRIBE_PATH, "delay_s": 0.5})
    assert await pusher.drain() == 9
    for case in cases:
        assert [m["data"]["phrase3"]["value"] for m in messages(sim, case)] == ["已受理", "审核中", "已通过"]
