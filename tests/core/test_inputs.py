"""Hostile inputs get a clean 4xx, never a 500 (issue 12, findings 2, 3, 4, 5, 12 and 15).

Each test sends what an attacker or a client generator sent, over real HTTP, on this run's
backends (the U+0000 ones matter most on PostgreSQL, whose text cannot hold it).
"""

from __future__ import annotations

import json
import secrets
import socket
from urllib.parse import quote, urlsplit

import httpx
import pytest

from tests.conftest import PLATFORM_KEY, PLATFORM_SECRET
from tests.helpers import RENEWAL, auth, id_number, login, new_draft, submit_renewal

DEEP = b"[" * 60_000  # far past the parser's recursion limit, within the test servers' REQUEST_MAX_SIZE
HUGE = 2**64 + 5  # beyond any 64-bit column
INT64_MAX = 2**63 - 1


@pytest.fixture(scope="module")
def citizen_tokens(server, wechat_sim):
    assert server.cli("load-demo").returncode == 0
    tokens, _ = login(server, wechat_sim)
    return tokens


@pytest.fixture(scope="module")
def official_client(server):
    """A console client signed in as an official (cookie session)."""
    username, password = f"clerk{secrets.token_hex(3)}", secrets.token_urlsafe(12)
    created = server.cli(
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
    assert created.returncode == 0, created.stderr
    client = server.client()
    signed_in = client.post("/console/api/session", json={"username": username, "password": password})
    assert signed_in.status_code == 200, signed_in.text
    yield client
    client.close()


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["message"] and "Traceback" not in response.text
    if code is not None:
        assert body["code"] == code, body
    return body


# -- finding 2: nesting ------------------------------------------------------------------


def test_deeply_nested_json_is_malformed_everywhere(server, citizen_tokens):
    with server.client() as c:
        for path in ("/api/v1/auth/login", "/api/v1/auth/refresh", "/console/api/session"):
            assert_error(
                c.post(path, content=DEEP, headers={"Content-Type": "application/json"}), 400, "malformed_json"
            )
    with server.client(headers=auth(citizen_tokens)) as c:
        draft = new_draft(c, service_code=RENEWAL)
        for method, path in (
            ("POST", "/api/v1/drafts"),
            ("PATCH", f"/api/v1/drafts/{draft['id']}"),
            ("POST", "/api/v1/identity/declare"),
            ("POST", "/api/v1/me/addresses"),
            ("POST", "/api/v1/inbox/read"),
        ):
            response = c.request(method, path, content=DEEP, headers={"Content-Type": "application/json"})
            assert_error(response, 400, "malformed_json")


def test_nesting_below_the_recursion_limit_but_beyond_any_form_is_malformed(server, citizen_tokens):
    # 500 levels parse fine in Python; nothing we accept nests that deep, so it is refused whole.
    deep = {"version": 1, "data": {"applicant": json.loads("[" * 500 + "]" * 500)}}
    with server.client(headers=auth(citizen_tokens)) as c:
        draft = new_draft(c, service_code=RENEWAL)
        body = assert_error(c.patch(f"/api/v1/drafts/{draft['id']}", json=deep), 400, "malformed_json")
        assert "32" in body["message"]
        # An ordinary form still goes through.
        assert c.patch(f"/api/v1/drafts/{draft['id']}", json={"version": 1, "data": {}}).status_code == 200


def test_deep_json_in_a_signed_platform_callback_is_malformed(server):
    from bridge.signing import sign

    target = "/bridge/callback"
    headers = sign("POST", target, DEEP, app_key=PLATFORM_KEY, secret=PLATFORM_SECRET)
    with server.client() as c:
        response = c.post(target, content=DEEP, headers={**headers, "Content-Type": "application/json"})
    assert_error(response, 400, "malformed_json")


# -- finding 3: path ids longer than their column, or of another shape ------------------------


LONG_IDS = ["a" * 33, "b" * 200, quote("中" * 11), quote("x\x00y"), quote("a'b")]


def test_path_ids_longer_than_their_column_are_404(server, citizen_tokens, official_client):
    with server.client(headers=auth(citizen_tokens)) as c:
        for bad in LONG_IDS:
            for method, path in (
                ("GET", f"/api/v1/drafts/{bad}"),
                ("PATCH", f"/api/v1/drafts/{bad}"),
                ("POST", f"/api/v1/drafts/{bad}/review"),
                ("POST", f"/api/v1/drafts/{bad}/submit"),
                ("PUT", f"/api/v1/drafts/{bad}/materials/photo"),
                ("GET", f"/api/v1/materials/{bad}"),
                ("DELETE", f"/api/v1/materials/{bad}"),
                ("GET", f"/api/v1/cases/{bad}"),
                ("POST", f"/api/v1/cases/{bad}/withdraw"),
                ("POST", f"/api/v1/cases/{bad}/resubmit"),
                ("GET", f"/api/v1/services/{bad}{'s' * 64}"),  # codes may be 64 characters
                ("GET", f"/files/{bad}/file"),
            ):
                response = c.request(method, path, json={"version": 1, "data": {}, "material_id": "m"})
                assert_error(response, 404)
    for bad in LONG_IDS:
        for path in (f"/console/api/cases/{bad}/materials/abc", f"/console/api/cases/ZB1/materials/{bad}"):
            assert_error(official_client.get(path), 404)
        assert_error(official_client.get(f"/console/api/cases/{bad}/pushes"), 404)


# -- finding 4: integers beyond 64 bits ------------------------------------------------------


def test_integers_beyond_64_bits_are_422_or_404(server, citizen_tokens, official_client):
    with server.client(headers=auth(citizen_tokens)) as c:
        for path in ("/api/v1/cases", "/api/v1/inbox"):
            body = assert_error(c.get(path, params={"before": str(HUGE)}), 422, "validation_failed")
            assert "before" in body["details"]["fields"]
            # The largest id a column holds is a valid cursor (nothing is older than it).
            assert c.get(path, params={"before": str(INT64_MAX)}).status_code == 200
        body = assert_error(c.post("/api/v1/inbox/read", json={"ids": [1, HUGE]}), 422, "validation_failed")
        assert "ids.1" in body["details"]["fields"]
        address = {
            "recipient": "张三",
            "phone": "13722223333",
            "region_code": "510502",
            "detail": "江阳区酒城大道一段1号",
        }
        for huge in (HUGE, 10**30):
            assert_error(c.put(f"/api/v1/me/addresses/{huge}", json=address), 404)
            assert_error(c.delete(f"/api/v1/me/addresses/{huge}"), 404)
        draft = new_draft(c, service_code=RENEWAL)
        response = c.patch(f"/api/v1/drafts/{draft['id']}", json={"version": HUGE, "data": {}})
        assert_error(response, 422, "validation_failed")
        response = c.post(
            f"/api/v1/drafts/{draft['id']}/submit", json={"version": 2**40}, headers={"Idempotency-Key": "k" * 16}
        )
        assert_error(response, 422, "validation_failed")
    for huge in (HUGE, 10**30):
        assert_error(official_client.get(f"/console/api/citizens/{huge}", params={"reason": "核查"}), 404)


def test_a_number_field_holding_a_huge_integer_is_a_review_problem(server, citizen_tokens):
    business = "510500000000-000128001002"  # 个体工商户登记: capital, employees and area are numbers
    with server.client(headers=auth(citizen_tokens)) as c:
        draft = new_draft(c, service_code=business)
        data = {"business": {"employees": 10**400, "capital": -(10**30)}}
        assert c.patch(f"/api/v1/drafts/{draft['id']}", json={"version": 1, "data": data}).status_code == 200
        review = c.post(f"/api/v1/drafts/{draft['id']}/review")
        assert review.status_code == 200, review.text
    problems = {p["path"]: p for p in review.json()["problems"]}
    assert problems["business.employees"]["code"] == "invalid_number"
    assert problems["business.capital"]["code"] in ("invalid_number", "out_of_range")


# -- finding 5: U+0000 -----------------------------------------------------------------------


def test_nul_in_strings_is_422_and_writes_nothing(server, citizen_tokens, official_client):
    with server.client() as c:
        body = assert_error(
            c.post("/console/api/session", json={"username": "clerk\x00", "password": "x" * 12}),
            422,
            "validation_failed",
        )
        assert body["details"]["fields"] == {"username": "不能包含空字符（U+0000）"}
    with server.client(headers=auth(citizen_tokens)) as c:
        assert_error(c.post("/api/v1/drafts", json={"service_code": "a\x00b"}), 422, "validation_failed")
        assert_error(c.post("/api/v1/identity/face/finish", json={"verify_id": "v\x00"}), 422, "validation_failed")
        draft = new_draft(c, service_code=RENEWAL)
        response = c.put(f"/api/v1/drafts/{draft['id']}/materials/photo", json={"material_id": "m\x00"})
        assert_error(response, 422, "validation_failed")
        # In a key, deep inside the form, is refused the same way.
        response = c.patch(f"/api/v1/drafts/{draft['id']}", json={"version": 1, "data": {"applicant": {"n\x00": "x"}}})
        assert "data.applicant.n\x00" in assert_error(response, 422, "validation_failed")["details"]["fields"]
        assert c.get(f"/api/v1/drafts/{draft['id']}").json()["version"] == 1
    body = assert_error(official_client.get("/console/api/citizens/1", params={"reason": "查\x00看"}), 422)
    assert body["details"]["fields"] == {"reason": "不能包含空字符（U+0000）"}


def test_withdrawal_with_nul_reason_is_refused_before_anything_changes(server, wechat_sim):
    tokens, case_no = submit_renewal(server, wechat_sim, "周二二")
    with server.client(headers=auth(tokens)) as c:
        before = c.get(f"/api/v1/cases/{case_no}").json()
        response = c.post(f"/api/v1/cases/{case_no}/withdraw", json={"reason": "不办了\x00"})
        assert_error(response, 422, "validation_failed")
        after = c.get(f"/api/v1/cases/{case_no}").json()
        # Still ours to withdraw, and withdrawn only by a clean request.
        assert after["status"] != "withdrawn" and after["next_action"]["can_withdraw"] is True
        assert [t["status"] for t in after["timeline"]][: len(before["timeline"])] == [
            t["status"] for t in before["timeline"]
        ]
        withdrawn = c.post(f"/api/v1/cases/{case_no}/withdraw", json={"reason": "不办了"})
        assert withdrawn.status_code == 200 and withdrawn.json()["status"] == "withdrawn"


# -- finding 12: digits and names ------------------------------------------------------------


def test_rare_characters_and_minority_names_are_accepted(server, wechat_sim):
    for name, stored in (("𠀀明", "𠀀明"), ("阿依古丽・买买提", "阿依古丽·买买提"), ("王〇", "王〇")):
        tokens, _ = login(server, wechat_sim)
        with server.client(headers=auth(tokens)) as c:
            response = c.post("/api/v1/identity/declare", json={"name": name, "id_number": id_number()})
            assert response.status_code == 200, (name, response.text)
            assert c.get("/api/v1/me").json()["name_masked"] == stored[0] + "*" * (len(stored) - 1)


def test_non_ascii_digits_are_refused_and_full_width_ones_normalised(server, wechat_sim, citizen_tokens):
    arabic_indic = "١٣٧٢٢٢٢٣٣٣٣"  # 13722223333 in Arabic-Indic digits: \d matches them
    address = {"recipient": "张三", "region_code": "510502", "detail": "江阳区酒城大道一段1号"}
    with server.client(headers=auth(citizen_tokens)) as c:
        body = assert_error(c.post("/api/v1/me/addresses", json={**address, "phone": arabic_indic}), 422)
        assert "phone" in body["details"]["fields"]
        body = assert_error(
            c.post("/api/v1/me/addresses", json={**address, "phone": "13722223333", "region_code": "٥١٠٥٠٢"}), 422
        )
        assert "region_code" in body["details"]["fields"]
        created = c.post(
            "/api/v1/me/addresses", json={**address, "phone": "１３７２２２２３３３３", "region_code": "５１０５０２"}
        )
        assert created.status_code == 201, created.text
        assert created.json()["region_code"] == "510502"
        assert created.json()["phone_masked"] == "137****3333"
    # An ID number typed with a full-width keyboard is the same number.
    tokens, _ = login(server, wechat_sim)
    number = id_number()
    full_width = number.translate(str.maketrans("0123456789X", "０１２３４５６７８９Ｘ"))
    with server.client(headers=auth(tokens)) as c:
        assert c.post("/api/v1/identity/declare", json={"name": "赵六", "id_number": full_width}).status_code == 200
        assert c.get("/api/v1/me").json()["id_number_masked"] == number[:4] + "*" * 10 + number[-4:]
        arabic = number.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))
        assert_error(c.post("/api/v1/identity/declare", json={"name": "赵六", "id_number": arabic}), 422)


