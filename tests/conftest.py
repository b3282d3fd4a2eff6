"""Test fixtures: real servers in subprocesses, real databases, real Redis.

Backends come from the environment, so CI runs the same suite twice:
- embedded default: nothing set; SQLite files in temporary folders, fakeredis inside the server;
- production parts: TEST_DATABASE_URL=postgresql://... and TEST_REDIS_URL=redis://...;
  each run creates its own PostgreSQL databases and Redis key prefix and drops them after.

Two tiers:
- over HTTP (`server`, `client`, ...): a real server in a subprocess, for contracts, auth,
  concurrency and crashes;
- use cases (`db`, `redis`, `keys`, `cipher`): the ORM initialised in the test process on this
  worker's own migrated database, for calling handlers directly on rows made by
  `tests/factories.py`. Every table the test wrote is emptied after it (the demo catalogue,
  loaded once, stays).

Markers: `slow` (over about 3 s), `production` (needs PostgreSQL and Redis: skipped, and
reported, when TEST_DATABASE_URL / TEST_REDIS_URL are not set).
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL") or None
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL") or None
RUN_ID = secrets.token_hex(4)


# Each pytest-xdist worker takes its ports from its own range below the kernel's ephemeral
# ports (32768+), so no two workers, and no outgoing connection, can be handed the same port
# between a port being chosen and its server binding it.
_XDIST_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
_PORTS = range(20000 + 3000 * (_XDIST_WORKER % 4), 23000 + 3000 * (_XDIST_WORKER % 4))


def free_port() -> int:
    for _ in range(200):
        port = random.choice(_PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in this worker's range")


def base_env(**extra: str) -> dict[str, str]:
    """A clean environment for a child process: PATH and HOME only, plus `extra`."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    env.update({k: v for k, v in extra.items() if v is not None})
    return env


def run_cli(*args: str, env: dict[str, str], cwd: Path, input: str | None = None, timeout: float = 60):
    """Runs `python server.py ARGS` to completion."""
    return subprocess.run(
        [PYTHON, str(ROOT / "server.py"), *args],
        env=env,
        cwd=cwd,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# -- markers -------------------------------------------------------------------------------


def pytest_collection_modifyitems(config, items) -> None:
    if TEST_DATABASE_URL and TEST_REDIS_URL:
        return
    skip = pytest.mark.skip(reason="production: needs PostgreSQL and Redis (set TEST_DATABASE_URL and TEST_REDIS_URL)")
    for item in items:
        if item.get_closest_marker("production"):
            item.add_marker(skip)


# -- databases -----------------------------------------------------------------------------


def _pg_admin_url() -> str:
    return TEST_DATABASE_URL.replace("postgresql://", "postgres://", 1)


async def _pg_execute(sql: str, url: str | None = None) -> None:
    import asyncpg

    conn = await asyncpg.connect(url or _pg_admin_url())
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _pg_url_for(dbname: str) -> str:
    parts = urlsplit(_pg_admin_url())
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, ""))


@dataclass
class Database:
    """A database made for one test (or run): its URL and how to query it."""

    kind: str
    url: str
    path: Path | None = None

    def query(self, sql: str) -> list[tuple]:
        if self.kind == "sqlite":
            import sqlite3

            with sqlite3.connect(self.path) as conn:
                return conn.execute(sql).fetchall()

        async def fetch():
            import asyncpg

            conn = await asyncpg.connect(self.url.replace("postgresql://", "postgres://", 1))
            try:
                return [tuple(r) for r in await conn.fetch(sql)]
            finally:
                await conn.close()

        return asyncio.run(fetch())


def backends() -> list:
    """The database kinds to parametrize over: SQLite, and PostgreSQL (marked `production`)."""
    return ["sqlite", pytest.param("postgres", marks=pytest.mark.production)]


