"""Progress pushes: every change of a case reaches the citizen once, through the channel that can reach them.

The WeChat and platform simulators run as their own servers; Zhangban's pushes are read back
from the WeChat simulator's message log, its inbox over HTTP, and its attempts from the database.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from core.china_time import QuietHours
from handlers.numbers import CHINA
from handlers.push import PHRASES, body_of, clip, template_data
from tests.conftest import (
    MP_TEMPLATE,
    OA_TEMPLATE,
    PLATFORM_SECRET,
    SIM_MP_APPID,
    make_server,
    run_cli,
    spawn,
    start_server,
)
from tests.helpers import (
    RENEWAL,
    auth,
    case_of,
    id_number,
    new_draft,
    official_client,
    photo_id,
    renewal_answers,
    to_l3,
    wait_for,
)
from tests.oa_pusher import OA_APPID, event_message
from wechat.simulator import WeChatError, _check_subscribe_data

SUBSCRIBE_PATH = "/cgi-bin/message/subscribe/send"


# -- pure parts ------------------------------------------------------------------------------


def test_quiet_hours_cross_midnight_and_resume_in_the_morning():
    quiet = QuietHours.parse("22:00-08:00")
    at = lambda h, m=0: datetime(2026, 11, 22, h, m, tzinfo=CHINA)  # noqa: E731
    assert quiet.resume_at(at(21, 59)) is None and quiet.resume_at(at(8, 0)) is None
    assert quiet.resume_at(at(22, 0)) == datetime(2026, 11, 23, 8, 0, tzinfo=CHINA)
    assert quiet.resume_at(at(23, 30)) == datetime(2026, 11, 23, 8, 0, tzinfo=CHINA)
    assert quiet.resume_at(at(2, 15)) == datetime(2026, 11, 22, 8, 0, tzinfo=CHINA)
    # Given in UTC, judged in China time: 15:00 UTC is 23:00 in Luzhou.
    assert quiet.resume_at(datetime(2026, 11, 22, 15, 0, tzinfo=UTC)) == datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
    day = QuietHours.parse("12:00-13:30")
    assert day.resume_at(at(12, 45)) == at(13, 30) and day.resume_at(at(13, 30)) is None
    assert QuietHours.parse("") is None
    for bad in ("22-08", "25:00-08:00", "08:00-08:00", "22:00-08:61"):
        with pytest.raises(ValueError):
            QuietHours.parse(bad)


def test_template_values_fit_wechats_field_limits():
    from types import SimpleNamespace

    long_name = "城乡居民基本养老保险待遇领取资格认证及待遇发放申请"
    assert len(long_name) > 20
    cut = clip(long_name, 20)
    assert len(cut) == 20 and cut.endswith("…") and long_name.startswith(cut[:-1])
    assert clip("居民身份证\n换领", 20) == "居民身份证 换领"
    case = SimpleNamespace(service_name=long_name, case_no="ZB20261122000017")
    at = datetime(2026, 11, 22, 2, 30, tzinfo=UTC)
    for kind, phrase in PHRASES.items():
        body = body_of(
            kind,
            {
                "reason": "照片不清晰，背景应为白色" * 3,
                "amount_fen": 2000,
                "fields": ["a"],
                "materials": ["b"],
                "kind": "mail",
                "tracking_no": "SF1234567890",
            },
        )
        data = template_data(SimpleNamespace(kind=kind, body=body, title="", id=1, created_at=at), case)
        try:
            _check_subscribe_data(data)  # the simulator applies WeChat's documented rules
        except WeChatError as exc:
            pytest.fail(f"{kind}: WeChat would refuse {exc.errmsg}")
        assert data["thing1"]["value"] == cut and data["phrase3"]["value"] == phrase
        assert data["character_string2"]["value"] == "ZB20261122000017"
        assert data["time4"]["value"] == "2026年11月22日 10:30"  # China time
        assert data["thing5"]["value"] == clip(body, 20)
    assert body_of("fee_assessed", {"amount_fen": 2005}) == "应缴费用 20.05 元，请在小程序中完成缴费。"


# -- over HTTP -------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def catalogue(server):
    assert server.cli("load-demo").returncode == 0


def sim_user(wechat_sim, unionid: bool = True) -> tuple[str, str | None]:
    made = wechat_sim.control("users", {"appid": SIM_MP_APPID, "unionid": True} if unionid else {"appid": SIM_MP_APPID})
    return made["openid"], made.get("unionid")


def grant(server, wechat_sim, tokens, openid: str, count: int, *, at_wechat: bool = True) -> dict:
    """The citizen taps "allow" `count` times: WeChat keeps the grants, Zhangban is told."""
    if at_wechat:
        wechat_sim.control(
            "subscriptions", {"appid": SIM_MP_APPID, "openid": openid, "template_id": MP_TEMPLATE, "count": count}
        )
    for _ in range(count):
        answer = httpx.post(
            f"{server.url}/api/v1/subscriptions",
            headers=auth(tokens),
            json={"results": {"errMsg": "requestSubscribeMessage:ok", MP_TEMPLATE: "accept"}},
        )
        assert answer.status_code == 200, answer.text
    return answer.json()


def messages_for(wechat_sim, case_no: str, *to: str) -> list[dict]:
    """What WeChat delivered about `case_no` to these openids (other servers of the run reuse case numbers)."""
    return [
        m
        for m in wechat_sim.control("messages")["messages"]
        if m.get("data", {}).get("character_string2", {}).get("value") == case_no and m["touser"] in to
    ]


def submit(server, tokens, *, phone: str = "13722223333") -> str:
    with server.client(headers=auth(tokens)) as c:
        draft = new_draft(c, service_code=RENEWAL)
        answers = renewal_answers(photo_id(server, tokens))
        answers["applicant"]["phone"] = phone
        assert c.patch(f"/api/v1/drafts/{draft['id']}", json={"version": 1, "data": answers}).status_code == 200
        response = c.post(f"/api/v1/drafts/{draft['id']}/submit", headers={"Idempotency-Key": uuid.uuid4().hex})
    assert response.status_code == 201, response.text
    return response.json()["case_no"]


def attempts(server, case_no: str, kind: str) -> list[tuple]:
    return server.database.query(
        "SELECT a.channel, a.result, a.errcode FROM push_attempts a JOIN notifications n ON n.id = a.notification_id "
        f"JOIN cases c ON c.id = n.case_id WHERE c.case_no = '{case_no}' AND n.kind = '{kind}' ORDER BY a.id"
    )


def push_state(server, case_no: str, kind: str) -> tuple | None:
    rows = server.database.query(
        "SELECT n.push_status, n.channel FROM notifications n JOIN cases c ON c.id = n.case_id "
        f"WHERE c.case_no = '{case_no}' AND n.kind = '{kind}'"
    )
    return rows[0] if rows else None


def test_subscription_results_are_validated_and_counted(server, wechat_sim):
    openid, _ = sim_user(wechat_sim)
    tokens = to_l3(server, wechat_sim, "苗三一", id_number(), openid)
    with server.client(headers=auth(tokens)) as c:
        for body, field in (
            ({}, "results"),
            ({"results": {}}, "results"),
            ({"results": {MP_TEMPLATE: "yes"}}, "results"),
            ({"results": {"bad id!": "accept"}}, "results"),
        ):
            refused = c.post("/api/v1/subscriptions", json=body)
            assert refused.status_code == 422 and refused.json()["code"] == "validation_failed", body
            assert field in refused.json()["details"]["fields"]
        c.post("/api/v1/subscriptions", json={"results": {MP_TEMPLATE: "accept", OA_TEMPLATE: "reject"}})
        twice = c.post("/api/v1/subscriptions", json={"results": {MP_TEMPLATE: "accept"}}).json()
        assert twice["grants"] == [{"template_id": MP_TEMPLATE, "result": "accept", "remaining": 2}]
        banned = c.post("/api/v1/subscriptions", json={"results": {MP_TEMPLATE: "ban"}}).json()
        assert banned["grants"][0]["remaining"] == 0  # "always refuse": WeChat keeps none for us
    assert (
        httpx.post(f"{server.url}/api/v1/subscriptions", json={"results": {MP_TEMPLATE: "accept"}}).status_code == 401
    )


@pytest.mark.slow
def test_whole_journey_with_correction_pushes_every_step_once(server, wechat_sim, platform_sim):
    openid, _ = sim_user(wechat_sim)
    tokens = to_l3(server, wechat_sim, "韦三二", id_number(), openid)
    grant(server, wechat_sim, tokens, openid, 12)
    platform_sim.control("script", {"script": "correction"})
    platform_sim.control("config", {"step_delay_s": 0.5})
    try:
        case_no = submit(server, tokens)
        correcting = wait_for(lambda: (c := case_of(server, tokens, case_no))["status"] == "correction_requested" and c)
        assert correcting["next_action"] == {
            "type": "correct",
            "fields": ["applicant.phone"],
            "materials": ["photo"],
            "reason": "照片不清晰",
        }
        new_photo = photo_id(server, tokens)
        with server.client(headers=auth(tokens)) as c:
            # Only what was asked may change, and all of it at once.
            extra = c.post(
                f"/api/v1/cases/{case_no}/resubmit",
                json={"fields": {"applicant.phone": "13900001111", "appointment.period": "pm"}},
            )
            assert extra.status_code == 422
            assert set(extra.json()["details"]["fields"]) == {"fields.appointment.period", "materials.photo"}
            bad = c.post(
                f"/api/v1/cases/{case_no}/resubmit",
                json={"fields": {"applicant.phone": "12345"}, "materials": {"photo": [new_photo]}},
            )
            assert bad.status_code == 422 and bad.json()["code"] == "review_failed"
            assert [p["path"] for p in bad.json()["details"]["problems"]] == ["applicant.phone"]
            done = c.post(
                f"/api/v1/cases/{case_no}/resubmit",
                json={"fields": {"applicant.phone": "13900001111"}, "materials": {"photo": [new_photo]}},
            )
            assert done.status_code == 200, done.text
            assert done.json()["status"] == "resubmitted" and done.json()["next_action"] is None
            again = c.post(
                f"/api/v1/cases/{case_no}/resubmit",
                json={"fields": {"applicant.phone": "13900001111"}, "materials": {"photo": [new_photo]}},
            )
            assert again.status_code == 409 and again.json()["code"] == "not_in_correction"
        final = wait_for(lambda: (c := case_of(server, tokens, case_no))["status"] == "closed" and c, timeout=60)
    finally:
        platform_sim.control("script", {"script": "happy"})
        platform_sim.control("config", {"step_delay_s": 60})
    assert [t["status"] for t in final["timeline"]] == [
        "submitted",
        "delivered_to_platform",
        "accepted",
        "in_review",
        "correction_requested",
        "resubmitted",
        "in_review",
        "approved",
        "result_issued",
        "closed",
    ]
    assert final["result"]["kind"] == "electronic" and final["result"]["licence_no"].startswith("DZZZ")
    # The platform got the corrected phone and a link to the new photo.
    received = httpx.get(f"{platform_sim.url}/__sim__/cases", params={"case_no": case_no}).json()["cases"][0]
    resubmission = received["resubmissions"][0]
    assert resubmission["fields"] == {"applicant.phone": "13900001111"}
    assert [m["slot"] for m in resubmission["materials"]] == ["photo"]
    assert httpx.get(resubmission["materials"][0]["url"]).status_code == 200

    told = [
        "delivered_to_platform",
        "accepted",
        "in_review",
        "correction_requested",
        "in_review",
        "approved",
        "result_issued",
        "closed",
    ]
    pushed = wait_for(lambda: len(m := messages_for(wechat_sim, case_no, openid)) >= len(told) and m)
    time.sleep(1)  # anything extra (a duplicate) would arrive now
    pushed = messages_for(wechat_sim, case_no, openid)
    assert Counter(m["data"]["phrase3"]["value"] for m in pushed) == Counter(PHRASES[k] for k in told)
    assert {(m["type"], m["touser"], m["template_id"], m["page"]) for m in pushed} == {
        ("subscribe", openid, MP_TEMPLATE, f"pages/case/detail?case_no={case_no}")
    }
    correction = next(m for m in pushed if m["data"]["phrase3"]["value"] == "需补正")
    assert correction["data"]["thing5"]["value"].startswith("您的申请需要补正")
    with server.client(headers=auth(tokens)) as c:
        inbox = c.get("/api/v1/inbox").json()
        mine = [i for i in inbox["items"] if i["case_no"] == case_no]
        assert [i["kind"] for i in mine] == told[::-1]  # newest first
        assert inbox["unread"] == len(told) and not any(i["read"] for i in mine)
        assert "照片不清晰" in next(i for i in mine if i["kind"] == "correction_requested")["body"]
        assert "DZZZ" in next(i for i in mine if i["kind"] == "result_issued")["body"]
        page = c.get("/api/v1/inbox", params={"limit": 3}).json()
        rest = c.get("/api/v1/inbox", params={"limit": 10, "before": page["next_cursor"]}).json()
        assert [i["id"] for i in page["items"] + rest["items"]] == [i["id"] for i in inbox["items"]]
        marked = c.post("/api/v1/inbox/read", json={"ids": [mine[0]["id"]]}).json()
        assert marked == {"marked": 1, "unread": len(told) - 1}
        assert c.post("/api/v1/inbox/read", json={}).status_code == 422
        assert c.post("/api/v1/inbox/read", json={"all": True}).json() == {"marked": len(told) - 1, "unread": 0}
    grants = server.database.query(
        f"SELECT remaining FROM subscription_grants g JOIN users u ON u.id = g.user_id WHERE u.openid = '{openid}'"
    )
    assert grants == [(12 - len(told),)]


def test_43101_falls_through_to_the_official_accounts_template_message(server, wechat_sim, oa):
    openid, unionid = sim_user(wechat_sim)
    tokens = to_l3(server, wechat_sim, "柏三三", id_number(), openid)
    # The same person follows the official account (same unionid); the bot links them.
    oa_openid = wechat_sim.control("users", {"appid": OA_APPID, "unionid": unionid})["openid"]
    assert oa.post(event_message(oa_openid, "subscribe")).status_code == 200
    # Zhangban believes in a grant that WeChat does not hold (e.g. the user revoked it).
    grant(server, wechat_sim, tokens, openid, 1, at_wechat=False)
    case_no = submit(server, tokens)
    wait_for(lambda: push_state(server, case_no, "delivered_to_platform") == ("sent", "template"))
    assert attempts(server, case_no, "delivered_to_platform") == [
        ("subscribe", "no_grant", 43101),
        ("template", "ok", 0),
    ]
    [message] = messages_for(wechat_sim, case_no, openid, oa_openid)
    assert message["type"] == "template" and message["touser"] == oa_openid and message["template_id"] == OA_TEMPLATE
    assert message["miniprogram"]["pagepath"] == f"pages/case/detail?case_no={case_no}"
    # The stale grant is gone: the next push goes straight to the template message.
    assert server.database.query(
        f"SELECT remaining FROM subscription_grants g JOIN users u ON u.id = g.user_id WHERE u.openid = '{openid}'"
    ) == [(0,)]


def test_withdrawing_a_delivered_case_asks_the_platform(server, wechat_sim, platform_sim):
    openid, _ = sim_user(wechat_sim)
    tokens = to_l3(server, wechat_sim, "窦三五", id_number(), openid)
    case_no = submit(server, tokens)
    wait_for(lambda: case_of(server, tokens, case_no)["status"] == "delivered_to_platform")
    platform_sim.control("fail", {"down": True})
    try:
        down = httpx.post(f"{server.url}/api/v1/cases/{case_no}/withdraw", headers=auth(tokens), json={})
        assert down.status_code == 503 and down.json()["code"] == "platform_unavailable"
        assert case_of(server, tokens, case_no)["status"] == "delivered_to_platform"  # nothing changed
    finally:
        platform_sim.control("fail", {"down": False})
    done = httpx.post(f"{server.url}/api/v1/cases/{case_no}/withdraw", headers=auth(tokens), json={"reason": "不办了"})
    assert done.status_code == 200 and done.json()["status"] == "withdrawn"
    at_platform = httpx.get(f"{platform_sim.url}/__sim__/cases", params={"case_no": case_no}).json()["cases"][0]
    assert at_platform["status"] == "withdrawn" and at_platform["withdraw_reason"] == "不办了"


@pytest.fixture
def quiet_server(tmp_path_factory, databases, wechat_sim):
    """A server whose quiet hours are the whole day but this minute's end (so always quiet now)."""
    now = datetime.now(CHINA)
    end = (now - timedelta(minutes=2)).strftime("%H:%M")
    start = (now - timedelta(minutes=1)).strftime("%H:%M")
    srv, _ = make_server(
        tmp_path_factory, databases, wechat_sim, "quiet", with_workers=True, PUSH_QUIET_HOURS=f"{start}-{end}"
    )
    assert srv.cli("load-demo").returncode == 0
    yield srv
    srv.stop()


