"""Helpers shared by test modules: citizens over HTTP, the demo catalogue's renewal item, waiting.

Test modules import these from here, never from one another, so a test file can move or
split without breaking the others.
"""

from __future__ import annotations

import io
import json
import random
import secrets
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta

import httpx
import yaml
from PIL import Image

from bridge.signing import sign
from handlers.catalog.publish import DEMO_CATALOGUE
from tests.conftest import PLATFORM_KEY, PLATFORM_SECRET, Server, WeChatSim

DEMO = yaml.safe_load(DEMO_CATALOGUE.read_text(encoding="utf-8"))
CODE = {item["name"]: item["code"] for item in DEMO["items"]}
RENEWAL = CODE["居民身份证换领"]
TODAY = date.today()


# -- identity -------------------------------------------------------------------------------


def id_number(birth: str | None = None, region: str = "510502") -> str:
    """A valid resident ID number (random birth date unless given), check digit computed here independently."""
    if birth is None:
        birth = (date(1950, 1, 1) + timedelta(days=random.randint(0, 18000))).strftime("%Y%m%d")
    body = f"{region}{birth}{random.randint(0, 999):03d}"
    weights = [2 ** (17 - i) % 11 for i in range(17)]
    return body + "10X98765432"[sum(int(d) * w for d, w in zip(body, weights, strict=False)) % 11]


def login(server: Server, sim: WeChatSim, openid: str | None = None) -> tuple[dict, str]:
    code, openid = sim.login_code(openid)
    response = httpx.post(server.url + "/api/v1/auth/login", json={"code": code})
    assert response.status_code == 200, response.text
    return response.json(), openid


def auth(tokens: dict) -> dict:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def to_l3(server: Server, sim: WeChatSim, name: str, number: str, openid: str | None = None) -> dict:
    tokens, _ = login(server, sim, openid)
    with server.client(headers=auth(tokens)) as c:
        assert c.post("/api/v1/identity/declare", json={"name": name, "id_number": number}).status_code == 200
        verify_id = c.post("/api/v1/identity/face/start").json()["verify_id"]
        sim.control("face/complete", {"verify_id": verify_id, "verify_ret": 10000})
        finished = c.post("/api/v1/identity/face/finish", json={"verify_id": verify_id})
        assert finished.status_code == 200, finished.text
    return tokens


# -- drafts and cases -----------------------------------------------------------------------


