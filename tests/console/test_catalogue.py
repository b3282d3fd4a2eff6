"""Catalogue management in the console (role admin): a file is checked whole and every problem
comes with its path and line; publishing is all or nothing, makes a new version only of the items
that changed, is audited, and a second identical publish changes nothing; nobody else may do it.

The use cases run on the use-case tier's database, whose published catalogue other tests read: the
`scratch` fixture puts it back after each test. The HTTP tests run on a server of their own (a
catalogue file is larger than the shared server's request limit, and they publish)."""

from __future__ import annotations

import copy
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import yaml

from core.errors import Forbidden, NotFound
from handlers.catalog import admin
from handlers.catalog.publish import DEMO_CATALOGUE
from handlers.catalog.schema import CatalogueError, parse_catalogue
from storage.models import AuditLog, CatalogueState, Official, ServiceItem
from tests.conftest import make_server
from tests.helpers import auth, login

POLICE = "泸州市公安局"
DEMO = yaml.safe_load(DEMO_CATALOGUE.read_text(encoding="utf-8"))


def dump(data: dict) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


def broken(data: dict | None = None) -> tuple[str, list[str]]:
    """The demo catalogue with five mistakes in five places, and the paths they must be reported at."""
    data = copy.deepcopy(data or DEMO)
    data["items"][3]["materials"][1]["name"] = ""
    data["items"][0]["fee"] = {"kind": "fixed"}
    data["items"][2]["department"] = "nowhere"
    del data["items"][6]["basis"]
    data["items"][7]["materials"][0]["kinds"] = ["exe"]
    return dump(data), [
        "items[0].fee",
        "items[2].department",
        "items[3].materials[1].name",
        "items[6].basis",
        "items[7].materials[0].kinds[0]",
    ]


def changed(data: dict | None = None, *, new_code: str | None = None) -> dict:
    """The demo catalogue with item 0's promised days changed and, if asked, one new item."""
    data = copy.deepcopy(data or DEMO)
    data["items"][0]["promised_days"] = max(0, data["items"][0]["promised_days"] - 1)
    if new_code:
        extra = copy.deepcopy(data["items"][1])
        extra["code"], extra["name"] = new_code, f"测试事项{new_code[-4:]}"
        data["items"].append(extra)
    return data


# -- use cases ---------------------------------------------------------------------------------


async def official(*roles: str, department: str = POLICE) -> Official:
    return await Official.create(
        username=f"cat{uuid.uuid4().hex[:8]}",
        display_name="管理员",
        department=department,
        roles=list(roles),
        password_hash="x",
    )


@pytest.fixture
async def scratch(db):
    """The published catalogue as it was before the test, put back after it (revision still bumped,
    so no reader keeps a cache of what the test published)."""
    last = await ServiceItem.all().order_by("-id").first()
    current = set(await ServiceItem.filter(is_current=True).values_list("id", flat=True))
    state = await CatalogueState.get(id="catalogue")
    content, revision = state.content, state.revision
    yield
    await ServiceItem.filter(id__gt=last.id).delete()
    await ServiceItem.filter(id__in=list(current)).update(is_current=True)
    now = await CatalogueState.get(id="catalogue")
    await CatalogueState.filter(id="catalogue").update(content=content, revision=max(now.revision, revision) + 1)


async def snapshot() -> tuple:
    rows = await ServiceItem.all().order_by("id").values_list("id", "is_current")
    state = await CatalogueState.get(id="catalogue")
    return rows, state.revision, state.content


async def test_check_lists_every_problem_with_its_path_and_line_and_publishes_nothing(scratch):
    admin_ = await official("admin")
    text, paths = broken()
    before = await snapshot()
    result = await admin.check(official=admin_, text=text)
    assert result["valid"] is False and result["items"] == 0
    assert [p["path"] for p in result["problems"]] == paths
    lines = text.splitlines()
    for p in result["problems"]:
        assert p["message"] and p["line"] >= 1
    # The line points into the item the problem is about (its code is on or above that line).
    codes = [item["code"] for item in DEMO["items"]]
    name_problem = next(p for p in result["problems"] if p["path"] == "items[3].materials[1].name")
    assert name_problem["message"] == "不能为空"
    above = "\n".join(lines[: name_problem["line"]])
    assert above.rfind(codes[3]) > above.rfind(codes[2])
    assert await snapshot() == before


