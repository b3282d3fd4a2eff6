"""Cases reach the core platform (simulator as its own server) and its callbacks move them."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from bridge.signing import sign
from tests.conftest import PLATFORM_KEY, PLATFORM_SECRET
from tests.helpers import (
    case_of,
    submit_renewal,
    wait_for,
)


@pytest.fixture(autouse=True)
def catalogue(server):
    assert server.cli("load-demo").returncode == 0


def post_callback(
    server, body: dict, *, secret: str = PLATFORM_SECRET, timestamp: int | None = None, headers: dict | None = None
) -> httpx.Response:
    raw = json.dumps(body, ensure_ascii=False).encode()
    signed = headers or sign("POST", "/bridge/callback", raw, app_key=PLATFORM_KEY, secret=secret, timestamp=timestamp)
    return httpx.post(
        f"{server.url}/bridge/callback", content=raw, headers={**signed, "Content-Type": "application/json"}
    )


def test_happy_journey_through_the_platform(server, wechat_sim, platform_sim):
    platform_sim.control("config", {"step_delay_s": 0.2})
    try:
        tokens, case_no = submit_renewal(server, wechat_sim, "许二三")
        final = wait_for(lambda: (c := case_of(server, tokens, case_no))["status"] == "closed" and c)
    finally:
        platform_sim.control("config", {"step_delay_s": 60})
    assert [t["status"] for t in final["timeline"]] == [
        "submitted",
        "delivered_to_platform",
        "accepted",
        "in_review",
        "approved",
        "result_issued",
        "closed",
    ]
    seen = platform_sim.control("cases")
    received = next(c for c in seen["cases"] if c["case_no"] == case_no)
    assert received["received"] == 1
    submission = received["submission"]
    assert submission["service_code"] and submission["applicant"]["name"] == "许二三"
    link = submission["materials"][0]
    photo = httpx.get(link["url"])  # the platform fetches the material through its signed link
    assert photo.status_code == 200 and photo.headers["content-type"] == "image/jpeg"


def test_platform_down_then_back_delivers_once(server, wechat_sim, platform_sim):
    platform_sim.control("fail", {"down": True})
    try:
        tokens, case_no = submit_renewal(server, wechat_sim, "何二四")
        time.sleep(3)
        assert case_of(server, tokens, case_no)["status"] == "submitted"
        attempts = server.database.query(
            f"SELECT o.attempts, o.status FROM outbox o JOIN cases c ON c.id = o.case_id WHERE c.case_no = '{case_no}'"
        )
        assert attempts[0][0] >= 1 and attempts[0][1] == "pending"
    finally:
        platform_sim.control("fail", {"down": False})
    wait_for(lambda: case_of(server, tokens, case_no)["status"] == "delivered_to_platform", timeout=60)
    received = next(c for c in platform_sim.control("cases")["cases"] if c["case_no"] == case_no)
    assert received["received"] == 1


def test_the_same_callback_20_times_is_one_transition(server, wechat_sim, platform_sim):
    tokens, case_no = submit_renewal(server, wechat_sim, "吕二五")
    wait_for(lambda: case_of(server, tokens, case_no)["status"] == "delivered_to_platform")
    body = {"case_no": case_no, "seq": 1, "event": "accepted", "at": "2026-11-22T10:00:00+08:00", "data": {}}
    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda _: post_callback(server, body), range(20)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    results = sorted(r.json()["result"] for r in responses)
    assert results.count("applied") == 1 and results.count("duplicate") == 19
    timeline = case_of(server, tokens, case_no)["timeline"]
    assert [t["status"] for t in timeline].count("accepted") == 1
    # ...and one notification for the citizen.
    assert (
        server.database.query(
            f"SELECT count(*) FROM notifications n JOIN cases c ON c.id = n.case_id "
            f"WHERE c.case_no = '{case_no}' AND n.kind = 'accepted'"
        )[0][0]
        == 1
    )


def test_forged_stale_or_replayed_callbacks_are_401_and_change_nothing(server, wechat_sim, platform_sim):
    tokens, case_no = submit_renewal(server, wechat_sim, "张二七")
    wait_for(lambda: case_of(server, tokens, case_no)["status"] == "delivered_to_platform")
    body = {"case_no": case_no, "seq": 1, "event": "rejected", "data": {"reason": "伪造"}}
    forged = post_callback(server, body, secret="not-the-secret-0000000000")
    stale = post_callback(server, body, timestamp=int(time.time()) - 600)
    raw = json.dumps(body, ensure_ascii=False).encode()
    headers = sign("POST", "/bridge/callback", raw, app_key=PLATFORM_KEY, secret=PLATFORM_SECRET)
    first = post_callback(
        server,
        {**body, "event": "accepted"},
        headers=sign(
            "POST",
            "/bridge/callback",
            json.dumps({**body, "event": "accepted"}, ensure_ascii=False).encode(),
            app_key=PLATFORM_KEY,
            secret=PLATFORM_SECRET,
            nonce=headers["X-Nonce"],
        ),
    )
    replayed = post_callback(server, body, headers={**headers})
    assert forged.status_code == 401 and forged.json()["code"] == "signature_invalid"
    assert stale.status_code == 401
    assert first.status_code == 200
    assert replayed.status_code == 401 and replayed.json()["code"] == "nonce_reused"
    assert case_of(server, tokens, case_no)["status"] == "accepted"  # only the genuine one counted
    unsigned = httpx.post(f"{server.url}/bridge/callback", json=body)
    assert unsigned.status_code == 401


def test_callback_data_is_validated_per_event_and_a_bad_one_changes_nothing(server, wechat_sim, platform_sim):
    tokens, case_no = submit_renewal(server, wechat_sim, "孔二八")
    wait_for(lambda: case_of(server, tokens, case_no)["status"] == "delivered_to_platform")
    bad = {
        "rejected": ({}, "data.reason"),
        "correction_requested": ({"fields": [], "materials": []}, "data"),
        "result_issued": ({"kind": "electronic"}, "data"),
        "fee_assessed": ({"amount_fen": "20.00"}, "data.amount_fen"),
    }
    for seq, (event, (data, field)) in enumerate(bad.items(), start=1):
        refused = post_callback(server, {"case_no": case_no, "seq": seq, "event": event, "data": data})
        assert refused.status_code == 422, refused.text
        assert refused.json()["code"] == "validation_failed" and field in refused.json()["details"]["fields"], (
            refused.text
        )
    case = case_of(server, tokens, case_no)
    assert case["status"] == "delivered_to_platform" and len(case["timeline"]) == 2
    # A good rejection is shown with its reason.
    ok = post_callback(
        server, {"case_no": case_no, "seq": 9, "event": "rejected", "data": {"reason": "证件照片不符合要求"}}
    )
    assert ok.json()["result"] == "applied"
    case = case_of(server, tokens, case_no)
    assert case["status"] == "rejected" and case["timeline"][-1]["note"] == "未予通过：证件照片不符合要求"
