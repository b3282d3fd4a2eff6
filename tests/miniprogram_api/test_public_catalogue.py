"""The public catalogue (issue 16): readable without a token, rendered once per revision and
served with a strong ETag, a 304 for the ETag a client holds, and a new ETag once a publish lands
(within a second); everything else still needs a token."""

from __future__ import annotations

import time

import httpx
import yaml

from handlers.catalog.publish import DEMO_CATALOGUE
from tests.helpers import CODE, RENEWAL

CONTRACT_S = 1.0  # a publish reaches every worker within a second
PATHS = ["/api/v1/services?limit=5", f"/api/v1/services/{RENEWAL}", "/api/v1/services/search?q=身份证过期了怎么办"]


def _loaded(server):
    result = server.cli("load-demo")
    assert result.returncode == 0, result.stderr


def test_the_catalogue_is_public_and_cached_while_the_rest_needs_a_token(server):
    _loaded(server)
    with server.client() as c:
        for path in PATHS:
            first = c.get(path)
            assert first.status_code == 200, (path, first.text)
            assert first.headers["cache-control"] == "public, max-age=60", path
            etag = first.headers["etag"]
            assert etag.startswith('"') and etag.endswith('"') and len(etag) > 2, etag  # strong
            # A token, even one we never issued, is not looked up: the same answer.
            with_token = c.get(path, headers={"Authorization": "Bearer never-issued"})
            assert with_token.status_code == 200 and with_token.content == first.content, path
            assert with_token.headers["etag"] == etag
            again = c.get(path, headers={"If-None-Match": etag})
            assert again.status_code == 304 and again.content == b"", path
            assert again.headers["etag"] == etag and again.headers["cache-control"] == "public, max-age=60"
            for held in (f"W/{etag}", f'"other", {etag}', "*"):
                assert c.get(path, headers={"If-None-Match": held}).status_code == 304, (path, held)
            stale = c.get(path, headers={"If-None-Match": '"not-this-one"'})
            assert stale.status_code == 200 and stale.content == first.content
        hits = c.get("/api/v1/services/search", params={"q": "公积金怎么取"}).json()["items"]
        assert hits[0]["code"] == CODE["公积金提取"]
        # Errors are not cached answers.
        missing = c.get("/api/v1/services/000-nope")
        assert missing.status_code == 404 and missing.json()["code"] == "service_not_found"
        assert missing.headers["cache-control"] == "no-store" and "etag" not in missing.headers
        assert c.get("/api/v1/services", params={"flag": "cheap"}).status_code == 422
        # Drafts, cases and the profile still need a token.
        for method, path in [("GET", "/api/v1/drafts"), ("POST", "/api/v1/drafts"), ("GET", "/api/v1/me")]:
            refused = c.request(method, path, json={"service_code": RENEWAL} if method == "POST" else None)
            assert refused.status_code == 401, (method, path, refused.text)
            assert refused.json()["code"] == "unauthenticated"


def _changed_catalogue(tmp_path, code: str, promised_days: int):
    changed = yaml.safe_load(DEMO_CATALOGUE.read_text(encoding="utf-8"))
    next(i for i in changed["items"] if i["code"] == code)["promised_days"] = promised_days
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(changed, allow_unicode=True), encoding="utf-8")
    return path


def published_within_a_second(url: str, path: str, old_etag: str) -> httpx.Response:
    """Polls `path` on fresh connections until its ETag is no longer `old_etag`; fails if a
    request sent a second after the publish still answers the old one."""
    published = time.monotonic()
    while True:
        sent = time.monotonic()
        response = httpx.get(url + path, timeout=10)
        assert response.status_code == 200, response.text
        if response.headers["etag"] != old_etag:
            return response
        assert sent - published < CONTRACT_S, "the publish was not seen within a second"
        time.sleep(0.02)


def test_a_publish_changes_the_answer_and_its_etag_within_a_second(server, tmp_path):
    _loaded(server)
    code = CODE["公积金提取"]
    path = f"/api/v1/services/{code}"
    with server.client() as c:
        before = c.get(path)
        listed = c.get("/api/v1/services", params={"limit": 100})
        assert c.get(path, headers={"If-None-Match": before.headers["etag"]}).status_code == 304
        try:
            result = server.cli("import-catalogue", str(_changed_catalogue(tmp_path, code, 0)))
            assert result.returncode == 0, result.stderr
            after = published_within_a_second(server.url, path, before.headers["etag"])
            assert after.json()["promised_days"] == 0 and after.json()["version"] == before.json()["version"] + 1
            # The ETag a client held is stale now: the full new answer; the new one gets a 304.
            refreshed = c.get(path, headers={"If-None-Match": before.headers["etag"]})
            assert refreshed.status_code == 200 and refreshed.headers["etag"] == after.headers["etag"]
            assert c.get(path, headers={"If-None-Match": after.headers["etag"]}).status_code == 304
            relisted = c.get("/api/v1/services", params={"limit": 100})
            assert relisted.headers["etag"] != listed.headers["etag"]
            entry = next(i for i in relisted.json()["items"] if i["code"] == code)
            assert entry["promised_days"] == 0
        finally:
            _loaded(server)  # back to the demo (a new version again)
        restored = published_within_a_second(server.url, path, after.headers["etag"])
        assert restored.json()["promised_days"] == before.json()["promised_days"]
