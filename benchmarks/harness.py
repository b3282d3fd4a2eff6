"""The benchmarks' shared plumbing: servers, simulators, wrk, CPU accounting and reports.

A benchmark script is a description of what it measures on top of this module:

    import harness as h

    def main(argv=None):
        args = h.parse_args(__doc__, argv)
        with h.Session(args, SECTION, script="benchmarks/identity.py") as s:
            for backend in s.backends():              # embedded, then production (PostgreSQL + Redis)
                server = s.zhangban(backend)           # every channel configured, against simulators
                server.start()
                ceiling = s.ceiling(server)            # GET /healthz of the same server, same run
                s.wrk("GET /api/v1/me", server, "/api/v1/me", ceiling=ceiling, headers={...})
            return s.finish()

What it provides:

- `Session`: a temporary directory, the WeChat, platform and payment simulators (each its own
  process, started once per run and shared by every server of the run), the machine line, clean-up
  of every process, database and Redis prefix it made (also on an error, Ctrl-C or SIGTERM), the
  report (markdown tables written to the benchmark's own section of RESULTS.md, the other sections
  kept) and the one-line-per-row summary that `make bench` (benchmarks/run_all.py) collects.
- `Zhangban`: `server.py serve` (embedded default or production on PostgreSQL + Redis) with every
  production channel configured against the run's simulators (a production server refuses to start
  with a simulated channel), `cli()` for one-shot commands in the same environment, `worker` and
  `scheduler` helpers beside it.
- `Session.wrk()`: warm-up, then a measured wrk run (optionally a Lua script), CPU accounting of
  our processes and of the others; measured again (up to `--retries`) when others disturbed it.
  `Session.ceiling()` is the `/healthz` row every other row's ratio is divided by.
- `Requests`: a file of pre-built requests that a wrk Lua script sends once each, counting answers
  by status and by body markers and keeping samples (for callbacks, notifies, messages, ratings).
- `CpuWatch`: CPU used during a measurement by each of our processes and by everything else.

Quick mode (`--quick`, what `make bench` runs): short runs, production backend only, one worker
row, no quiet wait and no retry. The numbers are noisy; the ratios to `/healthz` measured in the
same run are what to read.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import json
import math
import os
import re
import secrets
import shlex
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks"
RESULTS = BENCH_DIR / "RESULTS.md"
HOST = "127.0.0.1"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_PORT = 6379
REDIS_URL = f"redis://{HOST}:{REDIS_PORT}/0"
EMBEDDED, PRODUCTION = "embedded (SQLite, fakeredis)", "production (PostgreSQL, Redis)"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 25.0  # above the server's GRACEFUL_SHUTDOWN_TIMEOUT (15 s)
BUSY = 0.10  # share of the CPU used by other processes above which a row is flagged
SUMMARY_ENV = "ZB_BENCH_SUMMARY"  # run_all.py: where each benchmark appends its summary lines
SIM_APPID, SIM_SECRET = "wx_sim_miniprogram", "sim_mp_secret_0123456789abcdef"  # wechat/simulator.py defaults
CHINA = dt.timezone(dt.timedelta(hours=8))

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def workers_label(workers: int) -> str:
    return f"{workers} Sanic worker{'s' if workers > 1 else ''}"


def python_bin() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def settings_names() -> set[str]:
    """Every Zhangban setting: none of them may leak from the caller's shell into a server."""
    from core.settings import Settings

    return set(Settings.model_fields)


def clean_env() -> dict[str, str]:
    names = settings_names()
    env = {k: v for k, v in os.environ.items() if k not in names and k != "PYTHONPATH" and k != SUMMARY_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return sorted_values[max(0, math.ceil(p / 100 * len(sorted_values)) - 1)]


def fmt(value, digits: int = 0) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


# -- arguments ---------------------------------------------------------------------------------

QUICK = {"duration": 3, "warmup": 1, "quiet_wait": 0, "retries": 0}


def parse_args(
    doc: str | None,
    argv: list[str] | None,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
    quick: dict | None = None,
    workers: str = "1",
) -> argparse.Namespace:
    """The options every benchmark has, plus `extra`'s; `--quick` applies QUICK and `quick`
    (options the user did not give explicitly)."""
    parser = argparse.ArgumentParser(
        description=(doc or "").split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short runs, production only (what `make bench` runs)")
    parser.add_argument("--duration", type=int, default=10, help="seconds of each measured wrk run (10)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of the warm-up before each (2)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    parser.add_argument("--workers", default=workers, help=f"Sanic worker counts, comma-separated ({workers})")
    parser.add_argument("--no-production", action="store_true", help="embedded backend only")
    parser.add_argument("--no-embedded", action="store_true", help="production backend only")
    parser.add_argument("--quiet-wait", type=float, default=60, help="seconds to wait for a quiet machine (60)")
    parser.add_argument("--retries", type=int, default=1, help="measure a disturbed row again up to N times (1)")
    parser.add_argument("--budget", type=float, default=600, help="after N s no more quiet waits or retries (600)")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    parser.add_argument("--write", action="store_true", help="in quick mode, write RESULTS.md all the same")
    parser.add_argument("--keep-logs", type=Path, help="copy every process's log there")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="py-spy the server during each measured non-/healthz row; summaries in the notes")  # fmt: skip
    if extra:
        extra(parser)
    args = parser.parse_args(argv)
    if args.quick:
        given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in (argv if argv is not None else sys.argv[1:])}
        for key, value in {**QUICK, **(quick or {})}.items():
            if key not in given:
                setattr(args, key, value)
        if "no_embedded" not in given and "no_production" not in given:
            args.no_embedded = True
    args.worker_counts = [int(w) for w in str(args.workers).split(",") if w.strip()]
    if args.duration < 1 or args.warmup < 0 or args.connections < 1 or args.threads < 1:
        parser.error("--duration, --connections and --threads must be at least 1")
    return args


# -- processes ---------------------------------------------------------------------------------


class Proc:
    """A child process in its own session (its process group is ours alone), its output in a log."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path, log: Path):
        self.name, self.argv, self.env, self.cwd, self.log_path = name, argv, env, cwd, log
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self) -> None:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, url: str | None, timeout: float = START_TIMEOUT, settle: float = 0.5) -> float:
        """Seconds until `url` answers 200 (None: until the process has lived `settle` s)."""
        import httpx

        began = time.monotonic()
        while time.monotonic() < began + timeout:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-600:]
                raise RuntimeError(f"{self.name} exited with code {self.proc.returncode}: {tail}")
            if url is None:
                if time.monotonic() - began >= settle:
                    return time.monotonic() - began
            else:
                try:
                    if httpx.get(url, timeout=1).status_code == 200:
                        return time.monotonic() - began
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: no 200 from {url} within {timeout:.0f} s")

    def start(self, ready_url: str | None = None) -> float:
        self.spawn()
        return self.wait_ready(ready_url)

    def stop(self) -> float | None:
        """SIGINT to the main process, then SIGKILL to its process group if anything lingers."""
        if self.proc is None:
            return None
        began = time.monotonic()
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    print(f"  {self.name}: still running after {STOP_TIMEOUT:.0f} s, killing it", file=sys.stderr)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        finally:
            if self._log:
                self._log.close()
                self._log = None
        self.proc = None
        return time.monotonic() - began

    def log_problems(self) -> list[str]:
        """Lines of the output that look like trouble, one summary line each (JSON log lines
        of Zhangban summarised as `LEVEL logger: msg`)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        pattern = re.compile(r"Traceback|Error|Exception|WARNING|CRITICAL")
        problems = []
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict) and "level" in record:
                if record["level"] in {"WARNING", "ERROR", "CRITICAL"}:
                    exc = str(record.get("exc") or "").strip().splitlines()
                    summary = f"{record['level']} {record.get('logger', '?')}: {record.get('msg', '')}"
                    problems.append(summary + (f" [{exc[-1]}]" if exc else ""))
            elif pattern.search(line):
                problems.append(line.strip())
        return problems

    def keep_log(self, directory: Path | None) -> None:
        if directory and self.log_path.exists():
            directory.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.log_path, directory / f"{self.cwd.name}-{self.log_path.name}")


