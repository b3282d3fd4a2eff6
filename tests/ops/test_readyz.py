"""Readiness names the part that fails."""

from __future__ import annotations

import base64
import secrets

import httpx

from tests.conftest import base_env, free_port, start_server


def test_ready_when_everything_answers(client):
    response = client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["checks"] == {"database": "ok", "redis": "ok"}


def test_503_naming_redis_when_redis_is_unreachable(tmp_path, databases):
    dead_port = free_port()  # nothing listens here
    database = databases.new("sqlite")
    env = base_env(
        DATABASE_URL=database.url,
        REDIS_URL=f"redis://127.0.0.1:{dead_port}/0",
        TASK_BROKER="memory",
        SECRET_KEY=secrets.token_urlsafe(48),
        FIELD_ENCRYPTION_KEY=base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        # Production mode with no channel configured: allowed only as a staging deployment.
        ALLOW_SIMULATORS="staging",
        SIMULATOR_SECRET=secrets.token_urlsafe(32),
    )
    server = start_server(env, tmp_path)
    try:
        assert httpx.get(server.url + "/healthz").status_code == 200  # alive, just not ready
        response = httpx.get(server.url + "/readyz", timeout=10)
        assert response.status_code == 503
        body = response.json()
        assert body["code"] == "not_ready"
        assert body["details"]["failed"] == ["redis"]
        assert body["details"]["checks"]["database"] == "ok"
        assert "redis" in body["message"]
    finally:
        server.stop()
