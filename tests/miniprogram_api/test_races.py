"""Issue 12's races and integrity findings, over real HTTP with real concurrent requests.

- 6: a refresh token reused concurrently leaves no token of its family alive;
- 7: a save racing a submission of the same draft version never both succeed;
- 8: review refuses material ids that are not the citizen's, under any key, and unknown keys;
- 17: the owner reads back their own draft answers, nobody else does, and nothing logs them.

Each race is run many times on its own server, so the interleaving that broke it is likely.
"""

from __future__ import annotations

import random
import secrets
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import SIM_MP_APPID, Server, _drop_redis_prefix, make_server
from tests.helpers import RENEWAL, auth, id_number, login, new_draft, photo_id, renewal_answers, to_l3

ROUNDS = 20


@pytest.fixture(scope="module")
def races(tmp_path_factory, databases, wechat_sim) -> Iterator[Server]:
    """A server of this module's own, where hundreds of refreshes from one IP are allowed.

    The platform address is one nothing listens on: submitted cases wait in the outbox
    instead of reaching the shared platform simulator, whose callbacks go to another server.
    """
    srv, prefix = make_server(
        tmp_path_factory,
        databases,
        wechat_sim,
        "races",
        RATE_LIMITS="login.ip=100000/minute,refresh.ip=100000/minute,declare.ip=100000/hour,face.ip=100000/hour",
        PLATFORM_BASE_URL="http://127.0.0.1:9",
        PLATFORM_APP_KEY="zbt-races",
        PLATFORM_SECRET=secrets.token_urlsafe(24),
    )
    assert srv.cli("load-demo").returncode == 0
    yield srv
    srv.stop()
    if prefix:
        _drop_redis_prefix(prefix)


def at_once(*calls: Callable[[], httpx.Response]) -> list[httpx.Response]:
    """The responses of `calls`, each sent from its own thread, released together."""
    gate = threading.Barrier(len(calls))

    def run(call):
        gate.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


# -- 6: refresh-token reuse --------------------------------------------------------------


