"""The console's case search and case view over real HTTP: department scoping (another
department's case is 404 and never listed), audited views, the masked and the revealed
applicant, keyset pages that follow their cursor, the CSV export, and bad input refused."""

from __future__ import annotations

import csv
import io
import json
from contextlib import closing

import pytest

from tests.helpers import official_client, submit_renewal

POLICE, HEALTHCARE = "泸州市公安局", "泸州市医疗保障局"


@pytest.fixture(scope="module", autouse=True)
def catalogue(server):
    assert server.cli("load-demo").returncode == 0


@pytest.fixture(scope="module")
def cases(server, wechat_sim) -> list[str]:
    """Three submitted ID-card renewals (the police's item), oldest first."""
    return [submit_renewal(server, wechat_sim, name)[1] for name in ("钱十五", "孙十六", "李十七")]


def audit_rows(server, action: str, target_id: str) -> list[tuple]:
    return server.database.query(
        f"SELECT actor_id, detail FROM audit_log WHERE action = '{action}' AND target_id = '{target_id}'"
    )


def official_id(client) -> int:
    return client.get("/console/api/session").json()["official"]["id"]


def test_an_officer_finds_and_opens_a_case_and_the_view_is_audited(server, cases):
    case_no = cases[0]
    with closing(official_client(server, POLICE, "officer")) as officer:
        found = officer.get("/console/api/cases", params={"q": case_no})
        assert found.status_code == 200 and found.headers["cache-control"] == "no-store"
        [row] = found.json()["items"]
        assert row["case_no"] == case_no and row["department"] == POLICE and found.json()["next_cursor"] is None
        assert [r["case_no"] for r in officer.get("/console/api/cases", params={"q": case_no.lower()}).json()["items"]]

        seen = officer.get(f"/console/api/cases/{case_no}")
        assert seen.status_code == 200, seen.text
        body = seen.json()
        assert body["applicant"]["masked"] is True and body["applicant"]["name"] == "钱**"
        assert "*" in body["applicant"]["id_number"] and body["form"] is None
        assert body["timeline"][0]["status"] == "submitted"
        assert [m["slot"] for m in body["materials"]] == ["photo"] and body["materials"][0]["present"] is True
        assert body["payments"]["orders"] == [] and isinstance(body["pushes"], list)
        [(actor, detail)] = audit_rows(server, "case.read", case_no)
        assert actor == str(official_id(officer))
        detail = detail if isinstance(detail, dict) else json.loads(detail)
        assert detail["clear"] is False and detail["user_id"] == body["applicant"]["user_id"]

        # The applicant in clear needs the role.
        refused = officer.get(f"/console/api/cases/{case_no}", params={"reason": "核对申请人身份"})
        assert refused.status_code == 403 and refused.json()["code"] == "personal_data_forbidden"


def test_the_applicant_is_revealed_with_the_role_and_a_reason_and_both_reads_are_audited(server, cases):
    case_no = cases[1]
    with closing(official_client(server, POLICE, "officer", "personal_data")) as reader:
        short = reader.get(f"/console/api/cases/{case_no}", params={"reason": "看看"})
        assert short.status_code == 422 and "reason" in short.json()["details"]["fields"]
        reason = f"核对办件 {case_no} 申请人身份"
        seen = reader.get(f"/console/api/cases/{case_no}", params={"reason": reason})
        assert seen.status_code == 200, seen.text
        applicant = seen.json()["applicant"]
        assert applicant["masked"] is False and applicant["name"] == "孙十六" and "*" not in applicant["id_number"]
        assert seen.json()["form"]["applicant"]["phone"] == "13722223333"
        user_id = str(applicant["user_id"])
        [(actor, detail)] = audit_rows(server, "personal_data.read", user_id)
        detail = detail if isinstance(detail, dict) else json.loads(detail)
        assert actor == str(official_id(reader)) and detail["reason"] == reason and detail["case_no"] == case_no