class DatabaseFactory:
    """Makes empty databases and drops them at the end."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.made: list[str] = []

    def new(self, kind: str) -> Database:
        if kind == "sqlite":
            path = self.tmp / f"db-{secrets.token_hex(4)}" / "zb.sqlite3"
            return Database("sqlite", f"sqlite://{path}", path)
        name = f"zbt_{RUN_ID}_{secrets.token_hex(3)}"
        asyncio.run(_pg_execute(f'CREATE DATABASE "{name}"'))
        self.made.append(name)
        return Database("postgres", _pg_url_for(name))

    def drop_all(self) -> None:
        for name in self.made:
            asyncio.run(_pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def databases(tmp_path_factory) -> Iterator[DatabaseFactory]:
    factory = DatabaseFactory(tmp_path_factory.mktemp("databases"))
    yield factory
    factory.drop_all()


# -- Redis ---------------------------------------------------------------------------------


def _drop_redis_prefix(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def production_env(database: Database, prefix: str, **extra: str) -> dict[str, str]:
    """Environment for a production-mode process on the test PostgreSQL/Redis."""
    return base_env(
        DATABASE_URL=database.url,
        REDIS_URL=TEST_REDIS_URL,
        REDIS_KEY_PREFIX=prefix,
        TASK_BROKER="redis",
        SECRET_KEY=secrets.token_urlsafe(48),
        FIELD_ENCRYPTION_KEY=base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        **extra,
    )


# -- servers -------------------------------------------------------------------------------


@dataclass
class Process:
    """A child process with its output going to a log file."""

    proc: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # Kill the whole group so no worker process outlives the test.
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


def spawn(args: list[str], *, env: dict[str, str], cwd: Path, log_path: Path) -> Process:
    handle = open(log_path, "wb")
    proc = subprocess.Popen(
        [PYTHON, str(ROOT / "server.py"), *args],
        env=env,
        cwd=cwd,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    handle.close()
    return Process(proc, log_path)


@dataclass
class Server(Process):
    """A running `server.py serve` and how to reach it."""

    url: str = ""
    database: Database | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    helpers: list[Process] = field(default_factory=list)

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, **kwargs)

    def cli(self, *args: str, input: str | None = None):
        return run_cli(*args, env=self.env, cwd=self.cwd, input=input)

    def stop(self, timeout: float = 20) -> int:
        for helper in self.helpers:
            helper.stop(timeout)
        return super().stop(timeout)


def wait_healthy(server: Server, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise AssertionError(f"server exited with {server.proc.returncode}:\n{server.log()[-4000:]}")
        try:
            if httpx.get(server.url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop()
    raise AssertionError(f"server not healthy within {timeout}s:\n{server.log()[-4000:]}")


def start_server(
    env: dict[str, str], cwd: Path, *, database: Database | None = None, with_workers: bool = False
) -> Server:
    """Starts `python server.py serve` on a free port (plus worker and scheduler if asked)."""
    port = free_port()
    cwd.mkdir(parents=True, exist_ok=True)
    # Workers build links to this server (materials for the platform): they must know its address.
    env = {"PUBLIC_BASE_URL": f"http://127.0.0.1:{port}", **env}
    proc = spawn(["serve", "--port", str(port)], env=env, cwd=cwd, log_path=cwd / "server.log")
    server = Server(proc.proc, proc.log_path, url=f"http://127.0.0.1:{port}", database=database, env=env, cwd=cwd)
    wait_healthy(server)
    if with_workers:
        # After `serve` has migrated, as a deployment runs `migrate` before its workers.
        server.helpers = [
            spawn(["worker", "--processes", "1"], env=env, cwd=cwd, log_path=cwd / "worker.log"),
            spawn(["scheduler"], env=env, cwd=cwd, log_path=cwd / "scheduler.log"),
        ]
    return server


# -- the WeChat simulator, a separate server ---------------------------------------------

SIM_MP_APPID, SIM_MP_SECRET = "wx_sim_miniprogram", "sim_mp_secret_0123456789abcdef"


@dataclass
class SimServer:
    """A simulator running as its own server, with its `/__sim__/` control API."""

    url: str
    process: subprocess.Popen

    def control(self, path: str, payload: dict | None = None) -> dict:
        if payload is None:
            response = httpx.get(f"{self.url}/__sim__/{path}", timeout=10)
        else:
            response = httpx.post(f"{self.url}/__sim__/{path}", json=payload, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()


class WeChatSim(SimServer):
    """The WeChat simulator."""

    def login_code(self, openid: str | None = None, unionid: str | None = None) -> tuple[str, str]:
        """(code, openid) as wx.login would give them to the mini-program."""
        if openid is None:
            openid = self.control(
                "users", {"appid": SIM_MP_APPID, "unionid": unionid} if unionid else {"appid": SIM_MP_APPID}
            )["openid"]
        return self.control("login-code", {"appid": SIM_MP_APPID, "openid": openid})["code"], openid


def start_simulator(module: str, log_dir: Path, *args: str) -> tuple[str, subprocess.Popen]:
    """`python -m <module> --port P *args` on a free port, once it answers; (url, process).

    A loaded machine can take many seconds to start a Python process, so the wait is long; a
    simulator that exits or never answers fails the run with its log, never later as a refused
    connection in some test's setup.
    """
    port = free_port()
    log_path = log_dir / "sim.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [PYTHON, "-m", module, "--host", "127.0.0.1", "--port", str(port), *args],
            cwd=ROOT,
            env=base_env(PYTHONPATH=str(ROOT)),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            httpx.get(url + "/__sim__/stats", timeout=2)
            return url, proc
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                tail = log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
                raise AssertionError(f"{module} did not start (exit {proc.poll()}):\n{tail}") from None
            time.sleep(0.1)


def start_wechat_sim(log_dir: Path) -> WeChatSim:
    """`python -m wechat.simulator` on a free port, once it answers (stop it with `.process.terminate()`)."""
    return WeChatSim(*start_simulator("wechat.simulator", log_dir))


@pytest.fixture(scope="session")
def wechat_sim(tmp_path_factory) -> Iterator[WeChatSim]:
    sim = start_wechat_sim(tmp_path_factory.mktemp("wechat-sim"))
    yield sim
    sim.process.terminate()
    sim.process.wait(10)


# The official account's callback secrets, generated for this run.
OA_TOKEN = secrets.token_urlsafe(24)
OA_AES_KEY = base64.b64encode(secrets.token_bytes(32)).decode()[:-1]


# The progress templates of the test's mini-program and official account.
MP_TEMPLATE, OA_TEMPLATE = "tmpl-progress-mp-0001", "tmpl-progress-oa-0001"

PLATFORM_KEY = "zbt-platform"
PLATFORM_SECRET = secrets.token_urlsafe(24)


class PlatformSim(SimServer):
    """The core-platform simulator."""


_platform: PlatformSim | None = None


@pytest.fixture(scope="session")
def platform_sim(tmp_path_factory) -> Iterator[PlatformSim]:
    """The platform simulator; callbacks wait an hour unless a test speeds them up."""
    global _platform
    sim = PlatformSim(
        *start_simulator(
            "bridge.simulator",
            tmp_path_factory.mktemp("platform-sim"),
            *("--app-key", PLATFORM_KEY, "--secret", PLATFORM_SECRET, "--script", "happy", "--step-delay", "3600"),
        )
    )
    _platform = sim
    yield sim
    sim.process.terminate()
    sim.process.wait(10)


# -- the payment channels: WeChat Pay and Alipay simulators in one server ------------------------

PAY_MCHID, PAY_SERIAL = "1900000109", "3775B6A45ACD588826D15E583A95F5DD00000001"
ALIPAY_APP_ID, ALIPAY_SELLER = "2021000122600001", "2088102177846875"


@dataclass
class PaySim(SimServer):
    """`python -m payments.paysim`, with this run's merchant registered at both channels."""

    env: dict[str, str] = field(default_factory=dict)
    apiv3_key: str = ""

    def wechat(self, path: str, payload: dict | None = None, *, status: int = 200) -> dict:
        """The WeChat Pay simulator's control route `path`."""
        return self._call(f"/wechatpay/__sim__/{path}", payload, status)

    def alipay(self, path: str, payload: dict | None = None, *, status: int = 200) -> dict:
        """The Alipay simulator's control route `path`."""
        return self._call(f"/alipay/__sim__/{path}", payload, status)

    def _call(self, path: str, payload: dict | None, status: int) -> dict:
        if payload is None:
            response = httpx.get(self.url + path, timeout=10)
        else:
            response = httpx.post(self.url + path, json=payload, timeout=10)
        assert response.status_code == status, response.text
        return response.json()


