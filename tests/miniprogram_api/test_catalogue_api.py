"""Browsing, reading and searching the catalogue over HTTP, and cache invalidation on publish."""

from __future__ import annotations

import pytest
import yaml

from core.errors import ValidationFailed
from handlers.catalog.publish import DEMO_CATALOGUE
from handlers.catalog.reader import CatalogueReader, summary
from handlers.catalog.schema import item_content, parse_catalogue
from tests.helpers import auth, login

DEMO = yaml.safe_load(DEMO_CATALOGUE.read_text(encoding="utf-8"))
BY_NAME = {item["name"]: item for item in DEMO["items"]}


def _loaded(server):
    result = server.cli("load-demo")
    assert result.returncode == 0, result.stderr


def test_browse_with_filters_and_keyset_pages(server, wechat_sim):
    _loaded(server)
    tokens, _ = login(server, wechat_sim)
    with server.client(headers=auth(tokens)) as c:
        seen, cursor = [], None
        while True:
            page = c.get("/api/v1/services", params={"limit": 4, **({"cursor": cursor} if cursor else {})})
            assert page.status_code == 200, page.text
            body = page.json()
            assert len(body["items"]) <= 4
            seen += [i["code"] for i in body["items"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert seen == sorted(i["code"] for i in DEMO["items"])  # every item once, in order
        item = c.get("/api/v1/services", params={"limit": 100}).json()["items"][0]
        assert {"code", "name", "department", "flags", "fee"} <= set(item)
        online = c.get("/api/v1/services", params={"flag": "fully_online", "limit": 100}).json()["items"]
        assert online and all(i["flags"]["fully_online"] for i in online)
        assert len(online) == sum(1 for i in DEMO["items"] if i["flags"]["fully_online"])
        psb = c.get("/api/v1/services", params={"department": "psb", "limit": 100}).json()["items"]
        assert {i["name"] for i in psb} == {i["name"] for i in DEMO["items"] if i["department"] == "psb"}
        bad_limit = c.get("/api/v1/services", params={"limit": 0})
        assert bad_limit.status_code == 422 and set(bad_limit.json()["details"]["fields"]) == {"limit"}
        bad_flag = c.get("/api/v1/services", params={"flag": "cheap"})
        assert bad_flag.status_code == 422 and set(bad_flag.json()["details"]["fields"]) == {"flag"}
        assert c.get("/api/v1/services", params={"cursor": "%%%"}).status_code == 422


class ListedReader(CatalogueReader):
    """The reader over the demo's list entries, without Redis or a database."""

    def __init__(self):
        super().__init__(redis=None, keys=None)
        catalogue = parse_catalogue(DEMO_CATALOGUE.read_text(encoding="utf-8"))
        self.entries = sorted((summary(item_content(catalogue, i)) for i in catalogue.items), key=lambda e: e["code"])

    async def summaries(self) -> list[dict]:
        return self.entries


async def test_browse_filters_and_pages_without_a_server():
    reader = ListedReader()
    seen, cursor = [], None
    while True:
        page = await reader.browse(cursor=cursor, limit=3)
        seen += [e["code"] for e in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert seen == sorted(i["code"] for i in DEMO["items"])
    both = await reader.browse(theme="identity", flag="fully_online", limit=100)
    expected = {i["name"] for i in DEMO["items"] if "identity" in i["themes"] and i["flags"]["fully_online"]}
    assert expected and {e["name"] for e in both["items"]} == expected
    for bad, field in [({"flag": "cheap"}, "flag"), ({"cursor": "%%%"}, "cursor")]:
        with pytest.raises(ValidationFailed) as caught:
            await reader.browse(**bad)
        assert set(caught.value.fields) == {field}


def test_full_guide(server, wechat_sim):
    _loaded(server)
    tokens, _ = login(server, wechat_sim)
    renewal = BY_NAME["居民身份证换领"]
    with server.client(headers=auth(tokens)) as c:
        guide = c.get(f"/api/v1/services/{renewal['code']}")
        assert guide.status_code == 200, guide.text
        g = guide.json()
        for key in (
            "code",
            "name",
            "basis",
            "legal_days",
            "promised_days",
            "department",
            "fee",
            "flags",
            "min_identity_level",
            "conditions",
            "steps",
            "materials",
            "form",
        ):
            assert key in g
        assert g["fee"] == {"kind": "fixed", "amount_fen": 2000, "basis": renewal["fee"]["basis"]}
        assert g["department"] == "泸州市公安局"
        shared = [m for m in g["materials"] if m["source"] == "shared"]
        assert all(m["fetched_by_sharing"] for m in shared)
        missing = c.get("/api/v1/services/000-nope")
        assert missing.status_code == 404 and missing.json()["code"] == "service_not_found"


def test_search_endpoint(server, wechat_sim):
    _loaded(server)
    tokens, _ = login(server, wechat_sim)
    with server.client(headers=auth(tokens)) as c:
        for phrase, name in [
            ("身份证过期了怎么办", "居民身份证换领"),
            ("公积金怎么取", "公积金提取"),
            ("驾照到期", "机动车驾驶证换证"),
        ]:
            hits = c.get("/api/v1/services/search", params={"q": phrase}).json()["items"]
            assert hits and hits[0]["name"] == name, (phrase, hits)
            assert hits[0]["reason"] and hits[0]["score"] > 0
        assert c.get("/api/v1/services/search", params={"q": "asdfghjkl"}).json()["items"] == []
        assert c.get("/api/v1/services/search").status_code == 422


@pytest.mark.production  # the CLI and the server share Redis only in production mode
def test_publish_invalidates_the_cache_at_once(server, wechat_sim, tmp_path):
    _loaded(server)
    tokens, _ = login(server, wechat_sim)
    item = BY_NAME["公积金提取"]
    with server.client(headers=auth(tokens)) as c:
        before = c.get(f"/api/v1/services/{item['code']}").json()
        changed = yaml.safe_load(DEMO_CATALOGUE.read_text(encoding="utf-8"))
        target = next(i for i in changed["items"] if i["code"] == item["code"])
        target["promised_days"] = 0
        path = tmp_path / "changed.yaml"
        path.write_text(yaml.safe_dump(changed, allow_unicode=True), encoding="utf-8")
        try:
            assert server.cli("import-catalogue", str(path)).returncode == 0
            after = c.get(f"/api/v1/services/{item['code']}").json()
            assert after["promised_days"] == 0 and after["version"] == before["version"] + 1
        finally:
            assert server.cli("load-demo").returncode == 0  # back to the demo (a new version again)
        restored = c.get(f"/api/v1/services/{item['code']}").json()
        assert restored["promised_days"] == item["promised_days"]
