"""Background jobs run: the scheduler kicks the heartbeat and a worker runs it."""

from __future__ import annotations

import time

import pytest

from tests.conftest import production_env, run_cli


def test_scheduled_heartbeat_reaches_a_worker(client):
    # Embedded: in-process scheduler + memory broker. Production run: scheduler and worker
    # processes over the Redis stream.
    deadline = time.monotonic() + 40
    age = None
    while time.monotonic() < deadline:
        age = client.get("/readyz").json().get("jobs_heartbeat_age_s")
        if age is not None:
            break
        time.sleep(0.5)
    assert age is not None and 0 <= age < 60


@pytest.mark.production  # the Redis stream broker exists only in production mode
def test_check_jobs_needs_a_running_worker(server, databases, tmp_path):
    # With the shared server's worker running, the probe job is done.
    ok = run_cli("check-jobs", env=server.env, cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "job ran in" in ok.stdout
    # On a queue nobody consumes, the probe times out and says so.
    lonely = production_env(databases.new("postgres"), f"zbtlonely{time.time_ns()}:")
    missed = run_cli("check-jobs", "--timeout", "2", env=lonely, cwd=tmp_path)
    assert missed.returncode == 1
    assert "no worker ran the probe job" in missed.stdout
