"""Drafts, prefill, pre-review (every problem at once) and idempotent submission, over HTTP."""

from __future__ import annotations

import random
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest

from tests.conftest import SIM_MP_APPID
from tests.helpers import (
    RENEWAL,
    TODAY,
    auth,
    id_number,
    login,
    new_draft,
    photo_id,
    renewal_answers,
    to_l3,
)


@pytest.fixture(scope="module")
def citizen(server, wechat_sim):
    """An L3 citizen with a bound phone and a mailing address: (tokens, name, id_number, phone)."""
    assert server.cli("load-demo").returncode == 0
    number = id_number(birth="19900215")
    tokens = to_l3(server, wechat_sim, "林小满", number)
    openid = server.database.query(f"SELECT openid FROM users WHERE id = {tokens['user']['id']}")[0][0]
    phone = f"158{random.randint(10000000, 99999999)}"
    code = wechat_sim.control("phone-code", {"appid": SIM_MP_APPID, "openid": openid, "phone": phone})["code"]
    with server.client(headers=auth(tokens)) as c:
        assert c.post("/api/v1/me/phone", json={"code": code}).status_code == 200
        assert (
            c.post(
                "/api/v1/me/addresses",
                json={
                    "recipient": "林小满",
                    "phone": phone,
                    "region_code": "510502",
                    "detail": "江阳区酒城大道一段8号",
                },
            ).status_code
            == 201
        )
    return tokens, "林小满", number, phone


def test_prefill_from_identity_and_profile(server, citizen):
    tokens, name, number, phone = citizen
    with server.client(headers=auth(tokens)) as c:
        draft = new_draft(c, service_code=RENEWAL)
    assert draft["version"] == 1
    assert draft["data"]["applicant"] == {"name": name, "id_number": number.upper(), "phone": phone}
    assert draft["data"]["appointment"]["mail_address"] == {"region_code": "510502", "detail": "江阳区酒城大道一段8号"}
    assert draft["prefill"]["applicant.name"] == {"source": "identity", "label": "已从实名信息带出"}
    assert draft["prefill"]["applicant.id_number"]["source"] == "identity"
    assert draft["prefill"]["applicant.phone"]["source"] == "profile"
    assert draft["prefill"]["appointment.mail_address"]["source"] == "profile"
    materials = {m["key"]: m for m in draft["materials"]}
    assert materials["photo"]["fetched_by_sharing"] is False and materials["photo"]["required"] is True
    assert materials["hukou_book"]["fetched_by_sharing"] is True and materials["hukou_book"]["issuer"]
    # The stored draft is sealed: no clear ID number in the row.
    raw = server.database.query(f"SELECT data_enc FROM drafts WHERE id = '{draft['id']}'")[0][0]
    assert number.encode() not in bytes(raw)


@pytest.mark.slow
def test_review_lists_every_problem_at_once(server, wechat_sim):
    assert server.cli("load-demo").returncode == 0
    tokens, _ = login(server, wechat_sim)  # L1: no identity to prefill
    with server.client(headers=auth(tokens)) as c:
        draft = new_draft(c, service_code=RENEWAL)
        assert draft["prefill"] == {}
        review = c.post(f"/api/v1/drafts/{draft['id']}/review")
    assert review.status_code == 200
    body = review.json()
    assert body["ok"] is False
    problems = {p["path"]: p for p in body["problems"]}
    for path in (
        "applicant.name",
        "applicant.id_number",
        "applicant.phone",
        "applicant.old_expiry",
        "appointment.station",
        "appointment.date",
        "appointment.period",
        "appointment.delivery",
    ):
        assert problems[path]["code"] == "required", path
    assert problems["materials.photo"]["code"] == "material_missing"
    assert "materials.hukou_book" not in problems  # issued by a government body: fetched by sharing
    assert problems["identity"]["code"] == "identity_level_required" and "L3" in problems["identity"]["message"]
    assert "appointment.mail_address" not in problems  # hidden until delivery is 'mail'


@pytest.mark.slow
def test_hidden_field_becomes_required(server, wechat_sim):
    assert server.cli("load-demo").returncode == 0
    tokens = to_l3(server, wechat_sim, "宋一一", id_number())
    with server.client(headers=auth(tokens)) as c:
        draft = new_draft(c, service_code=RENEWAL)
        answers = renewal_answers(photo_id(server, tokens))
        answers["applicant"].update({"phone": "13912345678"})
        saved = c.patch(f"/api/v1/drafts/{draft['id']}", json={"version": 1, "data": answers}).json()
        assert c.post(f"/api/v1/drafts/{draft['id']}/review").json() == {"ok": True, "problems": []}
        mail = c.patch(
            f"/api/v1/drafts/{draft['id']}",
            json={"version": saved["version"], "data": {"appointment": {"delivery": "mail"}}},
        )
        problems = c.post(f"/api/v1/drafts/{draft['id']}/review").json()["problems"]
    assert mail.status_code == 200
    assert [(p["path"], p["code"]) for p in problems] == [("appointment.mail_address", "required")]