_paysim: PaySim | None = None


def _rsa_pem() -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def pay_sim_server(tmp_path_factory) -> PaySim:
    """This worker's payment simulator server (started on first use), with keys made for this run."""
    global _paysim
    if _paysim is None:
        _paysim = start_pay_sim(tmp_path_factory.mktemp("pay-sim"))
    return _paysim


def start_pay_sim(log_dir: Path) -> PaySim:
    """`python -m payments.paysim` with a merchant registered at both channels (the merchant's and
    the app's keys generated here, WeChat Pay's and Alipay's by the simulator); `.env` configures
    a server for it. Stopped when this process ends."""
    log_dir.mkdir(parents=True, exist_ok=True)
    url, proc = start_simulator("payments.paysim", log_dir, "--time-scale", "0.001")
    atexit.register(_stop, proc)
    sim = PaySim(url, proc)
    merchant_private, merchant_public = _rsa_pem()
    app_private, app_public = _rsa_pem()
    sim.apiv3_key = secrets.token_hex(16)
    platform = sim.wechat(
        "merchants",
        {
            "mchid": PAY_MCHID,
            "appids": [SIM_MP_APPID],
            "serial_no": PAY_SERIAL,
            "public_key_pem": merchant_public,
            "apiv3_key": sim.apiv3_key,
        },
    )
    alipay = sim.alipay("apps", {"app_id": ALIPAY_APP_ID, "app_public_key_pem": app_public, "seller_id": ALIPAY_SELLER})
    files = {
        "merchant.pem": merchant_private,
        "wechatpay_platform.pem": platform["platform_public_key_pem"].encode(),
        "alipay_app.pem": app_private,
        "alipay_public.pem": alipay["alipay_public_key_pem"].encode(),
    }
    for name, content in files.items():
        (log_dir / name).write_bytes(content)
    sim.env = {
        "WECHATPAY_API_BASE": url + "/wechatpay",
        "WECHATPAY_MCHID": PAY_MCHID,
        "WECHATPAY_SERIAL_NO": PAY_SERIAL,
        "WECHATPAY_PRIVATE_KEY": str(log_dir / "merchant.pem"),
        "WECHATPAY_APIV3_KEY": sim.apiv3_key,
        "WECHATPAY_PLATFORM_PUBLIC_KEY": str(log_dir / "wechatpay_platform.pem"),
        "WECHATPAY_PLATFORM_SERIAL": platform["platform_serial"],
        "ALIPAY_GATEWAY": url + "/alipay/gateway.do",
        "ALIPAY_APP_ID": ALIPAY_APP_ID,
        "ALIPAY_PRIVATE_KEY": str(log_dir / "alipay_app.pem"),
        "ALIPAY_PUBLIC_KEY": str(log_dir / "alipay_public.pem"),
        "ALIPAY_SELLER_ID": ALIPAY_SELLER,
    }
    return sim