def photo_id(server, tokens: dict) -> str:
    """A real uploaded photo of the citizen's, for the material slots."""
    import io

    from PIL import Image

    image = Image.new("RGB", (900, 1200), (random.randint(0, 255), 150, 200))
    for x in range(0, 900, 30):
        for y in range(0, 1200, 30):
            image.putpixel((x, y), (0, 0, 0))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    response = httpx.post(
        server.url + "/api/v1/materials",
        headers=auth(tokens),
        data={"kind": "photo"},
        files={"file": ("photo.jpg", out.getvalue(), "image/jpeg")},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def renewal_answers(photo: str = "not-uploaded") -> dict:
    return {
        "applicant": {"old_expiry": (TODAY + timedelta(days=30)).isoformat()},
        "appointment": {
            "station": "jiangyang",
            "date": (TODAY + timedelta(days=5)).isoformat(),
            "period": "am",
            "delivery": "pickup",
        },
        "materials": {"photo": [photo]},
    }


def new_draft(c: httpx.Client, **body) -> dict:
    response = c.post("/api/v1/drafts", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def submit_renewal(server, wechat_sim, name: str) -> tuple[dict, str]:
    """A new L3 citizen's submitted ID-card renewal: (tokens, case_no)."""
    tokens = to_l3(server, wechat_sim, name, id_number())
    with server.client(headers=auth(tokens)) as c:
        draft = new_draft(c, service_code=RENEWAL)
        answers = renewal_answers(photo_id(server, tokens))
        answers["applicant"]["phone"] = "13722223333"
        c.patch(f"/api/v1/drafts/{draft['id']}", json={"version": 1, "data": answers})
        response = c.post(f"/api/v1/drafts/{draft['id']}/submit", headers={"Idempotency-Key": uuid.uuid4().hex})
    assert response.status_code == 201, response.text
    return tokens, response.json()["case_no"]


def case_of(server, tokens, case_no) -> dict:
    return httpx.get(f"{server.url}/api/v1/cases/{case_no}", headers=auth(tokens)).json()


def platform_callback(server, case_no: str, seq: int, event: str, data: dict | None = None) -> None:
    """The core platform's signed callback about `case_no`, as the platform sends it; must be applied."""
    body = {"case_no": case_no, "seq": seq, "event": event, "at": "2026-11-30T10:00:00+08:00", "data": data or {}}
    raw = json.dumps(body, ensure_ascii=False).encode()
    headers = sign("POST", "/bridge/callback", raw, app_key=PLATFORM_KEY, secret=PLATFORM_SECRET)
    response = httpx.post(
        f"{server.url}/bridge/callback", content=raw, headers={**headers, "Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text


def assess_fee(server, tokens: dict, case_no: str, amount_fen: int = 2000, *, platform=None) -> None:
    """Takes a submitted case to `in_review` with a fee the platform assessed (and its notice number).

    With `platform` (the platform simulator calling back to `server`), the platform decides and
    so knows the fee (it takes the payment and issues the receipt); without, the callbacks are
    sent as the platform would."""
    wait_for(lambda: case_of(server, tokens, case_no)["status"] == "delivered_to_platform")
    fee = {"amount_fen": amount_fen, "notice_no": "5105002600001234"}
    for seq, (event, data) in enumerate((("accepted", {}), ("in_review", {}), ("fee_assessed", fee)), start=1):
        if platform is None:
            platform_callback(server, case_no, seq, event, data)
        else:
            assert platform.control("event", {"case_no": case_no, "event": event, "data": data})["delivered"]


# -- waiting --------------------------------------------------------------------------------


def wait_for(predicate, timeout: float = 40, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


# -- materials ----------------------------------------------------------------------------


def jpeg(width=1600, height=1200, color=(30, 120, 200), exif: Image.Exif | None = None, quality=90) -> bytes:
    image = Image.new("RGB", (width, height), color)
    # Some detail, so the photo is not flagged as blurry or flat.
    for x in range(0, width, 40):
        for y in range(0, height, 40):
            image.putpixel((x, y), (255, 255, 255))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, exif=exif or Image.Exif())
    return out.getvalue()


def upload(server, tokens, data: bytes, *, name="photo.jpg", kind="photo", mime="image/jpeg") -> httpx.Response:
    return httpx.post(
        server.url + "/api/v1/materials",
        headers=auth(tokens),
        files={"file": (name, data, mime)},
        data={"kind": kind},
        timeout=60,
    )


def official_client(server: Server, department: str, *roles: str) -> httpx.Client:
    """A console client signed in as a new official of `department` (created through the CLI)."""
    username, password = f"official{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    role_args = [arg for role in roles for arg in ("--role", role)]
    created = server.cli(
        "create-official",
        "--username",
        username,
        "--department",
        department,
        *role_args,
        "--password-stdin",
        input=password + "\n",
    )
    assert created.returncode == 0, created.stderr
    client = server.client()
    assert client.post("/console/api/session", json={"username": username, "password": password}).status_code == 200
    return client


# -- rows written straight into the server's database (for figures over a chosen range) -------


def _query(server, sql: str) -> list[tuple]:
    """`server.database.query` in a thread of its own: on PostgreSQL it runs its own event loop,
    which cannot start in a thread that already runs one (Playwright's sync API does)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(server.database.query, sql).result()


def insert_case_row(server, code: str, submitted_at: str) -> None:
    """A case row as the app writes it, submitted at `submitted_at` (UTC)."""
    item_id, name = _query(server, f"SELECT id, name FROM service_items WHERE code = '{code}' AND is_current = true")[0]
    user_id = _query(
        server,
        "INSERT INTO users (identity_level, is_active, created_at, updated_at) "
        "VALUES ('L1', true, '2025-03-01 00:00:00+00:00', '2025-03-01 00:00:00+00:00') RETURNING id",
    )[0][0]
    _query(
        server,
        "INSERT INTO cases (case_no, user_id, service_item_id, service_code, service_name, status, materials, "
        "fee_ref, platform_seq, row_version, submitted_at, updated_at) VALUES "
        f"('ZBT{secrets.token_hex(6)}', {user_id}, {item_id}, '{code}', '{name}', 'in_review', '{{}}', '', 0, 1, "
        f"'{submitted_at}', '{submitted_at}')",
    )


def insert_ticket_row(server, department: str, due_at: str) -> str:
    ticket_no = "TS" + secrets.token_hex(6)
    blob = "X'78'" if server.database.kind == "sqlite" else "decode('78', 'hex')"
    _query(
        server,
        "INSERT INTO tickets (ticket_no, kind, oa_openid, department, content_enc, status, dedup_key, created_at, "
        f"channel) VALUES ('{ticket_no}', 'complaint', '', '{department}', {blob}, 'open', '{ticket_no}', "
        f"'{due_at}', 'miniprogram')",
    )
    _query(server, f"UPDATE tickets SET due_at = '{due_at}' WHERE ticket_no = '{ticket_no}'")
    return ticket_no
