"""What one worker learns every worker knows within a second (issue 16), on a server with two
Sanic workers: a catalogue publish, and a token revoked by a logout or by a reused refresh token,
although each worker serves the catalogue and resolves tokens from its own memory.

Which worker served a request is read from the server's log: every line carries the process id,
and the access line the request id the test sent.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import yaml

from handlers.catalog.publish import DEMO_CATALOGUE
from tests.conftest import Server, _drop_redis_prefix, make_server
from tests.helpers import CODE, auth, login

pytestmark = pytest.mark.production  # several workers need Redis

CONTRACT_S = 1.0
WORKERS = 2
BATCH = 12


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory, databases, wechat_sim) -> Iterator[Server]:
    srv, prefix = make_server(tmp_path_factory, databases, wechat_sim, "twoworkers", WORKERS=str(WORKERS))
    assert srv.cli("load-demo").returncode == 0
    yield srv
    srv.stop()
    if prefix:
        _drop_redis_prefix(prefix)


def _served_by(server: Server, request_ids: set[str]) -> dict[str, int]:
    """{request id: process id of the worker whose access line names it}, for the ids logged yet."""
    found = {}
    for line in server.log().splitlines():
        if '"sanic.access"' not in line:
            continue
        entry = json.loads(line)
        if entry.get("request_id") in request_ids:
            found[entry["request_id"]] = entry["pid"]
    return found


def on_every_worker(server: Server, method: str, path: str, **kwargs) -> list[tuple[int, httpx.Response]]:
    """Sends `method path` in concurrent batches of fresh connections until every worker has
    answered it at least once; [(worker pid, response)] for every request sent."""
    answered: list[tuple[int, httpx.Response]] = []
    for _ in range(20):
        ids = [f"xw-{secrets.token_hex(6)}" for _ in range(BATCH)]

        def send(rid: str) -> httpx.Response:
            headers = {**kwargs.get("headers", {}), "X-Request-ID": rid}
            return httpx.request(method, server.url + path, headers=headers, timeout=10)

        with ThreadPoolExecutor(BATCH) as pool:
            responses = dict(zip(ids, pool.map(send, ids), strict=True))
        deadline = time.monotonic() + 5  # the access lines of this batch reach the log
        while len(pids := _served_by(server, set(ids))) < len(ids) and time.monotonic() < deadline:
            time.sleep(0.05)
        answered += [(pids[rid], responses[rid]) for rid in ids if rid in pids]
        if len({pid for pid, _ in answered}) == WORKERS:
            return answered
    raise AssertionError(f"requests reached only workers {sorted({pid for pid, _ in answered})}")


def after_the_contract(since: float) -> None:
    """Waits until a second has passed since `since` (the contract's deadline)."""
    time.sleep(max(0.0, since + CONTRACT_S - time.monotonic()))


def test_a_publish_reaches_every_worker_within_a_second(two_workers, tmp_path):
    code = CODE["公积金提取"]
    path = f"/api/v1/services/{code}"
    before = on_every_worker(two_workers, "GET", path)  # every worker keeps its rendered answer
    etags = {response.headers["etag"] for _, response in before}
    assert len(etags) == 1 and all(response.status_code == 200 for _, response in before)
    old = before[0][1].json()
    changed = yaml.safe_load(DEMO_CATALOGUE.read_text(encoding="utf-8"))
    promised = 0 if old["promised_days"] else 1  # within the legal days
    next(i for i in changed["items"] if i["code"] == code)["promised_days"] = promised
    changed_file = tmp_path / "changed.yaml"
    changed_file.write_text(yaml.safe_dump(changed, allow_unicode=True), encoding="utf-8")
    try:
        result = two_workers.cli("import-catalogue", str(changed_file))
        assert result.returncode == 0, result.stderr
        after_the_contract(time.monotonic())
        after = on_every_worker(two_workers, "GET", path, headers={"If-None-Match": etags.pop()})
        for pid, response in after:
            assert response.status_code == 200, (pid, response.status_code)
            assert response.json()["promised_days"] == promised, pid
            assert response.json()["version"] == old["version"] + 1, pid
        assert len({response.headers["etag"] for _, response in after}) == 1
    finally:
        assert two_workers.cli("load-demo").returncode == 0


@pytest.mark.parametrize("how", ["logout", "reused_refresh_token"])
def test_a_revoked_token_is_refused_by_every_worker_within_a_second(two_workers, wechat_sim, how):
    tokens, _ = login(two_workers, wechat_sim)
    if how == "reused_refresh_token":
        rotated = httpx.post(two_workers.url + "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert rotated.status_code == 200, rotated.text
        old_refresh, tokens = tokens["refresh_token"], rotated.json()
    warm = on_every_worker(two_workers, "GET", "/api/v1/me", headers=auth(tokens))
    assert all(response.status_code == 200 for _, response in warm)  # every worker keeps the token
    if how == "logout":
        revoked = httpx.post(two_workers.url + "/api/v1/auth/logout", headers=auth(tokens), timeout=10)
        assert revoked.status_code == 204, revoked.text
    else:
        revoked = httpx.post(two_workers.url + "/api/v1/auth/refresh", json={"refresh_token": old_refresh}, timeout=10)
        assert revoked.status_code == 401 and revoked.json()["code"] == "token_reused", revoked.text
    after_the_contract(time.monotonic())
    for pid, response in on_every_worker(two_workers, "GET", "/api/v1/me", headers=auth(tokens)):
        assert response.status_code == 401, (pid, response.text)