async def test_check_tells_what_publishing_would_change(scratch):
    admin_ = await official("admin")
    new_code = f"T{uuid.uuid4().hex[:12]}"
    result = await admin.check(official=admin_, text=dump(changed(new_code=new_code)))
    assert result == {
        "valid": True,
        "problems": [],
        "items": len(DEMO["items"]) + 1,
        "changed": [DEMO["items"][0]["code"], new_code],
    }
    assert not await ServiceItem.filter(code=new_code).exists()


async def test_a_yaml_syntax_error_has_its_line_and_column(scratch):
    admin_ = await official("admin")
    text = DEMO_CATALOGUE.read_text(encoding="utf-8").splitlines()
    text.insert(5, "  - [unclosed")
    result = await admin.check(official=admin_, text="\n".join(text))
    [problem] = result["problems"]
    assert problem["code"] == "yaml_syntax" and problem["message"].startswith("YAML 语法错误")
    assert problem["line"] >= 6 and problem["column"] >= 1


async def test_publish_makes_versions_of_changed_items_only_and_a_repeat_changes_nothing(scratch):
    admin_ = await official("admin")
    new_code = f"T{uuid.uuid4().hex[:12]}"
    code0 = DEMO["items"][0]["code"]
    version0 = (await ServiceItem.get(code=code0, is_current=True)).version
    revision = (await CatalogueState.get(id="catalogue")).revision
    text = dump(changed(new_code=new_code))

    first = await admin.publish(official=admin_, text=text, redis=None, keys=None, ip="10.0.0.1", request_id="r1")
    assert first["published"] == 2 and first["unchanged"] == len(DEMO["items"]) - 1
    assert {(c["code"], c["version"]) for c in first["changed"]} == {(code0, version0 + 1), (new_code, 1)}
    assert first["revision"] == revision + 1
    assert [r.version for r in await ServiceItem.filter(code=code0).order_by("version")][-2:] == [
        version0,
        version0 + 1,
    ]
    assert await ServiceItem.filter(code=code0, is_current=True).count() == 1

    rows = await snapshot()
    second = await admin.publish(official=admin_, text=text, redis=None, keys=None, ip="10.0.0.1", request_id="r2")
    assert second == {"published": 0, "unchanged": len(DEMO["items"]) + 1, "changed": [], "revision": revision + 1}
    assert await snapshot() == rows

    audits = await AuditLog.filter(action="catalogue.publish", actor_id=str(admin_.id)).order_by("id")
    assert [(a.request_id, a.ip, a.target_id) for a in audits] == [
        ("r1", "10.0.0.1", str(revision + 1)),
        ("r2", "10.0.0.1", str(revision + 1)),
    ]
    assert sorted(audits[0].detail["changed"]) == sorted([f"{code0}@{version0 + 1}", f"{new_code}@1"])
    assert audits[1].detail["published"] == 0 and audits[0].detail["sha256"] == audits[1].detail["sha256"]


async def test_an_invalid_publish_lists_every_problem_publishes_nothing_and_is_audited(scratch):
    admin_ = await official("admin")
    text, paths = broken(changed(new_code=f"T{uuid.uuid4().hex[:12]}"))
    before = await snapshot()
    with pytest.raises(CatalogueError) as caught:
        await admin.publish(official=admin_, text=text, redis=None, keys=None, ip="10.0.0.2", request_id="r3")
    assert [p["path"] for p in caught.value.problems] == paths
    assert caught.value.body()["code"] == "catalogue_invalid"
    assert await snapshot() == before
    refused = await AuditLog.get(action="catalogue.publish_refused", actor_id=str(admin_.id))
    assert refused.detail["problems"] == len(paths) and refused.request_id == "r3"


