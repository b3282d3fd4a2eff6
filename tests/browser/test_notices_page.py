"""In a real browser: an official signs in, and a publisher sends a notice to 1,000 followers from
the notices page, watches the live progress reach 100 %, and every follower's message reaches the
WeChat simulator exactly once."""

from __future__ import annotations

import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import screenshot
from tests.oa_pusher import OA_APPID, event_message

POLICE = "泸州市公安局"
FOLLOWERS = 1000


@pytest.fixture(scope="module", autouse=True)
def catalogue(server):
    assert server.cli("load-demo").returncode == 0


def test_an_official_signs_in_through_the_login_page(console):
    username, password = console.official(POLICE, "officer")
    console.allow("status of 401")  # the page that refuses a wrong password answers 401
    page = console.new_page()
    page.goto("/console/account/totp")
    expect(page).to_have_url(re.compile(r"/console/login\?next="))
    page.get_by_label("用户名").fill(username)
    page.get_by_label("密码").fill("not-the-password")
    page.get_by_role("button", name="登录").click()
    expect(page.get_by_role("alert")).to_contain_text("用户名或密码错误")
    page.get_by_label("用户名").fill(username)
    page.get_by_label("密码").fill(password)
    page.get_by_role("button", name="登录").click()
    expect(page).to_have_url(re.compile(r"/console/account/totp$"))
    expect(page.get_by_role("navigation", name="主导航")).to_be_visible()
    screenshot(page, "signed-in")
    page.get_by_role("button", name="退出登录").click()
    expect(page).to_have_url(re.compile(r"/console/login"))
    page.goto("/console/")
    expect(page).to_have_url(re.compile(r"/console/login"))  # the session is gone


@pytest.mark.slow
def test_a_notice_sent_from_the_page_reaches_1000_followers_once_with_live_progress(console, oa, wechat_sim):
    def follow(_):
        openid = wechat_sim.control("users", {"appid": OA_APPID})["openid"]
        assert oa.post(event_message(openid, "subscribe")).status_code == 200
        return openid

    with ThreadPoolExecutor(8) as pool:
        openids = set(pool.map(follow, range(FOLLOWERS)))
    assert len(openids) == FOLLOWERS

    page = console.sign_in(POLICE, "publisher")
    page.goto("/console/notices")
    page.get_by_role("link", name="新建通知").click()
    page.get_by_label("标题").fill("冬季供暖期间办事大厅延时服务")
    page.get_by_label("正文").fill("即日起至明年3月，市政务服务中心工作日延时至19:00，欢迎群众错峰办理。")
    page.get_by_label("公众号全部关注者").check()
    page.get_by_role("button", name="预览受众人数").click()
    size = int(page.locator("#audience-size strong").inner_text())
    assert size >= FOLLOWERS
    page.get_by_role("button", name="保存草稿").click()
    expect(page).to_have_url(re.compile(r"/console/notices/\d+$"))
    notice_id = int(page.url.rsplit("/", 1)[1])
    screenshot(page, "notice-draft")

    page.once("dialog", lambda dialog: dialog.accept())  # "确定立即向 N 人发送此通知？"
    page.get_by_role("button", name="立即发送").click()
    expect(page.locator("#progress")).to_be_visible()
    # The page polls the progress and reloads on the report once the send has finished.
    expect(page.locator("#report")).to_be_visible(timeout=240_000)
    progress = page.locator("#progress")
    total = int(progress.locator('[data-field="total"]').inner_text())
    sent = int(progress.locator('[data-field="sent"]').inner_text())
    skipped = int(progress.locator('[data-field="skipped"]').inner_text())
    assert progress.locator('[data-field="remaining"]').inner_text() == "0"
    assert progress.locator('[data-field="failed"]').inner_text() == "0"
    assert sent + skipped == total >= FOLLOWERS
    bar = progress.locator("progress")
    assert bar.get_attribute("value") == bar.get_attribute("max")  # 100 %
    expect(page.locator("#notice-status")).to_have_text("已发送")
    screenshot(page, "notice-sent")

    ours = [
        m
        for m in wechat_sim.control("messages")["messages"]
        if m.get("data", {}).get("character_string2", {}).get("value") == f"GG{notice_id}"
    ]
    per_follower = Counter(m["touser"] for m in ours)
    assert max(per_follower.values()) == 1  # nobody twice
    assert openids <= set(per_follower)  # every one of the 1,000 once
