"""The console's audit-log search over real HTTP: who may read which rows (admin: all; supervisor:
their department's officials; others: 403), the filters, keyset pages that follow their cursor,
the CSV export (itself audited) and bad input refused."""

from __future__ import annotations

import csv
import io
from contextlib import closing
from datetime import date, timedelta

import pytest

from tests.helpers import id_number, official_client, to_l3

POLICE, HEALTHCARE = "泸州市公安局", "泸州市医疗保障局"


@pytest.fixture(scope="module", autouse=True)
def catalogue(server):
    assert server.cli("load-demo").returncode == 0


def me(client) -> dict:
    return client.get("/console/api/session").json()["official"]


@pytest.fixture(scope="module")
def reads(server, wechat_sim) -> dict:
    """A police officer with personal_data read a citizen three times; a healthcare officer once."""
    tokens = to_l3(server, wechat_sim, "周十八", id_number())
    user_id = tokens["user"]["id"]
    with closing(official_client(server, POLICE, "officer", "personal_data")) as police:
        for n in range(3):
            reason = f"核对申请人身份 第{n + 1}次"
            assert police.get(f"/console/api/citizens/{user_id}", params={"reason": reason}).status_code == 200
        police_name = me(police)["username"]
    with closing(official_client(server, HEALTHCARE, "officer", "personal_data")) as health:
        assert health.get(f"/console/api/citizens/{user_id}", params={"reason": "核对参保信息"}).status_code == 200
        health_name = me(health)["username"]
    return {"user_id": user_id, "police": police_name, "health": health_name}


def test_an_admin_finds_an_officials_reads_of_a_citizen_page_by_page(server, reads):
    with closing(official_client(server, POLICE, "admin")) as admin:
        params = {"official": reads["police"], "citizen": reads["user_id"], "action": "personal_data.read"}
        whole = admin.get("/console/api/audit", params=params)
        assert whole.status_code == 200 and whole.headers["cache-control"] == "no-store"
        items = whole.json()["items"]
        assert [i["detail"]["reason"] for i in items] == [f"核对申请人身份 第{n}次" for n in (3, 2, 1)]
        assert {(i["actor_username"], i["target_type"], i["target_id"]) for i in items} == {
            (reads["police"], "user", str(reads["user_id"]))
        }
        paged, query = [], {**params, "limit": 2}
        while True:
            page = admin.get("/console/api/audit", params=query).json()
            paged += page["items"]
            if page["next_cursor"] is None:
                break
            query = {**params, "limit": 2, "before": page["next_cursor"]}
        assert [i["id"] for i in paged] == [i["id"] for i in items]
        both = admin.get("/console/api/audit", params={"citizen": reads["user_id"], "action": "personal_data.*"})
        assert {i["actor_username"] for i in both.json()["items"]} == {reads["police"], reads["health"]}
        today = date.today()
        window = {
            "citizen": reads["user_id"],
            "action": "personal_data.read",
            "since": str(today - timedelta(days=1)),
            "until": str(today + timedelta(days=1)),
        }
        assert len(admin.get("/console/api/audit", params=window).json()["items"]) == 4
        gone = {"citizen": reads["user_id"], "until": "2020-01-01"}
        assert admin.get("/console/api/audit", params=gone).json() == {"items": [], "next_cursor": None}


def test_a_supervisor_reads_only_their_departments_officials_and_an_officer_is_refused(server, reads):
    with closing(official_client(server, POLICE, "supervisor")) as chief:
        seen = chief.get("/console/api/audit", params={"citizen": reads["user_id"]})
        assert seen.status_code == 200, seen.text
        assert {i["actor_username"] for i in seen.json()["items"]} == {reads["police"]}
        other = chief.get("/console/api/audit", params={"official": reads["health"]})
        assert other.json()["items"] == []
    with closing(official_client(server, POLICE, "officer", "personal_data")) as officer:
        for path in ("/console/api/audit", "/console/api/audit/export"):
            refused = officer.get(path)
            assert refused.status_code == 403 and refused.json()["code"] == "role_required"


def test_the_csv_export_lists_the_search_and_is_itself_audited(server, reads):
    with closing(official_client(server, POLICE, "admin")) as admin:
        params = {"citizen": reads["user_id"], "action": "personal_data.read"}
        response = admin.get("/console/api/audit/export", params=params)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/csv")
        assert response.headers["content-disposition"].startswith("attachment;")
        table = list(csv.reader(io.StringIO(response.content.decode("utf-8").lstrip("\ufeff"))))
        assert table[0][:3] == ["编号", "时间", "操作者类型"]
        listed = admin.get("/console/api/audit", params=params).json()["items"]
        assert [int(line[0]) for line in table[1:]] == [i["id"] for i in listed] and len(listed) == 4
        assert {line[4] for line in table[1:]} == {reads["police"], reads["health"]}
        admin_id = me(admin)["id"]
        exports = admin.get("/console/api/audit", params={"action": "audit.export", "official": me(admin)["username"]})
        [export] = exports.json()["items"]
        assert export["actor_id"] == str(admin_id) and export["detail"]["citizen"] == reads["user_id"]


def test_bad_input_is_422_and_no_session_is_401(server):
    with closing(official_client(server, POLICE, "admin")) as admin:
        for params in (
            {"since": "2026-12-02", "until": "2026-12-01"},
            {"since": "yesterday"},
            {"action": "Case.Read"},
            {"action": "case.read;--"},
            {"citizen": "0"},
            {"citizen": str(2**63)},
            {"official": "x" * 65},
            {"before": "-1"},
            {"limit": "500"},
        ):
            response = admin.get("/console/api/audit", params=params)
            assert response.status_code == 422, (params, response.text)
            assert response.json()["code"] == "validation_failed"
        backwards = {"since": "2026-12-02", "until": "2026-12-01"}
        assert admin.get("/console/api/audit/export", params=backwards).status_code == 422
    with server.client() as anonymous:
        assert anonymous.get("/console/api/audit").status_code == 401
        assert anonymous.get("/console/api/audit/export").status_code == 401
