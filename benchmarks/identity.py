"""Identity benchmark: `GET /api/v1/me` against `GET /healthz`, and `POST /api/v1/auth/login`.

    .venv/bin/python benchmarks/identity.py [--duration 10] [--logins 3000] [--concurrency 16]

One run, two backends, each a fresh `server.py serve` with 1 worker and `LOG_LEVEL=WARNING` on a
free 127.0.0.1 port, both pointed at one WeChat simulator running as its own process
(`python -m wechat.simulator`):

- *embedded*: the default (SQLite in the server's temporary directory, fakeredis, memory broker);
- *production*: a fresh PostgreSQL database created (and dropped) on
  postgresql://postgres@127.0.0.1:5432/test, REDIS_URL=redis://127.0.0.1:6379/0 with a throw-away
  REDIS_KEY_PREFIX, random SECRET_KEY and FIELD_ENCRYPTION_KEY, TASK_BROKER=memory.

On each server: one citizen signs in, declares a real name and ID number, binds a phone and a
mailing address, so that /me decrypts six fields. Then wrk measures /healthz (the ceiling) and
/me with that citizen's bearer token, the same wrk command for both. Then logins: one-time
wx.login codes are minted at the simulator's control API beforehand, and an asyncio + httpx load
(`--concurrency` requests in flight, each code used once) posts them to /api/v1/auth/login. The
server limits logins to 30 a minute per client IP, so the load is spread over source addresses
127.0.0.2 ... (`--addresses`), at most 25 logins each; the script checks in the audit log that the
server saw those addresses.

Results are printed and written to the `## Identity (GET /api/v1/me, POST /api/v1/auth/login)`
section of benchmarks/RESULTS.md; other sections are kept. The server/wrk/noise plumbing is
shared with benchmarks/http_baseline.py. Exit codes: 0 done, 1 a measurement failed, 2 wrk
missing or bad arguments, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import math
import os
import random
import re
import secrets
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import http_baseline as hb  # noqa: E402  (the shared benchmark plumbing)

ROOT = hb.ROOT
HOST = hb.HOST
SECTION = "## Identity (GET /api/v1/me, POST /api/v1/auth/login)"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
SIM_APPID, SIM_SECRET = "wx_sim_miniprogram", "sim_mp_secret_0123456789abcdef"
LOGIN_LIMIT_PER_IP = 30  # core/ratelimit.py, rule ("login", "ip"): 30/minute
PER_ADDRESS_MAX = 25  # logins per source address in a run, below that limit
LOGIN_PATH, ME_PATH = "/api/v1/auth/login", "/api/v1/me"
EMBEDDED, PRODUCTION = "embedded (SQLite, fakeredis)", "production (PostgreSQL, Redis)"


def _settings_names() -> set[str]:
    """Every Zhangban setting: none of them may leak from the caller's shell into a server."""
    sys.path.insert(0, str(ROOT))
    try:
        from core.settings import Settings

        return set(Settings.model_fields)
    finally:
        sys.path.remove(str(ROOT))


# -- processes ---------------------------------------------------------------------------------


class IdentityServer(hb.Server):
    """http_baseline's server, with every other Zhangban setting removed and ours added."""

    def __init__(self, target: hb.Target, workdir: Path, prefix: str, extra_env: dict[str, str]):
        super().__init__(target, workdir, prefix)
        self.extra_env = extra_env

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _command_and_env(self) -> tuple[list[str], dict[str, str]]:
        cmd, env = super()._command_and_env()
        for name in _settings_names() - hb.ZB_VARIABLES:  # WECHAT_*, ACCESS_TOKEN_TTL, ...
            env.pop(name, None)
        env.update(self.extra_env)
        return cmd, env


