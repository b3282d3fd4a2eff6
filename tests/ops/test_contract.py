"""The OpenAPI contract (issue 12, findings 18 and 19): the served document is valid OpenAPI 3.1
and complete, the routes keep what it says, and its page loads nothing from another host."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser

import httpx
import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from tests.conftest import Server, base_env, start_server
from tests.helpers import RENEWAL, auth, id_number, login, new_draft, to_l3

METHODS = ("get", "put", "post", "delete", "patch")


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, databases) -> Iterator[Server]:
    """A server on the embedded default: every channel simulated, so the simulators are mounted."""
    database = databases.new("sqlite")
    srv = start_server(base_env(DATABASE_URL=database.url), tmp_path_factory.mktemp("contract"), database=database)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def document(server) -> dict:
    response = httpx.get(server.url + "/openapi.json", timeout=30)
    assert response.status_code == 200
    return response.json()


def operations(doc: dict) -> Iterator[tuple[str, str, dict]]:
    for path, item in doc["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def test_the_document_is_valid_openapi_3_1(document):
    assert document["openapi"] == "3.1.0"
    validate(document, cls=OpenAPIV31SpecValidator)


def test_every_operation_documents_its_success(document):
    missing = []
    for path, method, op in operations(document):
        ok = {code: r for code, r in op["responses"].items() if code.startswith("2")}
        if not ok:
            missing.append(f"{method.upper()} {path}: no 2xx response")
        for code, response in ok.items():
            if code == "204":
                assert "content" not in response, f"{method.upper()} {path}: 204 with a body"
            elif not response.get("content") or not all("schema" in c for c in response["content"].values()):
                missing.append(f"{method.upper()} {path}: {code} without a schema")
        assert "summary" in op and op.get("tags"), f"{method.upper()} {path}: undocumented route"
    assert not missing, "\n".join(missing)


def test_path_parameters_match_the_paths(document):
    for path, method, op in operations(document):
        in_path = set(re.findall(r"{([^}]+)}", path))
        declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        assert in_path == declared, f"{method.upper()} {path}: {in_path} != {declared}"
        assert all(p["required"] for p in op.get("parameters", []) if p["in"] == "path")


def _params(document: dict, method: str, path: str, where: str) -> dict[str, dict]:
    op = document["paths"][path][method]
    return {p["name"]: p for p in op.get("parameters", []) if p["in"] == where}


def test_query_and_header_parameters_are_documented(document):
    browse = _params(document, "get", "/api/v1/services", "query")
    assert {"department", "theme", "flag", "cursor", "limit"} <= set(browse)
    search = _params(document, "get", "/api/v1/services/search", "query")
    assert search["q"]["required"] and not search["limit"]["required"]
    for path in ("/api/v1/cases", "/api/v1/inbox"):
        assert {"before", "limit"} <= set(_params(document, "get", path, "query")), path
    for path in ("/console/api/citizens/{user_id}", "/console/api/cases/{case_no}/materials/{material_id}"):
        assert _params(document, "get", path, "query")["reason"]["required"], path
    key = _params(document, "post", "/api/v1/drafts/{draft_id}/submit", "header")["Idempotency-Key"]
    assert key["required"] and key["schema"]["type"] == "string"


def test_request_bodies_are_required_unless_optional(document):
    for path, method, op in operations(document):
        if "requestBody" in op:
            optional = (method, path) in {
                ("post", "/api/v1/cases/{case_no}/withdraw"),
                ("post", "/api/v1/drafts/{draft_id}/submit"),
            }
            assert op["requestBody"]["required"] is not optional, f"{method.upper()} {path}"


def test_the_upload_documents_its_multipart_body(document):
    body = document["paths"]["/api/v1/materials"]["post"]["requestBody"]
    schema = body["content"]["multipart/form-data"]["schema"]
    assert set(schema["required"]) == {"file", "kind"}
    assert schema["properties"]["file"]["type"] == "string"
    assert {"format", "contentMediaType", "contentEncoding"} & set(schema["properties"]["file"])
    assert "valid_until" in schema["properties"]
    assert {"200", "201"} <= set(document["paths"]["/api/v1/materials"]["post"]["responses"])


def test_security_schemes_are_declared_and_applied(document):
    schemes = document["components"]["securitySchemes"]
    assert schemes["citizenBearer"] == {**schemes["citizenBearer"], "type": "http", "scheme": "bearer"}
    assert schemes["consoleSession"]["in"] == "cookie" and schemes["consoleSession"]["name"] == "zb_console"
    assert schemes["consoleCsrf"]["in"] == "header" and schemes["consoleCsrf"]["name"] == "X-CSRF-Token"
    public = {
        ("post", "/api/v1/auth/login"),
        ("post", "/api/v1/auth/refresh"),
        ("post", "/console/api/session"),
        ("post", "/console/api/session/totp"),
    }
    # Service guides are public information (政务公开).
    public |= {("get", "/api/v1/services"), ("get", "/api/v1/services/{code}"), ("get", "/api/v1/services/search")}
    for path, method, op in operations(document):
        names = {name for requirement in op.get("security", []) for name in requirement}
        if (method, path) in public or not path.startswith(("/api/v1/", "/console/")):
            assert not names, f"{method.upper()} {path} needs no credentials"
        elif path.startswith("/api/v1/"):
            assert names == {"citizenBearer"}, f"{method.upper()} {path}"
        elif method == "get":
            assert names == {"consoleSession"}, f"{method.upper()} {path}"
        else:
            assert names == {"consoleSession", "consoleCsrf"}, f"{method.upper()} {path}"


def test_every_secured_operation_refuses_a_call_without_credentials(server, document):
    secured = [(path, method, op) for path, method, op in operations(document) if op.get("security")]
    assert len(secured) >= 35
    with server.client() as c:
        for path, method, op in secured:
            url = re.sub(r"{[^}]+}", "1", path)
            response = c.request(method.upper(), url, json={} if "requestBody" in op else None)
            assert response.status_code == 401, f"{method.upper()} {path}: {response.status_code}"
            if path.startswith("/api/v1/"):
                assert response.headers["www-authenticate"] == 'Bearer realm="zhangban"'


def test_a_refused_token_is_named_in_the_challenge(client):
    response = client.get("/api/v1/me", headers={"Authorization": "Bearer not-a-token"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith('Bearer realm="zhangban", error="invalid_token"')


def test_a_wrong_method_is_405_with_allow(client):
    response = client.put("/healthz")
    assert response.status_code == 405 and response.json()["code"] == "method_not_allowed"
    assert "GET" in {m.strip() for m in response.headers["allow"].split(",")}


def _crossings(schema: dict) -> list:
    """Values one step beyond each bound of `schema` (or of its non-null `anyOf` branch)."""
    branches = [b for b in schema.get("anyOf", [schema]) if b.get("type") != "null"]
    bad: list = []
    for branch in branches:
        if "maximum" in branch:
            bad.append(branch["maximum"] + 1)
        if "minimum" in branch:
            bad.append(branch["minimum"] - 1)
        if "maxLength" in branch:
            bad.append("x" * (branch["maxLength"] + 1))
    return bad


def test_a_wrong_method_on_a_path_with_parameters_is_405_with_allow(client):
    response = client.post("/api/v1/drafts/some-draft")
    assert response.status_code == 405
    assert {"GET", "PATCH"} <= {m.strip() for m in response.headers["allow"].split(",")}
    assert "POST" not in response.headers["allow"]


def test_documented_query_bounds_are_the_ones_enforced(server, wechat_sim, document):
    """Each documented bound of a query parameter, crossed by one, is a 422 naming the parameter."""
    tokens, _ = login(server, wechat_sim)
    checked = 0
    with server.client(headers=auth(tokens)) as c:
        for path, method, _ in operations(document):
            if method != "get" or not path.startswith("/api/v1/") or "{" in path:
                continue
            params = _params(document, method, path, "query")
            required = {n: "办事" for n, p in params.items() if p["required"]}
            for name, param in params.items():
                for bad in _crossings(param["schema"]):
                    response = c.get(path, params={**required, name: bad})
                    assert response.status_code == 422, f"GET {path}?{name}=…: {response.status_code}"
                    assert name in response.json()["details"]["fields"], response.text
                    checked += 1
    assert checked >= 12


@pytest.mark.parametrize(
    "method,path,body,field",
    [
        ("post", "/api/v1/identity/declare", {"name": "张三", "id_number": None, "transfer": 1}, "transfer"),
        (
            "post",
            "/api/v1/me/addresses",
            {"recipient": "林满", "phone": "15812345678", "region_code": "510502", "detail": "江阳", "is_default": 1},
            "is_default",
        ),
        ("post", "/api/v1/inbox/read", {"all": 1}, "all"),
    ],
)
def test_booleans_are_not_integers(server, wechat_sim, method, path, body, field):
    tokens, _ = login(server, wechat_sim)
    if body.get("id_number", "") is None:
        body = {**body, "id_number": id_number()}
    with server.client(headers=auth(tokens)) as c:
        response = c.request(method.upper(), path, json=body)
    assert response.status_code == 422, response.text
    assert set(response.json()["details"]["fields"]) == {field}, response.text


def test_a_draft_version_is_not_a_boolean(server, wechat_sim):
    tokens, _ = login(server, wechat_sim)
    with server.client(headers=auth(tokens)) as c:
        response = c.patch("/api/v1/drafts/any-draft", json={"version": True, "data": {}})
    assert response.status_code == 422, response.text
    assert "version" in response.json()["details"]["fields"]


def test_simulators_are_mounted_but_not_documented(embedded):
    assert httpx.get(embedded.url + "/_sim/wechat/__sim__/stats", timeout=30).status_code == 200
    doc = httpx.get(embedded.url + "/openapi.json", timeout=30).json()
    validate(doc, cls=OpenAPIV31SpecValidator)
    assert not [p for p in doc["paths"] if p.startswith("/_sim")]
    assert "/api/v1/drafts" in doc["paths"]


# -- /docs: everything from the service itself ---------------------------------------------------


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


def test_the_docs_page_loads_only_our_own_assets(client):
    page = client.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "<title>掌办 API 文档</title>" in page.text
    assert not re.search(r"(https?:)?//", page.text), "the page names another host"
    assert "fonts.googleapis" not in page.text and "cdn.redoc.ly" not in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "img-src 'self' data:" in csp
    assert not re.search(r"https?://", csp)
    parser = _Links()
    parser.feed(page.text)
    scripts = [u for u in parser.urls if u.endswith(".js")]
    assert len(scripts) == 2
    for url in parser.urls:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = client.get(url)
        assert asset.status_code == 200, url
        if url.endswith(".js"):
            assert "javascript" in asset.headers["content-type"]
            assert "max-age=" in asset.headers["cache-control"]
            assert "fonts.googleapis" not in asset.text and "fonts.gstatic" not in asset.text
    redoc = next(u for u in scripts if "redoc" in u)
    assert "immutable" in client.get(redoc).headers["cache-control"]
    assert client.get("/docs/assets/nope.js").status_code == 404


def test_personal_answers_and_every_error_are_never_cached(server, wechat_sim):
    """`/me`, a draft and the 409 that carries the draft it conflicts with: no cache keeps them."""
    assert server.cli("load-demo").returncode == 0
    tokens = to_l3(server, wechat_sim, "严守密", id_number())
    with server.client(headers=auth(tokens)) as c:
        me = c.get("/api/v1/me")
        draft = new_draft(c, service_code=RENEWAL)
        stale = c.patch(f"/api/v1/drafts/{draft['id']}", json={"version": draft["version"] + 5, "data": {}})
        missing = c.get("/api/v1/cases/ZB-NO-SUCH-CASE")
    assert me.status_code == 200 and me.headers["cache-control"] == "no-store"
    assert stale.status_code == 409 and stale.json()["code"] == "version_conflict", stale.text
    assert stale.headers["cache-control"] == "no-store"
    assert missing.status_code == 404 and missing.headers["cache-control"] == "no-store"
    # A public probe is not personal: no header forced on it.
    assert "cache-control" not in httpx.get(server.url + "/healthz", timeout=10).headers
