"""Officials' accounts over real HTTP: the admin's API and page, the TOTP second factor (enrolment,
sign-in in one or two steps, replay refused, required per role), and the pages' CSRF, lockout and
cookie flags."""

from __future__ import annotations

import re
import time
import uuid

import httpx
import pyotp
import pytest

from tests.conftest import make_server
from tests.helpers import official_client

POLICE = "泸州市公安局"
FUND = "泸州市住房公积金管理中心"


@pytest.fixture(scope="module", autouse=True)
def catalogue(server):
    assert server.cli("load-demo").returncode == 0


def csrf(client: httpx.Client) -> dict:
    return {"X-CSRF-Token": client.get("/console/api/session").json()["csrf_token"]}


def new_account(admin: httpx.Client, *roles: str, department: str = POLICE) -> tuple[int, str, str]:
    username, password = f"acc{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    body = {
        "username": username,
        "display_name": "王科员",
        "password": password,
        "department": department,
        "roles": list(roles),
    }
    response = admin.post("/console/api/officials", json=body, headers=csrf(admin))
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["roles"] == list(roles) and created["department"] == department and created["totp_enabled"] is False
    return created["id"], username, password


def sign_in(server, username: str, password: str, **extra) -> httpx.Response:
    client = server.client()
    response = client.post("/console/api/session", json={"username": username, "password": password, **extra})
    response.client = client  # keep the cookie jar with the answer
    return response


def enrol(client: httpx.Client) -> pyotp.TOTP:
    started = client.post("/console/api/account/totp", headers=csrf(client))
    assert started.status_code == 200, started.text
    secret = started.json()["secret"]
    assert started.json()["uri"].startswith("otpauth://totp/") and secret in started.json()["uri"]
    totp = pyotp.TOTP(secret)
    wrong = client.post(
        "/console/api/account/totp/confirm",
        json={"code": "000000" if totp.now() != "000000" else "111111"},
        headers=csrf(client),
    )
    assert wrong.status_code == 422 and wrong.json()["code"] == "totp_code_invalid"
    confirmed = client.post("/console/api/account/totp/confirm", json={"code": totp.now()}, headers=csrf(client))
    assert confirmed.status_code == 200 and confirmed.json() == {"enabled": True}
    return totp