def log_kinds(problems: list[str], top: int = 4) -> list[tuple[str, int]]:
    """The most frequent kinds of problem lines (numbers folded to N)."""
    kinds = Counter(re.sub(r"\d+", "N", p)[:160] for p in problems)
    return kinds.most_common(top)


class Simulator(Proc):
    """A simulator (WeChat, platform, payments) on a free port; `control()` is its control API."""

    def __init__(self, name: str, argv: list[str], workdir: Path, stats_path: str = "/__sim__/stats"):
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.stats_path = stats_path
        cwd = workdir / name.replace(" ", "-")
        cwd.mkdir(exist_ok=True)
        env = clean_env()
        env["PYTHONPATH"] = str(ROOT)
        argv = [python_bin(), *[a.replace("{port}", str(self.port)).replace("{host}", HOST) for a in argv]]
        super().__init__(name, argv, env, cwd, workdir / f"{name.replace(' ', '-')}.log")

    def start(self, ready_url: str | None = None) -> float:
        return super().start(ready_url or self.url + self.stats_path)

    def control(self, path: str, payload: dict) -> dict:
        import httpx

        response = httpx.post(f"{self.url}/{path.lstrip('/')}", json=payload, timeout=10)
        if response.status_code != 200:
            raise RuntimeError(f"{self.name} {path}: {response.status_code} {response.text[:200]}")
        return response.json()

    def calls(self, stats_path: str | None = None) -> dict[str, int]:
        """The simulator's call counts by path ({} when it does not answer)."""
        import httpx

        try:
            return dict(httpx.get(self.url + (stats_path or self.stats_path), timeout=10).json().get("calls", {}))
        except (httpx.HTTPError, ValueError):
            return {}


class Plain(Proc):
    """A non-Zhangban server of a benchmark (bare Sanic, WeRoBot) on a free port; `{port}` and
    `{host}` in `argv` are filled in."""

    def __init__(self, session: Session, name: str, argv: list[str], env: dict[str, str] | None = None,
                 ready_path: str = "/"):  # fmt: skip
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}"
        self.label, self.ready_path = name, ready_path
        cwd = session.tmp / re.sub(r"\W+", "-", name)
        cwd.mkdir(exist_ok=True)
        argv = [a.replace("{port}", str(self.port)).replace("{host}", HOST) for a in argv]
        super().__init__(name, argv, {**clean_env(), **(env or {})}, cwd, cwd / "server.log")
        session.procs.append(self)

    def start(self, ready_url: str | None = None) -> float:
        return super().start(ready_url or self.base + self.ready_path)


# -- load from this process (asyncio + httpx) -----------------------------------------------------


@dataclass
class Load:
    latencies: list[float] = field(default_factory=list)  # seconds, of the answers `ok` accepted
    outcomes: Counter = field(default_factory=Counter)  # "201", "503 busy", "ConnectError", ...
    wall_s: float = 0.0

    def summary(self) -> tuple[float | None, float | None, float | None]:
        """(per second, p50 ms, p99 ms) of the accepted answers."""
        if not self.latencies:
            return None, None, None
        lat = sorted(self.latencies)
        return len(lat) / self.wall_s, percentile(lat, 50) * 1000, percentile(lat, 99) * 1000


async def drive(send: Callable, concurrency: int, *, items: list | None = None, seconds: float | None = None) -> Load:
    """`concurrency` tasks calling `await send(item)` (items taken once each, or `seconds` long with
    item None); `send` returns (outcome, ok). Latency of each ok answer, outcomes counted."""
    result = Load()
    todo = iter(items) if items is not None else None
    stop_at = time.perf_counter() + (seconds or 0)

    async def worker() -> None:
        while True:
            if todo is not None:
                item = next(todo, StopAsyncIteration)
                if item is StopAsyncIteration:
                    return
            else:
                if time.perf_counter() >= stop_at:
                    return
                item = None
            began = time.perf_counter()
            try:
                outcome, ok = await send(item)
            except Exception as exc:  # httpx errors: counted, the load goes on
                outcome, ok = type(exc).__name__, False
            if ok:
                result.latencies.append(time.perf_counter() - began)
            result.outcomes[str(outcome)] += 1

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.wall_s = time.perf_counter() - began
    return result


def outcomes(counter: Counter) -> str:
    return ", ".join(f"{k} ×{v:,}" for k, v in sorted(counter.items())) or "none"


# -- channels: every production channel against a simulator --------------------------------------


def _rsa_pems():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return key, private, public


class Channels:
    """The run's external channels, each against its simulator run as its own process:

    - WeChat mini-program and official account: `python -m wechat.simulator` (the simulator's
      default mini-program and OA apps; the OA token and EncodingAESKey generated per run);
    - the core platform: `python -m bridge.simulator` with an app key and secret made per run;
    - WeChat Pay and Alipay: `python server.py pay-sim --time-scale 0.001`, where the merchant's
      WeChat Pay key, APIv3 key and Alipay app key, generated per run, are registered.

    `env()` is what a server needs so that no channel is simulated in-process. `own_platform=True`
    trusts a WeChat Pay platform key generated here (so a benchmark can sign notifies itself)
    instead of the pay-sim's."""

    MCHID, MERCHANT_SERIAL = "1900000109", "3775B6A45ACD588826D15E583A95F5DD00000001"
    ALIPAY_APP_ID, ALIPAY_SELLER = "2021000122600001", "2088102177846875"

    def __init__(self, workdir: Path):
        from tests.oa_pusher import OA_APPID, OA_SECRET, new_aes_key

        self.dir = workdir / "keys"
        self.dir.mkdir()
        self.oa_appid, self.oa_secret = OA_APPID, OA_SECRET
        self.oa_token = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32))
        self.oa_aes_key = new_aes_key()
        self.platform_key = "zbbench_" + secrets.token_hex(4)
        self.platform_secret = secrets.token_urlsafe(32)
        self.apiv3_key = secrets.token_hex(16)
        self.merchant_key, merchant_pem, self.merchant_public = _rsa_pems()
        self.app_key, app_pem, self.app_public = _rsa_pems()
        self.wxpay_platform_key, _, own_platform_public = _rsa_pems()
        self.wxpay_platform_serial = "PUB_KEY_ID_0114" + "".join(secrets.choice("0123456789") for _ in range(26))
        (self.dir / "merchant.pem").write_bytes(merchant_pem)
        (self.dir / "alipay_app.pem").write_bytes(app_pem)
        (self.dir / "own_platform_public.pem").write_text(own_platform_public)
        self.sim_platform_serial = ""
        self.wechat = Simulator(
            "WeChat simulator", ["-m", "wechat.simulator", "--host", "{host}", "--port", "{port}"], workdir
        )
        self.platform = Simulator(
            "platform simulator",
            [
                "-m", "bridge.simulator", "--host", "{host}", "--port", "{port}",
                f"--app-key={self.platform_key}", f"--secret={self.platform_secret}",
                "--script", "happy", "--step-delay", "3600",
            ],
            workdir,
        )  # fmt: skip
        self.paysim = Simulator(
            "pay-sim",
            [str(ROOT / "server.py"), "pay-sim", "--host", "{host}", "--port", "{port}", "--time-scale", "0.001"],
            workdir,
        )

    @property
    def sims(self) -> list[Simulator]:
        return [self.wechat, self.platform, self.paysim]

    def start(self) -> None:
        for sim in self.sims:  # all three boot at once, then each is waited for
            sim.spawn()
        for sim in self.sims:
            sim.wait_ready(sim.url + sim.stats_path)
        wechat = self.paysim.control(
            "wechatpay/__sim__/merchants",
            {
                "mchid": self.MCHID,
                "appids": [SIM_APPID],
                "serial_no": self.MERCHANT_SERIAL,
                "public_key_pem": self.merchant_public,
                "apiv3_key": self.apiv3_key,
            },
        )
        app = self.paysim.control(
            "alipay/__sim__/apps",
            {"app_id": self.ALIPAY_APP_ID, "app_public_key_pem": self.app_public, "seller_id": self.ALIPAY_SELLER},
        )
        self.sim_platform_serial = wechat["platform_serial"]
        (self.dir / "sim_platform_public.pem").write_text(wechat["platform_public_key_pem"])
        (self.dir / "alipay_public.pem").write_text(app["alipay_public_key_pem"])

    def stop(self) -> None:
        for sim in self.sims:
            sim.stop()

    def env(self, own_platform: bool = False) -> dict[str, str]:
        platform_pem = "own_platform_public.pem" if own_platform else "sim_platform_public.pem"
        return {
            "WECHAT_API_BASE": self.wechat.url,
            "WECHAT_MP_APPID": SIM_APPID,
            "WECHAT_MP_SECRET": SIM_SECRET,
            "WECHAT_OA_APPID": self.oa_appid,
            "WECHAT_OA_SECRET": self.oa_secret,
            "WECHAT_OA_TOKEN": self.oa_token,
            "WECHAT_OA_AES_KEY": self.oa_aes_key,
            "PLATFORM_BASE_URL": self.platform.url,
            "PLATFORM_APP_KEY": self.platform_key,
            "PLATFORM_SECRET": self.platform_secret,
            "WECHATPAY_API_BASE": self.paysim.url + "/wechatpay",
            "WECHATPAY_MCHID": self.MCHID,
            "WECHATPAY_SERIAL_NO": self.MERCHANT_SERIAL,
            "WECHATPAY_PRIVATE_KEY": str(self.dir / "merchant.pem"),
            "WECHATPAY_APIV3_KEY": self.apiv3_key,
            "WECHATPAY_PLATFORM_PUBLIC_KEY": str(self.dir / platform_pem),
            "WECHATPAY_PLATFORM_SERIAL": self.wxpay_platform_serial if own_platform else self.sim_platform_serial,
            "ALIPAY_GATEWAY": self.paysim.url + "/alipay/gateway.do",
            "ALIPAY_APP_ID": self.ALIPAY_APP_ID,
            "ALIPAY_PRIVATE_KEY": str(self.dir / "alipay_app.pem"),
            "ALIPAY_PUBLIC_KEY": str(self.dir / "alipay_public.pem"),
            "ALIPAY_SELLER_ID": self.ALIPAY_SELLER,
        }

    # -- what the benchmarks ask the WeChat simulator for ----------------------------------------

    def login_code(self, openid: str | None = None) -> str:
        payload = {"appid": SIM_APPID, **({"openid": openid} if openid else {})}
        return self.wechat.control("__sim__/login-code", payload)["code"]

    def sign_in(self, base: str, openid: str | None = None, source: str | None = None) -> dict:
        """A citizen signed in through the WeChat simulator: the login answer (token, user, ...)."""
        import httpx

        response = httpx.post(base + "/api/v1/auth/login", json={"code": self.login_code(openid)}, timeout=30)
        if response.status_code != 200:
            raise RuntimeError(f"login answered {response.status_code}: {response.text[:200]}")
        return response.json()