def test_invalid_values_are_named_specifically(server, citizen):
    tokens = citizen[0]
    with server.client(headers=auth(tokens)) as c:
        draft = new_draft(c, service_code=RENEWAL)
        answers = renewal_answers()
        answers["applicant"] = {
            "phone": "12345",
            "id_number": citizen[2][:-1] + ("0" if citizen[2][-1] != "0" else "1"),
            "old_expiry": (TODAY + timedelta(days=200)).isoformat(),
        }
        answers["appointment"]["station"] = "moon"
        c.patch(f"/api/v1/drafts/{draft['id']}", json={"version": 1, "data": answers})
        problems = {p["path"]: p for p in c.post(f"/api/v1/drafts/{draft['id']}/review").json()["problems"]}
    assert problems["applicant.phone"]["code"] == "invalid_phone"
    assert problems["applicant.id_number"]["code"] == "invalid_id_number"
    assert "校验位" in problems["applicant.id_number"]["message"]
    assert problems["appointment.station"]["code"] == "not_an_option"
    assert problems["applicant.old_expiry"]["code"] == "check_failed"


def test_concurrent_patch_one_wins_nothing_lost(server, citizen):
    tokens = citizen[0]
    with server.client(headers=auth(tokens)) as c:
        draft = new_draft(c, service_code=RENEWAL)

    def save(part):
        return httpx.patch(
            f"{server.url}/api/v1/drafts/{draft['id']}", json={"version": 1, "data": part}, headers=auth(tokens)
        )

    parts = [{"appointment": {"station": "naxi"}}, {"appointment": {"period": "pm"}}]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(save, parts))
    codes = sorted(r.status_code for r in results)
    assert codes == [200, 409]
    loser_index = next(i for i, r in enumerate(results) if r.status_code == 409)
    conflict = results[loser_index].json()
    assert conflict["code"] == "version_conflict" and conflict["details"]["current_version"] == 2
    # The losing device merges onto the current version: both answers are kept.
    retry = httpx.patch(
        f"{server.url}/api/v1/drafts/{draft['id']}",
        json={"version": conflict["details"]["current_version"], "data": parts[loser_index]},
        headers=auth(tokens),
    )
    assert retry.status_code == 200 and retry.json()["version"] == 3
    appointment = retry.json()["data"]["appointment"]
    assert appointment["station"] == "naxi" and appointment["period"] == "pm"


def test_another_users_draft_is_404(server, citizen, wechat_sim):
    with server.client(headers=auth(citizen[0])) as c:
        draft = new_draft(c, service_code=RENEWAL)
    other, _ = login(server, wechat_sim)
    with server.client(headers=auth(other)) as c:
        for response in (
            c.get(f"/api/v1/drafts/{draft['id']}"),
            c.patch(f"/api/v1/drafts/{draft['id']}", json={"version": 1, "data": {}}),
            c.post(f"/api/v1/drafts/{draft['id']}/review"),
            c.post(f"/api/v1/drafts/{draft['id']}/submit", headers={"Idempotency-Key": uuid.uuid4().hex}),
        ):
            assert response.status_code == 404 and response.json()["code"] == "draft_not_found"
        assert c.get("/api/v1/drafts").json()["items"] == []
        assert c.get("/api/v1/drafts/" + "0" * 32).json()["code"] == "draft_not_found"


def test_submit_with_problems_is_422_with_the_same_list(server, citizen):
    with server.client(headers=auth(citizen[0])) as c:
        draft = new_draft(c, service_code=RENEWAL)
        review = c.post(f"/api/v1/drafts/{draft['id']}/review").json()
        submit = c.post(f"/api/v1/drafts/{draft['id']}/submit", headers={"Idempotency-Key": uuid.uuid4().hex})
    assert submit.status_code == 422
    assert submit.json()["code"] == "review_failed"
    assert submit.json()["details"]["problems"] == review["problems"]
    assert server.database.query(f"SELECT count(*) FROM cases WHERE draft_id = '{draft['id']}'") == [(0,)]