@pytest.fixture(scope="session")
def pay_sim(tmp_path_factory) -> Iterator[PaySim]:
    sim = pay_sim_server(tmp_path_factory)
    yield sim


def wechat_env(sim: WeChatSim) -> dict[str, str]:
    from tests.oa_pusher import OA_APPID, OA_SECRET

    platform = {}
    if _platform is not None:
        platform = {
            "PLATFORM_BASE_URL": _platform.url,
            "PLATFORM_APP_KEY": PLATFORM_KEY,
            "PLATFORM_SECRET": PLATFORM_SECRET,
        }
    payments = _paysim.env if _paysim is not None else {}
    return {
        **platform,
        **payments,
        "WECHAT_API_BASE": sim.url,
        "WECHAT_MP_APPID": SIM_MP_APPID,
        "WECHAT_MP_SECRET": SIM_MP_SECRET,
        "WECHAT_OA_APPID": OA_APPID,
        "WECHAT_OA_SECRET": OA_SECRET,
        "WECHAT_OA_TOKEN": OA_TOKEN,
        "WECHAT_OA_AES_KEY": OA_AES_KEY,
    }


def make_server(
    tmp_path_factory, databases, wechat_sim, name: str, with_workers: bool | None = None, **extra: str
) -> tuple[Server, str | None]:
    """A server on this run's backends, talking to the WeChat simulator server."""
    cwd = tmp_path_factory.mktemp(name)
    # Every test comes from 127.0.0.1: lift the per-IP limits (their own tests check them).
    # Pushes go out whatever the hour the tests run at (quiet hours have their own test).
    settings = {
        "REQUEST_MAX_SIZE": "65536",
        "LOG_LEVEL": "INFO",
        "RATE_LIMITS": "login.ip=100000/minute,declare.ip=100000/hour,face.ip=100000/hour",
        "PUSH_MP_TEMPLATE_ID": MP_TEMPLATE,
        "PUSH_OA_TEMPLATE_ID": OA_TEMPLATE,
        "PUSH_QUIET_HOURS": "",
        **wechat_env(wechat_sim),
        **pay_sim_server(tmp_path_factory).env,
        **extra,
    }
    if TEST_DATABASE_URL and TEST_REDIS_URL:
        if "PLATFORM_BASE_URL" not in settings:
            # No platform simulator server in this worker yet: production mode serves the
            # in-process one only as a staging deployment does, behind a simulator secret.
            settings = {"ALLOW_SIMULATORS": "staging", "SIMULATOR_SECRET": secrets.token_urlsafe(32), **settings}
        database = databases.new("postgres")
        prefix = f"zbt{RUN_ID}{name}:"
        workers = name == "server" if with_workers is None else with_workers
        return start_server(
            production_env(database, prefix, **settings), cwd, database=database, with_workers=workers
        ), prefix
    database = databases.new("sqlite")
    return start_server(base_env(DATABASE_URL=database.url, **settings), cwd, database=database), None