# -- citizens ----------------------------------------------------------------------------------


def id_number(birth: str = "19900307", region: str = "510502", sex: str | None = None) -> str:
    """A valid resident ID number (GB 11643 check digit); its 17th digit gives `sex` if asked."""
    import random

    while True:
        body = f"{region}{birth}{random.randint(100, 999)}"
        if sex is None or (int(body[16]) % 2 == 1) == (sex == "male"):
            break
    weights = [2 ** (17 - i) % 11 for i in range(17)]
    return body + "10X98765432"[sum(int(d) * w for d, w in zip(body, weights, strict=False)) % 11]


class Citizen:
    """A citizen signed in through the WeChat simulator: `client()` sends their bearer token."""

    def __init__(self, base: str, channels: Channels, openid: str | None = None):
        import httpx

        self.base, self.channels = base, channels
        minted = channels.wechat.control(
            "__sim__/login-code", {"appid": SIM_APPID, **({"openid": openid} if openid else {})}
        )
        self.openid = minted["openid"]
        response = httpx.post(base + "/api/v1/auth/login", json={"code": minted["code"]}, timeout=30)
        if response.status_code != 200:
            raise RuntimeError(f"set-up login answered {response.status_code}: {response.text[:200]}")
        pair = response.json()
        self.token, self.refresh_token, self.user = pair["access_token"], pair["refresh_token"], pair.get("user") or {}

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self):
        import httpx

        return httpx.Client(base_url=self.base, timeout=30, headers=self.headers)

    def call(self, method: str, path: str, expect: int | tuple[int, ...] = (200, 201), **kw):
        """One request with the token; its JSON (raises unless the status is `expect`)."""
        with self.client() as c:
            response = c.request(method, path, **kw)
        if response.status_code not in ((expect,) if isinstance(expect, int) else expect):
            raise RuntimeError(f"set-up {method} {path} answered {response.status_code}: {response.text[:300]}")
        return response.json() if response.content else None

    def declare(self, name: str = "张三丰", number: str | None = None) -> None:
        self.call("POST", "/api/v1/identity/declare", json={"name": name, "id_number": number or id_number()})

    def face(self) -> None:
        """Passes the face check at the simulator: identity level L3 (after `declare`)."""
        verify_id = self.call("POST", "/api/v1/identity/face/start")["verify_id"]
        self.channels.wechat.control("__sim__/face/complete", {"verify_id": verify_id, "verify_ret": 10000})
        self.call("POST", "/api/v1/identity/face/finish", json={"verify_id": verify_id})
        if self.call("GET", "/api/v1/me").get("identity_level") != "L3":
            raise RuntimeError("set-up: the face check did not make the citizen L3")


# -- in-process timing -------------------------------------------------------------------------


def time_call(fn: Callable[[], object], iterations: int) -> tuple[float, float, float]:
    """(median µs, p99 µs, share of the CPU other processes used) of `fn()` over `iterations`
    calls, after iterations // 10 unmeasured ones."""
    for _ in range(max(20, iterations // 10)):
        fn()
    samples = []
    clock = time.perf_counter_ns
    with CpuWatch({}) as watch:
        for _ in range(iterations):
            began = clock()
            fn()
            samples.append(clock() - began)
    samples.sort()
    return percentile(samples, 50) / 1000, percentile(samples, 99) / 1000, watch.others()


# -- PostgreSQL and Redis ----------------------------------------------------------------------


async def pg(sql: str, url: str = PG_ADMIN_URL, fetch: bool = False, *args):
    import asyncpg

    conn = await asyncpg.connect(url, timeout=10)
    try:
        return [tuple(r) for r in await conn.fetch(sql, *args)] if fetch else await conn.execute(sql, *args)
    finally:
        await conn.close()


def pg_url_for(name: str) -> str:
    parts = urlsplit(PG_ADMIN_URL)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, "", ""))


def pg_fetch(db_url: str, sql: str, *args) -> list[tuple]:
    return asyncio.run(pg(sql, db_url, True, *args))


def production_missing() -> str | None:
    """None when PostgreSQL and Redis answer, else why not."""
    try:
        asyncio.run(pg("SELECT 1"))
    except Exception as exc:
        return f"no PostgreSQL at {PG_ADMIN_URL} ({type(exc).__name__})"
    import redis

    try:
        redis.Redis(host=HOST, port=REDIS_PORT, socket_timeout=2).ping()
    except Exception as exc:
        return f"no Redis at {REDIS_URL} ({type(exc).__name__})"
    return None


def delete_redis_keys(prefix: str) -> str:
    import redis

    client = redis.Redis(host=HOST, port=REDIS_PORT, db=0, socket_timeout=10)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        return f"deleted {len(keys)} Redis key(s) under {prefix!r}"
    except Exception as exc:
        return f"could not delete Redis keys under {prefix!r}: {type(exc).__name__}"
    finally:
        client.close()


def redis_pids() -> list[int]:
    import redis

    client = redis.Redis(host=HOST, port=REDIS_PORT, db=0, socket_timeout=5)
    try:
        return [int(client.info("server")["process_id"])]
    except Exception:
        return []
    finally:
        client.close()


# -- Zhangban servers --------------------------------------------------------------------------