def test_quiet_hours_hold_routine_pushes_and_the_inbox_has_them_at_once(quiet_server, wechat_sim, platform_sim):
    openid, _ = sim_user(wechat_sim)
    tokens = to_l3(quiet_server, wechat_sim, "章三六", id_number(), openid)
    grant(quiet_server, wechat_sim, tokens, openid, 2)
    case_no = submit(quiet_server, tokens)
    wait_for(lambda: attempts(quiet_server, case_no, "delivered_to_platform"))
    assert attempts(quiet_server, case_no, "delivered_to_platform") == [("-", "deferred", None)]
    assert push_state(quiet_server, case_no, "delivered_to_platform") == ("pending", "")
    waits = quiet_server.database.query(
        f"SELECT n.next_attempt_at FROM notifications n JOIN cases c ON c.id = n.case_id WHERE c.case_no = '{case_no}'"
    )[0][0]
    waits = waits if isinstance(waits, datetime) else datetime.fromisoformat(str(waits))
    assert waits.replace(tzinfo=waits.tzinfo or UTC) > datetime.now(UTC) + timedelta(hours=23)
    assert messages_for(wechat_sim, case_no, openid) == []
    inbox = httpx.get(f"{quiet_server.url}/api/v1/inbox", headers=auth(tokens)).json()
    assert [i["kind"] for i in inbox["items"]] == ["delivered_to_platform"] and inbox["unread"] == 1


