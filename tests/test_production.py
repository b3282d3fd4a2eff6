"""Issue 12 hardening: production serves no open simulator, the citizen's address behind trusted
proxies, no signed link in the access log, departments from the catalogue, and a readable terminal."""

from __future__ import annotations

import base64
import io
import os
import pty
import re
import secrets
import select
import signal
import subprocess
import time

import httpx
import pytest
from PIL import Image

from tests.conftest import (
    PYTHON,
    ROOT,
    TEST_DATABASE_URL,
    TEST_REDIS_URL,
    base_env,
    free_port,
    make_server,
    production_env,
    run_cli,
    start_server,
)
from tests.helpers import auth, login

PRODUCTION_KEYS = {
    "SECRET_KEY": "k" * 48,
    "FIELD_ENCRYPTION_KEY": base64.urlsafe_b64encode(b"f" * 32).decode(),
}


# -- 1. simulators in production --------------------------------------------------------------


@pytest.mark.parametrize("command", ["serve", "worker", "scheduler"])
def test_production_refuses_to_start_with_a_simulated_channel(tmp_path, command):
    # Nothing needs to listen at REDIS_URL: the refusal comes before any connection.
    env = base_env(
        DATABASE_URL=f"sqlite://{tmp_path}/zb.sqlite3",
        REDIS_URL="redis://127.0.0.1:1/0",
        TASK_BROKER="redis",
        WECHAT_MP_APPID="wx_real_mp",
        WECHAT_MP_SECRET="real-secret",
        **PRODUCTION_KEYS,
    )
    result = run_cli(command, env=env, cwd=tmp_path, timeout=30)
    assert result.returncode == 2, result.stdout + result.stderr
    for name in (
        "WECHAT_OA_APPID",
        "WECHAT_OA_TOKEN",
        "PLATFORM_BASE_URL",
        "PLATFORM_SECRET",
        "WECHATPAY_MCHID",
        "WECHATPAY_APIV3_KEY",
        "ALIPAY_APP_ID",
        "ALIPAY_PUBLIC_KEY",
    ):
        assert name in result.stderr
    assert "WECHAT_MP_APPID" not in result.stderr  # configured, so not named
    assert "ALLOW_SIMULATORS" in result.stderr
    assert not (tmp_path / "zb.sqlite3").exists()  # refused before migrating anything


def test_staging_needs_a_simulator_secret(tmp_path):
    env = base_env(
        DATABASE_URL=f"sqlite://{tmp_path}/zb.sqlite3",
        REDIS_URL="redis://127.0.0.1:1/0",
        ALLOW_SIMULATORS="staging",
        **PRODUCTION_KEYS,
    )
    result = run_cli("serve", env=env, cwd=tmp_path, timeout=30)
    assert result.returncode == 2
    assert "SIMULATOR_SECRET: required with ALLOW_SIMULATORS" in result.stderr
    short = run_cli("serve", env={**env, "SIMULATOR_SECRET": "short"}, cwd=tmp_path, timeout=30)
    assert short.returncode == 2
    assert "SIMULATOR_SECRET: must be at least 32 characters" in short.stderr


@pytest.fixture(scope="module")
def staging(tmp_path_factory, databases):
    """A staging deployment: every channel simulated in-process, behind SIMULATOR_SECRET."""
    secret = secrets.token_urlsafe(32)
    settings = {"ALLOW_SIMULATORS": "staging", "SIMULATOR_SECRET": secret, "PUSH_QUIET_HOURS": ""}
    cwd = tmp_path_factory.mktemp("staging")
    if TEST_DATABASE_URL and TEST_REDIS_URL:
        prefix = f"zbtstaging{secrets.token_hex(3)}:"
        env = {**production_env(databases.new("postgres"), prefix, **settings), "TASK_BROKER": "memory"}
    else:
        env = base_env(DATABASE_URL=databases.new("sqlite").url, **settings)
    server = start_server(env, cwd)
    yield server, secret
    server.stop()


SIM_ROUTES = [
    ("POST", "/_sim/wechat/__sim__/users", {"appid": "wx_sim_miniprogram"}),
    ("POST", "/_sim/wechat/__sim__/login-code", {"appid": "wx_sim_miniprogram"}),
    ("POST", "/_sim/wechat/__sim__/face/complete", {"verify_id": "x", "verify_ret": 10000}),
    ("GET", "/_sim/wechat/__sim__/stats", None),
    ("POST", "/_sim/wechat/cgi-bin/stable_token", {"grant_type": "client_credential"}),
    ("GET", "/_sim/wechat/sns/jscode2session", None),
    ("GET", "/_sim/platform/__sim__/cases", None),
    ("POST", "/_sim/platform/__sim__/reset", {}),
]