def test_another_departments_case_is_not_found_not_listed_and_not_audited(server, cases):
    case_no = cases[2]
    with closing(official_client(server, HEALTHCARE, "officer", "personal_data")) as outsider:
        for params in ({}, {"reason": "核对申请人身份"}):
            hidden = outsider.get(f"/console/api/cases/{case_no}", params=params)
            assert hidden.status_code == 404 and hidden.json()["code"] == "case_not_found"
        unknown = outsider.get("/console/api/cases/ZB20000101000001")
        assert unknown.json() == {**hidden.json()}  # the same answer as a number that does not exist
        assert outsider.get(f"/console/api/cases/{case_no}/pushes").status_code == 404
        assert outsider.get("/console/api/cases", params={"q": case_no}).json()["items"] == []
        listed = outsider.get("/console/api/cases", params={"limit": 200}).json()["items"]
        assert case_no not in {r["case_no"] for r in listed}
        exported = outsider.get("/console/api/cases/export", params={"q": case_no})
        assert exported.status_code == 200 and case_no not in exported.text
        outsider_id = str(official_id(outsider))
    assert all(actor != outsider_id for actor, _ in audit_rows(server, "case.read", case_no))
    with closing(official_client(server, HEALTHCARE, "admin")) as admin:
        assert admin.get(f"/console/api/cases/{case_no}").status_code == 200


def test_pages_follow_the_cursor_to_the_same_rows_as_one_long_page(server, cases):
    with closing(official_client(server, POLICE, "officer")) as officer:
        whole = officer.get("/console/api/cases", params={"limit": 200}).json()
        assert whole["next_cursor"] is None and len(whole["items"]) >= 3
        paged, params = [], {"limit": 2}
        while True:
            page = officer.get("/console/api/cases", params=params)
            assert page.status_code == 200, page.text
            assert len(page.json()["items"]) <= 2
            paged += page.json()["items"]
            if page.json()["next_cursor"] is None:
                break
            params = {"limit": 2, "before": page.json()["next_cursor"]}
        assert [r["case_no"] for r in paged] == [r["case_no"] for r in whole["items"]]
        assert [r["case_no"] for r in whole["items"] if r["case_no"] in cases] == cases[::-1]  # newest first
        submitted = officer.get("/console/api/cases", params={"status": "submitted", "limit": 200}).json()["items"]
        assert {r["status"] for r in submitted} <= {"submitted"}


def test_the_csv_export_has_every_row_of_the_search(server, cases):
    with closing(official_client(server, POLICE, "officer")) as officer:
        response = officer.get("/console/api/cases/export", params={"q": cases[0][:10]})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/csv")
        assert "attachment" in response.headers["content-disposition"]
        assert response.headers["cache-control"] == "no-store"
        text = response.content.decode("utf-8")
        assert text.startswith("\ufeff")
        table = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
        assert table[0][:2] == ["办件编号", "事项"]
        listed = officer.get("/console/api/cases", params={"q": cases[0][:10], "limit": 200}).json()["items"]
        assert [line[0] for line in table[1:]] == [r["case_no"] for r in listed]
        assert set(cases) <= {line[0] for line in table[1:]}
        exports = server.database.query(
            f"SELECT COUNT(*) FROM audit_log WHERE action = 'case.export' AND actor_id = '{official_id(officer)}'"
        )
        assert exports[0][0] == 1


BAD_SEARCHES = [
    {"q": "ZB%"},
    {"q": "ZB 2026"},
    {"q": "Z" * 33},
    {"status": "lost"},
    {"service": "x" * 65},
    {"department": "x" * 129},
]
BAD_PAGES = [{"before": "0"}, {"before": str(2**63)}, {"before": "abc"}, {"limit": "0"}, {"limit": "201"}]


def test_bad_search_input_is_422(server):
    with closing(official_client(server, POLICE, "officer")) as officer:
        for params in BAD_SEARCHES + BAD_PAGES:
            response = officer.get("/console/api/cases", params=params)
            assert response.status_code == 422, (params, response.text)
            assert response.json()["code"] == "validation_failed" and response.json()["details"]["fields"]
        for params in BAD_SEARCHES:
            assert officer.get("/console/api/cases/export", params=params).status_code == 422, params


def test_without_a_session_nothing_is_answered(server, cases):
    with server.client() as anonymous:
        for path in ("/console/api/cases", f"/console/api/cases/{cases[0]}", "/console/api/cases/export"):
            assert anonymous.get(path).status_code == 401
