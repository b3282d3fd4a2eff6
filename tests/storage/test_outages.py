"""A part of ours down: `503 not_ready` with Retry-After and one log line, never a 500 with a
trace; the job worker waits for Redis instead of dying over and over (issue 12, finding 9).

Each test runs its own Redis or PostgreSQL on a free port and stops it; the machine's servers,
which other runs share, are never touched.
"""

from __future__ import annotations

import base64
import glob
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from handlers.auth import AUTH_CACHE_TTL_S
from tests.conftest import (
    Process,
    Server,
    base_env,
    free_port,
    run_cli,
    spawn,
    start_server,
    wechat_env,
)
from tests.helpers import auth

REDIS_SERVER = shutil.which("redis-server")
PG_BINS = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
needs_redis_server = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


class OwnRedis:
    """A throw-away redis-server on a free port, with nothing saved to disk."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if (
                subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True).stdout.strip()
                == b"PONG"
            ):
                return
            time.sleep(0.05)
        raise AssertionError("own redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


def secrets_env() -> dict[str, str]:
    return {
        "SECRET_KEY": secrets.token_urlsafe(48),
        "FIELD_ENCRYPTION_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
    }


def log_since(process: Process, mark: int) -> str:
    return process.log()[mark:]


def wait_for_log(process: Process, text: str, *, after: int = 0, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log_since(process, after):
            return
        assert process.proc.poll() is None, process.log()[-3000:]
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not logged within {timeout}s:\n{process.log()[-3000:]}")


def login(server: Server, sim) -> dict:
    code, _ = sim.login_code()
    response = httpx.post(server.url + "/api/v1/auth/login", json={"code": code}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def assert_not_ready(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "not_ready" and response.json()["message"]
    assert int(response.headers["Retry-After"]) > 0


@needs_redis_server
def test_redis_outage_is_503_with_retry_after_and_one_line(tmp_path, databases, wechat_sim, platform_sim, pay_sim):
    redis = OwnRedis(tmp_path)
    redis.start()
    database = databases.new("sqlite")
    env = base_env(
        DATABASE_URL=database.url,
        REDIS_URL=redis.url,
        REDIS_KEY_PREFIX="zbfault:",
        TASK_BROKER="redis",
        LOG_LEVEL="INFO",
        **secrets_env(),
        **wechat_env(wechat_sim),
    )
    server = start_server(env, tmp_path / "server", database=database)
    try:
        tokens = login(server, wechat_sim)
        with server.client(headers=auth(tokens)) as c:
            assert c.get("/api/v1/me").status_code == 200
            redis.stop()
            # A token resolved just before is served from the process's cache for at most
            # AUTH_CACHE_TTL_S (the lookup that would fail is not made): wait that out.
            time.sleep(AUTH_CACHE_TTL_S + 0.2)
            mark = len(server.log())
            requests = [
                c.get("/api/v1/me"),
                c.post("/api/v1/auth/login", json={"code": "whatever"}),
                c.get("/api/v1/inbox"),
            ]
            for response in requests:
                assert_not_ready(response)
            time.sleep(0.5)  # let the last line reach the log file
            after = log_since(server, mark)
            assert "Traceback" not in after, after
            assert after.count("redis unavailable on") == len(requests), after
            # Back (empty: nothing was saved), the service answers again by itself.
            redis.start()
            assert c.get("/api/v1/me").status_code == 401
        assert login(server, wechat_sim)["access_token"]
    finally:
        server.stop()
        redis.stop()


def _pg_cmd(*args: str) -> list[str]:
    # initdb and pg_ctl refuse to run as root: run them as the postgres user then.
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return [*prefix, *args]


class OwnPostgres:
    """A throw-away PostgreSQL cluster in a temporary folder, on a free port."""

    def __init__(self):
        self.bin = PG_BINS[-1]
        self.dir = Path(tempfile.mkdtemp(prefix="zbfault-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        subprocess.run(
            _pg_cmd(f"{self.bin}/initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres"),
            check=True,
            capture_output=True,
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        subprocess.run(
            _pg_cmd(
                f"{self.bin}/pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-o", options, *args
            ),
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        self.ctl("start", "-w")

    def stop(self) -> None:
        self.ctl("stop", "-m", "fast", "-w")

    def remove(self) -> None:
        subprocess.run(
            _pg_cmd(f"{self.bin}/pg_ctl", "-D", str(self.dir / "data"), "stop", "-m", "immediate"), capture_output=True
        )
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.mark.skipif(not PG_BINS or shutil.which("runuser") is None, reason="no PostgreSQL server binaries")
def test_postgresql_restart_is_503_while_it_lasts_then_recovers(tmp_path, wechat_sim, platform_sim, pay_sim):
    pg = OwnPostgres()
    try:
        pg.start()
        env = base_env(DATABASE_URL=pg.url, LOG_LEVEL="INFO", **secrets_env(), **wechat_env(wechat_sim))
        server = start_server(env, tmp_path / "server")
        try:
            tokens = login(server, wechat_sim)
            with server.client(headers=auth(tokens)) as c:
                assert c.get("/api/v1/me").status_code == 200
                pg.stop()
                mark = len(server.log())
                requests = [c.get("/api/v1/me"), c.get("/api/v1/cases"), c.get("/api/v1/me")]
                for response in requests:
                    assert_not_ready(response)
                pg.start()
                # The pool reconnects by itself; until it has, the answer is 503, never 500.
                deadline = time.monotonic() + 30
                while (response := c.get("/api/v1/me")).status_code != 200:
                    assert_not_ready(response)
                    assert time.monotonic() < deadline, "the database pool did not recover"
                    time.sleep(0.2)
            after = log_since(server, mark)
            assert "Traceback" not in after, after
            assert after.count("database unavailable on") >= len(requests), after
        finally:
            server.stop()
    finally:
        pg.remove()


@needs_redis_server
def test_worker_waits_for_redis_instead_of_crash_looping(tmp_path, databases):
    redis = OwnRedis(tmp_path)
    database = databases.new("sqlite")
    env = base_env(
        DATABASE_URL=database.url,
        REDIS_URL=redis.url,
        REDIS_KEY_PREFIX="zbfault:",
        TASK_BROKER="redis",
        LOG_LEVEL="INFO",
        # A worker with no real channels: a staging deployment's, as production refuses it otherwise.
        ALLOW_SIMULATORS="staging",
        SIMULATOR_SECRET=secrets.token_urlsafe(32),
        **secrets_env(),
    )
    assert run_cli("migrate", env=env, cwd=tmp_path).returncode == 0
    worker = spawn(["worker", "--processes", "1"], env=env, cwd=tmp_path, log_path=tmp_path / "worker.log")
    try:
        # Started while Redis is down: it waits, saying so once, in JSON.
        wait_for_log(worker, "redis unavailable, jobs wait for it")
        redis.start()
        wait_for_log(worker, "redis is back, jobs resume")
        probe = run_cli("check-jobs", env=env, cwd=tmp_path, timeout=90)
        assert probe.returncode == 0, probe.stdout + probe.stderr
        # Down while it listens: it waits again, and takes jobs once Redis is back (empty).
        mark = len(worker.log())
        redis.stop()
        wait_for_log(worker, "redis unavailable, jobs wait for it", after=mark)
        redis.start()
        wait_for_log(worker, "redis is back, jobs resume", after=mark)
        probe = run_cli("check-jobs", env=env, cwd=tmp_path, timeout=90)
        assert probe.returncode == 0, probe.stdout + probe.stderr
        log = worker.log()
        assert "Traceback" not in log and "is dead" not in log, log[-4000:]
        assert all(line.startswith("{") for line in log.splitlines() if line.strip()), log[-4000:]
    finally:
        worker.stop()
        redis.stop()