class Simulator:
    """`python -m wechat.simulator` on a free port, in its own session; `control()` is its control API."""

    def __init__(self, workdir: Path):
        self.port = hb.free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log_path = workdir / "wechat-sim.log"
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self) -> float:
        import httpx

        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "wb")
        began = time.monotonic()
        self.proc = subprocess.Popen(
            [hb.python_bin(), "-m", "wechat.simulator", "--host", HOST, "--port", str(self.port)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        while time.monotonic() < began + hb.START_TIMEOUT:
            if self.proc.poll() is not None:
                raise RuntimeError(f"WeChat simulator exited with code {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/__sim__/stats", timeout=1).status_code == 200:
                    return time.monotonic() - began
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"WeChat simulator did not answer within {hb.START_TIMEOUT:.0f} s")

    def control(self, path: str, payload: dict) -> dict:
        import httpx

        response = httpx.post(f"{self.url}/__sim__/{path}", json=payload, timeout=10)
        if response.status_code != 200:
            raise RuntimeError(f"simulator {path}: {response.status_code} {response.text[:200]}")
        return response.json()

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait(timeout=10)
        finally:
            if self._log:
                self._log.close()

    def log_problems(self) -> list[str]:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return [
            line.strip() for line in text.splitlines() if re.search(r"Traceback|Error|error|WARNING|CRITICAL", line)
        ]


# -- PostgreSQL --------------------------------------------------------------------------------


async def _pg(sql: str, url: str = PG_ADMIN_URL, fetch: bool = False):
    import asyncpg

    conn = await asyncpg.connect(url, timeout=5)
    try:
        return [tuple(r) for r in await conn.fetch(sql)] if fetch else await conn.execute(sql)
    finally:
        await conn.close()


def pg_answers() -> str | None:
    """None when the admin database answers, else why not."""
    try:
        asyncio.run(_pg("SELECT 1"))
        return None
    except Exception as exc:  # missing driver, refused, auth: all mean "skip"
        return f"no PostgreSQL at {PG_ADMIN_URL} ({type(exc).__name__})"


def pg_url_for(name: str) -> str:
    parts = urlsplit(PG_ADMIN_URL)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, "", ""))


# -- CPU accounting (the noise check) ----------------------------------------------------------


def self_jiffies() -> float:
    times = os.times()
    return (times.user + times.system) * os.sysconf("SC_CLK_TCK")


def pid_jiffies(pid: int) -> int:
    """CPU ticks (user + system) used so far by process `pid`, 0 when it is gone or unreadable."""
    try:
        rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(rest[11]) + int(rest[12])
    except (OSError, IndexError, ValueError):
        return 0


Services = Callable[[], dict[str, list[int]]]


class CpuWatch:
    """CPU used during a measurement: by our processes and by the others.

    Ours: the process groups in `groups` (server, simulator), this script, and the processes that
    `services()` names before and after (the PostgreSQL backends of our database, redis-server)."""

    def __init__(self, groups: dict[str, int], services: Services | None = None):
        self.groups, self.services = groups, services or (lambda: {})

    def __enter__(self) -> CpuWatch:
        self.began = time.monotonic()
        self.pid0 = {pid: pid_jiffies(pid) for pids in self.services().values() for pid in pids}
        self.group0 = {name: hb.group_jiffies(pgid) for name, pgid in self.groups.items()}
        self.self0 = self_jiffies()
        self.busy0, self.total0 = hb.machine_jiffies()
        return self

    def __exit__(self, *exc) -> None:
        self.busy1, self.total1 = hb.machine_jiffies()
        self.seconds = time.monotonic() - self.began
        self.used = {name: hb.group_jiffies(pgid) - self.group0[name] for name, pgid in self.groups.items()}
        self.used["this script"] = self_jiffies() - self.self0
        if exc[0] is None:
            for name, pids in self.services().items():
                self.used[name] = sum(max(0, pid_jiffies(pid) - self.pid0.get(pid, 0)) for pid in set(pids))

    def others(self, extra_cpu_s: float = 0.0) -> float:
        """Share of the machine used by processes other than ours (and `extra_cpu_s` of a child, wrk)."""
        ours = sum(self.used.values()) + extra_cpu_s * os.sysconf("SC_CLK_TCK")
        return max(0.0, (self.busy1 - self.busy0 - ours) / max(1, self.total1 - self.total0))

    def shares(self) -> str:
        """Each of ours as a share of one core over the measurement."""
        tick = os.sysconf("SC_CLK_TCK")
        return ", ".join(f"{name} {used / tick / max(1e-9, self.seconds):.0%}" for name, used in self.used.items())


def production_services(db_name: str) -> Services:
    """The PostgreSQL backends serving `db_name` and the Redis server: they work for our server."""
    import redis

    client = redis.Redis(host=HOST, port=hb.REDIS_PORT, db=0, socket_timeout=5)
    try:
        redis_pids = [int(client.info("server")["process_id"])]
    except Exception:  # no pid to watch: its CPU counts as the others'
        redis_pids = []
    finally:
        client.close()
    sql = f"SELECT pid FROM pg_stat_activity WHERE datname = '{db_name}'"

    def services() -> dict[str, list[int]]:
        return {
            "PostgreSQL (our database)": [int(r[0]) for r in asyncio.run(_pg(sql, fetch=True))],
            "Redis": redis_pids,
        }

    return services


# -- rows --------------------------------------------------------------------------------------