def next_code(totp: pyotp.TOTP) -> str:
    """A code of a step not used yet: waits for the next 30 s step (a used step never signs in)."""
    step = int(time.time() // totp.interval)
    while int(time.time() // totp.interval) == step:
        time.sleep(0.5)
    return totp.now()


def test_the_admin_api_creates_re_roles_and_disables_officials_and_only_admins_may(server):
    admin = official_client(server, POLICE, "admin")
    officer = official_client(server, POLICE, "officer")
    refused = officer.get("/console/api/officials")
    assert refused.status_code == 403 and refused.json()["code"] == "role_required"

    account_id, username, password = new_account(admin, "officer", "publisher")
    again = admin.post(
        "/console/api/officials",
        json={"username": username, "display_name": "重名", "password": "x" * 12, "roles": ["officer"]},
        headers=csrf(admin),
    )
    assert again.status_code == 409 and again.json()["code"] == "official_exists"
    bad_role = admin.post(
        "/console/api/officials",
        json={"username": "zz" + username, "display_name": "角色", "password": "x" * 12, "roles": ["root"]},
        headers=csrf(admin),
    )
    assert bad_role.status_code == 422
    bad_department = admin.patch(
        f"/console/api/officials/{account_id}", json={"department": "不存在的局"}, headers=csrf(admin)
    )
    assert bad_department.status_code == 422 and bad_department.json()["code"] == "unknown_department"

    signed = sign_in(server, username, password)
    assert signed.status_code == 200 and signed.json()["official"]["roles"] == ["officer", "publisher"]
    moved = admin.patch(
        f"/console/api/officials/{account_id}", json={"roles": ["finance"], "department": "hpf"}, headers=csrf(admin)
    )
    assert moved.status_code == 200 and moved.json()["roles"] == ["finance"] and moved.json()["department"] == FUND
    assert signed.client.get("/console/api/session").json()["official"]["roles"] == ["finance"]  # at once

    disabled = admin.patch(f"/console/api/officials/{account_id}", json={"is_active": False}, headers=csrf(admin))
    assert disabled.status_code == 200 and disabled.json()["is_active"] is False
    gone = signed.client.get("/console/api/session")
    assert gone.status_code == 401 and gone.json()["code"] == "account_disabled"
    assert sign_in(server, username, password).json()["code"] == "invalid_credentials"

    me = admin.get("/console/api/session").json()["official"]["id"]
    lockout = admin.patch(f"/console/api/officials/{me}", json={"is_active": False}, headers=csrf(admin))
    assert lockout.status_code == 403 and lockout.json()["code"] == "self_lockout"
    demote = admin.patch(f"/console/api/officials/{me}", json={"roles": ["officer"]}, headers=csrf(admin))
    assert demote.status_code == 403 and demote.json()["code"] == "self_lockout"
    no_csrf = admin.patch(f"/console/api/officials/{account_id}", json={"is_active": True})
    assert no_csrf.status_code == 403 and no_csrf.json()["code"] == "csrf_failed"

    actions = [
        row[0]
        for row in server.database.query(
            f"SELECT action FROM audit_log WHERE target_type = 'official' AND target_id = '{account_id}' ORDER BY id"
        )
    ]
    assert (
        actions[0] == "console.official_created" and actions.count("console.official_updated") == 2
    )  # the refused department wrote nothing


@pytest.mark.slow
def test_a_second_factor_is_enrolled_then_asked_at_every_sign_in_and_a_code_never_works_twice(server):
    admin = official_client(server, POLICE, "admin")
    _, username, password = new_account(admin, "officer")
    first = sign_in(server, username, password)
    assert first.json()["totp_enrolment_required"] is False
    totp = enrol(first.client)
    twice = first.client.post("/console/api/account/totp", headers=csrf(first.client))
    assert twice.status_code == 409 and twice.json()["code"] == "totp_already_enabled"

    # Two steps: the password, then the code against the pending token.
    asked = sign_in(server, username, password)
    assert asked.status_code == 401 and asked.json()["code"] == "totp_required"
    pending = asked.json()["details"]["pending"]
    assert "zb_console" not in asked.headers.get("set-cookie", "")
    code = next_code(totp)
    wrong = asked.client.post(
        "/console/api/session/totp", json={"pending": pending, "code": "123456" if code != "123456" else "654321"}
    )
    assert wrong.status_code == 401 and wrong.json()["code"] == "totp_invalid"
    done = asked.client.post("/console/api/session/totp", json={"pending": pending, "code": code})
    assert done.status_code == 200, done.text
    assert asked.client.get("/console/api/session").status_code == 200
    spent = asked.client.post("/console/api/session/totp", json={"pending": pending, "code": code})
    assert spent.status_code == 401 and spent.json()["code"] == "totp_pending_expired"

    # One step, with the same code again: refused (replay), with a fresh step's code: signed in.
    replay = sign_in(server, username, password, totp=code)
    assert replay.status_code == 401 and replay.json()["code"] == "totp_invalid"
    fresh = sign_in(server, username, password, totp=next_code(totp))
    assert fresh.status_code == 200 and fresh.json()["totp_enrolment_required"] is False

    # A lost phone: the admin resets it, and the password alone signs in again.
    account = next(o for o in admin.get("/console/api/officials").json()["items"] if o["username"] == username)
    assert account["totp_enabled"] is True
    reset = admin.post(f"/console/api/officials/{account['id']}/totp-reset", headers=csrf(admin))
    assert reset.status_code == 200 and reset.json()["totp_enabled"] is False
    assert sign_in(server, username, password).status_code == 200
    sealed = server.database.query(f"SELECT totp_secret_enc FROM officials WHERE username = '{username}'")[0][0]
    assert sealed is None


def test_a_role_that_requires_totp_locks_the_console_until_the_official_enrols(server):
    admin = official_client(server, POLICE, "admin")
    _, username, password = new_account(admin, "finance", department=FUND)
    policy = admin.put("/console/api/role-policies/finance", json={"require_totp": True}, headers=csrf(admin))
    assert policy.status_code == 200 and policy.json()["policies"]["finance"] is True
    try:
        signed = sign_in(server, username, password)
        assert signed.status_code == 200 and signed.json()["totp_enrolment_required"] is True
        blocked = signed.client.get("/console/api/payments/reconciliation")
        assert blocked.status_code == 403 and blocked.json()["code"] == "totp_enrolment_required"
        page = signed.client.get("/console/", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/console/account/totp"
        enrol(signed.client)
        assert signed.client.get("/console/api/payments/reconciliation").status_code == 200
        assert sign_in(server, username, password).json()["code"] == "totp_required"
    finally:
        admin.put("/console/api/role-policies/finance", json={"require_totp": False}, headers=csrf(admin))
    unknown = admin.put("/console/api/role-policies/root", json={"require_totp": True}, headers=csrf(admin))
    assert unknown.status_code == 422 and unknown.json()["code"] == "unknown_role"


# -- the pages --------------------------------------------------------------------------------


def hidden(html: str, name: str = "csrf_token") -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, html[:2000]
    return found.group(1)


def page_sign_in(server, username: str, password: str) -> tuple[httpx.Client, httpx.Response]:
    client = server.client()
    form = client.get("/console/login?next=/console/officials")
    assert form.status_code == 200 and "script-src 'self'" in form.headers["content-security-policy"]
    assert "unsafe-inline" not in form.headers["content-security-policy"]
    answer = client.post(
        "/console/login",
        data={
            "csrf_token": hidden(form.text),
            "next": "/console/officials",
            "username": username,
            "password": password,
        },
    )
    return client, answer


def test_the_login_page_signs_in_with_a_strict_cookie_and_forms_need_their_csrf_token(server):
    admin_api = official_client(server, POLICE, "admin")
    _, username, password = new_account(admin_api, "admin")
    anonymous = server.client().get("/console/officials")
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/console/login?next=")

    forged = server.client().post(
        "/console/login", data={"csrf_token": "x", "username": username, "password": password}
    )
    assert forged.status_code == 403 and "zb_console=" not in forged.headers.get("set-cookie", "")

    client, answer = page_sign_in(server, username, password)
    assert answer.status_code == 303 and answer.headers["location"] == "/console/officials"
    cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith("zb_console="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie  # http here
    listing = client.get("/console/officials")
    assert listing.status_code == 200 and username in listing.text and "<script>" not in listing.text
    assert not re.search(r"<[^>]+\s(on[a-z]+|style)=", listing.text)  # nothing the CSP would refuse

    new_name = f"pg{uuid.uuid4().hex[:8]}"
    form = {
        "username": new_name,
        "display_name": "赵科员",
        "password": uuid.uuid4().hex,
        "department": POLICE,
        "roles": ["officer"],
    }
    without = client.post("/console/officials", data=form)
    assert without.status_code == 403 and "csrf_failed" in without.text
    assert not server.database.query(f"SELECT id FROM officials WHERE username = '{new_name}'")
    made = client.post("/console/officials", data={**form, "csrf_token": hidden(listing.text)})
    assert made.status_code == 303
    assert server.database.query(f"SELECT roles FROM officials WHERE username = '{new_name}'")
    problems = client.post(
        "/console/officials",
        data={"csrf_token": hidden(listing.text), "username": "a", "display_name": "", "password": "short"},
    )
    assert problems.status_code == 422
    for what in ("用户名", "姓名", "初始密码", "角色"):
        assert f"<code>{what}</code>" in problems.text

    officer_api = official_client(server, POLICE, "officer")
    officer_page = officer_api.get("/console/officials")
    assert officer_page.status_code == 403 and "text/html" in officer_page.headers["content-type"]


def test_the_login_page_locks_after_five_failures(server):
    admin_api = official_client(server, POLICE, "admin")
    _, username, password = new_account(admin_api, "officer")
    for _ in range(5):
        _, failed = page_sign_in(server, username, "wrong-password-1")
        assert failed.status_code == 401 and "用户名或密码错误" in failed.text
    _, locked = page_sign_in(server, username, password)
    assert locked.status_code == 429 and "登录失败次数过多" in locked.text


@pytest.mark.slow
def test_the_login_page_asks_for_the_code_of_an_official_with_a_second_factor(server):
    admin_api = official_client(server, POLICE, "admin")
    _, username, password = new_account(admin_api, "officer")
    totp = enrol(sign_in(server, username, password).client)
    client, asked = page_sign_in(server, username, password)
    assert (
        asked.status_code == 200
        and "动态验证码" in asked.text
        and "zb_console=" not in asked.headers.get("set-cookie", "").replace("zb_console_", "")
    )
    token = hidden(asked.text)
    wrong = client.post("/console/login/totp", data={"csrf_token": token, "next": "/console/", "code": "12345x"})
    assert wrong.status_code == 401 and "动态验证码不正确" in wrong.text
    done = client.post("/console/login/totp", data={"csrf_token": token, "next": "/console/", "code": next_code(totp)})
    assert done.status_code == 303 and done.headers["location"] == "/console/"
    assert client.get("/console/").status_code == 200


def test_the_cookie_is_secure_when_the_public_address_is_https(tmp_path_factory, databases, wechat_sim):
    srv, _ = make_server(
        tmp_path_factory, databases, wechat_sim, "https", PUBLIC_BASE_URL="https://zhangban.example.gov.cn"
    )
    try:
        assert srv.cli("load-demo").returncode == 0
        client = official_client(srv, POLICE, "officer")
        form = client.get("/console/login")
        pre = form.headers["set-cookie"]
        assert "Secure" in pre and "SameSite=Strict" in pre
        session_cookie = client.cookies.jar
        assert any(c.name == "zb_console" and c.secure for c in session_cookie)
    finally:
        srv.stop()