@pytest.mark.parametrize("roles", [(), ("officer", "supervisor"), ("publisher", "finance", "personal_data")])
async def test_only_admins_manage_the_catalogue(scratch, roles):
    someone = await official(*roles)
    before = await snapshot()
    calls = [
        admin.check(official=someone, text=dump(DEMO)),
        admin.publish(official=someone, text=dump(changed()), redis=None, keys=None, ip="10.0.0.3", request_id="r"),
        admin.current_items(official=someone),
        admin.versions(official=someone, code=DEMO["items"][0]["code"]),
    ]
    for call in calls:
        with pytest.raises(Forbidden) as caught:
            await call
        assert caught.value.code == "role_required"
    assert await snapshot() == before
    assert not await AuditLog.filter(actor_id=str(someone.id)).exists()


async def test_items_come_in_keyset_pages_and_versions_newest_first(scratch):
    admin_ = await official("admin")
    seen, cursor = [], None
    while True:
        page = await admin.current_items(official=admin_, after=cursor, limit=5)
        assert len(page["items"]) <= 5
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    current = await ServiceItem.filter(is_current=True).order_by("code")
    assert [i["code"] for i in seen] == [r.code for r in current]
    assert all(i["version"] >= 1 and i["department"] and i["published_at"] for i in seen)
    police = await admin.current_items(official=admin_, department=POLICE)
    assert police["items"] and {i["department"] for i in police["items"]} == {POLICE}

    code0 = DEMO["items"][0]["code"]
    await admin.publish(official=admin_, text=dump(changed()), redis=None, keys=None, ip="10.0.0.4", request_id="r")
    history = await admin.versions(official=admin_, code=code0)
    versions = [v["version"] for v in history["items"]]
    assert versions == sorted(versions, reverse=True) and len(versions) >= 2
    assert [v["is_current"] for v in history["items"]] == [True] + [False] * (len(versions) - 1)
    assert history["items"][0]["content_sha256"] != history["items"][1]["content_sha256"]
    for unknown in ("no-such-item", "x" * 65):
        with pytest.raises(NotFound) as caught:
            await admin.versions(official=admin_, code=unknown)
        assert caught.value.code == "service_not_found"


def test_a_forms_own_problems_each_get_their_full_path():
    """The form engine checks a whole form in one go; each of its problems is listed on its own."""
    data = copy.deepcopy(DEMO)
    steps = data["items"][0]["form"]["steps"]
    steps[0]["fields"][1]["key"] = steps[0]["fields"][0]["key"]
    steps.append(copy.deepcopy(steps[0]))
    with pytest.raises(CatalogueError) as caught:
        parse_catalogue(dump(data))
    paths = [p["path"] for p in caught.value.problems]
    assert "items[0].form.steps[0].fields[1].key" in paths
    assert f"items[0].form.steps[{len(steps) - 1}].key" in paths
    assert all(p["line"] for p in caught.value.problems)
    assert not any(";" in p["message"] for p in caught.value.problems)


# -- over HTTP ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def catalogue_server(tmp_path_factory, databases, wechat_sim):
    srv, _ = make_server(tmp_path_factory, databases, wechat_sim, "catalogue", REQUEST_MAX_SIZE=str(4 * 1024 * 1024))
    assert srv.cli("load-demo").returncode == 0
    yield srv
    srv.stop()