@dataclass
class Row:
    target: str  # "GET /healthz", ...
    backend: str
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    ratio: float | None = None
    others_cpu: float = 0.0
    attempts: int = 1
    failed: str | None = None
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return sorted_values[max(0, math.ceil(p / 100 * len(sorted_values)) - 1)]


# -- the citizen -------------------------------------------------------------------------------


def id_number(birth: str = "19900307", region: str = "510502") -> str:
    """A valid resident ID number (GB 11643 check digit)."""
    body = f"{region}{birth}{random.randint(100, 999)}"
    weights = [2 ** (17 - i) % 11 for i in range(17)]
    return body + "10X98765432"[sum(int(d) * w for d, w in zip(body, weights, strict=False)) % 11]


class Citizen:
    """The signed-in citizen behind /me; `header()` refreshes the token when it is about to expire."""

    def __init__(self, base: str, pair: dict):
        self.base = base
        self._take(pair)

    def _take(self, pair: dict) -> None:
        self.access, self.refresh = pair["access_token"], pair["refresh_token"]
        self.expires_at = time.monotonic() + pair["expires_in"]

    def header(self, needed_s: float) -> str:
        """`Authorization: Bearer ...` with a token still valid `needed_s` seconds from now."""
        import httpx

        if self.expires_at - time.monotonic() < needed_s + 30:
            response = httpx.post(self.base + "/api/v1/auth/refresh", json={"refresh_token": self.refresh}, timeout=30)
            if response.status_code != 200:
                raise RuntimeError(f"token refresh answered {response.status_code}: {response.text[:200]}")
            self._take(response.json())
        return f"Authorization: Bearer {self.access}"


def make_citizen(server: IdentityServer, sim: Simulator) -> Citizen:
    """Signs a citizen in, declares name + ID, binds a phone and an address."""
    import httpx

    minted = sim.control("login-code", {"appid": SIM_APPID})
    with httpx.Client(base_url=server.base, timeout=30) as c:
        login = c.post(LOGIN_PATH, json={"code": minted["code"]})
        if login.status_code != 200:
            raise RuntimeError(f"set-up login answered {login.status_code}: {login.text[:200]}")
        citizen = Citizen(server.base, login.json())
        c.headers["Authorization"] = f"Bearer {citizen.access}"
        phone = f"139{random.randint(10000000, 99999999)}"
        steps = [
            ("declare", lambda: c.post("/api/v1/identity/declare", json={"name": "张三丰", "id_number": id_number()})),
            (
                "phone",
                lambda: c.post(
                    "/api/v1/me/phone",
                    json={
                        "code": sim.control(
                            "phone-code", {"appid": SIM_APPID, "openid": minted["openid"], "phone": phone}
                        )["code"]
                    },
                ),
            ),
            (
                "address",
                lambda: c.post(
                    "/api/v1/me/addresses",
                    json={
                        "recipient": "周九",
                        "phone": phone,
                        "region_code": "510502",
                        "detail": "江阳区酒城大道三段18号",
                    },
                ),
            ),
        ]
        for name, step in steps:
            response = step()
            if response.status_code not in (200, 201):
                raise RuntimeError(f"set-up {name} answered {response.status_code}: {response.text[:200]}")
        me = c.get(ME_PATH)
        body = me.json() if me.status_code == 200 else {}
        if not (
            body.get("name_masked")
            and body.get("id_number_masked")
            and body.get("phone_masked")
            and len(body.get("addresses", [])) == 1
            and body.get("identity_level") == "L2"
        ):
            raise RuntimeError(f"set-up /me is not the full profile: {me.status_code} {me.text[:200]}")
    return citizen


# -- wrk: /healthz and /me ---------------------------------------------------------------------


def wrk_cmd(args: argparse.Namespace, url: str, seconds: int, header: str | None, latency: bool = True) -> list[str]:
    cmd = hb.wrk_command(args, url, seconds, latency=latency)
    return cmd[:-1] + (["-H", header] if header else []) + cmd[-1:]