def _dead(server: Server, pair: dict) -> bool:
    me = httpx.get(server.url + "/api/v1/me", headers=auth(pair))
    again = httpx.post(server.url + "/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    return me.status_code == 401 and again.status_code == 401


def test_a_refresh_race_leaves_no_token_of_the_family_alive(races, wechat_sim):
    for _ in range(ROUNDS):
        tokens, _ = login(races, wechat_sim)

        def refresh(token=tokens["refresh_token"]):
            return httpx.post(races.url + "/api/v1/auth/refresh", json={"refresh_token": token}, timeout=30)

        results = at_once(*[refresh] * 4)
        winners = [r.json() for r in results if r.status_code == 200]
        losers = [r for r in results if r.status_code != 200]
        assert len(winners) <= 1
        assert losers and all(r.status_code == 401 and r.json()["code"] == "token_reused" for r in losers)
        # The token was presented twice: that login is over, whoever's answer came first.
        for pair in [tokens, *winners]:
            assert _dead(races, pair), "a token of a revoked family still works"


def test_a_logout_racing_a_refresh_leaves_no_token_alive(races, wechat_sim):
    for _ in range(ROUNDS):
        tokens, _ = login(races, wechat_sim)
        logout, refresh = at_once(
            lambda tokens=tokens: httpx.post(races.url + "/api/v1/auth/logout", headers=auth(tokens), timeout=30),
            lambda tokens=tokens: httpx.post(
                races.url + "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}, timeout=30
            ),
        )
        assert logout.status_code == 204
        assert refresh.status_code in (200, 401)
        for pair in [tokens] + ([refresh.json()] if refresh.status_code == 200 else []):
            assert _dead(races, pair), "a token of a logged-out family still works"


# -- 7: a save racing a submission ----------------------------------------------------------


def test_a_save_racing_a_submission_of_its_version_never_both_succeed(races, wechat_sim):
    tokens = to_l3(races, wechat_sim, "罗小川", id_number())
    photo = photo_id(races, tokens)
    outcomes = set()
    for i in range(ROUNDS):
        with races.client(headers=auth(tokens)) as c:
            draft = new_draft(c, service_code=RENEWAL)
            answers = renewal_answers(photo)
            answers["applicant"]["phone"] = "13711110000"
            assert c.patch(f"/api/v1/drafts/{draft['id']}", json={"version": 1, "data": answers}).status_code == 200
        url = f"{races.url}/api/v1/drafts/{draft['id']}"
        save, submit = at_once(
            lambda url=url, i=i: httpx.patch(
                url,
                json={"version": 2, "data": {"applicant": {"phone": f"137222{i:05d}"}}},
                headers=auth(tokens),
                timeout=30,
            ),
            lambda url=url: httpx.post(
                url + "/submit",
                json={"version": 2},
                headers={**auth(tokens), "Idempotency-Key": uuid.uuid4().hex},
                timeout=30,
            ),
        )
        outcomes.add((save.status_code, submit.status_code))
        assert not (save.status_code == 200 and submit.status_code == 201), (
            "the edit was reported saved and the case was made from the version before it"
        )
        assert (save.status_code, submit.status_code) in ((200, 409), (409, 201)), (save.text, submit.text)
        if submit.status_code == 409:
            assert submit.json()["code"] == "version_conflict"
            assert submit.json()["details"]["current_version"] == 3
            cases = races.database.query(f"SELECT count(*) FROM cases WHERE draft_id = '{draft['id']}'")
            assert cases == [(0,)]
        else:
            assert save.json()["code"] in ("draft_submitted", "version_conflict")


# -- 8: material ids that are not the citizen's --------------------------------------------


def test_review_refuses_unknown_keys_and_other_citizens_materials(races, wechat_sim):
    victim = to_l3(races, wechat_sim, "苏小青", id_number())
    theirs = photo_id(races, victim)
    tokens = to_l3(races, wechat_sim, "钱小武", id_number())
    mine = photo_id(races, tokens)
    with races.client(headers=auth(tokens)) as c:
        draft = new_draft(c, service_code=RENEWAL)
        answers = renewal_answers(mine)
        answers["applicant"]["phone"] = "13711112222"
        answers["materials"].update({"x_extra": [theirs], "notes": [mine]})
        assert c.patch(f"/api/v1/drafts/{draft['id']}", json={"version": 1, "data": answers}).status_code == 200
        review = c.post(f"/api/v1/drafts/{draft['id']}/review").json()
        assert {(p["path"], p["code"]) for p in review["problems"]} == {
            ("materials.x_extra", "slot_not_found"),
            ("materials.notes", "slot_not_found"),
        }
        submitted = c.post(f"/api/v1/drafts/{draft['id']}/submit", headers={"Idempotency-Key": uuid.uuid4().hex})
        assert submitted.status_code == 422 and submitted.json()["code"] == "review_failed"
        assert submitted.json()["details"]["problems"] == review["problems"]

        # Under a slot the item has, beside the citizen's own file: refused all the same.
        moved = c.patch(
            f"/api/v1/drafts/{draft['id']}",
            json={"version": 2, "data": {"materials": {"x_extra": None, "notes": None, "photo": [mine, theirs]}}},
        )
        assert moved.status_code == 200, moved.text
        review = c.post(f"/api/v1/drafts/{draft['id']}/review").json()
        assert [(p["path"], p["code"]) for p in review["problems"]] == [("materials.photo", "material_not_found")]

        # Not a list of ids: a clear problem, not a silent pass.
        c.patch(f"/api/v1/drafts/{draft['id']}", json={"version": 3, "data": {"materials": {"photo": mine}}})
        review = c.post(f"/api/v1/drafts/{draft['id']}/review").json()
        assert [(p["path"], p["code"]) for p in review["problems"]] == [("materials.photo", "invalid_type")]
        c.patch(f"/api/v1/drafts/{draft['id']}", json={"version": 4, "data": {"materials": {"photo": [mine]}}})
        assert c.post(f"/api/v1/drafts/{draft['id']}/review").json() == {"ok": True, "problems": []}
        done = c.post(f"/api/v1/drafts/{draft['id']}/submit", headers={"Idempotency-Key": uuid.uuid4().hex})
        assert done.status_code == 201, done.text
        assert c.delete(f"/api/v1/materials/{mine}").json()["code"] == "material_in_use"
    # The other citizen's file was never locked: they can still delete it.
    with races.client(headers=auth(victim)) as c:
        assert c.get(f"/api/v1/materials/{theirs}").json()["locked"] is False
        assert c.delete(f"/api/v1/materials/{theirs}").status_code == 204


def test_materials_that_are_not_an_object_are_a_review_problem(races, wechat_sim):
    tokens = to_l3(races, wechat_sim, "周小木", id_number())
    with races.client(headers=auth(tokens)) as c:
        draft = new_draft(c, service_code=RENEWAL)
        answers = renewal_answers()
        answers["applicant"]["phone"] = "13711113333"
        answers["materials"] = ["x"]
        c.patch(f"/api/v1/drafts/{draft['id']}", json={"version": 1, "data": answers})
        review = c.post(f"/api/v1/drafts/{draft['id']}/review").json()
        assert [(p["path"], p["code"]) for p in review["problems"]] == [("materials", "invalid_type")]
        # Attaching a file then replaces the malformed value instead of failing.
        attached = c.put(f"/api/v1/drafts/{draft['id']}/materials/photo", json={"material_id": photo_id(races, tokens)})
        assert attached.status_code == 200, attached.text


# -- 17: where a citizen's own personal data is shown -----------------------------------------


def test_the_owner_reads_back_their_draft_and_nobody_else_does(races, wechat_sim):
    number = id_number(birth="19881111")
    tokens = to_l3(races, wechat_sim, "唐小禾", number)
    openid = races.database.query(f"SELECT openid FROM users WHERE id = {tokens['user']['id']}")[0][0]
    phone = f"159{random.randint(10000000, 99999999)}"
    code = wechat_sim.control("phone-code", {"appid": SIM_MP_APPID, "openid": openid, "phone": phone})["code"]
    typed = f"186{random.randint(10000000, 99999999)}"
    with races.client(headers=auth(tokens)) as c:
        assert c.post("/api/v1/me/phone", json={"code": code}).status_code == 200
        created = c.post("/api/v1/drafts", json={"service_code": RENEWAL})
        draft = created.json()
        # The owner's own answers come back as they are: the form shows them to be checked.
        assert draft["data"]["applicant"]["id_number"] == number and draft["data"]["applicant"]["phone"] == phone
        saved = c.patch(f"/api/v1/drafts/{draft['id']}", json={"version": 1, "data": {"applicant": {"phone": typed}}})
        read = c.get(f"/api/v1/drafts/{draft['id']}")
        assert read.json()["data"]["applicant"]["phone"] == typed
        stale = c.patch(f"/api/v1/drafts/{draft['id']}", json={"version": 1, "data": {}})
        assert stale.status_code == 409 and stale.json()["details"]["data"]["applicant"]["phone"] == typed
        for response in (created, saved, read):
            assert response.headers["cache-control"] == "no-store"
        listing = c.get("/api/v1/drafts").text
        assert number not in listing and typed not in listing
    other, _ = login(races, wechat_sim)
    with races.client(headers=auth(other)) as c:
        for response in (
            c.get(f"/api/v1/drafts/{draft['id']}"),
            c.patch(f"/api/v1/drafts/{draft['id']}", json={"version": 2, "data": {}}),
            c.post(f"/api/v1/drafts/{draft['id']}/review"),
        ):
            assert response.status_code == 404
            assert number not in response.text and typed not in response.text and phone not in response.text
    log = races.log()
    assert number not in log and number[:-1] not in log and typed not in log and phone not in log