def console(server, *roles: str, department: str = POLICE) -> tuple[httpx.Client, dict]:
    """A signed-in console client of a new official, and its CSRF header."""
    username, password = f"official{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    role_args = [arg for role in roles for arg in ("--role", role)]
    created = server.cli(
        "create-official", "--username", username, "--department", department, *role_args, "--password-stdin",
        input=password + "\n",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    client = server.client()
    signed_in = client.post("/console/api/session", json={"username": username, "password": password})
    assert signed_in.status_code == 200, signed_in.text
    return client, {"X-CSRF-Token": signed_in.json()["csrf_token"]}


def current(client: httpx.Client) -> dict[str, int]:
    items, cursor = {}, None
    while True:
        page = client.get(
            "/console/api/catalogue/items", params={"limit": 500, **({"after": cursor} if cursor else {})}
        )
        assert page.status_code == 200, page.text
        items.update({i["code"]: i["version"] for i in page.json()["items"]})
        if (cursor := page.json()["next_cursor"]) is None:
            return items


def test_http_validate_publish_and_versions(catalogue_server, wechat_sim):
    client, csrf = console(catalogue_server, "admin")
    before = current(client)
    assert set(before) >= {i["code"] for i in DEMO["items"]}

    text, paths = broken()
    checked = client.post("/console/api/catalogue/validate", json={"text": text}, headers=csrf)
    assert checked.status_code == 200, checked.text
    assert checked.json()["valid"] is False
    assert [p["path"] for p in checked.json()["problems"]] == paths
    assert all(p["line"] and p["message"] for p in checked.json()["problems"])

    refused = client.post("/console/api/catalogue/publish", json={"text": text}, headers=csrf)
    assert refused.status_code == 422, refused.text
    assert refused.json()["code"] == "catalogue_invalid" and refused.json()["message"]
    assert [p["path"] for p in refused.json()["details"]["problems"]] == paths
    assert current(client) == before

    tokens, _ = login(catalogue_server, wechat_sim)
    citizen = catalogue_server.client(headers=auth(tokens))
    cached = citizen.get(f"/api/v1/services/{DEMO['items'][0]['code']}")  # now in the guide cache
    assert cached.json()["promised_days"] == DEMO["items"][0]["promised_days"]

    new_code = f"T{uuid.uuid4().hex[:12]}"
    good = dump(changed(new_code=new_code))
    preview = client.post("/console/api/catalogue/validate", json={"text": good}, headers=csrf).json()
    assert preview["valid"] is True and preview["changed"] == [DEMO["items"][0]["code"], new_code]
    assert current(client) == before

    published = client.post("/console/api/catalogue/publish", json={"text": good}, headers=csrf)
    assert published.status_code == 200, published.text
    body = published.json()
    code0 = DEMO["items"][0]["code"]
    assert {(c["code"], c["version"]) for c in body["changed"]} == {(code0, before[code0] + 1), (new_code, 1)}
    # The publishing process serves the new revision at once, not after its next revision poll
    # (other processes see it within REVISION_POLL_S: tests/miniprogram_api/test_cross_worker.py).
    guide = citizen.get(f"/api/v1/services/{code0}")
    assert guide.status_code == 200, guide.text
    assert guide.json()["promised_days"] == DEMO["items"][0]["promised_days"] - 1
    assert citizen.get(f"/api/v1/services/{new_code}").status_code == 200
    after = current(client)
    assert after == {**before, code0: before[code0] + 1, new_code: 1}

    again = client.post("/console/api/catalogue/publish", json={"text": good}, headers=csrf)
    assert again.status_code == 200, again.text
    assert again.json() == {
        "published": 0,
        "unchanged": len(DEMO["items"]) + 1,
        "changed": [],
        "revision": body["revision"],
    }
    assert current(client) == after

    history = client.get(f"/console/api/catalogue/items/{code0}/versions")
    assert history.status_code == 200, history.text
    assert [v["version"] for v in history.json()["items"]][:2] == [before[code0] + 1, before[code0]]
    missing = client.get("/console/api/catalogue/items/no-such-item/versions")
    assert (missing.status_code, missing.json()["code"]) == (404, "service_not_found")

    audits = catalogue_server.database.query(
        "SELECT action, target_id FROM audit_log WHERE action LIKE 'catalogue.%' ORDER BY id"
    )
    assert audits[-3:] == [
        ("catalogue.publish_refused", audits[-3][1]),
        ("catalogue.publish", str(body["revision"])),
        ("catalogue.publish", str(body["revision"])),
    ]


def test_http_publishes_at_once_make_one_current_version_each(catalogue_server):
    """Four admins publish different changes of the same item at the same moment: each publish is
    whole, versions follow one another without a gap or a duplicate, one of them is current."""
    clients = [console(catalogue_server, "admin") for _ in range(4)]
    code1 = DEMO["items"][1]["code"]
    before = current(clients[0][0])

    def publish(n: int) -> httpx.Response:
        data = copy.deepcopy(DEMO)
        data["items"][1]["summary"] = f"并发发布 {n} {uuid.uuid4().hex}"
        client, csrf = clients[n]
        return client.post("/console/api/catalogue/publish", json={"text": dump(data)}, headers=csrf)

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(publish, range(4)))
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    made = sorted(c["version"] for a in answers for c in a.json()["changed"] if c["code"] == code1)
    assert made == [before[code1] + n for n in range(1, 5)]
    assert len({a.json()["revision"] for a in answers}) == 4
    history = clients[0][0].get(f"/console/api/catalogue/items/{code1}/versions").json()["items"]
    assert [v["is_current"] for v in history].count(True) == 1 and history[0]["version"] == made[-1]


