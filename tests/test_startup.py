"""Start-up on a bare machine, and graceful stop."""

from __future__ import annotations

import httpx

from tests.conftest import ROOT, Server, base_env, free_port, spawn, wait_healthy


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