def measure_wrk(
    target: str,
    backend: str,
    url: str,
    citizen: Citizen | None,
    watch_cpu: Callable[[], CpuWatch],
    args: argparse.Namespace,
) -> Row:
    """Warm-up then a measured wrk run; again (up to --retries) when other processes disturbed it."""
    attempts: list[Row] = []
    for attempt in range(args.retries + 1):
        row = Row(target, backend)
        attempts.append(row)
        if args.quiet_wait > 0:
            hb.wait_until_quiet(args.quiet_wait)
        try:
            header = citizen.header(args.warmup + args.duration + 60) if citizen else None
            hb.run_wrk(wrk_cmd(args, url, args.warmup, header, latency=False), args.warmup)
            with watch_cpu() as watch:
                output, wrk_cpu = hb.run_wrk(wrk_cmd(args, url, args.duration, header), args.duration)
            result = hb.Result(hb.Target(target, "zhangban", 1))
            hb.parse_wrk(output, result)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            row.failed = str(exc).splitlines()[0][:160]
            print(f"  {target}: FAILED: {exc}", file=sys.stderr)
            break
        row.rps, row.p50_ms, row.p99_ms = result.rps, result.p50_ms, result.p99_ms
        row.others_cpu = watch.others(wrk_cpu)
        print(
            f"  {target}: {hb.fmt(row.rps, 0)} req/s, p50 {hb.fmt(row.p50_ms, 2)} ms, p99 {hb.fmt(row.p99_ms, 2)} ms"
            f" ({result.requests} requests, {result.non_2xx} non-2xx; other processes used {row.others_cpu:.0%}"
            " of the CPU)",
            flush=True,
        )
        if result.non_2xx or (result.socket_errors and result.socket_errors != "connect 0, read 0, write 0, timeout 0"):
            row.notes.append(f"{result.non_2xx} non-2xx responses; socket errors: {result.socket_errors}")
        if row.others_cpu <= hb.BUSY:
            break
        if attempt < args.retries:
            print("  the machine was not quiet: measuring again", flush=True)
    chosen = min(attempts, key=lambda r: (r.failed is not None, r.others_cpu))
    chosen.attempts = len(attempts)
    return chosen


# -- logins ------------------------------------------------------------------------------------


async def mint_codes(sim: Simulator, count: int, concurrency: int = 16) -> list[str]:
    """`count` one-time wx.login codes, each for a new simulator user (login-code makes the user)."""
    import httpx

    codes: list[str] = []
    todo = iter(range(count))

    async def worker(client: httpx.AsyncClient) -> None:
        for _ in todo:
            response = await client.post("/__sim__/login-code", json={"appid": SIM_APPID})
            response.raise_for_status()
            codes.append(response.json()["code"])

    async with httpx.AsyncClient(base_url=sim.url, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return codes


@dataclass
class LoginRun:
    latencies: list[float] = field(default_factory=list)  # seconds, answered 200
    outcomes: Counter = field(default_factory=Counter)  # "200", "429 rate_limited", "ConnectError", ...
    wall_s: float = 0.0


async def drive_logins(url: str, codes: list[str], addresses: list[str], concurrency: int) -> tuple[LoginRun, LoginRun]:
    """Warm-up (one login per address, opening its connection), then the timed logins.

    Code i is sent from addresses[i % len(addresses)]: one httpx client per source address."""
    import httpx

    clients = [
        httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address=address), timeout=30)
        for address in addresses
    ]

    async def run(first: int, batch: list[str]) -> LoginRun:
        result = LoginRun()
        todo = iter(enumerate(batch, first))

        async def worker() -> None:
            for i, code in todo:
                client = clients[i % len(clients)]
                began = time.perf_counter()
                try:
                    response = await client.post(url, json={"code": code})
                except httpx.HTTPError as exc:
                    result.outcomes[type(exc).__name__] += 1
                    continue
                took = time.perf_counter() - began
                if response.status_code == 200:
                    result.latencies.append(took)
                    result.outcomes["200"] += 1
                else:
                    try:
                        code_name = response.json().get("code", "?")
                    except ValueError:
                        code_name = "not JSON"
                    result.outcomes[f"{response.status_code} {code_name}"] += 1

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.wall_s = time.perf_counter() - began
        return result

    try:
        warm = await run(0, codes[: len(addresses)])
        timed = await run(len(addresses), codes[len(addresses) :])
    finally:
        await asyncio.gather(*(client.aclose() for client in clients))
    return warm, timed


def logins_per_ip(backend: str, server: IdentityServer, db_url: str | None) -> dict[str, int]:
    """What the server recorded: audit-log `auth.login` rows per client IP."""
    sql = "SELECT ip, COUNT(*) FROM audit_log WHERE action = 'auth.login' GROUP BY ip"
    if backend == EMBEDDED:
        with sqlite3.connect(server.workdir / "var" / "zb.sqlite3", timeout=10) as conn:
            rows = conn.execute(sql).fetchall()
    else:
        rows = asyncio.run(_pg(sql, db_url, fetch=True))
    return {str(ip): int(n) for ip, n in rows}


