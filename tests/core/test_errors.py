"""The JSON error format of every endpoint, over real HTTP."""

from __future__ import annotations

import re

JSON = {"content-type": "application/json"}


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"code", "message", "details"}
    assert body["code"] == code
    assert re.search(r"[\u4e00-\u9fff]", body["message"]), "message must be Chinese"
    assert "Traceback" not in response.text and 'File "' not in response.text
    assert response.headers.get("x-request-id")
    return body


def test_unknown_route_is_404_json(client):
    assert_error(client.get("/api/v1/no-such-thing"), 404, "not_found")


def test_wrong_method_is_405_with_allow(client):
    response = client.post("/healthz")
    assert_error(response, 405, "method_not_allowed")
    assert "GET" in response.headers["allow"]


def test_malformed_json_is_400(client):
    body = assert_error(
        client.post("/console/api/session", content=b'{"username": "wang",', headers=JSON), 400, "malformed_json"
    )
    assert body["details"] == {}


def test_body_that_is_not_utf8_json_is_400(client):
    assert_error(client.post("/console/api/session", content=b"\xff\xfe\x00", headers=JSON), 400, "malformed_json")


def test_oversized_body_is_413(client):
    # The test server sets REQUEST_MAX_SIZE=65536.
    response = client.post("/console/api/session", content=b"x" * 70_000, headers=JSON)
    assert_error(response, 413, "payload_too_large")


def test_validation_lists_every_bad_field_at_once(client):
    response = client.post("/console/api/session", json={"username": "", "password": 12})
    body = assert_error(response, 422, "validation_failed")
    fields = body["details"]["fields"]
    assert set(fields) == {"username", "password"}
    assert all(re.search(r"[\u4e00-\u9fff]", m) for m in fields.values())


def test_missing_fields_are_named(client):
    body = assert_error(client.post("/console/api/session", json={}), 422, "validation_failed")
    assert body["details"]["fields"] == {"username": "此项为必填项", "password": "此项为必填项"}


def test_body_of_wrong_shape(client):
    body = assert_error(client.post("/console/api/session", json=[1, 2]), 422, "validation_failed")
    assert body["details"]["fields"] == {"body": "应为对象"}


def test_form_encoded_body_is_415(client):
    response = client.post("/console/api/session", data={"username": "a", "password": "b"})
    assert_error(response, 415, "unsupported_media_type")


def test_request_id_is_echoed_or_made(client):
    echoed = client.get("/healthz", headers={"X-Request-ID": "mp-7f3a-42"})
    assert echoed.headers["x-request-id"] == "mp-7f3a-42"
    made = client.get("/healthz")
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    # An id that could inject into logs or headers is replaced, not echoed.
    hostile = client.get("/healthz", headers={"X-Request-ID": "a b<script>" + "x" * 200})
    assert re.fullmatch(r"[0-9a-f]{32}", hostile.headers["x-request-id"])
    # Errors carry it too.
    assert client.get("/nope", headers={"X-Request-ID": "err-1"}).headers["x-request-id"] == "err-1"


def test_openapi_document_and_docs_page(client):
    spec = client.get("/openapi.json")
    assert spec.status_code == 200
    doc = spec.json()
    assert doc["openapi"].startswith("3.")
    assert {"/healthz", "/readyz", "/console/api/session"} <= set(doc["paths"])
    sign_in = doc["paths"]["/console/api/session"]["post"]
    body_schema = sign_in["requestBody"]["content"]["application/json"]["schema"]
    assert set(body_schema["required"]) == {"username", "password"}
    assert "422" in sign_in["responses"] and "200" in sign_in["responses"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]
