"""In a real browser: an admin uploads a catalogue file with several mistakes and sees each one
listed with its path and line, nothing published; then uploads a valid one, publishes it and sees
the new versions in the item list. Screenshots of both land in var/test-artifacts/screenshots/."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator

import pytest
import yaml
from playwright.sync_api import expect

from handlers.catalog.publish import DEMO_CATALOGUE
from tests.browser.conftest import ConsoleBrowser, screenshot
from tests.conftest import make_server

POLICE = "泸州市公安局"
DEMO = yaml.safe_load(DEMO_CATALOGUE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def catalogue_server(tmp_path_factory, databases, wechat_sim):
    """A server of its own: the test publishes, and a catalogue file is larger than the shared
    server's request limit."""
    srv, _ = make_server(tmp_path_factory, databases, wechat_sim, "catbrowser", REQUEST_MAX_SIZE=str(4 * 1024 * 1024))
    assert srv.cli("load-demo").returncode == 0
    yield srv
    srv.stop()


@pytest.fixture
def admin_console(catalogue_server, browser) -> Iterator[ConsoleBrowser]:
    opened = ConsoleBrowser(catalogue_server, browser)
    yield opened
    opened.close()
    # A form answered with its problems is a 422 page, which Chromium logs as a failed resource.
    unexpected = [e for e in opened.errors if "status of 422" not in e]
    assert not unexpected, unexpected


def write(path, data: dict):
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def test_upload_a_catalogue_with_mistakes_then_publish_a_good_one(admin_console, tmp_path):
    page = admin_console.sign_in(POLICE, "admin")
    page.get_by_role("link", name="事项目录").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("事项目录")
    rows_before = page.locator("table[aria-labelledby=items-title] tbody tr").count()

    bad = copy.deepcopy(DEMO)
    bad["items"][3]["materials"][1]["name"] = ""
    bad["items"][0]["fee"] = {"kind": "fixed"}
    bad["items"][2]["department"] = "nowhere"
    del bad["items"][6]["basis"]
    bad["items"][7]["materials"][0]["kinds"] = ["exe"]
    expected = [
        "items[0].fee",
        "items[2].department",
        "items[3].materials[1].name",
        "items[6].basis",
        "items[7].materials[0].kinds[0]",
    ]
    page.get_by_label("目录文件（YAML").set_input_files(write(tmp_path / "有错的目录.yaml", bad))
    page.get_by_role("button", name="检查并发布").click()
    problems = page.get_by_role("alert")
    expect(problems).to_contain_text("有错的目录.yaml 有 5 处问题")
    expect(problems).to_contain_text("目录没有任何更改")
    listed = problems.locator("li")
    expect(listed).to_have_count(len(expected))
    for n, path in enumerate(expected):
        expect(listed.nth(n).locator("code")).to_have_text(path)
        expect(listed.nth(n)).to_contain_text("第 ")  # its line
    expect(listed.nth(2)).to_contain_text("不能为空")
    expect(listed.nth(3)).to_contain_text("缺少此项")
    screenshot(page, "catalogue-problems")
    expect(page.locator("table[aria-labelledby=items-title] tbody tr")).to_have_count(rows_before)

    good = copy.deepcopy(DEMO)
    new_code = f"T{uuid.uuid4().hex[:12]}"
    extra = copy.deepcopy(good["items"][1])
    extra["code"], extra["name"] = new_code, "浏览器测试新增事项"
    good["items"].append(extra)
    good["items"][0]["promised_days"] -= 1
    page.get_by_label("目录文件（YAML").set_input_files(write(tmp_path / "目录.yaml", good))
    page.get_by_role("button", name="仅检查").click()
    expect(page.get_by_role("status").filter(has_text="检查通过")).to_contain_text("发布后将更新 2 个事项")

    page.get_by_label("目录文件（YAML").set_input_files(write(tmp_path / "目录.yaml", good))
    page.get_by_role("button", name="检查并发布").click()
    expect(page.get_by_role("status").first).to_contain_text("2 个事项更新")
    expect(page.get_by_role("alert")).to_have_count(0)
    new_row = page.locator("table[aria-labelledby=items-title] tbody tr").filter(has_text=new_code)
    expect(new_row).to_contain_text("浏览器测试新增事项")
    expect(new_row.locator("td.num")).to_have_text("1")
    changed_row = page.locator("table[aria-labelledby=items-title] tbody tr").filter(has_text=DEMO["items"][0]["code"])
    expect(changed_row.locator("td.num")).to_have_text("2")
    screenshot(page, "catalogue-published")

    changed_row.get_by_role("link").click()
    versions = page.locator("table[aria-labelledby=versions-title] tbody tr")
    expect(versions).to_have_count(2)
    expect(versions.nth(0)).to_contain_text("当前版本")
    expect(versions.nth(1)).to_contain_text("历史版本")