def measure_logins(
    backend: str,
    server: IdentityServer,
    sim: Simulator,
    db_url: str | None,
    healthz_rps: float | None,
    watch_cpu: Callable[[], CpuWatch],
    args: argparse.Namespace,
) -> Row:
    row = Row(f"POST {LOGIN_PATH}", backend)
    addresses = [f"127.0.0.{x}" for x in range(2, 2 + args.addresses)]
    try:
        if args.quiet_wait > 0:
            hb.wait_until_quiet(args.quiet_wait)
        minted_at = time.monotonic()
        codes = asyncio.run(mint_codes(sim, len(addresses) + args.logins))
        print(
            f"  minted {len(codes)} wx.login codes in {time.monotonic() - minted_at:.1f} s; "
            f"{len(addresses)} warm-up logins, then {args.logins} timed, {args.concurrency} in flight, "
            f"from {len(addresses)} source addresses",
            flush=True,
        )
        # The CPU watch spans the warm-up too; the timed part dominates it.
        with watch_cpu() as watch:
            warm, timed = asyncio.run(drive_logins(server.base + LOGIN_PATH, codes, addresses, args.concurrency))
        if time.monotonic() - minted_at > 280:
            row.notes.append("the codes were close to their 300 s lifetime by the end")
        row.others_cpu = watch.others()
        seen = logins_per_ip(backend, server, db_url)
    except Exception as exc:  # httpx, asyncpg, sqlite3 or our own: the row says what went wrong
        row.failed = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
        print(f"  logins: FAILED: {exc}", file=sys.stderr)
        return row
    latencies = sorted(timed.latencies)
    errors = {k: v for k, v in (warm.outcomes + timed.outcomes).items() if k != "200"}
    if latencies:
        row.rps = len(latencies) / timed.wall_s
        row.p50_ms, row.p99_ms = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
    else:
        row.failed = f"no login answered 200: {errors}"
    row.ratio = row.rps / healthz_rps if row.rps and healthz_rps else None
    ours = watch.shares()
    bench_ips = {ip: n for ip, n in seen.items() if ip in set(addresses)}
    row.notes.append(
        f"{len(latencies)} of {args.logins} timed logins answered 200 in {timed.wall_s:.1f} s "
        f"(after {warm.outcomes['200']} of {len(addresses)} warm-up logins); "
        f"errors: {', '.join(f'{k} ×{v}' for k, v in sorted(errors.items())) or 'none'}; "
        f"the server's audit log has logins from {len(bench_ips)} of the {len(addresses)} source addresses "
        f"(at most {max(bench_ips.values(), default=0)} per address; limit {LOGIN_LIMIT_PER_IP}/minute) "
        f"and {sum(n for ip, n in seen.items() if ip not in bench_ips)} from other addresses (the set-up login); "
        f"CPU used, in shares of one core: {ours}"
    )
    print(
        f"  logins: {hb.fmt(row.rps, 0)} /s, p50 {hb.fmt(row.p50_ms, 2)} ms, p99 {hb.fmt(row.p99_ms, 2)} ms; "
        f"{row.notes[-1]}; other processes used {row.others_cpu:.0%} of the CPU",
        flush=True,
    )
    if len(bench_ips) != len(addresses):
        row.notes.append("the server did not see every source address: the per-IP limit may have been shared")
    return row


# -- one backend -------------------------------------------------------------------------------


@dataclass
class BackendRun:
    backend: str
    rows: list[Row] = field(default_factory=list)
    start_s: float | None = None
    stop_s: float | None = None
    log_problems: list[str] = field(default_factory=list)
    skipped: str | None = None
    cleanup: list[str] = field(default_factory=list)


