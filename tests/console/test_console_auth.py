"""Officials sign in to the console: cookie session, CSRF, lockout, audit."""

from __future__ import annotations

import secrets

import pytest


@pytest.fixture(scope="module")
def official(server):
    assert server.cli("load-demo").returncode == 0  # the department must be the catalogue's
    username = f"clerk{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(12)
    result = server.cli(
        "create-official",
        "--username",
        username,
        "--name",
        "李办事员",
        "--department",
        "泸州市公安局",
        "--password-stdin",
        input=password + "\n",
    )
    assert result.returncode == 0, result.stderr
    assert f"official {username} created" in result.stdout
    return username, password


def test_create_official_twice_is_refused(server, official):
    again = server.cli("create-official", "--username", official[0], "--password-stdin", input="anotherpass123\n")
    assert again.returncode == 1
    assert "already exists" in again.stderr


def test_sign_in_session_and_sign_out(server, official):
    username, password = official
    with server.client() as c:
        response = c.post("/console/api/session", json={"username": username, "password": password})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["official"]["username"] == username
        assert body["official"]["display_name"] == "李办事员"
        assert "password_hash" not in response.text
        cookie = response.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        csrf = body["csrf_token"]

        me = c.get("/console/api/session")
        assert me.status_code == 200 and me.json()["official"]["username"] == username

        # Unsafe method without the CSRF token: refused, session still alive.
        refused = c.delete("/console/api/session")
        assert refused.status_code == 403 and refused.json()["code"] == "csrf_failed"
        assert c.get("/console/api/session").status_code == 200

        assert c.delete("/console/api/session", headers={"X-CSRF-Token": csrf}).status_code == 204
        c.cookies.clear()
        c.cookies.set("zb_console", cookie.split(";")[0].split("=", 1)[1], path="/console")
        gone = c.get("/console/api/session")
        assert gone.status_code == 401 and gone.json()["code"] == "session_expired"

    rows = server.database.query(
        "SELECT action, ip FROM audit_log WHERE action = 'console.sign_in' ORDER BY id DESC LIMIT 1"
    )
    assert rows and rows[0][1] == "127.0.0.1"


def test_without_cookie_is_401(client):
    response = client.get("/console/api/session")
    assert response.status_code == 401 and response.json()["code"] == "unauthenticated"


def test_wrong_password_then_lockout(server, official):
    username, password = official
    locked_user = username  # failures are counted per username
    with server.client() as c:
        unknown = c.post("/console/api/session", json={"username": "nobody-" + username, "password": "x" * 12})
        assert unknown.status_code == 401 and unknown.json()["code"] == "invalid_credentials"
        for _ in range(5):
            wrong = c.post("/console/api/session", json={"username": locked_user, "password": "wrong-password-1"})
            assert wrong.status_code == 401
            assert wrong.json()["message"] == "用户名或密码错误"
        locked = c.post("/console/api/session", json={"username": locked_user, "password": password})
        assert locked.status_code == 429 and locked.json()["code"] == "login_locked"
    failures = server.database.query(
        f"SELECT count(*) FROM audit_log WHERE action = 'console.sign_in_failed' AND target_id = '{locked_user}'"
    )
    assert failures[0][0] == 5
