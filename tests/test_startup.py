"""Start-up on a bare machine, and graceful stop."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import ROOT, Server, base_env, free_port, spawn, wait_healthy


@pytest.mark.slow
def test_no_environment_at_all_serves_healthz_over_http(tmp_path):
    # No variables but PATH/HOME, no .env, a fresh folder: the embedded default must serve.
    port = free_port()
    proc = spawn(["serve", "--port", str(port)], env=base_env(), cwd=tmp_path, log_path=tmp_path / "server.log")
    server = Server(proc.proc, proc.log_path, url=f"http://127.0.0.1:{port}")
    try:
        wait_healthy(server)
        response = httpx.get(server.url + "/healthz")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}
        assert response.headers["content-type"].startswith("application/json")
        assert len(response.headers["x-request-id"]) >= 16
        ready = httpx.get(server.url + "/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"database": "ok", "redis": "ok"}
        # The embedded default keeps its SQLite file under var/ of the working folder.
        assert (tmp_path / "var" / "zb.sqlite3").is_file()
        # WeChat is simulated in-process: a citizen can sign in with no keys configured.
        sim = server.url + "/_sim/wechat/__sim__"
        openid = httpx.post(sim + "/users", json={"appid": "wx_sim_miniprogram"}).json()["openid"]
        code = httpx.post(sim + "/login-code", json={"appid": "wx_sim_miniprogram", "openid": openid}).json()["code"]
        login = httpx.post(server.url + "/api/v1/auth/login", json={"code": code})
        assert login.status_code == 200, login.text
        me = httpx.get(server.url + "/api/v1/me", headers={"Authorization": "Bearer " + login.json()["access_token"]})
        assert me.json()["identity_level"] == "L1"
    finally:
        code = server.stop()
    assert code == 0, server.log()[-3000:]
    log = server.log()
    assert "Traceback" not in log
    assert "Tortoise-ORM shutdown" in log  # pools closed on the way out


def test_help_lists_every_sub_command():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--help"], capture_output=True, text=True, env=base_env()
    )
    assert out.returncode == 0
    for command in ("serve", "worker", "scheduler", "migrate", "load-demo", "create-official"):
        assert command in out.stdout


@pytest.mark.slow
def test_embedded_default_journey_progresses_and_pushes_within_a_minute(tmp_path):
    """Nothing configured: the in-process platform moves the case and the in-process WeChat gets the pushes."""
    import uuid

    from tests.conftest import WeChatSim
    from tests.helpers import RENEWAL, auth, id_number, new_draft, photo_id, renewal_answers, to_l3, wait_for

    port = free_port()
    env = base_env(PUSH_QUIET_HOURS="")  # whatever the hour the test runs at
    proc = spawn(["serve", "--port", str(port)], env=env, cwd=tmp_path, log_path=tmp_path / "server.log")
    server = Server(proc.proc, proc.log_path, url=f"http://127.0.0.1:{port}", env=env, cwd=tmp_path)
    try:
        wait_healthy(server)
        assert server.cli("load-demo").returncode == 0
        sim = WeChatSim(server.url + "/_sim/wechat", None)
        openid = sim.control("users", {"appid": "wx_sim_miniprogram"})["openid"]
        tokens = to_l3(server, sim, "金四二", id_number(), openid)
        with server.client(headers=auth(tokens)) as c:
            for _ in range(3):  # the citizen allows three progress messages
                assert (
                    c.post(
                        "/api/v1/subscriptions", json={"results": {"zb_sim_progress_subscribe": "accept"}}
                    ).status_code
                    == 200
                )
            draft = new_draft(c, service_code=RENEWAL)
            answers = renewal_answers(photo_id(server, tokens))
            answers["applicant"]["phone"] = "13733334444"
            assert c.patch(f"/api/v1/drafts/{draft['id']}", json={"version": 1, "data": answers}).status_code == 200
            case_no = c.post(
                f"/api/v1/drafts/{draft['id']}/submit", headers={"Idempotency-Key": uuid.uuid4().hex}
            ).json()["case_no"]
            wait_for(
                lambda: (
                    c.get(f"/api/v1/cases/{case_no}").json()["status"] not in ("submitted", "delivered_to_platform")
                ),
                timeout=60,
            )
            phrases = wait_for(
                lambda: (
                    len(
                        p := [
                            m["data"]["phrase3"]["value"]
                            for m in sim.control("messages")["messages"]
                            if m["touser"] == openid
                        ]
                    )
                    >= 2
                    and p
                )
            )
            assert phrases[:2] == ["已报送", "已受理"]
            assert {i["kind"] for i in c.get("/api/v1/inbox").json()["items"]} >= {"delivered_to_platform", "accepted"}
    finally:
        code = server.stop()
    assert code == 0, server.log()[-3000:]
    assert "Traceback" not in server.log()