class SignalWatch:
    """Who sends a termination signal to a process: `strace -e trace=none -e signal=...` attached to
    it, so that a server killed from outside says by whom. Only when asked for (`ZB_BENCH_SIGNALS=1`
    and strace installed): a process strace is attached to stops for strace at every system call
    even with `trace=none` (attaching cannot use `--seccomp-bpf`), which made a 1-worker server,
    whose one process is the traced one, answer `/healthz` 10 times slower (1,541 against 15,700
    req/s for bare Sanic, measured 2026-11-30); with more workers only the idle main process was
    traced, so only 1-worker rows were hit."""

    ENV = "ZB_BENCH_SIGNALS"

    def __init__(self, pid: int, log: Path):
        self.log, self.proc = log, None
        if os.environ.get(self.ENV) == "1" and shutil.which("strace") and pid:
            self.proc = subprocess.Popen(
                ["strace", "-qq", "-e", "trace=none", "-e", "signal=SIGTERM,SIGINT,SIGHUP,SIGQUIT", "-p", str(pid),
                 "-o", str(log)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip

    def senders(self) -> str:
        """`SIGTERM from pid N (its command line)` for each signal seen."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        out = []
        for sig, pid in re.findall(r"--- (SIG\w+) \{[^}]*si_pid=(\d+)", text):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                cmd = "gone by now"
            out.append(f"{sig} from pid {pid} ({cmd[:120]})")
        return "; ".join(out)


class Zhangban(Proc):
    """`server.py serve` in its own temporary directory, its environment made once (so `cli()`
    commands, the worker, the scheduler and a restart share the keys, database and prefix).

    embedded: the default (SQLite under the directory's `var/`, fakeredis, memory broker).
    production: a fresh PostgreSQL database (created here, dropped at the end), Redis with a
    throw-away key prefix (deleted at the end), random SECRET_KEY / FIELD_ENCRYPTION_KEY.
    Both: every channel configured against the run's simulators, LOG_LEVEL=WARNING."""

    def __init__(self, session: Session, backend: str, workers: int = 1, env: dict[str, str] | None = None,
                 own_platform: bool = False, name: str | None = None):  # fmt: skip
        self.session, self.backend, self.workers = session, backend, workers
        self.label = name or (
            f"{workers} Sanic worker{'s' if workers > 1 else ''}" if backend == PRODUCTION and workers > 1 else backend
        )
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}"
        workdir = session.tmp / f"zb{len(session.servers)}-{'prod' if backend == PRODUCTION else 'emb'}-w{workers}"
        workdir.mkdir()
        env_ = clean_env()
        env_.update(
            HOST=HOST, WORKERS=str(workers), LOG_LEVEL="WARNING", PUBLIC_BASE_URL=self.base, PUSH_QUIET_HOURS=""
        )
        env_.update(session.channels.env(own_platform))
        self.db_name = self.prefix = None
        if backend == PRODUCTION:
            self.db_name = f"zbbench_{secrets.token_hex(4)}"
            self.prefix = f"zbbench{secrets.token_hex(4)}:"
            asyncio.run(pg(f'CREATE DATABASE "{self.db_name}"'))
            session.cleanups.append(self._drop)
            env_.update(
                DATABASE_URL=pg_url_for(self.db_name),
                REDIS_URL=REDIS_URL,
                REDIS_KEY_PREFIX=self.prefix,
                TASK_BROKER="redis",
                SECRET_KEY="".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(48)),
                FIELD_ENCRYPTION_KEY=base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
            )
        env_.update(env or {})
        self.db_url = env_.get("DATABASE_URL") or f"sqlite:///{workdir}/var/zhangban.sqlite3"
        super().__init__(self.label, [python_bin(), str(ROOT / "server.py"), "serve", "--port", str(self.port)],
                         env_, workdir, workdir / "server.log")  # fmt: skip
        self.helpers: list[Proc] = []
        self.start_s: float | None = None
        session.servers.append(self)

    def _drop(self) -> str:
        try:
            asyncio.run(pg(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)'))
            done = f"dropped PostgreSQL database {self.db_name}"
        except Exception as exc:
            done = f"could not drop PostgreSQL database {self.db_name}: {type(exc).__name__}: {exc}"
        return done + "; " + delete_redis_keys(self.prefix)

    def url(self, path: str) -> str:
        return self.base + path

    def cli(self, *argv: str, timeout: float = 300, stdin: str | None = None) -> str:
        """`python server.py <argv>` with the server's environment; its output (raises on failure)."""
        done = subprocess.run(
            [python_bin(), str(ROOT / "server.py"), *argv],
            cwd=self.cwd,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"server.py {' '.join(argv)} exited {done.returncode}: {(done.stderr or done.stdout)[-400:]}"
            )
        return (
            (done.stdout.strip() or done.stderr.strip()).splitlines()[-1:][0]
            if (done.stdout or done.stderr).strip()
            else ""
        )

    def prepare(self, demo: bool = True) -> str:
        """`migrate` (and `load-demo`) with the server's environment; load-demo's last line."""
        self.cli("migrate")
        return self.cli("load-demo") if demo else ""

    def start(self, helpers: bool = False) -> float:  # type: ignore[override]
        """Starts `serve` (and, with `helpers`, a worker and a scheduler beside it); seconds until
        `/healthz` answered 200."""
        if helpers and not self.helpers:
            for name, argv in (("worker", ["worker", "--processes", "1"]), ("scheduler", ["scheduler"])):
                self.add_helper(name, argv)
        for attempt in (1, 2):
            self.spawn()
            watcher = SignalWatch(self.pid, self.cwd / f"signals-{attempt}.log")
            try:
                self.start_s = self.wait_ready(self.base + "/healthz")
                break
            except RuntimeError:
                code = self.proc.returncode if self.proc else None
                if attempt == 2 or code is None or code >= 0:
                    raise
                self.session.note(
                    f"{self.label}: the server died of signal {-code} before answering, not of its own accord "
                    f"({watcher.senders() or 'sender unknown'}); started again"
                )
                self.stop()
                self.port = free_port()
                self.base = f"http://{HOST}:{self.port}"
                self.argv[-1] = str(self.port)
                self.env["PUBLIC_BASE_URL"] = self.base
            finally:
                self.watchers = [*getattr(self, "watchers", []), watcher]
        if self.workers > 1:
            time.sleep(1.0)  # the other workers finish booting
        return self.start_s

    def add_helper(self, name: str, argv: list[str]) -> Proc:
        helper = Proc(
            name, [python_bin(), str(ROOT / "server.py"), *argv], self.env, self.cwd, self.cwd / f"{name}.log"
        )
        helper.start()
        self.helpers.append(helper)
        return helper

    def restart(self, env: dict[str, str], helpers: bool = True) -> float:
        """Stops the server and its helpers, changes `env`, starts them again (same database)."""
        self.stop()
        self.helpers = []
        self.env.update(env)
        if "WORKERS" in env:
            self.workers = int(env["WORKERS"])
            self.label = workers_label(self.workers)
            self.name = self.label
        return self.start(helpers=helpers)

    def stop_helpers(self) -> None:
        for helper in self.helpers:
            helper.stop()

    def stop(self) -> float | None:  # type: ignore[override]
        took = super().stop()
        self.stop_helpers()
        return took

    def cpu_groups(self) -> dict[str, int]:
        groups = {"server": self.pid} if self.running() else {}
        groups.update({h.name: h.pid for h in self.helpers if h.running()})
        return groups

    def services(self) -> dict[str, list[int]]:
        """The PostgreSQL backends serving our database and the Redis server: they work for us."""
        if self.backend != PRODUCTION:
            return {}
        sql = f"SELECT pid FROM pg_stat_activity WHERE datname = '{self.db_name}'"
        return {
            "PostgreSQL (our database)": [int(r[0]) for r in asyncio.run(pg(sql, fetch=True))],
            "Redis": redis_pids(),
        }


# -- CPU accounting ----------------------------------------------------------------------------


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def _stat(pid: str | int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def group_jiffies(pgids: set[int]) -> dict[int, int]:
    """CPU ticks (user + system) used so far by the live processes of each process group."""
    totals = dict.fromkeys(pgids, 0)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            rest = _stat(entry)
            if rest and int(rest[2]) in totals:
                totals[int(rest[2])] += int(rest[11]) + int(rest[12])
    return totals


def pid_jiffies(pid: int) -> int:
    rest = _stat(pid)
    return int(rest[11]) + int(rest[12]) if rest else 0


def self_jiffies() -> float:
    t = os.times()
    return (t.user + t.system) * os.sysconf("SC_CLK_TCK")


class CpuWatch:
    """CPU used during a measurement: by our processes (named process groups, this script, the
    service processes `services()` names) and by all the others."""

    def __init__(self, groups: dict[str, int], services: Callable[[], dict[str, list[int]]] | None = None):
        self.groups, self.services = groups, services or (lambda: {})
        self.used: dict[str, float] = {}
        self.seconds = 0.0
        self.extra_ticks = 0.0

    def __enter__(self) -> CpuWatch:
        self.began = time.monotonic()
        self.pid0 = {pid: pid_jiffies(pid) for pids in self.services().values() for pid in pids}
        self.group0 = group_jiffies(set(self.groups.values()))
        self.self0 = self_jiffies()
        self.busy0, self.total0 = machine_jiffies()
        return self

    def __exit__(self, *exc) -> None:
        self.busy1, self.total1 = machine_jiffies()
        self.seconds = time.monotonic() - self.began
        after = group_jiffies(set(self.groups.values()))
        self.used = {name: after[pgid] - self.group0[pgid] for name, pgid in self.groups.items()}
        self.used["this script"] = self_jiffies() - self.self0
        if exc[0] is None:
            for name, pids in self.services().items():
                self.used[name] = sum(max(0, pid_jiffies(pid) - self.pid0.get(pid, 0)) for pid in set(pids))

    def add(self, name: str, cpu_seconds: float) -> None:
        """A child that is not a process group of ours (wrk): its CPU seconds."""
        self.used[name] = cpu_seconds * os.sysconf("SC_CLK_TCK")

    def others(self) -> float:
        """Share of the machine used by processes other than ours."""
        ours = sum(self.used.values())
        return max(0.0, (self.busy1 - self.busy0 - ours) / max(1, self.total1 - self.total0))

    def core_share(self, name: str) -> float:
        return self.used.get(name, 0) / os.sysconf("SC_CLK_TCK") / max(1e-9, self.seconds)

    def shares(self) -> str:
        """Each of ours as a share of one core over the measurement."""
        return ", ".join(f"{name} {self.core_share(name):.0%}" for name in self.used)


def wait_until_quiet(limit: float, quiet_for: int = 5) -> float:
    """Waits up to `limit` s until the machine has been idle `quiet_for` s in a row."""
    if limit <= 0:
        return 0.0
    deadline, quiet, told = time.monotonic() + limit, 0, False
    while True:
        busy0, total0 = machine_jiffies()
        time.sleep(1.0)
        busy1, total1 = machine_jiffies()
        busy = (busy1 - busy0) / max(1, total1 - total0)
        quiet = quiet + 1 if busy <= BUSY else 0
        if quiet >= quiet_for or time.monotonic() >= deadline:
            return busy
        if not told and busy > BUSY:
            print(f"  the machine is {busy:.0%} busy: waiting up to {limit:.0f} s for quiet", flush=True)
            told = True


# -- wrk ---------------------------------------------------------------------------------------

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def to_ms(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", value.strip())
    if not match:
        raise ValueError(f"unknown wrk duration '{value}'")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: str | None
    cpu_s: float

    @property
    def clean(self) -> bool:
        return not self.non_2xx and self.socket_errors in (None, "connect 0, read 0, write 0, timeout 0")


def wrk_command(url: str, seconds: int, connections: int, threads: int, headers: dict[str, str] | None = None,
                script: Path | None = None, latency: bool = True) -> list[str]:  # fmt: skip
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s"]
    if latency:
        cmd.append("--latency")
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name}: {value}"]
    if script:
        cmd += ["-s", str(script)]
    return cmd + [url]


def run_wrk(cmd: list[str], seconds: int) -> WrkResult | None:
    """Runs wrk; the parsed result (None without --latency) with the CPU seconds wrk used."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        deadline = time.monotonic() + seconds + 60
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"wrk did not finish within {seconds + 60} s")
                time.sleep(0.05)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if code != 0:
        raise RuntimeError(f"wrk exited {code}: {stderr.strip() or stdout.strip()}")
    if "Latency Distribution" not in stdout:
        return None
    percentiles = dict(re.findall(r"^\s*(\d+)%\s+(\S+)\s*$", stdout.split("Latency Distribution", 1)[1], re.M))
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", stdout, re.M)
    if not rps or "50" not in percentiles or "99" not in percentiles:
        raise RuntimeError(f"could not parse wrk output:\n{stdout}")
    total = re.search(r"^\s*(\d+) requests in", stdout, re.M)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", stdout)
    errors = re.search(r"Socket errors:\s*(.+)", stdout)
    return WrkResult(
        rps=float(rps.group(1)),
        p50_ms=to_ms(percentiles["50"]),
        p99_ms=to_ms(percentiles["99"]),
        requests=int(total.group(1)) if total else 0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=errors.group(1).strip() if errors else None,
        cpu_s=usage.ru_utime + usage.ru_stime,
    )


def wrk_version() -> str:
    try:
        line = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split("\n", 1)[0]
    except FileNotFoundError:
        return "wrk missing"
    return line.split("[")[0].replace("Copyright", "").strip()


# -- profiles (py-spy) -------------------------------------------------------------------------

PY_SPY_VERSION = "0.4.3"
TOOLS_VENV = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "zhangban-bench" / "tools"


def py_spy() -> str:
    """py-spy, installed on first use into a virtual environment of the benchmarks' own (not a
    Zhangban dependency); needs the package index once."""
    binary = TOOLS_VENV / "bin" / "py-spy"
    if not binary.exists():
        TOOLS_VENV.parent.mkdir(parents=True, exist_ok=True)
        base = getattr(sys, "_base_executable", None) or shutil.which("python3") or "python3"
        for cmd in ([base, "-m", "venv", str(TOOLS_VENV)],
                    [str(TOOLS_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", f"py-spy=={PY_SPY_VERSION}"]):  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                shutil.rmtree(TOOLS_VENV, ignore_errors=True)
                raise RuntimeError(f"installing py-spy failed: {done.stderr.strip()[-300:]}")
    return str(binary)


class Profile:
    """`py-spy record` of a process group's main process and its children (Sanic's workers) while
    entered, in collapsed-stack form; `summary()` says where the time went."""

    def __init__(self, pid: int, seconds: float, out: Path):
        self.pid, self.seconds, self.out = pid, seconds, out
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Profile:
        cmd = [py_spy(), "record", "--pid", str(self.pid), "--subprocesses", "--nonblocking", "--format", "raw",
               "--rate", "200", "--duration", str(max(1, int(self.seconds))), "--output", str(self.out)]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.proc.wait(timeout=self.seconds + 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def summary(self, top: int = 8) -> str:
        """The heaviest functions by own time (any code) and, of the project's own, by time spent in
        them and below, as shares of the samples."""
        if not self.out.exists():
            err = (self.proc.stderr.read() if self.proc and self.proc.stderr else "").strip().splitlines()
            return f"no profile ({err[-1] if err else 'py-spy wrote nothing'})"
        own, inclusive, total = Counter(), Counter(), 0
        for line in self.out.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = [f for f in stack.split(";") if not f.startswith("process ") and not f.startswith("thread ")]
            if frames:
                own[_frame_name(frames[-1])] += n
            for name in {_frame_name(f) for f in frames if _ours(f)}:
                inclusive[name] += n
        if not total:
            return "no samples"
        idle = sum(
            v for k, v in own.items() if k.split(" ")[0] in ("select", "poll", "epoll_wait", "_run_once", "run_forever")
        )
        return (
            f"{total:,} samples; own time: "
            + ", ".join(f"{k} {v / total:.0%}" for k, v in own.most_common(top))
            + "; our code, inclusive: "
            + ", ".join(f"{k} {v / total:.0%}" for k, v in inclusive.most_common(top))
            + (f" (idle-looking frames {idle / total:.0%})" if idle else "")
        )


def _ours(frame: str) -> bool:
    """A frame of the project's own code (py-spy names files relative to sys.path entries)."""
    match = re.match(r".*? \((.*?)(?::\d+)?\)$", frame)
    if not match or "site-packages" in match.group(1) or match.group(1) == "server.py":
        return False
    path = match.group(1).replace(str(ROOT) + "/", "")
    return not path.startswith("/") and (ROOT / path).is_file()


def _frame_name(frame: str) -> str:
    """`function (path:line)` → `function (file.py)`, the path made relative to the project."""
    match = re.match(r"(.*?) \((.*?)(?::\d+)?\)$", frame)
    if not match:
        return frame[:80]
    function, path = match.groups()
    path = path.replace(str(ROOT) + "/", "")
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    return f"{function} ({path})"


# -- requests sent once each by a wrk Lua script ------------------------------------------------

LUA = r"""-- written by benchmarks/harness.py: sends each request of REQUESTS once, counts the answers
local requests_file, summary_file, samples_file = %(requests)s, %(summary)s, %(samples)s
local nthreads, every, max_samples = %(threads)d, %(every)d, %(max_samples)d
local markers = {%(markers)s}

local threads, made = {}, 0
function setup(thread)
  made = made + 1
  thread:set("tid", made)
  table.insert(threads, thread)
end

local reqs, i, out = {}, 0, nil
n, issued, reused, responses, sampled = 0, 0, 0, 0, 0
statuses, marked = {}, {}

function init(args)
  for k = 1, #markers do marked[k] = 0 end
  local line_no = 0
  for line in io.lines(requests_file) do
    if line_no %% nthreads == tid - 1 then  -- each thread its own share: nothing sent twice
      local a = line:find("\t", 1, true)
      local b = line:find("\t", a + 1, true)
      local c = line:find("\t", b + 1, true)
      local headers = {}
      for h in line:sub(b + 1, c - 1):gmatch("[^\31]+") do
        local colon = h:find(":", 1, true)
        headers[h:sub(1, colon - 1)] = h:sub(colon + 2)
      end
      n = n + 1
      reqs[n] = wrk.format(line:sub(1, a - 1), line:sub(a + 1, b - 1), headers, line:sub(c + 1))
    end
    line_no = line_no + 1
  end
  out = assert(io.open(samples_file .. "." .. tid, "wb"))
end

function request()
  i = i + 1
  issued = issued + 1
  if i > n then reused = reused + 1 end
  return reqs[(i - 1) %% n + 1]
end

function response(status, headers, body)
  responses = responses + 1
  statuses[status] = (statuses[status] or 0) + 1
  for k = 1, #markers do
    if body:find(markers[k], 1, true) then marked[k] = marked[k] + 1 end
  end
  if sampled < max_samples and (responses %% every == 0 or status >= 300) then
    sampled = sampled + 1
    out:write(status, " ", #body, "\n", body, "\n")
    out:flush()
  end
end

function done(summary, latency, requests)
  local f = assert(io.open(summary_file, "w"))
  for _, t in ipairs(threads) do
    for _, k in ipairs({"n", "issued", "reused", "responses", "sampled"}) do
      f:write(k, " ", tostring(t:get(k)), "\n")
    end
    for code, count in pairs(t:get("statuses")) do f:write("status:", code, " ", count, "\n") end
    for k, count in pairs(t:get("marked")) do f:write("marker:", k, " ", count, "\n") end
  end
  f:close()
end
"""


def _lua_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=True)  # the same literal in Lua for these strings


