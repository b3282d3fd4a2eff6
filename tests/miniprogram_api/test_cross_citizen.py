"""One citizen can neither see nor change another's objects, through any route (issue 12).

Generated from the app's route table (the served `/openapi.json`, which `core.openapi.build`
makes from Sanic's router): every `/api/v1` route with a path parameter is called by citizen B,
with every method it has, on citizen A's object, so a new route is covered without anyone
remembering to add it. A route the test cannot build a call for fails the test by name.
"""

from __future__ import annotations

import random
import re
import uuid

import httpx
import pytest

from tests.conftest import SIM_MP_APPID, Server, WeChatSim
from tests.helpers import RENEWAL, assess_fee, auth, id_number, new_draft, photo_id, renewal_answers, to_l3

# What each path parameter names: one of the citizen's own objects, or a public one.
OWNED = {"draft_id", "material_id", "case_no", "address_id", "slot", "payment_id", "ticket_no"}
PUBLIC = {"code", "notice_id", "theme"}  # public: a catalogue service or theme, a published notice
ALLOWED = {403, 404, 405, 422}  # refused, or refused before any data is looked at

# Bodies that would succeed on the caller's own object, so a refusal is about ownership.
# Any other operation gets a body built from its documented schema.
SUBMIT_HEADERS = {"Idempotency-Key": "cross-citizen-0001"}


def _profiled_citizen(server: Server, sim: WeChatSim, name: str) -> tuple[dict, list[str]]:
    """An L3 citizen with a bound phone and a mailing address (what a renewal needs): their tokens
    and their personal data."""
    number = id_number()
    tokens = to_l3(server, sim, name, number)
    openid = server.database.query(f"SELECT openid FROM users WHERE id = {tokens['user']['id']}")[0][0]
    phone = f"158{random.randint(10000000, 99999999)}"
    code = sim.control("phone-code", {"appid": SIM_MP_APPID, "openid": openid, "phone": phone})["code"]
    with server.client(headers=auth(tokens)) as c:
        assert c.post("/api/v1/me/phone", json={"code": code}).status_code == 200
        address = {"recipient": name, "phone": phone, "region_code": "510502", "detail": "江阳区酒城大道一段8号"}
        assert c.post("/api/v1/me/addresses", json=address).status_code == 201
    return tokens, [name, number, phone]