def test_form_review_says_full_width_digits_clearly(server, citizen_tokens):
    with server.client(headers=auth(citizen_tokens)) as c:
        draft = new_draft(c, service_code=RENEWAL)
        data = {"applicant": {"phone": "１３７２２２２３３３３", "id_number": "١١٠١٠١١٩٩٠٠٢١٥١٢٣٤"}}
        assert c.patch(f"/api/v1/drafts/{draft['id']}", json={"version": 1, "data": data}).status_code == 200
        problems = {p["path"]: p for p in c.post(f"/api/v1/drafts/{draft['id']}/review").json()["problems"]}
    assert problems["applicant.phone"]["code"] == "invalid_phone"
    assert "半角数字" in problems["applicant.phone"]["message"]
    assert problems["applicant.id_number"]["code"] == "invalid_id_number"


# -- finding 15: an error mid-upload closes the connection ---------------------------------


def _raw_response_head(sock: socket.socket) -> tuple[int, dict[str, str]]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in head[1:])}
    return int(head[0].split()[1]), headers


def test_413_mid_upload_closes_the_connection(server, citizen_tokens):
    url = urlsplit(server.url)
    boundary = "zbboundary"
    start = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="kind"\r\n\r\nid_card\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + b"\xff\xd8\xff\xe0"
        + b"\0" * 4000
    )
    head = (
        "POST /api/v1/materials HTTP/1.1\r\n"
        f"Host: {url.netloc}\r\n"
        f"Authorization: Bearer {citizen_tokens['access_token']}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {64 * 1024 * 1024}\r\n\r\n"
    ).encode()
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(head + start)  # the rest of the announced 64 MB never comes
        status, headers = _raw_response_head(sock)
        assert status == 413
        assert headers["connection"] == "close"
