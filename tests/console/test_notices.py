"""Service notices over real HTTP: a publisher composes and sends a notice to a few hundred
followers, each gets it once at the WeChat simulator, the progress reaches the total; roles,
department scoping and CSRF; the mini-program lists it, the bot tells of it, themes are subscribed."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.helpers import RENEWAL, auth, login, official_client, wait_for
from tests.oa_pusher import OA_APPID, event_message, text_message

POLICE = "泸州市公安局"
FUND = "泸州市住房公积金管理中心"
FOLLOWERS = 200


@pytest.fixture(scope="module", autouse=True)
def catalogue(server):
    assert server.cli("load-demo").returncode == 0


def csrf(client: httpx.Client) -> dict:
    return {"X-CSRF-Token": client.get("/console/api/session").json()["csrf_token"]}


def follow(oa, wechat_sim) -> str:
    """A new follower of the official account, at WeChat and (through the subscribe event) with us."""
    openid = wechat_sim.control("users", {"appid": OA_APPID})["openid"]
    assert oa.post(event_message(openid, "subscribe")).status_code == 200
    return openid


def compose(client: httpx.Client, title: str, audience: dict | None = None) -> dict:
    response = client.post(
        "/console/api/notices",
        json={
            "title": title,
            "body": "自12月1日起，居民身份证换领可在掌办小程序全程网上预约，到大厅只需采集一次指纹。",
            "link_kind": "service",
            "link_target": RENEWAL,
            "audience": audience or {"kind": "followers"},
        },
        headers=csrf(client),
    )
    assert response.status_code == 201, response.text
    return response.json()


@pytest.mark.slow
def test_a_notice_reaches_every_follower_once_with_live_progress(server, oa, wechat_sim):
    with ThreadPoolExecutor(8) as pool:
        openids = set(pool.map(lambda _: follow(oa, wechat_sim), range(FOLLOWERS)))
    publisher = official_client(server, POLICE, "publisher")
    draft = publisher.post(
        "/console/api/notices",
        json={
            "title": "身份证换领网上预约上线",
            "body": "自12月1日起，居民身份证换领可在掌办小程序全程网上预约。",
            "link_kind": "page",
            "link_target": "pages/index/index",
            "audience": {"kind": "followers"},
        },
        headers=csrf(publisher),
    )
    assert draft.status_code == 201, draft.text
    notice = draft.json()
    assert notice["status"] == "draft" and notice["department"] == POLICE
    preview = publisher.get(f"/console/api/notices/{notice['id']}/preview").json()
    assert preview["total"] >= FOLLOWERS

    sent = publisher.post(f"/console/api/notices/{notice['id']}/send", headers=csrf(publisher))
    assert sent.status_code == 200, sent.text
    assert sent.json()["status"] == "sending"
    again = publisher.post(f"/console/api/notices/{notice['id']}/send", headers=csrf(publisher))
    assert (again.status_code, again.json()["code"]) == (409, "notice_not_editable")

    def finished():
        progress = publisher.get(f"/console/api/notices/{notice['id']}/progress").json()
        assert progress["sent"] + progress["failed"] + progress["skipped"] + progress["remaining"] >= progress["total"]
        return progress if progress["status"] == "sent" else None

    progress = wait_for(finished, timeout=120, interval=0.5)
    assert progress["remaining"] == 0 and progress["failed"] == 0
    assert progress["sent"] + progress["skipped"] == progress["total"] >= FOLLOWERS

    ours = [
        m
        for m in wechat_sim.control("messages")["messages"]
        if m.get("data", {}).get("character_string2", {}).get("value") == f"GG{notice['id']}"
    ]
    per_follower = Counter(m["touser"] for m in ours)
    assert max(per_follower.values()) == 1  # nobody twice
    assert openids <= set(per_follower)  # everyone of ours once
    assert all(m["type"] == "template" for m in ours)

    report = publisher.get(f"/console/api/notices/{notice['id']}/report").json()
    assert report["channels"]["template"] >= FOLLOWERS and report["failures"] == []
    assert report["deliveries"]["sent"] == progress["sent"]

    # The mini-program lists it, newest first, and shows it whole.
    tokens, _ = login(server, wechat_sim)
    listed = httpx.get(server.url + "/api/v1/notices", headers=auth(tokens)).json()
    assert listed["items"][0]["id"] == notice["id"]
    assert listed["items"][0]["link"]["page"] == "pages/index/index"
    one = httpx.get(f"{server.url}/api/v1/notices/{notice['id']}", headers=auth(tokens)).json()
    assert one["body"].startswith("自12月1日起")
    assert httpx.get(server.url + "/api/v1/notices").status_code == 401

    # The bot answers 通知 with it.
    reply = oa.reply_text(oa.post(text_message(next(iter(openids)), "通知")))
    assert "身份证换领网上预约上线" in reply and f"pages/notice/detail?id={notice['id']}" in reply


def test_roles_departments_and_csrf(server):
    publisher = official_client(server, POLICE, "publisher")
    notice = compose(publisher, "关于春节假期办件安排的通知")
    assert notice["status"] == "draft"

    officer = official_client(server, POLICE, "officer")
    refused = officer.get("/console/api/notices")
    assert (refused.status_code, refused.json()["code"]) == (403, "role_required")
    refused = officer.post("/console/api/notices", json={}, headers=csrf(officer))
    assert refused.status_code in (403, 422)

    other = official_client(server, FUND, "publisher")
    for method, path in (
        ("GET", f"/console/api/notices/{notice['id']}"),
        ("GET", f"/console/api/notices/{notice['id']}/progress"),
        ("GET", f"/console/api/notices/{notice['id']}/report"),
        ("POST", f"/console/api/notices/{notice['id']}/send"),
        ("POST", f"/console/api/notices/{notice['id']}/cancel"),
    ):
        response = other.request(method, path, headers=csrf(other))
        assert (response.status_code, response.json()["code"]) == (404, "notice_not_found"), (method, path)
    assert notice["id"] not in [n["id"] for n in other.get("/console/api/notices").json()["items"]]
    assert notice["id"] in [n["id"] for n in publisher.get("/console/api/notices").json()["items"]]

    no_csrf = publisher.post(f"/console/api/notices/{notice['id']}/send")
    assert (no_csrf.status_code, no_csrf.json()["code"]) == (403, "csrf_failed")
    assert publisher.get(f"/console/api/notices/{notice['id']}").json()["status"] == "draft"

    admin = official_client(server, POLICE, "admin")
    assert admin.get(f"/console/api/notices/{notice['id']}").status_code == 200


def test_schedule_then_cancel_and_a_draft_is_not_published(server, wechat_sim):
    publisher = official_client(server, POLICE, "publisher")
    notice = compose(publisher, "元旦期间大厅开放安排")
    at = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    scheduled = publisher.post(
        f"/console/api/notices/{notice['id']}/schedule", json={"at": at}, headers=csrf(publisher)
    )
    assert scheduled.status_code == 200 and scheduled.json()["status"] == "scheduled"
    past = publisher.post(
        f"/console/api/notices/{notice['id']}/schedule",
        json={"at": "2020-01-01T08:00:00+08:00"},
        headers=csrf(publisher),
    )
    assert (past.status_code, past.json()["code"]) == (422, "validation_failed")
    cancelled = publisher.post(f"/console/api/notices/{notice['id']}/cancel", headers=csrf(publisher))
    assert cancelled.json()["status"] == "cancelled"
    again = publisher.post(f"/console/api/notices/{notice['id']}/cancel", headers=csrf(publisher))
    assert (again.status_code, again.json()["code"]) == (409, "notice_not_cancellable")

    tokens, _ = login(server, wechat_sim)
    hidden = httpx.get(f"{server.url}/api/v1/notices/{notice['id']}", headers=auth(tokens))
    assert (hidden.status_code, hidden.json()["code"]) == (404, "notice_not_found")


def test_theme_subscriptions_make_a_theme_audience(server, wechat_sim):
    tokens, _ = login(server, wechat_sim)
    with server.client(headers=auth(tokens)) as c:
        assert c.post("/api/v1/me/themes/identity").json() == {"theme": "identity", "subscribed": True}
        assert c.post("/api/v1/me/themes/identity").status_code == 200  # twice is once
        mine = {t["code"]: t["subscribed"] for t in c.get("/api/v1/me/themes").json()["items"]}
        assert mine["identity"] is True and mine["housing"] is False
        unknown = c.post("/api/v1/me/themes/no-such-theme")
        assert (unknown.status_code, unknown.json()["code"]) == (404, "theme_not_found")

    publisher = official_client(server, POLICE, "publisher")
    preview = publisher.post(
        "/console/api/notices/preview",
        json={"audience": {"kind": "theme", "theme": "identity"}},
        headers=csrf(publisher),
    )
    assert preview.status_code == 200 and preview.json()["total"] >= 1
    before = preview.json()["total"]
    with server.client(headers=auth(tokens)) as c:
        assert c.delete("/api/v1/me/themes/identity").json() == {"theme": "identity", "subscribed": False}
    after = publisher.post(
        "/console/api/notices/preview",
        json={"audience": {"kind": "theme", "theme": "identity"}},
        headers=csrf(publisher),
    ).json()["total"]
    assert after == before - 1
    bad = publisher.post(
        "/console/api/notices/preview",
        json={"audience": {"kind": "region", "region_code": "泸州"}},
        headers=csrf(publisher),
    )
    assert (bad.status_code, bad.json()["code"]) == (422, "validation_failed")