def test_idempotent_submit_under_20_concurrent_requests(server, citizen):
    tokens = citizen[0]
    with server.client(headers=auth(tokens)) as c:
        draft = new_draft(c, service_code=RENEWAL)
        c.patch(f"/api/v1/drafts/{draft['id']}", json={"version": 1, "data": renewal_answers(photo_id(server, tokens))})
    key = uuid.uuid4().hex

    def submit(_):
        return httpx.post(
            f"{server.url}/api/v1/drafts/{draft['id']}/submit",
            json={},
            headers={**auth(tokens), "Idempotency-Key": key},
            timeout=30,
        )

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(submit, range(20)))
    assert [r.status_code for r in results] == [201] * 20, [r.text for r in results if r.status_code != 201]
    case_nos = {r.json()["case_no"] for r in results}
    assert len(case_nos) == 1
    case_no = case_nos.pop()
    assert case_no.startswith("ZB") and len(case_no) == 16
    assert results[0].json()["status"] in ("submitted", "delivered_to_platform")  # replays show the case now
    assert server.database.query(f"SELECT count(*) FROM cases WHERE draft_id = '{draft['id']}'") == [(1,)]
    events = server.database.query(
        f"SELECT to_status FROM case_events e JOIN cases c ON c.id = e.case_id WHERE c.case_no = '{case_no}'"
    )
    assert [e[0] for e in events].count("submitted") == 1  # one case, submitted once (then maybe delivered)
    reused = httpx.post(
        f"{server.url}/api/v1/drafts/{draft['id']}/submit",
        json={"version": 99},
        headers={**auth(tokens), "Idempotency-Key": key},
    )
    assert reused.status_code == 409 and reused.json()["code"] == "idempotency_key_reused"
    again = httpx.post(
        f"{server.url}/api/v1/drafts/{draft['id']}/submit",
        json={},
        headers={**auth(tokens), "Idempotency-Key": uuid.uuid4().hex},
    )
    assert again.status_code == 409 and again.json()["code"] == "draft_submitted"
    assert again.json()["details"]["case_nos"] == [case_no]
    missing = httpx.post(f"{server.url}/api/v1/drafts/{draft['id']}/submit", headers=auth(tokens))
    assert missing.status_code == 400 and missing.json()["code"] == "idempotency_key_required"


def test_newborn_bundle_one_form_three_linked_cases(server, citizen):
    tokens, name, number, _ = citizen
    birth = (TODAY - timedelta(days=10)).isoformat()
    with server.client(headers=auth(tokens)) as c:
        draft = new_draft(c, bundle_code="newborn")
        problems = c.post(f"/api/v1/drafts/{draft['id']}/review").json()["problems"]
        # One merged form: a question shared by the three items is asked once.
        assert sum(1 for p in problems if p["path"] == "baby.name") == 1
        answers = {
            "applicant": {"relation": "mother", "pickup_by": "parent"},
            "baby": {
                "name": "林小禾",
                "sex": "female",
                "birth_date": birth,
                "hospital": "lz_people",
                "weight": 3200,
                "gestation_weeks": 39,
                "ethnicity": "han",
            },
            "parents": {
                "mother_name": name,
                "mother_id_number": number.upper(),
                "father_info": "absent",
                "married": "married",
                "follow": "mother",
                "region": "510502",
                "address": {"region_code": "510502", "detail": "江阳区酒城大道一段8号"},
                "householder_name": name,
                "relation_to_householder": "daughter",
                "delivery": "pickup",
            },
            "insurance": {"region": "510502", "resident_type": "born_here", "payment": "wechat"},
            "attachments": {"notice": "agreed"},
            "materials": {"application_form": [photo_id(server, tokens)]},
        }
        saved = c.patch(f"/api/v1/drafts/{draft['id']}", json={"version": draft["version"], "data": answers})
        assert saved.status_code == 200
        review = c.post(f"/api/v1/drafts/{draft['id']}/review").json()
        assert review == {"ok": True, "problems": []}, review
        submitted = c.post(f"/api/v1/drafts/{draft['id']}/submit", headers={"Idempotency-Key": uuid.uuid4().hex})
    assert submitted.status_code == 201, submitted.text
    body = submitted.json()
    assert len(body["cases"]) == 3
    assert {case["service_name"] for case in body["cases"]} == {
        "出生医学证明",
        "出生登记",
        "城乡居民基本医疗保险参保登记",
    }
    assert body["bundle_no"] == body["cases"][0]["case_no"]
    rows = server.database.query(f"SELECT bundle_no FROM cases WHERE draft_id = '{draft['id']}'")
    assert len(rows) == 3 and {r[0] for r in rows} == {body["bundle_no"]}


@pytest.mark.slow
def test_history_prefill_after_a_case(server, wechat_sim):
    """A second application for the same item starts from the answers of the first."""
    assert server.cli("load-demo").returncode == 0
    tokens = to_l3(server, wechat_sim, "何十五", id_number())
    with server.client(headers=auth(tokens)) as c:
        first = new_draft(c, service_code=RENEWAL)
        answers = renewal_answers(photo_id(server, tokens))
        answers["applicant"]["phone"] = "13711112222"
        c.patch(f"/api/v1/drafts/{first['id']}", json={"version": 1, "data": answers})
        assert (
            c.post(f"/api/v1/drafts/{first['id']}/submit", headers={"Idempotency-Key": uuid.uuid4().hex}).status_code
            == 201
        )
        second = new_draft(c, service_code=RENEWAL)
    assert second["prefill"]["appointment.station"] == {"source": "history", "label": "已从您上次的申请带出"}
    assert second["data"]["appointment"]["station"] == "jiangyang"
    assert second["data"]["applicant"]["name"] == "何十五"
    assert first["prefill"].get("appointment.station") is None  # nothing earlier to take it from