@pytest.mark.parametrize(("method", "path", "body"), SIM_ROUTES)
def test_staging_simulator_routes_need_the_secret(staging, method, path, body):
    server, secret = staging
    for headers in ({}, {"X-Simulator-Secret": "wrong" + secret[5:]}, {"X-Simulator-Secret": ""}):
        response = httpx.request(method, server.url + path, json=body, headers=headers, timeout=10)
        assert response.status_code == 403, (path, response.text)
        assert response.json()["code"] == "simulator_secret_invalid"


def test_staging_works_with_the_secret_and_warns_on_every_use(staging):
    server, secret = staging
    sim = server.url + "/_sim/wechat/__sim__"
    with httpx.Client(headers={"X-Simulator-Secret": secret}, timeout=10) as c:
        openid = c.post(sim + "/users", json={"appid": "wx_sim_miniprogram"}).json()["openid"]
        code = c.post(sim + "/login-code", json={"appid": "wx_sim_miniprogram", "openid": openid}).json()["code"]
    # Our own server's WeChat client reaches the in-process simulator: it sends the secret too.
    signed_in = httpx.post(server.url + "/api/v1/auth/login", json={"code": code}, timeout=10)
    assert signed_in.status_code == 200, signed_in.text
    log = server.log()
    assert "simulators are serving (ALLOW_SIMULATORS=staging)" in log
    assert log.count("simulator used") >= 3  # two control calls, one code2Session
    assert secret not in log


def test_no_simulator_credential_is_written_in_the_code():
    for name in ("app.py", "container.py", "wechat/apps.py"):
        text = (ROOT / name).read_text(encoding="utf-8")
        for fixed in ("zhangban_sim_oa_token", "zhangban-sim-platform-secret", "sim_mp_secret_", "sim_oa_secret_"):
            assert fixed not in text, (name, fixed)


def test_embedded_simulator_secrets_follow_the_secret_key(tmp_path):
    # Derived, not fixed: two deployments with different keys share no simulated credential.
    from core.settings import load_settings
    from wechat.apps import sim_app_secret, sim_oa_callback_keys

    one = load_settings(REDIS_URL=None, SECRET_KEY="a" * 40)
    two = load_settings(REDIS_URL=None, SECRET_KEY="b" * 40)
    assert sim_app_secret(one, "mp") != sim_app_secret(two, "mp")
    assert sim_oa_callback_keys(one) != sim_oa_callback_keys(two)
    assert len(sim_oa_callback_keys(one)[1]) == 43  # a valid EncodingAESKey


# -- 11. trusted proxies -------------------------------------------------------------------------


def _logins(server, addresses: list[str], header: str = "X-Forwarded-For") -> list[int]:
    return [
        httpx.post(
            server.url + "/api/v1/auth/login", json={"code": "nope"}, headers={header: ip}, timeout=10
        ).status_code
        for ip in addresses
    ]


@pytest.fixture(scope="module")
def behind_proxy(tmp_path_factory, databases, wechat_sim):
    srv, _ = make_server(
        tmp_path_factory,
        databases,
        wechat_sim,
        "proxied",
        with_workers=False,
        PROXIES_COUNT="1",
        RATE_LIMITS="login.ip=2/minute",
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def no_proxy(tmp_path_factory, databases, wechat_sim):
    srv, _ = make_server(
        tmp_path_factory, databases, wechat_sim, "unproxied", with_workers=False, RATE_LIMITS="login.ip=2/minute"
    )
    yield srv
    srv.stop()


def test_behind_a_trusted_proxy_each_citizen_has_their_own_address(behind_proxy):
    statuses = _logins(behind_proxy, ["203.0.113.7", "203.0.113.7", "203.0.113.7"])
    assert statuses[:2] != [429, 429] and statuses[2] == 429  # one citizen's limit
    assert 429 not in _logins(behind_proxy, ["198.51.100.9"])  # another citizen is not limited by them


def test_forwarding_headers_are_ignored_by_default(no_proxy):
    # Off by default: a client forging X-Forwarded-For gets no fresh limit per forged address.
    statuses = _logins(no_proxy, ["203.0.113.1", "203.0.113.2", "203.0.113.3"])
    assert statuses[2] == 429


# -- 13. no signed link in the access log ----------------------------------------------------


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (640, 480), (30, 120, 200)).save(out, "JPEG", quality=90)
    return out.getvalue()


