"""Service notices on factory rows: audience sizes and keyset pages, the sender's channels, unique
deliveries, resuming after a crash mid-batch without a duplicate, 45009 backoff, cancel.

WeChat is the simulator, run as its own server for this module and reset before each test."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from core.errors import Conflict, Forbidden, NotFound, ValidationFailed
from handlers.catalog.reader import CatalogueReader
from handlers.notices import audience
from handlers.notices.notices import Notices
from handlers.notices.sender import Sender
from storage.models import Address, CaseStatus, Notice, NoticeDelivery, Notification, Official, ThemeSubscription
from tests import factories
from tests.conftest import MP_TEMPLATE, OA_TEMPLATE, SIM_MP_APPID, SIM_MP_SECRET, start_wechat_sim
from tests.helpers import CODE, RENEWAL
from tests.oa_pusher import OA_APPID, OA_SECRET
from wechat.client import OfficialAccountAPI, WeChatClient

TEMPLATE_PATH = "/cgi-bin/message/template/send"
POLICE = "泸州市公安局"
RESIDENCE = CODE["居住证办理"]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    sim = start_wechat_sim(tmp_path_factory.mktemp("notices-sim"))
    yield sim
    sim.process.terminate()
    sim.process.wait(10)


@pytest.fixture
async def http():
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


def make_sender(sim, redis, keys, http, *, batch: int = 10) -> Sender:
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

    return Sender(
        mp=client(SIM_MP_APPID, SIM_MP_SECRET),
        oa=OfficialAccountAPI(client(OA_APPID, OA_SECRET)),
        mp_appid=SIM_MP_APPID,
        mp_template_id=MP_TEMPLATE,
        oa_template_id=OA_TEMPLATE,
        redis=redis,
        keys=keys,
        rate=1000,
        batch=batch,
        concurrency=4,
    )


@pytest.fixture
async def sender(db, redis, keys, sim, http):
    sim.control("reset", {})
    return make_sender(sim, redis, keys, http)


@pytest.fixture
def notices(redis, keys):
    return Notices(catalogue=CatalogueReader(redis=redis, keys=keys))


async def publisher(department: str = POLICE, roles=("publisher",)) -> Official:
    return await Official.create(
        username=f"pub{factories._token('')}",
        display_name="发布员",
        department=department,
        roles=list(roles),
        password_hash="x",
    )


async def followers(sim, n: int) -> list[str]:
    """`n` followers of the official account, known to WeChat and to us (not linked to citizens)."""
    openids = []
    for _ in range(n):
        openid = sim.control("users", {"appid": OA_APPID})["openid"]
        await factories.create_follower(oa_openid=openid)
        openids.append(openid)
    return openids


async def sending(audience_spec: dict, *, department: str = POLICE) -> Notice:
    total = await audience.count(audience_spec)
    return await Notice.create(
        title="关于国庆期间政务服务大厅开放时间的通知",
        body="国庆期间（10月1日至7日）市政务服务大厅暂停现场办理，网上办理不受影响。",
        audience=audience_spec,
        department=department,
        created_by=1,
        status="sending",
        total=total,
        published_at=datetime.now(UTC),
    )


def templates_to(sim) -> dict[str, int]:
    counts: dict[str, int] = {}
    for message in sim.control("messages")["messages"]:
        counts[message["touser"]] = counts.get(message["touser"], 0) + 1
    return counts


async def address(user, region_code: str) -> Address:
    c = factories.CIPHER
    return await Address.create(
        user=user,
        recipient_enc=c.encrypt("林小满", column="addresses.recipient"),
        phone_enc=c.encrypt("13722223333", column="addresses.phone"),
        region_code=region_code,
        detail_enc=c.encrypt("江阳区某街道1号", column="addresses.detail"),
    )


# -- the audience -----------------------------------------------------------------------------


async def test_each_audience_kind_counts_its_recipients_once(db):
    for _ in range(3):
        await factories.create_follower()
    await factories.create_follower(subscribed=False)
    assert await audience.count({"kind": "followers"}) == 3

    a, b, c = [await factories.create_user(level="L3") for _ in range(3)]
    await factories.create_case(user=a, status=CaseStatus.APPROVED)
    await factories.create_case(user=a, status=CaseStatus.IN_REVIEW)  # two cases, one citizen
    await factories.create_case(user=b, status=CaseStatus.IN_REVIEW)
    await factories.create_case(user=c, status=CaseStatus.APPROVED, service_code=RESIDENCE)
    service = {"kind": "service", "service_code": RENEWAL}
    assert await audience.count(service) == 2
    assert await audience.count({**service, "statuses": ["approved"]}) == 1
    assert await audience.count({**service, "statuses": ["closed"]}) == 0

    await ThemeSubscription.create(user=a, theme="identity")
    await ThemeSubscription.create(user=c, theme="identity")
    await ThemeSubscription.create(user=b, theme="housing")
    assert await audience.count({"kind": "theme", "theme": "identity"}) == 2

    await address(a, "510502")
    await address(a, "510503")  # two addresses in 泸州, one citizen
    await address(b, "510104")  # 成都
    assert await audience.count({"kind": "region", "region_code": "5105"}) == 1
    assert await audience.count({"kind": "region", "region_code": "51"}) == 2
    assert await audience.count({"kind": "region", "region_code": "510502"}) == 1


async def test_pages_stream_every_recipient_once_in_key_order(db):
    made = sorted([(await factories.create_follower()).oa_openid for _ in range(7)])
    seen, cursor = [], None
    while page := await audience.page({"kind": "followers"}, cursor, 3):
        assert len(page) <= 3
        seen += [r.oa_openid for r in page]
        cursor = page[-1].cursor
    assert seen == made

    users = [await factories.create_user() for _ in range(5)]
    for user in users:
        await ThemeSubscription.create(user=user, theme="identity")
        await address(user, "510502")
        await address(user, "510521")
    for spec in ({"kind": "theme", "theme": "identity"}, {"kind": "region", "region_code": "5105"}):
        keys, cursor = [], None
        while page := await audience.page(spec, cursor, 2):
            keys += [r.key for r in page]
            cursor = page[-1].cursor
        assert keys == [f"u:{u.id}" for u in sorted(users, key=lambda u: u.id)]


# -- the sender -------------------------------------------------------------------------------


async def test_a_notice_reaches_each_follower_once_and_counts_it(db, sim, sender):
    openids = await followers(sim, 23)
    notice = await sending({"kind": "followers"})
    assert await sender.run(notice.id) == "sent"
    assert templates_to(sim) == {openid: 1 for openid in openids}
    done = await Notice.get(id=notice.id)
    assert (done.status, done.total, done.sent, done.failed, done.skipped) == ("sent", 23, 23, 0, 0)
    assert await NoticeDelivery.filter(notice_id=notice.id).count() == 23
    [message] = [m for m in sim.control("messages")["messages"] if m["touser"] == openids[0]]
    assert message["template_id"] == OA_TEMPLATE
    assert message["miniprogram"]["pagepath"] == f"pages/notice/detail?id={notice.id}"
    assert message["data"]["character_string2"]["value"] == f"GG{notice.id}"
    # Sent is sent: another run sends nothing.
    assert await sender.run(notice.id) == "not_sending"
    assert len(sim.control("messages")["messages"]) == 23


async def test_each_citizen_by_the_channel_they_can_receive_and_always_the_inbox(db, sim, sender):
    granted = sim.control("users", {"appid": SIM_MP_APPID, "unionid": True})
    with_grant = await factories.create_user(openid=granted["openid"], unionid=granted["unionid"])
    await factories.create_grant(user=with_grant, template_id=MP_TEMPLATE)
    sim.control(
        "subscriptions", {"appid": SIM_MP_APPID, "openid": with_grant.openid, "template_id": MP_TEMPLATE, "count": 1}
    )
    following = await factories.create_user(unionid="u-follow-" + factories._token(""))
    oa_openid = sim.control("users", {"appid": OA_APPID, "unionid": following.unionid})["openid"]
    await factories.create_follower(unionid=following.unionid, oa_openid=oa_openid)  # linked by unionid only
    nothing = await factories.create_user()
    gone = await factories.create_user()
    gone.is_active = False
    await gone.save()
    for user in (with_grant, following, nothing, gone):
        await ThemeSubscription.create(user=user, theme="identity")

    notice = await sending({"kind": "theme", "theme": "identity"})
    assert await sender.run(notice.id) == "sent"
    rows = {r.user_id: r for r in await NoticeDelivery.filter(notice_id=notice.id)}
    assert (rows[with_grant.id].status, rows[with_grant.id].channel) == ("sent", "subscribe")
    assert (rows[following.id].status, rows[following.id].channel) == ("sent", "template")
    assert (rows[nothing.id].status, rows[nothing.id].channel) == ("skipped", "inbox")
    assert rows[gone.id].status == "skipped"
    messages = sim.control("messages")["messages"]
    assert sorted((m["type"], m["touser"]) for m in messages) == sorted(
        [("subscribe", with_grant.openid), ("template", oa_openid)]
    )
    inbox = await Notification.filter(kind="notice").values_list("user_id", "case_id", "page")
    page = f"pages/notice/detail?id={notice.id}"
    assert sorted(inbox) == sorted((u.id, None, page) for u in (with_grant, following, nothing))
    done = await Notice.get(id=notice.id)
    assert (done.sent, done.skipped, done.failed) == (2, 2, 0)


async def test_a_restart_mid_batch_finishes_without_a_duplicate(db, sim, sender):
    openids = sorted(await followers(sim, 25))
    notice = await sending({"kind": "followers"})
    # A sender died in its first batch of 10: the first 5 went out, the 6th was on its way
    # (claimed, unknown whether WeChat took it), the last 4 were handed out but not sent.
    for i, openid in enumerate(openids[:10]):
        status = "sent" if i < 5 else "sending" if i == 5 else "pending"
        await NoticeDelivery.create(
            notice_id=notice.id,
            recipient=f"f:{openid}",
            oa_openid=openid,
            status=status,
            channel="template" if status == "sent" else "",
        )
    await Notice.filter(id=notice.id).update(cursor=openids[9], sent=5)

    assert await sender.run(notice.id) == "sent"
    sent_now = templates_to(sim)
    assert sent_now == {openid: 1 for openid in openids[6:]}  # never the first five, nor the interrupted one
    done = await Notice.get(id=notice.id)
    assert (done.status, done.sent, done.failed, done.skipped, done.total) == ("sent", 24, 1, 0, 25)
    interrupted = await NoticeDelivery.get(notice_id=notice.id, recipient=f"f:{openids[5]}")
    assert interrupted.status == "failed" and "中断" in interrupted.detail


async def test_rows_written_before_the_cursor_moved_are_not_sent_again(db, sim, sender):
    openids = sorted(await followers(sim, 12))
    notice = await sending({"kind": "followers"})
    for openid in openids[:4]:  # done, but the cursor never moved (as after a crash)
        await NoticeDelivery.create(
            notice_id=notice.id, recipient=f"f:{openid}", oa_openid=openid, status="sent", channel="template"
        )
    assert await sender.run(notice.id) == "sent"
    assert templates_to(sim) == {openid: 1 for openid in openids[4:]}
    assert await NoticeDelivery.filter(notice_id=notice.id).count() == 12


async def test_45009_pauses_the_send_with_backoff_then_it_finishes(db, sim, sender):
    openids = await followers(sim, 8)
    notice = await sending({"kind": "followers"})
    sim.control("fail", {"path": TEMPLATE_PATH, "errcode": 45009, "times": 1})
    now = datetime.now(UTC)
    assert await sender.run(notice.id, now=now) == "paused"
    paused = await Notice.get(id=notice.id)
    assert paused.paused_until > now and paused.quota_hits == 1 and paused.status == "sending"
    assert await NoticeDelivery.filter(notice_id=notice.id, status="pending").count() >= 1
    assert await NoticeDelivery.filter(notice_id=notice.id, status="failed").count() == 0
    # Not before the pause is over.
    before = len(sim.control("messages")["messages"])
    assert await sender.run(notice.id, now=now) == "paused"
    assert len(sim.control("messages")["messages"]) == before
    assert await sender.run(notice.id, now=paused.paused_until + timedelta(seconds=1)) == "sent"
    assert templates_to(sim) == {openid: 1 for openid in openids}
    done = await Notice.get(id=notice.id)
    assert (done.sent, done.failed) == (8, 0)


async def test_a_stopped_send_sends_nothing_more(db, sim, sender, notices):
    official = await publisher()
    await followers(sim, 5)
    notice = await sending({"kind": "followers"})
    stopped = await notices.cancel(official=official, notice_id=notice.id)
    assert stopped["status"] == "cancelled"
    assert await sender.run(notice.id) == "not_sending"
    assert sim.control("messages")["messages"] == []
    with pytest.raises(Conflict) as refused:
        await notices.cancel(official=official, notice_id=notice.id)
    assert refused.value.code == "notice_not_cancellable"


# -- the use cases of officials -----------------------------------------------------------------


async def test_compose_schedule_start_and_scope(db, sim, notices):
    official = await publisher()
    await followers(sim, 3)
    draft = await notices.create(
        official=official, title="停水通知", body="明日上午停水检修。", audience_spec={"kind": "followers"}
    )
    assert draft["status"] == "draft" and draft["department"] == POLICE
    assert (await notices.preview_of(official=official, notice_id=draft["id"]))["total"] == 3
    now = datetime.now(UTC)
    scheduled = await notices.schedule(official=official, notice_id=draft["id"], at=now + timedelta(hours=1), now=now)
    assert scheduled["status"] == "scheduled"
    assert await notices.start_due(now=now) == 0
    assert await notices.start_due(now=now + timedelta(hours=1, seconds=1)) == 1
    started = await Notice.get(id=draft["id"])
    assert (started.status, started.total) == ("sending", 3) and started.published_at is not None
    with pytest.raises(Conflict):
        await notices.update(official=official, notice_id=draft["id"], changes={"title": "改标题"})

    other = await publisher("泸州市住房公积金管理中心")
    with pytest.raises(NotFound) as hidden:
        await notices.view_for(official=other, notice_id=draft["id"])
    assert hidden.value.code == "notice_not_found"
    admin = await publisher("", roles=("admin",))
    assert (await notices.view_for(official=admin, notice_id=draft["id"]))["id"] == draft["id"]
    officer = await publisher(roles=("officer",))
    with pytest.raises(Forbidden):
        await notices.list_for(official=officer, status=None, department=None, before=None, limit=10)


async def test_an_audience_is_checked_against_the_catalogue(db, notices):
    official = await publisher()
    with pytest.raises(ValidationFailed):
        await notices.preview(official=official, audience_spec={"kind": "theme", "theme": "no-such-theme"})
    with pytest.raises(NotFound):
        await notices.preview(official=official, audience_spec={"kind": "service", "service_code": "nope"})
    result = await notices.preview(official=official, audience_spec={"kind": "region", "region_code": "5105"})
    assert result == {"audience": {"kind": "region", "region_code": "5105"}, "total": 0}