@pytest.fixture(scope="module")
def owner(server, wechat_sim) -> dict:
    """Citizen A and one of each of their objects: an open draft, a material, a case, an address."""
    assert server.cli("load-demo").returncode == 0
    tokens, personal = _profiled_citizen(server, wechat_sim, "甘棠")
    photo = photo_id(server, tokens)
    with server.client(headers=auth(tokens)) as c:
        submitted = new_draft(c, service_code=RENEWAL)
        patched = c.patch(f"/api/v1/drafts/{submitted['id']}", json={"version": 1, "data": renewal_answers(photo)})
        assert patched.status_code == 200, patched.text
        case = c.post(
            f"/api/v1/drafts/{submitted['id']}/submit", json={}, headers={"Idempotency-Key": uuid.uuid4().hex}
        )
        assert case.status_code == 201, case.text
        draft = new_draft(c, service_code=RENEWAL)
        address = c.get("/api/v1/me/addresses").json()["items"][0]
    # A fee on the case, and A's order to pay it.
    assess_fee(server, tokens, case.json()["case_no"])
    with server.client(headers=auth(tokens)) as c:
        payment = c.post(
            f"/api/v1/cases/{case.json()['case_no']}/payments",
            json={"channel": "wechat"},
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        assert payment.status_code == 201, payment.text
        ticket = c.post("/api/v1/tickets", json={"kind": "consultation", "content": "换领身份证需要带户口簿吗？"})
        assert ticket.status_code == 201, ticket.text
    return {
        "tokens": tokens,
        "personal": personal,
        "ids": {
            "draft_id": draft["id"],
            "material_id": photo,
            "case_no": case.json()["case_no"],
            "address_id": address["id"],
            "slot": "photo",
            "payment_id": payment.json()["payment_id"],
            "ticket_no": ticket.json()["ticket_no"],
        },
        "draft": draft,
    }


@pytest.fixture(scope="module")
def intruder(server, wechat_sim) -> dict:
    """Citizen B, as fully verified as A, with a material of their own."""
    tokens, _ = _profiled_citizen(server, wechat_sim, "卫青")
    return {"tokens": tokens, "material_id": photo_id(server, tokens)}


def _snapshot(server: Server, tokens: dict, ids: dict) -> dict:
    """What A sees of their objects (without the signed links, which are fresh on every read)."""
    with server.client(headers=auth(tokens)) as c:
        draft = c.get(f"/api/v1/drafts/{ids['draft_id']}")
        material = c.get(f"/api/v1/materials/{ids['material_id']}")
        case = c.get(f"/api/v1/cases/{ids['case_no']}")
        addresses = c.get("/api/v1/me/addresses")
        drafts = c.get("/api/v1/drafts")
    for response in (draft, material, case, addresses, drafts):
        assert response.status_code == 200, response.text
    material_view = {k: v for k, v in material.json().items() if "url" not in k}
    case_view = case.json()
    return {
        "draft": draft.json(),
        "material": material_view,
        "case_status": case_view["status"],
        "addresses": addresses.json(),
        "drafts": sorted(d["id"] for d in drafts.json()["items"]),
    }


def _value(schema: dict, name: str = ""):
    """A minimal valid value for a JSON schema, or raise LookupError."""
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    for branch in schema.get("anyOf", []):
        if branch.get("type") != "null":
            return _value(branch, name)
    kind = schema.get("type")
    if kind == "object":
        return {k: _value(v, k) for k, v in schema.get("properties", {}).items() if k in schema.get("required", ())}
    if kind == "array":
        return []
    if kind == "integer":
        return max(schema.get("minimum", 1), 1)
    if kind == "number":
        return max(schema.get("minimum", 1), 1)
    if kind == "boolean":
        return False
    if kind == "string":
        return "x" * max(schema.get("minLength", 1), 1)
    raise LookupError(f"no value for {name or schema}")


def _call_spec(path: str, method: str, op: dict, owner: dict, intruder: dict) -> dict:
    """The request B makes on A's object through this operation, or raise LookupError."""
    headers = {**auth(intruder["tokens"])}
    for param in op.get("parameters", []):
        if param["in"] == "header" and param.get("required"):
            if param["name"] != "Idempotency-Key":
                raise LookupError(f"no value for header {param['name']}")
            headers.update(SUBMIT_HEADERS)
    kwargs: dict = {"headers": headers}
    body = op.get("requestBody")
    if body is not None:
        content = body["content"]
        if "application/json" in content:
            payload = _value(content["application/json"]["schema"])
            # The realistic bodies: those A could send on this object and succeed with.
            if "material_id" in payload:
                payload["material_id"] = intruder["material_id"]
            if "version" in payload and "draft" in path:
                payload["version"] = owner["draft"]["version"]
            kwargs["json"] = payload
        elif "multipart/form-data" in content:
            kwargs["files"] = {"file": ("x.jpg", b"\xff\xd8\xff", "image/jpeg")}
            kwargs["data"] = {"kind": "photo"}
        else:
            raise LookupError(f"no body of {sorted(content)}")
    return kwargs


def test_no_route_lets_a_citizen_touch_anothers_objects(server, owner, intruder):
    doc = httpx.get(server.url + "/openapi.json", timeout=30).json()
    before = _snapshot(server, owner["tokens"], owner["ids"])
    unbuildable, leaks, called = [], [], []
    with server.client() as c:
        for path, item in doc["paths"].items():
            names = set(re.findall(r"{([^}]+)}", path))
            if not path.startswith("/api/v1/") or not names:
                continue
            unknown = names - OWNED - PUBLIC
            if unknown:
                unbuildable.append(f"{path}: path parameter(s) {sorted(unknown)} name no known object")
                continue
            if not names & OWNED:
                continue  # public data only (the catalogue)
            url = path
            for name in names:
                url = url.replace("{" + name + "}", str(owner["ids"][name]))
            for method, op in item.items():
                try:
                    kwargs = _call_spec(path, method, op, owner, intruder)
                except LookupError as exc:
                    unbuildable.append(f"{method.upper()} {path}: {exc}")
                    continue
                response = c.request(method.upper(), url, **kwargs)
                called.append(f"{method.upper()} {path}")
                if response.status_code not in ALLOWED:
                    leaks.append(f"{method.upper()} {path}: {response.status_code} {response.text[:200]}")
                if any(secret in response.text for secret in owner["personal"]):
                    leaks.append(f"{method.upper()} {path}: the answer holds A's personal data")
    assert not unbuildable, "routes the test cannot call:\n" + "\n".join(unbuildable)
    assert not leaks, "\n".join(leaks)
    # Every kind of object was reached (drafts, materials, cases, addresses, draft slots).
    assert len(called) >= 12, called
    after = _snapshot(server, owner["tokens"], owner["ids"])
    # A delivery to the platform may move the case on by itself; nothing B did may.
    assert after["case_status"] in {before["case_status"], "delivered_to_platform"}
    assert {**after, "case_status": None} == {**before, "case_status": None}