@pytest.fixture
def lease_server(tmp_path_factory, databases, wechat_sim):
    """A server (with its own worker in production mode) whose push and outbox leases last 3 s."""
    srv, _ = make_server(
        tmp_path_factory, databases, wechat_sim, "pushkill", with_workers=True, PUSH_LEASE_S="3", OUTBOX_STUCK_S="3"
    )
    assert srv.cli("load-demo").returncode == 0
    yield srv
    srv.stop()


def kill_and_restart_the_worker(server) -> None:
    """SIGKILL the process running the jobs (the worker, or the embedded server itself), then start it again."""
    worker = server.helpers[0] if server.helpers else server
    os.killpg(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait()
    if server.helpers:
        server.helpers[0] = spawn(
            ["worker", "--processes", "1"],
            env=server.env,
            cwd=server.cwd,
            log_path=server.cwd / f"worker-{time.time_ns()}.log",
        )
    else:
        restarted = start_server(server.env, server.cwd, database=server.database)
        server.proc, server.url, server.log_path = restarted.proc, restarted.url, restarted.log_path


def test_a_delivery_interrupted_by_sigkill_is_requeued_and_delivered_once(lease_server, wechat_sim, platform_sim):
    server = lease_server
    openid, _ = sim_user(wechat_sim)
    tokens = to_l3(server, wechat_sim, "俞四三", id_number(), openid)
    before = platform_sim.control("stats")["calls"].get("/api/cases", 0)
    # Servers of the run with their own database reuse case numbers: count receipts from here on.
    seen = {c["case_no"]: c["received"] for c in platform_sim.control("cases")["cases"]}
    # The platform is slow to answer the next submission: the worker is killed while it waits.
    platform_sim.control("fail", {"path": "/api/cases", "delay_s": 8, "http_status": 503, "times": 1})
    case_no = submit(server, tokens)
    wait_for(lambda: platform_sim.control("stats")["calls"].get("/api/cases", 0) > before, timeout=30, interval=0.05)
    kill_and_restart_the_worker(server)
    stuck = server.database.query(
        f"SELECT o.status, o.attempts FROM outbox o JOIN cases c ON c.id = o.case_id WHERE c.case_no = '{case_no}'"
    )
    assert stuck == [("sending", 0)]  # claimed, never finished: only its lease brings it back
    # (Read from the database: an embedded server's restart also forgets its sign-ins.)
    wait_for(
        lambda: (
            server.database.query(f"SELECT status FROM cases WHERE case_no = '{case_no}'")
            == [("delivered_to_platform",)]
        ),
        timeout=60,
    )
    received = httpx.get(f"{platform_sim.url}/__sim__/cases", params={"case_no": case_no}).json()["cases"]
    assert [c["received"] - seen.get(case_no, 0) for c in received] == [1]
    assert server.database.query(
        f"SELECT o.status FROM outbox o JOIN cases c ON c.id = o.case_id WHERE c.case_no = '{case_no}'"
    ) == [("done",)]


def test_a_push_interrupted_by_sigkill_is_delivered_exactly_once(lease_server, wechat_sim):
    server = lease_server
    openid, _ = sim_user(wechat_sim)
    tokens = to_l3(server, wechat_sim, "云三七", id_number(), openid)
    grant(server, wechat_sim, tokens, openid, 1)  # exactly one: the interrupted try must not use it up
    before = wechat_sim.control("stats")["calls"].get(SUBSCRIBE_PATH, 0)
    # WeChat takes its time over the next subscribe message: the push is in flight when we kill.
    wechat_sim.control("fail", {"path": SUBSCRIBE_PATH, "delay_s": 6, "errcode": -1, "times": 1})
    case_no = submit(server, tokens)
    wait_for(lambda: wechat_sim.control("stats")["calls"].get(SUBSCRIBE_PATH, 0) > before, timeout=30, interval=0.05)
    kill_and_restart_the_worker(server)
    assert push_state(server, case_no, "delivered_to_platform")[0] == "sending"
    wait_for(lambda: push_state(server, case_no, "delivered_to_platform") == ("sent", "subscribe"), timeout=60)
    time.sleep(2)
    assert len(messages_for(wechat_sim, case_no, openid)) == 1
    assert [a[:2] for a in attempts(server, case_no, "delivered_to_platform")] == [
        ("subscribe", "interrupted"),
        ("subscribe", "ok"),
    ]


def test_an_official_sees_why_a_citizen_was_or_was_not_reached(server, wechat_sim):
    openid, _ = sim_user(wechat_sim, unionid=False)
    tokens = to_l3(server, wechat_sim, "葛三八", id_number(), openid)
    grant(server, wechat_sim, tokens, openid, 1, at_wechat=False)  # a grant WeChat does not hold
    case_no = submit(server, tokens)
    wait_for(lambda: push_state(server, case_no, "delivered_to_platform") == ("inbox_only", "inbox"))
    handler, outsider = official_client(server, "泸州市公安局"), official_client(server, "泸州市医疗保障局")
    try:
        seen = handler.get(f"/console/api/cases/{case_no}/pushes")
        assert seen.status_code == 200 and seen.headers["cache-control"] == "no-store"
        [notification] = seen.json()["notifications"]
        assert notification["kind"] == "delivered_to_platform" and notification["push_status"] == "inbox_only"
        assert [(a["channel"], a["result"], a["errcode"]) for a in notification["attempts"]] == [
            ("subscribe", "no_grant", 43101),
            ("inbox", "inbox_only", None),
        ]
        assert "未关注公众号" in notification["attempts"][1]["detail"]
        outside = outsider.get(f"/console/api/cases/{case_no}/pushes")
        assert outside.status_code == 404 and outside.json()["code"] == "case_not_found"  # scoped: not told it exists
        assert handler.get("/console/api/cases/ZB20000101000001/pushes").status_code == 404
    finally:
        handler.close()
        outsider.close()
    assert (
        len(
            server.database.query(
                f"SELECT id FROM audit_log WHERE action = 'case.pushes.read' AND target_id = '{case_no}'"
            )
        )
        == 1
    )


def test_the_platform_sweep_recovers_callbacks_that_never_arrived(server, wechat_sim, platform_sim):
    openid, _ = sim_user(wechat_sim)
    tokens = to_l3(server, wechat_sim, "范三九", id_number(), openid)
    grant(server, wechat_sim, tokens, openid, 3)
    # The platform decides the case, but every callback is lost (refused by a wrong signature).
    platform_sim.control(
        "config", {"callback_secret": "a-secret-we-do-not-share-000", "retry_budget_s": 0.2, "step_delay_s": 0.3}
    )
    try:
        case_no = submit(server, tokens)
        wait_for(
            lambda: (
                httpx.get(f"{platform_sim.url}/__sim__/cases", params={"case_no": case_no}).json()["cases"][0]["status"]
                == "closed"
            )
        )
    finally:
        platform_sim.control("config", {"callback_secret": PLATFORM_SECRET, "retry_budget_s": 30, "step_delay_s": 60})
    assert case_of(server, tokens, case_no)["status"] == "delivered_to_platform"
    time.sleep(1.1)
    swept = run_cli("sweep", "platform", env={**server.env, "PLATFORM_SILENCE_S": "1"}, cwd=server.cwd)
    assert swept.returncode == 0, swept.stderr
    case = case_of(server, tokens, case_no)
    assert case["status"] == "closed"
    assert [(t["status"], t["note"].endswith("（补记）")) for t in case["timeline"][2:]] == [
        ("accepted", True),
        ("approved", True),
        ("closed", False),
    ]
    # One notification for the change, about where the case is now.
    wait_for(lambda: push_state(server, case_no, "closed") == ("sent", "subscribe"))
    assert [m["data"]["phrase3"]["value"] for m in messages_for(wechat_sim, case_no, openid)] == ["已报送", "已办结"]
    again = run_cli("sweep", "platform", env={**server.env, "PLATFORM_SILENCE_S": "1"}, cwd=server.cwd)
    assert again.returncode == 0 and case_of(server, tokens, case_no)["timeline"] == case["timeline"]


def test_the_overdue_sweep_marks_late_cases_and_tells_the_citizen_once(server, wechat_sim):
    openid, _ = sim_user(wechat_sim, unionid=False)
    tokens = to_l3(server, wechat_sim, "彭四十", id_number(), openid)
    case_no = submit(server, tokens)
    assert case_of(server, tokens, case_no)["overdue"] is False
    server.database.query(f"UPDATE cases SET submitted_at = '2026-01-05 09:00:00+00:00' WHERE case_no = '{case_no}'")
    for _ in range(2):
        swept = server.cli("sweep", "overdue")
        assert swept.returncode == 0, swept.stderr
    assert case_of(server, tokens, case_no)["overdue"] is True
    inbox = httpx.get(f"{server.url}/api/v1/inbox", headers=auth(tokens)).json()
    assert [i["kind"] for i in inbox["items"] if i["case_no"] == case_no].count("overdue") == 1