def test_http_only_admins_and_only_with_csrf(catalogue_server):
    text = dump(DEMO)
    code0 = DEMO["items"][0]["code"]
    for roles in [("officer", "supervisor"), ("publisher", "finance", "personal_data")]:
        client, csrf = console(catalogue_server, *roles)
        for response in (
            client.post("/console/api/catalogue/validate", json={"text": text}, headers=csrf),
            client.post("/console/api/catalogue/publish", json={"text": text}, headers=csrf),
            client.get("/console/api/catalogue/items"),
            client.get(f"/console/api/catalogue/items/{code0}/versions"),
        ):
            assert (response.status_code, response.json()["code"]) == (403, "role_required"), response.text

    client, csrf = console(catalogue_server, "admin")
    no_csrf = client.post("/console/api/catalogue/publish", json={"text": text})
    assert (no_csrf.status_code, no_csrf.json()["code"]) == (403, "csrf_failed")
    anonymous = httpx.post(f"{catalogue_server.url}/console/api/catalogue/validate", json={"text": text})
    assert anonymous.status_code == 401


def test_http_bad_input_is_refused_not_crashed(catalogue_server):
    client, csrf = console(catalogue_server, "admin")
    for body, status, code in [
        ({}, 422, "validation_failed"),
        ({"text": ""}, 422, "validation_failed"),
        ({"text": 5}, 422, "validation_failed"),
    ]:
        response = client.post("/console/api/catalogue/publish", json=body, headers=csrf)
        assert (response.status_code, response.json()["code"]) == (status, code), response.text
    for text in ["[" * 100_000 + "]" * 100_000, "a: &a [*a]", "- just\n- a list\n", "schema: 1\nitems: {"]:
        response = client.post("/console/api/catalogue/validate", json={"text": text}, headers=csrf)
        assert response.status_code == 200, response.text
        assert response.json()["valid"] is False and response.json()["problems"]
    too_big = client.post("/console/api/catalogue/validate", json={"text": "#" * (3 * 1024 * 1024)}, headers=csrf)
    assert too_big.status_code == 422 and too_big.json()["code"] == "validation_failed"
    assert client.get("/console/api/catalogue/items", params={"limit": 0}).status_code == 422


# -- the page ----------------------------------------------------------------------------------


def upload(client: httpx.Client, csrf: dict, text: str | bytes, action: str, name: str = "catalogue.yaml"):
    body = text.encode("utf-8") if isinstance(text, str) else text
    return client.post(
        "/console/catalogue",
        data={"csrf_token": csrf["X-CSRF-Token"], "action": action},
        files={"file": (name, body, "application/yaml")},
    )


