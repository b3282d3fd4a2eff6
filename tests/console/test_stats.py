"""`GET /console/api/stats/evaluations` over HTTP: scoping, validation, and the figures' shape
(the figures themselves are checked against a prepared set in tests/handlers/test_stats.py)."""

from __future__ import annotations

from tests.helpers import official_client

URL = "/console/api/stats/evaluations"


def test_an_officer_sees_their_own_department_only(server):
    assert server.cli("load-demo").returncode == 0
    officer = official_client(server, "psb")
    mine = officer.get(URL, params={"from": "2026-11-01", "to": "2026-11-30"})
    assert mine.status_code == 200, mine.text
    body = mine.json()
    assert body["department"] == "泸州市公安局" and set(body) >= {"evaluations", "bad_reviews", "tickets"}
    assert set(body["evaluations"]["by_level"]) == {"1", "2", "3", "4", "5"}
    other = officer.get(
        URL, params={"from": "2026-11-01", "to": "2026-11-30", "department": "泸州市人力资源和社会保障局"}
    )
    assert other.status_code == 404
    admin = official_client(server, "psb", "admin")
    everywhere = admin.get(URL, params={"from": "2026-11-01", "to": "2026-11-30"})
    assert everywhere.status_code == 200 and everywhere.json()["department"] is None


def test_bad_ranges_are_422_and_strangers_401(server, client):
    officer = official_client(server, "psb")
    backwards = officer.get(URL, params={"from": "2026-11-30", "to": "2026-11-01"})
    assert backwards.status_code == 422 and "to" in backwards.json()["details"]["fields"]
    missing = officer.get(URL, params={"from": "2026-11-30"})
    assert missing.status_code == 422
    assert client.get(URL, params={"from": "2026-11-01", "to": "2026-11-30"}).status_code == 401
    finance_only = official_client(server, "psb", "finance")
    assert finance_only.get(URL, params={"from": "2026-11-01", "to": "2026-11-30"}).status_code == 403