@pytest.fixture(scope="session")
def server(tmp_path_factory, databases, wechat_sim, platform_sim) -> Iterator[Server]:
    """The run's shared server: embedded default, or PostgreSQL + Redis + worker + scheduler."""
    srv, prefix = make_server(tmp_path_factory, databases, wechat_sim, "server")
    platform_sim.control("config", {"callback_url": srv.url + "/bridge/callback"})
    yield srv
    srv.stop()
    if prefix:
        _drop_redis_prefix(prefix)


@pytest.fixture
def client(server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@pytest.fixture(scope="session")
def oa(server):
    """WeChat's side of the official-account callback, for the shared server."""
    from tests.oa_pusher import OAPusher

    return OAPusher(server.url + "/wechat/oa", token=OA_TOKEN, aes_key=OA_AES_KEY)


# -- the use-case tier: the ORM in the test process ----------------------------------------------


@pytest.fixture(scope="session")
def usecase_database(databases) -> Database:
    """This worker's database for use-case tests (made here: creating one needs no running loop)."""
    return databases.new("postgres" if TEST_DATABASE_URL else "sqlite")


@pytest.fixture(scope="session")
def usecase_redis_prefix() -> Iterator[str]:
    prefix = f"zbt{RUN_ID}uc{_XDIST_WORKER}:"
    yield prefix
    if TEST_REDIS_URL:
        _drop_redis_prefix(prefix)


@pytest.fixture(scope="session")
async def orm(usecase_database, usecase_redis_prefix):
    """Tortoise on this worker's database, migrated as the app migrates it, with the demo catalogue."""
    from core.settings import Settings
    from handlers.catalog.publish import DEMO_CATALOGUE, load_catalogue_file
    from storage.db import close_db, init_db, migrate
    from tests.factories import KEY

    settings = Settings(
        _env_file=None,
        DATABASE_URL=usecase_database.url,
        REDIS_URL=TEST_REDIS_URL,
        REDIS_KEY_PREFIX=usecase_redis_prefix,
        SECRET_KEY=secrets.token_urlsafe(48),
        # The key the factories seal personal data with.
        FIELD_ENCRYPTION_KEY=base64.urlsafe_b64encode(KEY).decode(),
    )
    await migrate(settings)
    await init_db(settings)
    await load_catalogue_file(DEMO_CATALOGUE)
    yield settings
    await close_db()


def _children_first(models: list) -> list:
    """The models ordered so that every table comes before the tables it references."""
    order: list = []

    def visit(model, seen: frozenset = frozenset()) -> None:
        if model in order or model in seen:
            return
        for other in models:
            if any(other._meta.fields_map[f].related_model is model for f in other._meta.fk_fields):
                visit(other, seen | {model})
        order.append(model)

    for model in models:
        visit(model)
    return order


# Reference data loaded once per session: tests read it, none writes it.
_KEPT_TABLES = {"service_items", "catalogue_state"}


@pytest.fixture
async def db(orm):
    """The ORM for one use-case test; every other table is emptied after it."""
    from tortoise import Tortoise
    from tortoise.transactions import in_transaction

    yield orm
    models = [m for m in Tortoise.apps["models"].values() if m._meta.db_table not in _KEPT_TABLES]
    async with in_transaction() as conn:
        for model in _children_first(models):
            await conn.execute_script(f'DELETE FROM "{model._meta.db_table}"')


@pytest.fixture
async def redis(orm):
    """The Redis of this run (fakeredis, or TEST_REDIS_URL's server) for one test."""
    from storage.redis import create_redis

    client = create_redis(orm)
    yield client
    await client.aclose()


@pytest.fixture
def keys(orm):
    """Redis keys under a prefix of this test's own (all of them dropped at the session's end)."""
    from storage.redis import Keys

    return Keys(f"{orm.REDIS_KEY_PREFIX}{secrets.token_hex(4)}:")


@pytest.fixture
def cipher():
    """The field cipher the factories seal personal data with."""
    from tests import factories

    return factories.CIPHER