def test_page_checks_and_publishes_an_uploaded_file(catalogue_server):
    client, csrf = console(catalogue_server, "admin")
    page = client.get("/console/catalogue")
    assert page.status_code == 200, page.text
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert DEMO["items"][0]["code"] in page.text and "<h1>事项目录</h1>" in page.text
    before = current(client)

    text, paths = broken()
    for action in ("check", "publish"):
        shown = upload(client, csrf, text, action, name="有错的目录.yaml")
        assert shown.status_code == 422, shown.text[:2000]
        assert "有错的目录.yaml 有 5 处问题" in shown.text
        for path in paths:
            assert f"<code>{path}</code>" in shown.text
        assert "不能为空" in shown.text and "缺少此项" in shown.text
        assert current(client) == before
    assert "目录没有任何更改" in shown.text

    new_code = f"T{uuid.uuid4().hex[:12]}"
    edited = current_demo(client)  # in code order, not the demo file's
    code0 = edited["items"][0]["code"]
    good = dump(changed(edited, new_code=new_code))
    checked = upload(client, csrf, good, "check")
    assert checked.status_code == 200 and "检查通过" in checked.text and new_code in checked.text
    assert current(client) == before

    published = upload(client, csrf, good, "publish")
    assert published.status_code == 303 and published.headers["location"] == "/console/catalogue"
    landing = client.get("/console/catalogue")
    assert "2 个事项更新" in landing.text
    assert current(client) == {**before, code0: before[code0] + 1, new_code: 1}
    again = upload(client, csrf, good, "publish")
    assert again.status_code == 303
    assert "目录没有变化" in client.get("/console/catalogue").text

    history = client.get(f"/console/catalogue/items/{code0}")
    assert history.status_code == 200 and "当前版本" in history.text and "历史版本" in history.text
    exported = client.get(f"/console/catalogue/items/{code0}?format=csv")
    assert (
        exported.text.startswith("\ufeff版本,")
        and exported.text.count("\n")
        == len(client.get(f"/console/api/catalogue/items/{code0}/versions").json()["items"]) + 1
    )
    assert client.get("/console/catalogue/items/no-such-item").status_code == 404


def current_demo(client: httpx.Client) -> dict:
    """The published catalogue, exported through the page (what an admin would edit)."""
    exported = client.get("/console/catalogue/export")
    assert exported.status_code == 200 and "attachment" in exported.headers["content-disposition"]
    return yaml.safe_load(exported.text)


def test_page_refuses_what_it_cannot_read_and_who_may_not(catalogue_server):
    client, csrf = console(catalogue_server, "admin")
    before = current(client)
    for body, message in [
        (b"", "请选择要上传的目录文件"),
        ("schema: 1\nregion: 成都".encode("gbk"), "不是 UTF-8 编码"),
        (b"schema: 1\x00", "不是文本文件"),
    ]:
        shown = upload(client, csrf, body, "publish")
        assert shown.status_code == 422 and message in shown.text, shown.text[:1500]
    no_token = client.post(
        "/console/catalogue",
        data={"action": "publish"},
        files={"file": ("c.yaml", dump(changed()), "application/yaml")},
    )
    assert no_token.status_code == 403
    assert current(client) == before
    csv = client.get("/console/catalogue?format=csv")
    assert csv.status_code == 200 and csv.text.startswith("\ufeff事项编码,事项名称")
    assert csv.text.count("\n") == len(before) + 1

    officer, officer_csrf = console(catalogue_server, "officer", "supervisor", "publisher", "finance")
    assert officer.get("/console/catalogue").status_code == 403
    assert officer.get("/console/catalogue/export").status_code == 403
    assert upload(officer, officer_csrf, dump(changed()), "publish").status_code == 403
    assert current(client) == before
    anonymous = catalogue_server.client().get("/console/catalogue")
    assert anonymous.status_code in (302, 303) and anonymous.headers["location"].startswith("/console/login")