def run_backend(
    backend: str, workdir: Path, prefix: str, sim: Simulator, args: argparse.Namespace, servers: list[IdentityServer]
) -> BackendRun:
    run = BackendRun(backend)
    extra = {"WECHAT_API_BASE": sim.url, "WECHAT_MP_APPID": SIM_APPID, "WECHAT_MP_SECRET": SIM_SECRET}
    db_name = db_url = None
    production = backend == PRODUCTION
    if production:
        db_name = f"zbbench_{secrets.token_hex(4)}"
        try:
            asyncio.run(_pg(f'CREATE DATABASE "{db_name}"'))
        except Exception as exc:
            why = f"could not create the database: {type(exc).__name__}: {exc}".splitlines()[0][:160]
            print(f"  FAILED: {why}", file=sys.stderr)
            run.rows = [Row(t, backend, failed=why) for t in ("GET /healthz", f"GET {ME_PATH}", f"POST {LOGIN_PATH}")]
            return run
        db_url = pg_url_for(db_name)
        extra.update(DATABASE_URL=db_url, TASK_BROKER="memory")
    server = IdentityServer(hb.Target(backend, "zhangban", 1, redis=production), workdir, prefix, extra)
    servers.append(server)
    print(f"- {backend} on port {server.port}: starting", flush=True)
    try:
        run.start_s = server.start()
        print(f"  answering after {run.start_s:.1f} s; setting up the citizen", flush=True)
        citizen = make_citizen(server, sim)
        groups = {"server": server.proc.pid, "simulator": sim.proc.pid}
        services = production_services(db_name) if production else None

        def watch_cpu() -> CpuWatch:
            return CpuWatch(groups, services)

        healthz = measure_wrk("GET /healthz", backend, f"{server.base}/healthz", None, watch_cpu, args)
        me = measure_wrk(f"GET {ME_PATH}", backend, server.base + ME_PATH, citizen, watch_cpu, args)
        healthz.ratio = 1.0 if healthz.rps else None
        me.ratio = me.rps / healthz.rps if me.rps and healthz.rps else None
        run.rows += [healthz, me]
        run.rows.append(measure_logins(backend, server, sim, db_url, healthz.rps, watch_cpu, args))
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        why = str(exc).splitlines()[0][:160]
        print(f"  FAILED: {exc}", file=sys.stderr)
        for line in server.log_path.read_text(errors="replace").splitlines()[-20:] if server.log_path.exists() else []:
            print(f"  | {line}", file=sys.stderr)
        done = {r.target for r in run.rows}
        for target in ("GET /healthz", f"GET {ME_PATH}", f"POST {LOGIN_PATH}"):
            if target not in done:
                run.rows.append(Row(target, backend, failed=why))
    finally:
        run.stop_s = server.stop()
        servers.remove(server)
        run.log_problems = server.log_problems()
        server.keep_log(args.keep_logs)
        if db_name:
            try:
                asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
                run.cleanup.append(f"dropped PostgreSQL database {db_name}")
            except Exception as exc:
                run.cleanup.append(f"could not drop PostgreSQL database {db_name}: {type(exc).__name__}: {exc}")
        if production:
            run.cleanup.append(hb.delete_redis_keys(prefix))
        for line in run.cleanup:
            print(f"  {line}", flush=True)
        for line in run.log_problems[:5]:
            print(f"  log: {line[:300]}")
        if len(run.log_problems) > 5:
            print(f"  log: ... {len(run.log_problems) - 5} more problem line(s)")
    return run


# -- report ------------------------------------------------------------------------------------