def test_access_log_keeps_no_signed_query_string(server, wechat_sim):
    tokens, _ = login(server, wechat_sim)
    uploaded = httpx.post(
        server.url + "/api/v1/materials",
        headers=auth(tokens),
        files={"file": ("photo.jpg", _jpeg(), "image/jpeg")},
        data={"kind": "photo"},
        timeout=60,
    )
    assert uploaded.status_code in (200, 201), uploaded.text
    url = uploaded.json()["file_url"]
    signature = httpx.URL(url).params["s"]
    assert httpx.get(url, timeout=10).status_code == 200
    deadline = time.monotonic() + 10
    path = httpx.URL(url).path
    while path + "?redacted" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)  # the access line is written after the response
    log = server.log()
    assert path + "?redacted" in log
    assert signature not in log


# -- 16. departments come from the catalogue ------------------------------------------------


def test_create_official_takes_only_a_catalogue_department(tmp_path, databases):
    database = databases.new("sqlite")
    env = base_env(DATABASE_URL=database.url)

    def create(department: str):
        return run_cli(
            "create-official",
            "--username",
            f"o{secrets.token_hex(3)}",
            "--department",
            department,
            "--password-stdin",
            env=env,
            cwd=tmp_path,
            input="long-enough-password\n",
        )

    empty = create("公安局")
    assert empty.returncode == 2
    assert "no catalogue is published yet" in empty.stderr
    assert run_cli("load-demo", env=env, cwd=tmp_path).returncode == 0
    typo = create("泸州市公安")
    assert typo.returncode == 2
    assert "'泸州市公安' is not a department of the catalogue" in typo.stderr
    assert "psb" in typo.stderr and "泸州市公安局" in typo.stderr and "泸州市医疗保障局" in typo.stderr
    assert create("psb").returncode == 0  # by code
    assert create("泸州市人力资源和社会保障局").returncode == 0  # by name
    stored = {row[0] for row in database.query("SELECT department FROM officials")}
    # Stored as the name, which case access compares with the item's department.
    assert stored == {"泸州市公安局", "泸州市人力资源和社会保障局"}


# -- 20. a readable terminal ------------------------------------------------------------------


def _heartbeat_seen(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).json().get("jobs_heartbeat_age_s") is not None
    except httpx.HTTPError:
        return False


def test_terminal_gets_readable_lines_a_banner_and_no_job_chatter(tmp_path):
    port = free_port()
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [PYTHON, str(ROOT / "server.py"), "serve", "--port", str(port)],
        env=base_env(),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=secondary,
        start_new_session=True,
    )
    os.close(secondary)
    out = b""
    try:
        deadline = time.monotonic() + 60
        # Past the banner, then past the first rounds of the 5-second jobs.
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 0.5)
            if ready:
                try:
                    out += os.read(primary, 65536)
                except OSError:
                    break
            if b"serving at" in out and _heartbeat_seen(port):
                break
        time.sleep(6)  # a relay_outbox round more
        while select.select([primary], [], [], 0.5)[0]:
            out += os.read(primary, 65536)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        os.close(primary)
    text = out.decode("utf-8", "replace")
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines and not any(line.lstrip().startswith("{") for line in lines), text[:2000]
    banner = [line for line in lines if "serving at" in line]
    assert len(banner) == 1, text[:2000]
    url = f"http://127.0.0.1:{port}"
    assert f"{url}/docs" in banner[0]
    assert f"{url}/_sim/wechat/__sim__/" in banner[0] and f"{url}/_sim/platform/__sim__/" in banner[0]
    assert not re.search(r"(Sending|Executing) task zb\.", text), text[:3000]


def test_jobs_chatter_still_there_at_debug_and_json_when_not_a_terminal(tmp_path):
    env = base_env(LOG_LEVEL="DEBUG")
    server = start_server(env, tmp_path)
    try:
        deadline = time.monotonic() + 30
        while "Executing task zb." not in server.log() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        server.stop()
    log = server.log()
    lines = [line for line in log.splitlines() if line.startswith("{")]
    assert any('"level": "DEBUG"' in line and "Executing task zb." in line for line in lines)
    assert any("serving at" in line for line in lines)