class Requests:
    """Pre-built requests (method, path, headers, body) in a file that a wrk Lua script sends once
    each; it counts the answers by status and by which `markers` (plain substrings) the bodies
    contain, and keeps up to `max_samples` bodies spread over the run (non-2xx ones always)."""

    def __init__(self, directory: Path, name: str, threads: int = 1, markers: Iterable[str] = (),
                 expected: int = 1000, max_samples: int = 200, delay_ms: float = 0):  # fmt: skip
        self.markers = list(markers)
        self.path, self.script = directory / f"{name}.requests", directory / f"{name}.lua"
        self.samples, self.summary = directory / f"{name}.samples", directory / f"{name}.summary"
        self.written = 0
        self.script.write_text(
            LUA
            % {
                "requests": _lua_string(str(self.path)),
                "summary": _lua_string(str(self.summary)),
                "samples": _lua_string(str(self.samples)),
                "threads": threads,
                "every": max(1, expected // max(1, max_samples)),
                "max_samples": max_samples,
                "markers": ", ".join(_lua_string(m) for m in self.markers),
            }
            # a pause before each request of a connection: paces the load below the peak
            + (f"\nfunction delay()\n  return {delay_ms:.3f}\nend\n" if delay_ms > 0 else "")
        )

    def write(self, requests: Iterable[tuple[str, str, dict[str, str], str]]) -> int:
        """One line per request; returns how many. Bodies must not hold a newline or a tab."""
        self.written = 0
        self.summary.unlink(missing_ok=True)
        for old in self.samples.parent.glob(self.samples.name + ".*"):
            old.unlink()
        with open(self.path, "w", encoding="utf-8") as out:
            for method, path, headers, body in requests:
                if "\n" in body or "\t" in body:
                    raise ValueError("a request body with a newline or a tab")
                out.write(f"{method}\t{path}\t{chr(31).join(f'{k}: {v}' for k, v in headers.items())}\t{body}\n")
                self.written += 1
        return self.written

    def counters(self) -> tuple[dict[str, int], Counter, Counter]:
        """(n, issued, reused, responses, sampled), answers by status, answers by marker."""
        totals, statuses, markers = Counter(), Counter(), Counter()
        if not self.summary.exists():
            raise RuntimeError("the wrk script wrote no summary")
        for line in self.summary.read_text().splitlines():
            key, value = line.split()
            if key.startswith("status:"):
                statuses[int(key[7:])] += int(float(value))
            elif key.startswith("marker:"):
                markers[self.markers[int(float(key[7:])) - 1]] += int(float(value))
            else:
                totals[key] += int(float(value))
        return dict(totals), statuses, markers

    def sample_bodies(self) -> list[tuple[int, str]]:
        bodies = []
        for path in sorted(self.samples.parent.glob(self.samples.name + ".*")):
            data, pos = path.read_bytes(), 0
            while pos < len(data):
                eol = data.index(b"\n", pos)
                status, length = (int(x) for x in data[pos:eol].split())
                bodies.append((status, data[eol + 1 : eol + 1 + length].decode("utf-8", "replace")))
                pos = eol + 1 + length + 1
        return bodies


# -- rows and tables ---------------------------------------------------------------------------


@dataclass
class Row:
    target: str
    server: str
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    ratio: float | None = None
    ratio_of: str | None = None  # what the ratio divides by, when not /healthz of the same server
    extra: dict = field(default_factory=dict)  # more columns, in order
    others_cpu: float | None = None
    attempts: int = 1
    failed: str | None = None
    cpu: CpuWatch | None = None
    sent: dict = field(default_factory=dict)  # a Requests run: n, issued, reused, responses, sampled
    statuses: Counter = field(default_factory=Counter)
    markers: Counter = field(default_factory=Counter)
    samples: list = field(default_factory=list)
    written: int = 0
    socket_errors: str | None = None
    non_2xx: int = 0

    def cells(self) -> dict:
        if self.failed:
            return {"target": self.target, "server": self.server, "requests/s": f"failed: {self.failed}"}
        return {
            "target": self.target,
            "server": self.server,
            "requests/s": self.rps,
            "p50 ms": self.p50_ms,
            "p99 ms": self.p99_ms,
            **self.extra,
            "ratio to /healthz": self.ratio,
        }


def sent_note(row: Row) -> str:
    """What a Requests run sent and got back, and where the CPU went, in one line."""
    sent = row.sent
    parts = [
        f"{sent.get('issued', 0):,} requests sent ({row.written:,} written, {sent.get('reused', 0)} sent twice)",
        f"{sent.get('responses', 0):,} answered: " + outcomes(Counter({str(k): v for k, v in row.statuses.items()})),
    ]
    if row.markers:
        parts.append("bodies with " + ", ".join(f"`{k}` ×{v:,}" for k, v in row.markers.items()))
    parts.append(f"wrk socket errors: {row.socket_errors or 'none'}")
    if row.cpu:
        parts.append(f"CPU in shares of one core: {row.cpu.shares()}")
    return "; ".join(parts)


def cpu_per_request(row: Row) -> str:
    """Where the CPU went per request of `row` (ms of each of our processes), and the rate these
    cores would allow if nothing else ran: tells a CPU-bound path from one waiting on a lock."""
    if not row.cpu or not row.rps:
        return ""
    cores = len(os.sched_getaffinity(0))
    shares = {name: row.cpu.core_share(name) for name in row.cpu.used}
    per = sum(shares.values()) / row.rps
    heavy = sorted(((k, v) for k, v in shares.items() if v >= 0.02), key=lambda kv: -kv[1])
    return (
        "CPU per request: "
        + ", ".join(f"{k} {v / row.rps * 1000:.2f} ms" for k, v in heavy)
        + f"; {per * 1000:.2f} ms in all of our processes, so at most about {cores / per:,.0f} requests/s on these "
        f"{cores} cores if nothing else ran (the run reached {row.rps * per / cores:.0%} of that)"
    )


DIGITS = {"requests/s": 0, "p50 ms": 2, "p99 ms": 2, "ratio to /healthz": 3}


def markdown_table(rows: list[dict], digits: dict[str, int] | None = None) -> list[str]:
    """A markdown table of dict rows (columns: the union of their keys, in order seen); numbers
    right-aligned, formatted with `digits` per column (0 by default)."""
    digits = {**DIGITS, **(digits or {})}
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    columns = [c for c in columns if not c.startswith("ratio")] + [c for c in columns if c.startswith("ratio")]
    numeric = {c for c in columns if all(isinstance(r.get(c), (int, float, type(None))) for r in rows)}
    lines = [
        "| " + " | ".join(columns) + " |",
        "| " + " | ".join("---:" if c in numeric else "---" for c in columns) + " |",
    ]
    for row in rows:
        lines.append(
            "| " + " | ".join(fmt(row.get(c), digits.get(c, 3 if c.startswith("ratio") else 0)) for c in columns) + " |"
        )
    return lines


# -- the session -------------------------------------------------------------------------------


def machine_line() -> str:
    cores = len(os.sched_getaffinity(0))
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import sanic

    return (
        f"{cores} cores (nproc), {model}; Python {sys.version.split()[0]}, Sanic {sanic.__version__}; "
        f"{wrk_version()}; Linux {os.uname().release}"
    )


class Interrupted(Exception):
    pass


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


class Session:
    """One benchmark run: its temporary directory, simulators, servers, rows, notes and report."""

    def __init__(self, args: argparse.Namespace, section: str, script: str, needs_wrk: bool = True,
                 channels: bool = True):  # fmt: skip
        self.args, self.section, self.script = args, section, script
        self.needs_wrk, self.want_channels = needs_wrk, channels
        self.began = time.monotonic()
        self.when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        self.tables: list[tuple[str, list[dict], dict[str, int]]] = []
        self.notes: list[str] = []
        self.problems: list[str] = []
        self.servers: list[Zhangban] = []
        self.procs: list[Proc] = []
        self.cleanups: list[Callable[[], str]] = []
        self.failed = False
        self.summary: list[dict] = []

    # -- context ---------------------------------------------------------------------------

    def __enter__(self) -> Session:
        if self.needs_wrk and shutil.which("wrk") is None:
            print("wrk is missing (Debian: apt-get install -y wrk)", file=sys.stderr)
            raise SystemExit(2)
        signal.signal(signal.SIGTERM, _raise_interrupt)
        self.tmp = Path(tempfile.mkdtemp(prefix="zbbench-"))
        self.machine = machine_line()
        self.production_missing = None if self.args.no_production else production_missing()
        if self.production_missing:
            print(f"production rows skipped: {self.production_missing}", file=sys.stderr)
        self.channels = Channels(self.tmp)
        if self.want_channels:
            try:
                self.channels.start()
            except BaseException:
                self.__exit__(*sys.exc_info())
                raise
        print(f"{self.script}: {'quick mode, ' if self.args.quick else ''}machine: {self.machine}", flush=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        for server in self.servers:
            server.stop()
            server.keep_log(self.args.keep_logs)
            for helper in server.helpers:
                helper.keep_log(self.args.keep_logs)
        for proc in self.procs:
            proc.stop()
            proc.keep_log(self.args.keep_logs)
        self.channels.stop()
        for sim in self.channels.sims:
            sim.keep_log(self.args.keep_logs)
        for cleanup in self.cleanups:
            print(f"  {cleanup()}", flush=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        if exc_type is KeyboardInterrupt:
            print("interrupted: everything started was stopped", file=sys.stderr)
            raise SystemExit(130)
        return False

    def left(self) -> float:
        return self.args.budget - (time.monotonic() - self.began)

    def backends(self) -> list[str]:
        out = [] if self.args.no_embedded else [EMBEDDED]
        if not self.args.no_production:
            if self.production_missing:
                self.note(f"production rows skipped: {self.production_missing}")
            else:
                out.append(PRODUCTION)
        return out

    def zhangban(self, backend: str = PRODUCTION, workers: int = 1, **kw) -> Zhangban:
        return Zhangban(self, backend, workers, **kw)

    def stop(self, server: Zhangban) -> None:
        """Stops `server` (and its helpers) and notes the warnings of their logs."""
        if server.proc is not None and server.proc.poll() is not None:
            senders = "; ".join(w.senders() for w in getattr(server, "watchers", []) if w.senders())
            self.note(f"{server.label}: the server had died (exit code {server.proc.returncode}) before the "
                      f"benchmark stopped it" + (f"; signals: {senders}" if senders else ""))  # fmt: skip
        took = server.stop()
        if took and took > 5:
            self.note(f"{server.label}: the server took {took:.1f} s to stop")
        for proc in [server, *server.helpers]:
            kinds = log_kinds(proc.log_problems())
            if kinds:
                self.note(
                    f"{server.label}: the {'server' if proc is server else proc.name}'s log: "
                    + "; ".join(f"{n} × `{k}`" for k, n in kinds)
                )

    def note(self, text: str) -> None:
        print(f"  {text}", flush=True)
        self.notes.append(text)

    def table(self, title: str, rows: list[dict], digits: dict[str, int] | None = None) -> None:
        self.tables.append((title, rows, digits or {}))

    # -- measuring -------------------------------------------------------------------------

    def watch(self, server: Zhangban | None = None, extra: dict[str, int] | None = None) -> CpuWatch:
        groups = {sim.name: sim.pid for sim in self.channels.sims if sim.running()}
        if server is not None:
            groups.update(server.cpu_groups())
        groups.update({p.name: p.pid for p in self.procs if p.running()})
        groups.update(extra or {})
        return CpuWatch(groups, server.services if server is not None else None)

    def wrk(self, target: str, server: Zhangban | Proc, path: str, *, ceiling: Row | None = None,
            headers: dict[str, str] | None = None, requests: Requests | None = None,
            refill: Callable[[int], None] | None = None, connections: int | None = None,
            label: str | None = None, base: str | None = None, method: str = "GET", body: str | None = None,
            rate_guess: float = 3000, on_start: Callable[[], None] | None = None,
            on_end: Callable[[Row], None] | None = None, settle: float = 0.0) -> Row:  # fmt: skip
        """A warm-up, then a measured wrk run of `path` on `server` (with `requests`' Lua script;
        `refill(count)` writes that many fresh requests before each run). Measured again, up to
        --retries, while other processes used more than 10% of the CPU; the least disturbed
        attempt is kept. The ratio is to `ceiling` (a /healthz row of the same server). `method`
        and `body`: the same request each time, by a one-line Lua script. `rate_guess`: requests/s
        the warm-up's request file is sized for. `on_start()` runs just before the measured run,
        `on_end(row)` `settle` seconds after it (database counts); with `requests`, the row carries
        what the Lua script counted (`row.sent`, `row.statuses`, `row.markers`, `row.samples`)."""
        args = self.args
        script = requests.script if requests is not None else None
        if script is None and (method != "GET" or body is not None):
            script = self.tmp / f"{method.lower()}-{secrets.token_hex(3)}.lua"
            script.write_text(f"wrk.method = {_lua_string(method)}\nwrk.body = {_lua_string(body or '')}\n")
        conns = connections or args.connections
        url = (base or getattr(server, "base", None)) + path
        row_label = label or getattr(server, "label", server.name)
        attempts: list[Row] = []
        warm_rate = None
        for _attempt in range(args.retries + 1 if self.left() > 0 else 1):
            row = Row(target, row_label)
            attempts.append(row)
            wait_until_quiet(min(args.quiet_wait, max(0.0, self.left())))
            try:
                if requests is not None and refill is not None:
                    refill(max(500, int(rate_guess * 1.5 * max(args.warmup, 1))))
                if args.warmup:
                    warm = run_wrk(wrk_command(url, args.warmup, conns, args.threads, headers, script), args.warmup)
                    warm_rate = warm.requests / args.warmup if warm else None
                if requests is not None and refill is not None:
                    refill(max(500, int((warm_rate or rate_guess) * 2.5 * args.duration)))
                if on_start is not None:
                    on_start()
                profile = contextlib.nullcontext()
                if args.profile and isinstance(server, Zhangban) and not target.startswith("GET /healthz"):
                    args.profile.mkdir(parents=True, exist_ok=True)
                    slug = re.sub(r"\W+", "-", f"{Path(self.script).stem}-{row_label}-{target}")[:120]
                    profile = Profile(server.pid, args.duration, args.profile / f"{slug}.txt")
                with profile, (self.watch(server if isinstance(server, Zhangban) else None,
                                 {} if isinstance(server, Zhangban) else {server.name: server.pid})) as watch:  # fmt: skip
                    result = run_wrk(
                        wrk_command(url, args.duration, conns, args.threads, headers, script), args.duration
                    )
                watch.add("wrk", result.cpu_s)
                if isinstance(profile, Profile):
                    self.note(f"{target}, {row_label}: where the server's time went (py-spy): {profile.summary()}")
                if requests is not None:
                    row.sent, row.statuses, row.markers = requests.counters()
                    row.samples = requests.sample_bodies()
                    row.written = requests.written
                row.socket_errors, row.non_2xx = result.socket_errors, result.non_2xx
                row.rps, row.p50_ms, row.p99_ms = result.rps, result.p50_ms, result.p99_ms
                row.others_cpu, row.cpu = watch.others(), watch
                if ceiling is not None and ceiling.rps:
                    row.ratio = row.rps / ceiling.rps
                elif target.startswith("GET /healthz"):
                    row.ratio = 1.0
                if settle:
                    time.sleep(settle)
                if on_end is not None:
                    on_end(row)
            except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError) as exc:
                row.failed = str(exc).splitlines()[0][:160]
                self.failed = True
                print(f"  {target}: FAILED: {exc}", file=sys.stderr)
                break
            print(
                f"  {target} [{row_label}]: {fmt(row.rps)} req/s, p50 {fmt(row.p50_ms, 2)} ms, p99 "
                f"{fmt(row.p99_ms, 2)} ms, ratio {fmt(row.ratio, 3)} ({result.requests} requests, "
                f"{result.non_2xx} non-2xx; others used {row.others_cpu:.0%} of the CPU)",
                flush=True,
            )
            if not result.clean and requests is None:
                self.note(f"{target}, {row_label}: {result.non_2xx} non-2xx; socket errors: {result.socket_errors}")
            if row.others_cpu <= BUSY or self.left() <= 0:
                break
        chosen = min(attempts, key=lambda r: (r.failed is not None, r.others_cpu or 0))
        chosen.attempts = len(attempts)
        if chosen.attempts > 1:
            self.note(f"{target}, {row_label}: measured {chosen.attempts} times (others disturbed it)")
        if chosen.others_cpu and chosen.others_cpu > BUSY:
            self.note(f"{target}, {row_label}: other processes used {chosen.others_cpu:.0%} of the CPU: low")
        return chosen

    def ceiling(self, server: Zhangban | Proc, connections: int | None = None, label: str | None = None) -> Row:
        target = "GET /healthz" + (f" (-c{connections})" if connections else "")
        return self.wrk(target, server, "/healthz", connections=connections, label=label)

    def failed_row(self, target: str, server: str, exc: BaseException) -> Row:
        self.failed = True
        why = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        print(f"  {target} [{server}]: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return Row(target, server, failed=why)

    # -- report ----------------------------------------------------------------------------

    def summarise(self, rows: Iterable[Row], benchmark: str | None = None, what: str | None = None) -> None:
        """Rows for `make bench`'s one table of ratios (`what`: the ratio's divisor, if not /healthz)."""
        for r in rows:
            self.summary.append(
                {
                    "benchmark": benchmark or Path(self.script).stem,
                    "target": r.target,
                    "server": r.server,
                    "rps": r.rps,
                    "p99_ms": r.p99_ms,
                    "ratio": r.ratio,
                    "what": r.ratio_of or what,
                    "others_cpu": r.others_cpu,
                    "failed": r.failed,
                }
            )

    def summarise_value(self, target: str, server: str, value: float | None, what: str) -> None:
        """A non-HTTP figure (a speed-up, a rate) for `make bench`'s table, with what it is."""
        self.summary.append({"benchmark": Path(self.script).stem, "target": target, "server": server,
                             "rps": None, "p99_ms": None, "ratio": value, "what": what, "failed": None})  # fmt: skip

    def render(self, description: list[str]) -> str:
        mode = " (quick mode: a harness smoke run, noisy)" if self.args.quick else ""
        body = [self.section, "", f"Measured {self.when} by `.venv/bin/python {self.script}`{mode}.", ""]
        for title, rows, digits in self.tables:
            if not rows:
                continue
            if title:
                body += [title, ""]
            body += [*markdown_table(rows, digits), ""]
        body += [f"- {line}" for line in description]
        body.append(f"- Machine: {self.machine}.")
        measured = [r.get("_others") for _, rows, _ in self.tables for r in rows if r.get("_others") is not None]
        if measured:
            body.append(f"- Other processes used at most {max(measured):.0%} of the CPU during the measured runs.")
        if self.notes:
            body += ["- Notes and problems seen:", *[f"  - {n}" for n in self.notes]]
        return "\n".join(body) + "\n"

    def finish(self, description: list[str]) -> int:
        """Prints the report, writes RESULTS.md (full runs, or `--write`), hands the summary to
        run_all.py; the exit code (0 all measured, 1 something failed)."""
        for _, rows, _ in self.tables:
            for r in rows:
                r.pop("_others", None)
        text = self.render(description)
        print("\n" + text)
        if not self.args.no_write and (not self.args.quick or self.args.write):
            write_section(self.section, text)
            print(f"wrote the section to {RESULTS}")
        if os.environ.get(SUMMARY_ENV):
            with open(os.environ[SUMMARY_ENV], "a", encoding="utf-8") as out:
                for line in self.summary:
                    out.write(json.dumps(line, ensure_ascii=False) + "\n")
        return 1 if self.failed else 0

    def wrk_table(self, title: str, rows: list[Row], digits: dict[str, int] | None = None,
                  ratio_label: str | None = None) -> None:  # fmt: skip
        """`rows` as a table (the ratio column last, named `ratio_label` if given), and into the summary."""
        cells = []
        for r in rows:
            c = r.cells()
            if ratio_label and "ratio to /healthz" in c:
                c[ratio_label] = c.pop("ratio to /healthz")
            c["_others"] = r.others_cpu
            cells.append(c)
        self.table(title, cells, digits)
        self.summarise(rows, what=ratio_label)


def write_section(title: str, text: str) -> None:
    """Replaces the `title` section of RESULTS.md with `text` (appends it if missing); keeps the others."""
    existing = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    lines = existing.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == title), None)
    if start is None:
        new = existing.rstrip("\n") + "\n\n" + text
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        after = "".join(lines[end:])
        new = "".join(lines[:start]) + text + ("\n" + after if after else "")
    RESULTS.write_text(new)


def command_line(cmd: list[str]) -> str:
    return " ".join(shlex.quote(p) for p in cmd)