def table(rows: list[Row]) -> list[str]:
    lines = [
        "| target | backend | requests/s | p50 ms | p99 ms | ratio to /healthz |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if r.skipped or r.failed:
            why = f"skipped: {r.skipped}" if r.skipped else f"failed: {r.failed}"
            lines.append(f"| {r.target} | {r.backend} | {why} | — | — | — |")
        else:
            lines.append(
                f"| {r.target} | {r.backend} | {hb.fmt(r.rps, 0)} | {hb.fmt(r.p50_ms, 2)} | "
                f"{hb.fmt(r.p99_ms, 2)} | {hb.fmt(r.ratio, 3)} |"
            )
    return lines


def section(runs: list[BackendRun], sim_problems: list[str], args: argparse.Namespace, machine: str, when: str) -> str:
    rows = [r for run in runs for r in run.rows]
    url = f"http://{HOST}:PORT"
    healthz_cmd = " ".join(shlex.quote(p) for p in wrk_cmd(args, f"{url}/healthz", args.duration, None))
    me_cmd = " ".join(
        shlex.quote(p) for p in wrk_cmd(args, url + ME_PATH, args.duration, "Authorization: Bearer TOKEN")
    )
    warmup = " ".join(wrk_cmd(args, f"{url}/...", args.warmup, None, latency=False))
    per_address = 1 + math.ceil(args.logins / args.addresses)
    body = [
        SECTION,
        "",
        f"Measured {when} by `.venv/bin/python benchmarks/identity.py`.",
        "",
        *table(rows),
        "",
        "- Servers: `server.py serve`, 1 worker, `LOG_LEVEL=WARNING`, each started fresh on a free 127.0.0.1 port "
        "in an empty temporary directory, pointed at one WeChat simulator running as its own process "
        "(`python -m wechat.simulator`; `WECHAT_API_BASE`, `WECHAT_MP_APPID=wx_sim_miniprogram`, `WECHAT_MP_SECRET`). "
        f"*{EMBEDDED}*: the default, SQLite under the temporary `var/`, fakeredis, memory broker. "
        f"*{PRODUCTION}*: a fresh database created on `{PG_ADMIN_URL}` and dropped afterwards, "
        f"`REDIS_URL={hb.REDIS_URL}` with a throw-away `REDIS_KEY_PREFIX` (its keys deleted afterwards), random "
        "`SECRET_KEY` and `FIELD_ENCRYPTION_KEY`, `TASK_BROKER=memory`.",
        "- The citizen behind `/me`: signed in, declared a real name and ID number (L2), bound a phone and one "
        "mailing address, so each `/me` looks up the bearer token (Redis), reads the user and the addresses "
        "(database) and decrypts six fields (name, ID number, phone; the address's recipient, phone and detail).",
        f"- `/healthz` and `/me`, per backend on the same server: `{healthz_cmd}` and `{me_cmd}`, each after a "
        f"warm-up `{warmup}`. The ratio column is requests/s divided by that backend's `/healthz` requests/s.",
        f"- Logins: {args.addresses + args.logins} one-time wx.login codes minted first at the simulator's "
        "`POST /__sim__/login-code` (which also creates the simulator user), then posted to "
        f"`{LOGIN_PATH}` by this script with asyncio + httpx, {args.concurrency} requests in flight, each code used "
        f"once: {args.addresses} warm-up logins (one per source address, opening its keep-alive connection), then "
        f"{args.logins} timed. requests/s = logins answered 200 / wall time of the timed part; p50/p99 over those "
        "answers, measured in the client. The server allows 30 logins a minute per client IP and sees every "
        f"request from loopback, so code *i* is sent from source address 127.0.0.{{2 + i mod {args.addresses}}} "
        f"(httpx `local_address`; 127.0.0.2–127.0.0.{1 + args.addresses}), at most {per_address} logins per "
        "address; the audit-log count per IP below confirms what the server saw. Each login is a "
        "`jscode2session` HTTP call to the simulator on the same machine, then database writes (user looked up "
        "and created, its session_key encrypted and saved, a refresh-token row, an audit-log row) and a Redis "
        "pipeline for the access token, plus the rate-limiter hit. The client, the simulator and the server share "
        "the 2 cores.",
        f"- Machine: {machine}.",
        "- wrk and the login client share the cores with the server (and the simulator), so these are the ceilings "
        "of this machine, not of production hardware; compare rows within one run.",
    ]
    measured = [r.others_cpu for r in rows if r.rps is not None]
    if measured:
        body.append(
            f"- Other processes used at most {max(measured):.0%} of the CPU during the measured runs "
            f"(rows above {hb.BUSY:.0%} are flagged below; wrk rows are measured again, up to "
            f"{args.retries} times, when disturbed, keeping the least disturbed attempt). Counted as ours, "
            "not as others: the server, the simulator, wrk, this script and, in production mode, the "
            "PostgreSQL backends of the benchmark's database and the whole redis-server process."
        )
    starts = ", ".join(f"{run.backend}: {run.start_s:.1f} s" for run in runs if run.start_s is not None)
    if starts:
        body.append(f"- Time from start to the first 200 on /healthz (includes migrations): {starts}.")
    notes = []
    for run in runs:
        for r in run.rows:
            name = f"{r.target}, {r.backend}"
            if r.attempts > 1:
                notes.append(
                    f"{name}: measured {r.attempts} times because other processes disturbed it; "
                    "the least disturbed attempt is shown"
                )
            if r.others_cpu > hb.BUSY:
                notes.append(
                    f"{name}: other processes used {r.others_cpu:.0%} of the CPU while it was measured: "
                    "its numbers are low"
                )
            notes += [f"{name}: {n}" for n in r.notes]
        if run.log_problems:
            notes.append(
                f"{run.backend}: {len(run.log_problems)} warning/error line(s) in the server's log, first: "
                f"`{run.log_problems[0][:240]}`"
            )
        if run.stop_s is not None and run.stop_s > 5:
            notes.append(f"{run.backend}: the server took {run.stop_s:.1f} s to stop")
    if sim_problems:
        notes.append(
            f"WeChat simulator: {len(sim_problems)} error line(s) in its log, first: `{sim_problems[0][:240]}`"
        )
    if notes:
        body += ["- Notes and problems seen:", *[f"  - {n}" for n in notes]]
    return "\n".join(body) + "\n"


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Identity benchmark: /me vs /healthz, and logins (see benchmarks/README.md)."
    )
    parser.add_argument(
        "--duration", type=hb.positive, default=10, help="seconds of each measured wrk run (default 10)"
    )
    parser.add_argument("--warmup", type=hb.positive, default=2, help="seconds of each wrk warm-up run (default 2)")
    parser.add_argument("--connections", type=hb.positive, default=32, help="wrk connections (default 32)")
    parser.add_argument("--threads", type=hb.positive, default=1, help="wrk threads (default 1)")
    parser.add_argument("--logins", type=hb.positive, default=3000, help="timed logins per backend (default 3000)")
    parser.add_argument("--concurrency", type=hb.positive, default=16, help="logins in flight (default 16)")
    parser.add_argument(
        "--addresses",
        type=hb.positive,
        default=199,
        help="source addresses 127.0.0.2... for the logins, at most 253 (default 199)",
    )
    parser.add_argument("--no-production", action="store_true", help="skip the PostgreSQL + Redis backend")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=120,
        metavar="S",
        help="before each measurement, wait up to S seconds for other processes to go idle (default 120)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        metavar="N",
        help="measure a wrk target again, up to N times, when other processes disturbed it (default 2)",
    )
    parser.add_argument(
        "--keep-logs", type=Path, metavar="DIR", help="copy the servers' and simulator's output into DIR"
    )
    args = parser.parse_args(argv)
    if args.retries < 0:
        parser.error("--retries cannot be negative")
    if args.threads > args.connections:
        parser.error("--threads cannot exceed --connections")
    if args.addresses > 253:
        parser.error("--addresses: 127.0.0.2 to 127.0.0.254 at most (253)")
    if 1 + math.ceil(args.logins / args.addresses) > PER_ADDRESS_MAX:
        parser.error(
            f"--logins {args.logins} over {args.addresses} addresses is more than {PER_ADDRESS_MAX} per "
            f"address (the server allows {LOGIN_LIMIT_PER_IP}/minute per IP): lower --logins or raise --addresses"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print(
            "wrk is not installed: this benchmark uses it as the load generator.\n"
            "Install it from Debian's packages:  apt-get install -y wrk",
            file=sys.stderr,
        )
        return 2
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, hb._raise_interrupt)

    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = hb.machine_line()
    print(f"Identity benchmark, {when}\n{machine}\n")
    skip = None
    if args.no_production:
        skip = "--no-production"
    elif not hb.redis_answers():
        skip = f"no Redis on {HOST}:{hb.REDIS_PORT}"
    else:
        skip = pg_answers()

    runs: list[BackendRun] = []
    servers: list[IdentityServer] = []
    sim_problems: list[str] = []
    interrupted = False
    prefix = f"zbbench{secrets.token_hex(4)}:"
    tmp = tempfile.TemporaryDirectory(prefix="zb-bench-identity-")
    sim = Simulator(Path(tmp.name))
    try:
        print(f"WeChat simulator on port {sim.port}: answering after {sim.start():.1f} s", flush=True)
        for n, backend in enumerate([EMBEDDED, PRODUCTION]):
            if backend == PRODUCTION and skip:
                print(f"- {backend}: skipped ({skip})")
                run = BackendRun(backend, skipped=skip)
                run.rows = [
                    Row(t, backend, skipped=skip) for t in ("GET /healthz", f"GET {ME_PATH}", f"POST {LOGIN_PATH}")
                ]
                runs.append(run)
                continue
            workdir = Path(tmp.name) / f"{n}-{'production' if backend == PRODUCTION else 'embedded'}"
            workdir.mkdir()
            runs.append(run_backend(backend, workdir, prefix, sim, args, servers))
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping the servers", file=sys.stderr)
    except RuntimeError as exc:  # the simulator did not start
        print(f"FAILED: {exc}", file=sys.stderr)
        runs.append(BackendRun(EMBEDDED, rows=[Row("all", EMBEDDED, failed=str(exc)[:160])]))
    finally:
        for server in list(servers):  # interrupted mid-backend: run_backend's own finally has run already
            server.stop()
        sim.stop()
        sim_problems = sim.log_problems()
        if args.keep_logs and sim.log_path.exists():
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            shutil.copy(sim.log_path, args.keep_logs / sim.log_path.name)
        tmp.cleanup()

    if interrupted:
        return 130
    rows = [r for run in runs for r in run.rows]
    print()
    print("\n".join(table(rows)))
    for line in sim_problems[:5]:
        print(f"simulator log: {line[:300]}")
    print(
        f"\nwrk and the login client share the {machine.split()[0]} cores with the server: "
        "ceilings of this machine, not of production."
    )
    if not args.no_write:
        text = section(runs, sim_problems, args, machine, when)
        hb.write_results(text, SECTION)
        print(f"written to {hb.RESULTS.relative_to(ROOT)}")
    return 1 if any(r.failed for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
