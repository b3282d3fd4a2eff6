"""The dashboard in a real browser: an officer signs in, the page draws its SVG charts with the
day's cases, a table's CSV export downloads with the same figures, and a screenshot is kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from core.china_time import CHINA
from tests.browser.conftest import screenshot
from tests.helpers import CODE, RENEWAL, insert_case_row

LICENCE = CODE["机动车驾驶证换证"]  # psb, fully online


def test_the_dashboard_draws_its_charts_and_exports_a_table(server, console):
    assert server.cli("load-demo").returncode == 0
    now = datetime.now(UTC) - timedelta(minutes=1)
    stamp = now.strftime("%Y-%m-%d %H:%M:%S+00:00")
    today = now.astimezone(CHINA).date()
    for code in (RENEWAL, RENEWAL, LICENCE):
        insert_case_row(server, code, stamp)

    page = console.sign_in("psb", "officer")
    page.goto("/console/")
    assert page.get_by_role("heading", level=1).inner_text() == "工作台"
    charts = page.locator("svg.chart")
    assert charts.count() >= 3
    # The per-day chart: one bar a day of the range, today's as tall as its count is high.
    day_bars = page.locator("section[aria-labelledby=h-days] svg.chart rect.bar")
    assert day_bars.count() == 30
    heights = day_bars.evaluate_all("bars => bars.map(b => Number(b.getAttribute('height')))")
    today_title = day_bars.last.locator("title").text_content()
    assert today_title.startswith(today.strftime("%m-%d")) and heights[-1] > 0
    submitted_today = int(today_title.split("：")[1].removesuffix("件"))
    assert submitted_today >= 3  # ours (other tests of the run may add their own)
    assert page.locator("section[aria-labelledby=h-days] svg.chart rect.share").count() == 2
    assert int(page.locator("#v-submitted").inner_text()) >= submitted_today

    with page.expect_download() as download:
        page.locator("section[aria-labelledby=h-days] a.export").click()
    lines = download.value.path().read_text(encoding="utf-8-sig").splitlines()
    assert lines[0] == "日期,提交办件,全程网办" and len(lines) == 31
    day, count, online = lines[-1].split(",")
    assert day == today.isoformat() and int(count) == submitted_today and int(online) >= 1

    page.goto("/console/")
    page.keyboard.press("Tab")  # the skip link is the first stop: the page is usable by keyboard
    assert page.evaluate("document.activeElement.textContent") == "跳到主要内容"
    screenshot(page, "dashboard")
