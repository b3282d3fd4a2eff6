"""The notices pages over real HTTP: compose with every problem listed, audience preview, the draft
page, sending needs the form's CSRF token, another department's notice is 404, CSV export."""

from __future__ import annotations

import re

import pytest

from tests.helpers import official_client

POLICE = "泸州市公安局"
FUND = "泸州市住房公积金管理中心"


@pytest.fixture(scope="module", autouse=True)
def catalogue(server):
    assert server.cli("load-demo").returncode == 0


def token(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, html[:1500]
    return found.group(1)


def test_compose_lists_every_problem_then_saves_a_draft_that_only_its_department_sees(server):
    publisher = official_client(server, POLICE, "publisher")
    form = publisher.get("/console/notices/new")
    assert form.status_code == 200 and 'for="f-title"' in form.text
    csrf = token(form.text)

    bad = publisher.post(
        "/console/notices/new",
        data={
            "csrf_token": csrf,
            "title": "x",
            "body": "",
            "kind": "service",
            "image_url": "http://10.0.0.1/a.png",
            "action": "save",
        },
    )
    assert bad.status_code == 422
    for where in ("标题", "正文", "图片地址", "受众"):
        assert f"<code>{where}" in bad.text, where
    assert not server.database.query("SELECT id FROM notices WHERE title = 'x'")

    fields = {
        "csrf_token": csrf,
        "title": "医保卡补办流程调整",
        "body": "即日起医保卡补办可在掌办小程序全程网办。",
        "kind": "followers",
        "link_kind": "none",
    }
    preview = publisher.post("/console/notices/new", data={**fields, "action": "preview"})
    assert preview.status_code == 200 and re.search(r'id="audience-size">当前受众共 <strong>\d+</strong>', preview.text)
    without = publisher.post("/console/notices/new", data={**fields, "csrf_token": "", "action": "save"})
    assert without.status_code == 403
    saved = publisher.post("/console/notices/new", data={**fields, "action": "save"})
    assert saved.status_code == 303 and re.fullmatch(r"/console/notices/\d+", saved.headers["location"])
    page = publisher.get(saved.headers["location"])
    assert page.status_code == 200 and "医保卡补办流程调整" in page.text and "立即发送" in page.text
    listing = publisher.get("/console/notices?format=csv")
    assert listing.headers["content-type"].startswith("text/csv") and "医保卡补办流程调整" in listing.text

    other = official_client(server, FUND, "publisher")
    assert other.get(saved.headers["location"]).status_code == 404
    refused = other.post(
        saved.headers["location"] + "/send", data={"csrf_token": token(other.get("/console/notices").text)}
    )
    assert refused.status_code == 404
    officer = official_client(server, POLICE, "officer")
    assert officer.get("/console/notices").status_code == 403

    cancelled = publisher.post(saved.headers["location"] + "/cancel", data={"csrf_token": csrf})
    assert cancelled.status_code == 303
    assert "已取消" in publisher.get(saved.headers["location"]).text
