"""Officials' reads of personal data are audited; keys rotate without losing a row."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.conftest import base_env, run_cli, start_server, wechat_env
from tests.helpers import (
    auth,
    id_number,
    login,
    to_l3,
)


def _official(server, *roles: str) -> tuple[str, str]:
    username, password = f"off{secrets.token_hex(3)}", secrets.token_urlsafe(12)
    args = ["create-official", "--username", username, "--password-stdin"]
    for role in roles:
        args += ["--role", role]
    assert server.cli(*args, input=password + "\n").returncode == 0
    return username, password


@contextmanager
def _console(server, username: str, password: str) -> Iterator[httpx.Client]:
    with server.client() as client:
        assert client.post("/console/api/session", json={"username": username, "password": password}).status_code == 200
        yield client


def test_official_read_needs_role_and_reason_and_is_audited(server, wechat_sim):
    number = id_number(birth="19580808")
    tokens = to_l3(server, wechat_sim, "陈十三", number)
    user_id = tokens["user"]["id"]
    with _console(server, *_official(server)) as plain:
        denied = plain.get(f"/console/api/citizens/{user_id}", params={"reason": "核对办件 ZB1"})
        assert denied.status_code == 403 and denied.json()["code"] == "personal_data_forbidden"
    username, password = _official(server, "personal_data")
    with _console(server, username, password) as reader:
        no_reason = reader.get(f"/console/api/citizens/{user_id}")
        assert no_reason.status_code == 422 and "reason" in no_reason.json()["details"]["fields"]
        read = reader.get(f"/console/api/citizens/{user_id}", params={"reason": "核对办件 ZB20261122000001"})
        assert read.status_code == 200, read.text
        assert read.json()["id_number"] == number and read.json()["name"] == "陈十三"
        assert read.headers["cache-control"] == "no-store"
    rows = server.database.query(
        f"SELECT actor_id, detail FROM audit_log WHERE action = 'personal_data.read' AND target_id = '{user_id}'"
    )
    assert len(rows) == 1
    detail = rows[0][1] if isinstance(rows[0][1], dict) else json.loads(rows[0][1])
    assert detail["reason"] == "核对办件 ZB20261122000001"
    official_id = server.database.query(f"SELECT id FROM officials WHERE username = '{username}'")[0][0]
    assert rows[0][0] == str(official_id)


@pytest.mark.slow
def test_rotate_keys_reseals_every_row(tmp_path, databases, wechat_sim):
    old_key = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    new_key = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    db = databases.new("sqlite")
    env = base_env(DATABASE_URL=db.url, FIELD_ENCRYPTION_KEY=old_key, **wechat_env(wechat_sim))
    number = id_number(birth="19930101")
    server = start_server(env, tmp_path / "before", database=db)
    try:
        tokens = to_l3(server, wechat_sim, "褚十四", number)
        openid = db.query(f"SELECT openid FROM users WHERE id = {tokens['user']['id']}")[0][0]
        with server.client(headers=auth(tokens)) as c:
            c.post(
                "/api/v1/me/addresses",
                json={
                    "recipient": "褚十四",
                    "phone": "13600001111",
                    "region_code": "510502",
                    "detail": "江阳区大山坪路1号",
                },
            )
    finally:
        server.stop()
    before = db.query(f"SELECT id_number_enc, id_number_digest FROM users WHERE id = {tokens['user']['id']}")[0]

    rotated = run_cli(
        "rotate-keys", env={**env, "FIELD_ENCRYPTION_KEY": new_key, "FIELD_ENCRYPTION_OLD_KEYS": old_key}, cwd=tmp_path
    )
    assert rotated.returncode == 0, rotated.stderr
    assert "resealed" in rotated.stdout and "1 address(es)" in rotated.stdout
    after = db.query(f"SELECT id_number_enc, id_number_digest FROM users WHERE id = {tokens['user']['id']}")[0]
    assert after[0] != before[0] and after[1] != before[1]

    # The new key alone now opens everything and finds the ID number by its new blind index.
    server = start_server({**env, "FIELD_ENCRYPTION_KEY": new_key}, tmp_path / "after", database=db)
    try:
        again, _ = login(server, wechat_sim, openid)
        me = httpx.get(server.url + "/api/v1/me", headers=auth(again)).json()
        assert me["name_masked"] == "褚**" and me["id_number_masked"].endswith(number[-4:])
        assert me["addresses"][0]["detail"] == "江阳区大山坪路1号"
        other, _ = login(server, wechat_sim)
        taken = httpx.post(
            server.url + "/api/v1/identity/declare", json={"name": "褚十四", "id_number": number}, headers=auth(other)
        )
        assert taken.status_code == 409 and taken.json()["code"] == "identity_taken"
    finally:
        server.stop()
