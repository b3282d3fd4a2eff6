"""Official-account bot benchmark: encrypted `POST /wechat/oa` against `GET /healthz`, and WeRoBot.

    .venv/bin/python benchmarks/bot.py [--duration 10] [--messages 20000] [--followers 200]

One run:

- Zhangban, each backend a fresh `server.py serve` with 1 worker and `LOG_LEVEL=WARNING` on a free
  127.0.0.1 port, after `server.py load-demo` with the same environment, its official account set
  (WECHAT_OA_APPID/SECRET of the simulator's default account, WECHAT_OA_TOKEN and WECHAT_OA_AES_KEY
  generated for the run) and WECHAT_API_BASE pointing at the WeChat simulator running as its own
  process (`python -m wechat.simulator`): *embedded* (SQLite, fakeredis) and *production* (a fresh
  PostgreSQL database, Redis with a throw-away key prefix), as in identity.py. wrk measures
  `GET /healthz` (the ceiling) and then safe-mode (`encrypt_type=aes`) text messages asking
  "身份证过期了怎么办", which the bot answers with the guide of 居民身份证换领 found by the
  catalogue search.
- WeRoBot 1.13.1 (PyPI), installed into a throw-away virtual environment under the run's temporary
  directory (never into the project's), with the same token, EncodingAESKey and AppID, answering
  its own encrypted messages with a fixed text (the same text our bot answered), on the two ways of
  serving it that its deployment guide shows, each one process: gunicorn (`--workers 1`, the app
  `robot.wsgi`; the guide's `module:robot.wsgi` target is checked with `gunicorn --check-config`
  and reported) and `robot.run()` with the default server "auto" (Waitress). For each, wrk also
  measures the signed URL-verification GET, WeRoBot's cheapest request.

Every POST is a distinct message: WeChat's side is played as in tests/oa_pusher.py (AES-256-CBC
envelope, `signature` and `msg_signature`), with a MsgId never used before in the run and a current
timestamp. Our callback de-duplicates on MsgId (WeChat retries unanswered messages) and would answer
a repeated one from its Redis cache, which would not measure the real work. So the requests are
generated right before each wrk run, written to a file, and a wrk Lua script sends each one once
(`request()` returning `wrk.format("POST", path?query, headers, body)`); it counts requests that
would have reused a message (none when the file is large enough: the measured file holds at least
`--messages` and 1.5 x the warm-up rate x the duration), non-200 answers, bodies that are not an
encrypted reply, and keeps a sample of replies, which this script then checks (MsgSignature,
decryption, AppID, MsgType text, the content).

Results are printed and written to the `## Official-account bot (POST /wechat/oa, encrypted)`
section of benchmarks/RESULTS.md; other sections are kept. The server, simulator, wrk, CPU-noise
and report plumbing is shared with benchmarks/http_baseline.py, identity.py and catalogue.py.
Exit codes: 0 done, 1 a measurement failed, 2 wrk missing or bad arguments, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode
from xml.etree import ElementTree

sys.path.insert(0, str(Path(__file__).resolve().parent))
import catalogue as cat  # noqa: E402  (a server that can run `load-demo` with its own environment)
import http_baseline as hb  # noqa: E402  (the shared benchmark plumbing)
import identity as idb  # noqa: E402  (simulator, PostgreSQL, wrk rows, CPU watch)

ROOT = hb.ROOT
HOST = hb.HOST
BENCH_DIR = hb.BENCH_DIR
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))
from tests.oa_pusher import OA_APPID, OA_SECRET, OAPusher, _sha1, new_aes_key, text_message  # noqa: E402

SECTION = "## Official-account bot (POST /wechat/oa, encrypted)"
OA_PATH = "/wechat/oa"
QUESTION = "身份证过期了怎么办"
MARKER = "居民身份证换领"
EMBEDDED, PRODUCTION = idb.EMBEDDED, idb.PRODUCTION
WEROBOT_VERSION = "1.13.1"
# WeRoBot itself; cryptography for safe mode (its docs: "pip install cryptography"); the servers.
WEROBOT_PACKAGES = [f"werobot=={WEROBOT_VERSION}", "cryptography", "gunicorn", "waitress"]
GUNICORN, WAITRESS = "gunicorn", "auto"
MAX_SKEW_S = 300  # bot/crypto.py refuses timestamps further than this from its clock
SETTLE_S = 2.0  # after the last measurement, before stopping our server
BOT_TARGET = f"POST {OA_PATH} (encrypted FAQ → guide)"
WEROBOT_TARGET = f"POST {OA_PATH} (encrypted, fixed text)"
VERIFY_TARGET = f"GET {OA_PATH} (signed URL verification)"


# -- the official account and WeChat's side ------------------------------------------------------


@dataclass
class Account:
    """The official account of the run: the simulator's default OA app, a fresh token and AES key."""

    token: str = field(
        default_factory=lambda: "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32))
    )  # WeChat: 3-32 letters/digits
    aes_key: str = field(default_factory=new_aes_key)
    appid: str = OA_APPID
    secret: str = OA_SECRET

    def server_env(self, sim_url: str) -> dict[str, str]:
        return {
            "WECHAT_API_BASE": sim_url,
            "WECHAT_MP_APPID": idb.SIM_APPID,
            "WECHAT_MP_SECRET": idb.SIM_SECRET,
            "WECHAT_OA_APPID": self.appid,
            "WECHAT_OA_SECRET": self.secret,
            "WECHAT_OA_TOKEN": self.token,
            "WECHAT_OA_AES_KEY": self.aes_key,
        }


class Messages:
    """Safe-mode callback requests as WeChat sends them; no MsgId is ever used twice in one run."""

    def __init__(self, account: Account):
        self.account = account
        self.pusher = OAPusher("", token=account.token, aes_key=account.aes_key, appid=account.appid)
        self._ids = itertools.count(10**17 + secrets.randbelow(8 * 10**8) * 10**9)  # 18 digits, like WeChat's

    def request(self, openid: str, text: str) -> tuple[str, str]:
        """(path with query, body) of one new message from `openid`."""
        timestamp = str(int(time.time()))
        nonce = f"{secrets.randbelow(10**9):09d}"
        xml = text_message(openid, text, msg_id=str(next(self._ids)), create_time=int(timestamp))
        cipher = self.pusher.encrypt(xml)
        token = self.account.token
        query = urlencode(
            {
                "signature": _sha1(token, timestamp, nonce),
                "timestamp": timestamp,
                "nonce": nonce,
                "openid": openid,
                "encrypt_type": "aes",
                "msg_signature": _sha1(token, timestamp, nonce, cipher),
            }
        )
        body = f"<xml><ToUserName><![CDATA[gh_sim]]></ToUserName><Encrypt><![CDATA[{cipher}]]></Encrypt></xml>"
        return f"{OA_PATH}?{query}", body

    def write(self, path: Path, openids: list[str], count: int) -> float:
        """`count` new messages, sender i mod len(openids), one `path?query<TAB>body` line each;
        returns the (oldest) timestamp they carry."""
        began = time.time()
        with open(path, "w", encoding="utf-8") as out:
            for i in range(count):
                target, body = self.request(openids[i % len(openids)], QUESTION)
                out.write(f"{target}\t{body}\n")
        return began

    def verify_query(self) -> str:
        """The signed query of WeChat's URL verification GET (`echostr` echoed back)."""
        timestamp, nonce = str(int(time.time())), f"{secrets.randbelow(10**9):09d}"
        return urlencode(
            {
                "signature": _sha1(self.account.token, timestamp, nonce),
                "timestamp": timestamp,
                "nonce": nonce,
                "echostr": "zbbench" + secrets.token_hex(4),
            }
        )

    def read_reply(self, body: str) -> str:
        """The Content of an encrypted passive text reply, after checking its MsgSignature, the
        AppID inside the ciphertext and the MsgType; raises ValueError saying what is wrong."""
        try:
            root = ElementTree.fromstring(body)
        except ElementTree.ParseError:
            raise ValueError(f"not XML: {body[:80]!r}") from None
        cipher, signature = root.findtext("Encrypt"), root.findtext("MsgSignature")
        timestamp, nonce = root.findtext("TimeStamp"), root.findtext("Nonce")
        if not cipher or not signature or not timestamp or not nonce:
            raise ValueError(f"not an encrypted reply: {body[:80]!r}")
        if signature != _sha1(self.account.token, timestamp, nonce, cipher):
            raise ValueError("MsgSignature does not match")
        try:
            inner = ElementTree.fromstring(self.pusher.decrypt(cipher))
        except AssertionError:
            raise ValueError("AppID inside the ciphertext does not match") from None
        except Exception as exc:
            raise ValueError(f"cannot decrypt: {type(exc).__name__}") from None
        if inner.findtext("MsgType") != "text":
            raise ValueError(f"MsgType {inner.findtext('MsgType')!r}, not text")
        return inner.findtext("Content") or ""


def ask_once(base: str, messages: Messages, openid: str) -> str:
    """Posts one message and returns the checked reply's Content (the set-up check)."""
    import httpx

    target, body = messages.request(openid, QUESTION)
    response = httpx.post(base + target, content=body.encode(), headers={"Content-Type": "text/xml"}, timeout=30)
    if response.status_code != 200:
        raise RuntimeError(f"set-up message answered {response.status_code}: {response.text[:200]}")
    try:
        return messages.read_reply(response.text)
    except ValueError as exc:
        raise RuntimeError(f"set-up message: {exc}") from None


def register_followers(sim: idb.Simulator, count: int) -> list[str]:
    """`count` followers of the official account at the simulator, each with a unionid (so the bot
    asks WeChat for it once, on the follower's first message, and never again)."""
    return [sim.control("users", {"appid": OA_APPID, "unionid": True})["openid"] for _ in range(count)]


# -- wrk with a Lua script that sends each pre-generated message once ----------------------------

LUA = r"""-- written by benchmarks/bot.py: sends each request of REQUESTS once, counts and samples answers
local requests_file, samples_file, summary_file = %(requests)s, %(samples)s, %(summary)s
local nthreads, every, max_samples = %(threads)d, %(every)d, %(max_samples)d

local threads, made = {}, 0
function setup(thread)
  made = made + 1
  thread:set("tid", made)
  table.insert(threads, thread)
end

local reqs, i, out = {}, 0, nil
n, issued, reused, responses, non200, unencrypted, success, sampled = 0, 0, 0, 0, 0, 0, 0, 0

function init(args)
  local line_no = 0
  for line in io.lines(requests_file) do
    if line_no %% nthreads == tid - 1 then  -- each thread its own share: no message sent twice
      local tab = line:find("\t", 1, true)
      n = n + 1
      reqs[n] = wrk.format("POST", line:sub(1, tab - 1), {["Content-Type"] = "text/xml"}, line:sub(tab + 1))
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
  if status ~= 200 then
    non200 = non200 + 1
  elseif body == "success" then
    success = success + 1
  elseif not body:find("<Encrypt>", 1, true) then
    unencrypted = unencrypted + 1
  end
  if sampled < max_samples and responses %% every == 0 then
    sampled = sampled + 1
    out:write(status, " ", #body, "\n", body, "\n")
    out:flush()
  end
end

function done(summary, latency, requests)
  local f = assert(io.open(summary_file, "w"))
  for _, t in ipairs(threads) do
    for _, k in ipairs({"n", "issued", "reused", "responses", "non200", "unencrypted", "success", "sampled"}) do
      f:write(k, " ", tostring(t:get(k)), "\n")
    end
  end
  f:close()
end
"""

COUNTERS = ("n", "issued", "reused", "responses", "non200", "unencrypted", "success", "sampled")


def lua_string(value: str) -> str:
    return json.dumps(value)  # a plain ASCII path is the same literal in Lua


class LuaRun:
    """The files of one wrk run: requests in, Lua script, samples and counters out."""

    def __init__(self, directory: Path, name: str, threads: int, expected: int, max_samples: int):
        self.requests, self.script = directory / f"{name}.requests", directory / f"{name}.lua"
        self.samples, self.summary_path = directory / f"{name}.samples", directory / f"{name}.summary"
        every = max(1, expected // max(1, max_samples))
        self.script.write_text(
            LUA
            % {
                "requests": lua_string(str(self.requests)),
                "samples": lua_string(str(self.samples)),
                "summary": lua_string(str(self.summary_path)),
                "threads": threads,
                "every": every,
                "max_samples": max_samples,
            }
        )

    def counters(self) -> dict[str, int]:
        totals = dict.fromkeys(COUNTERS, 0)
        if not self.summary_path.exists():
            raise RuntimeError("the wrk script wrote no summary")
        for line in self.summary_path.read_text().splitlines():
            key, value = line.split()
            totals[key] += int(float(value))
        return totals

    def sample_bodies(self) -> list[tuple[int, str]]:
        bodies = []
        for path in sorted(self.samples.parent.glob(self.samples.name + ".*")):
            data = path.read_bytes()
            pos = 0
            while pos < len(data):
                eol = data.index(b"\n", pos)
                status, length = (int(x) for x in data[pos:eol].split())
                bodies.append((status, data[eol + 1 : eol + 1 + length].decode("utf-8", "replace")))
                pos = eol + 1 + length + 1
        return bodies

    def cleanup(self) -> None:
        for path in [
            self.requests,
            self.script,
            self.summary_path,
            *self.samples.parent.glob(self.samples.name + ".*"),
        ]:
            path.unlink(missing_ok=True)


def script_cmd(args: argparse.Namespace, url: str, seconds: int, script: Path | str, latency: bool = True) -> list[str]:
    cmd = hb.wrk_command(args, url, seconds, latency=latency)
    return cmd[:-1] + ["-s", str(script)] + cmd[-1:]


def measure_messages(
    target: str,
    backend: str,
    base: str,
    messages: Messages,
    openids: list[str],
    expect: Callable[[str], bool],
    watch_cpu: Callable[[], idb.CpuWatch],
    args: argparse.Namespace,
    workdir: Path,
) -> idb.Row:
    """Warm-up then a measured wrk run of distinct new messages (again, up to --retries, when other
    processes disturbed it); the sampled replies are checked with `expect(content)`."""
    url = base + OA_PATH
    attempts: list[idb.Row] = []
    for attempt in range(args.retries + 1):
        row = idb.Row(target, backend)
        attempts.append(row)
        if args.quiet_wait > 0:
            hb.wait_until_quiet(args.quiet_wait)
        slug = re.sub(r"\W+", "-", f"{backend}-{target}")[:60] + f"-{attempt}"
        warm_count = max(2 * len(openids), math.ceil(args.messages * args.warmup / args.duration))
        warm = LuaRun(workdir, slug + "-warm", args.threads, warm_count, 0)
        measured = None
        try:
            messages.write(warm.requests, openids, warm_count)
            output, _ = hb.run_wrk(script_cmd(args, url, args.warmup, warm.script, latency=False), args.warmup)
            warm_rate = float(re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE).group(1))
            warm_counts = warm.counters()
            count = max(args.messages, math.ceil(warm_rate * args.duration * 1.5))
            measured = LuaRun(workdir, slug, args.threads, max(1, int(warm_rate * args.duration)), args.samples)
            generated_at = messages.write(measured.requests, openids, count)
            with watch_cpu() as watch:
                output, wrk_cpu = hb.run_wrk(script_cmd(args, url, args.duration, measured.script), args.duration)
            oldest_age = time.time() - generated_at
            result = hb.Result(hb.Target(target, "bot", 1))
            hb.parse_wrk(output, result)
            counts = measured.counters()
            samples = measured.sample_bodies()
        except (RuntimeError, subprocess.TimeoutExpired, OSError, AttributeError, ValueError) as exc:
            row.failed = str(exc).splitlines()[0][:160] or type(exc).__name__
            print(f"  {target}: FAILED: {exc}", file=sys.stderr)
            break
        finally:
            warm.cleanup()
            if measured is not None:
                measured.cleanup()
        row.rps, row.p50_ms, row.p99_ms = result.rps, result.p50_ms, result.p99_ms
        row.others_cpu = watch.others(wrk_cpu)
        problems: dict[str, int] = {}
        contents: set[str] = set()
        for status, body in samples:
            if status != 200:
                problems[f"HTTP {status}"] = problems.get(f"HTTP {status}", 0) + 1
                continue
            try:
                content = messages.read_reply(body)
            except ValueError as exc:
                problems[str(exc)[:80]] = problems.get(str(exc)[:80], 0) + 1
                continue
            if not expect(content):
                problems["unexpected content"] = problems.get("unexpected content", 0) + 1
            contents.add(content.splitlines()[0] if content else "")
        errors = counts["non200"] + counts["unencrypted"] + counts["success"]
        row.notes.append(
            f"{counts['issued']} messages sent ({count} generated, {counts['reused']} reused), "
            f"{counts['responses']} answers: {counts['non200']} non-200, {counts['unencrypted']} not an encrypted "
            f"reply, {counts['success']} `success` (answer deferred); wrk socket errors: {result.socket_errors or 'none'}; "
            f"{len(samples)} sampled replies checked (signature, decryption, AppID, MsgType, content): "
            f"{len(samples) - sum(problems.values())} good"
            + (f", problems: {', '.join(f'{k} ×{v}' for k, v in sorted(problems.items()))}" if problems else "")
            + (f"; first line: {' / '.join(sorted(contents))[:120]}" if contents else "")
            + f"; warm-up: {warm_counts['issued']} messages at {warm_rate:,.0f}/s; "
            f"CPU used, in shares of one core: {watch.shares()}"
        )
        print(
            f"  {target}: {hb.fmt(row.rps, 0)} req/s, p50 {hb.fmt(row.p50_ms, 2)} ms, p99 {hb.fmt(row.p99_ms, 2)} ms"
            f" ({result.requests} requests; other processes used {row.others_cpu:.0%} of the CPU)\n"
            f"    {row.notes[-1]}",
            flush=True,
        )
        if counts["reused"]:
            row.notes.append(
                f"{counts['reused']} requests repeated an earlier message (the file was too small): "
                "those were answered from the de-duplication cache; raise --messages"
            )
        if errors or problems:
            row.notes.append(
                f"ERRORS: {errors} bad answers counted by wrk, {sum(problems.values())} bad sampled replies"
            )
        if oldest_age > MAX_SKEW_S - 30:
            row.notes.append(f"the oldest timestamp was {oldest_age:.0f} s old at the end (limit {MAX_SKEW_S} s)")
        if row.others_cpu <= hb.BUSY:
            break
        if attempt < args.retries:
            print("  the machine was not quiet: measuring again", flush=True)
    chosen = min(attempts, key=lambda r: (r.failed is not None, r.others_cpu))
    chosen.attempts = len(attempts)
    return chosen


# -- Zhangban ----------------------------------------------------------------------------------


@dataclass
class Run(idb.BackendRun):
    load_demo: str | None = None
    first_reply: str | None = None
    extra_notes: list[str] = field(default_factory=list)


def run_zhangban(
    backend: str,
    workdir: Path,
    prefix: str,
    sim: idb.Simulator,
    account: Account,
    messages: Messages,
    openids: list[str],
    args: argparse.Namespace,
    servers: list,
) -> Run:
    run = Run(backend)
    targets = ["GET /healthz", BOT_TARGET]
    extra = account.server_env(sim.url)
    db_name = None
    production = backend == PRODUCTION
    if production:
        db_name = f"zbbench_{secrets.token_hex(4)}"
        try:
            asyncio.run(idb._pg(f'CREATE DATABASE "{db_name}"'))
        except Exception as exc:
            why = f"could not create the database: {type(exc).__name__}: {exc}".splitlines()[0][:160]
            print(f"  FAILED: {why}", file=sys.stderr)
            run.rows = [idb.Row(t, backend, failed=why) for t in targets]
            return run
        extra.update(DATABASE_URL=idb.pg_url_for(db_name), TASK_BROKER="memory")
    server = cat.CatalogueServer(hb.Target(backend, "zhangban", 1, redis=production), workdir, prefix, extra)
    servers.append(server)
    try:
        loaded = server.cli("load-demo")
        run.load_demo = ((loaded.stdout.strip() or loaded.stderr.strip()).splitlines()[-1:] or ["(no output)"])[0]
        if loaded.returncode != 0:
            raise RuntimeError(f"load-demo exited {loaded.returncode}: {loaded.stderr.strip()[-300:]}")
        print(f"- {backend}: load-demo: {run.load_demo}; starting on port {server.port}", flush=True)
        run.start_s = server.start()
        run.first_reply = ask_once(server.base, messages, openids[0])
        if MARKER not in run.first_reply:
            raise RuntimeError(f"the bot did not answer with the guide: {run.first_reply[:120]!r}")
        print(f"  answering after {run.start_s:.1f} s; the bot answers: {run.first_reply.splitlines()[0]}", flush=True)
        groups = {"server": server.proc.pid, "simulator": sim.proc.pid}
        services = idb.production_services(db_name) if production else None

        def watch_cpu() -> idb.CpuWatch:
            return idb.CpuWatch(groups, services)

        healthz = idb.measure_wrk("GET /healthz", backend, f"{server.base}/healthz", None, watch_cpu, args)
        healthz.ratio = 1.0 if healthz.rps else None
        run.rows.append(healthz)
        bot = measure_messages(
            BOT_TARGET, backend, server.base, messages, openids, lambda c: MARKER in c, watch_cpu, args, workdir
        )
        bot.ratio = bot.rps / healthz.rps if bot.rps and healthz.rps else None
        run.rows.append(bot)
        # wrk stops with --connections messages in flight; let their answers finish before the stop, so
        # that the log shows the server's own problems rather than work cut off by the stop.
        time.sleep(SETTLE_S)
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        why = str(exc).splitlines()[0][:160]
        print(f"  FAILED: {exc}", file=sys.stderr)
        for line in server.log_path.read_text(errors="replace").splitlines()[-20:] if server.log_path.exists() else []:
            print(f"  | {line}", file=sys.stderr)
        done = {r.target for r in run.rows}
        run.rows += [idb.Row(t, backend, failed=why) for t in targets if t not in done]
    finally:
        run.stop_s = server.stop()
        servers.remove(server)
        run.log_problems = server.log_problems()
        server.keep_log(args.keep_logs)
        if db_name:
            try:
                asyncio.run(idb._pg(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
                run.cleanup.append(f"dropped PostgreSQL database {db_name}")
            except Exception as exc:
                run.cleanup.append(f"could not drop PostgreSQL database {db_name}: {type(exc).__name__}: {exc}")
        if production:
            run.cleanup.append(hb.delete_redis_keys(prefix))
        for line in run.cleanup:
            print(f"  {line}", flush=True)
        for kind, n in log_kinds(run.log_problems):
            print(f"  log: {n} × {kind}")
    return run


# -- WeRoBot -----------------------------------------------------------------------------------


@dataclass
class WeRoBotEnv:
    """The throw-away virtual environment WeRoBot is installed into."""

    path: Path
    versions: dict[str, str] = field(default_factory=dict)
    auto_picks: str | None = None  # what robot.run(server="auto") serves on
    documented_target: str | None = None  # what gunicorn says about the guide's `module:robot.wsgi`
    gunicorn_flags: list[str] = field(default_factory=list)
    took_s: float = 0.0

    @property
    def python(self) -> str:
        return str(self.path / "bin" / "python")

    @property
    def gunicorn(self) -> str:
        return str(self.path / "bin" / "gunicorn")


def make_werobot_env(directory: Path) -> WeRoBotEnv:
    """`python3 -m venv` + pip install WeRoBot and its servers; raises RuntimeError when it fails."""
    env = WeRoBotEnv(directory / "werobot-venv")
    began = time.monotonic()
    base_python = getattr(sys, "_base_executable", None) or shutil.which("python3") or "python3"
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    made = subprocess.run(
        [base_python, "-m", "venv", str(env.path)], capture_output=True, text=True, env=clean, timeout=300
    )
    if made.returncode != 0:
        raise RuntimeError(f"python -m venv failed: {made.stderr.strip()[-300:]}")
    pip = subprocess.run(
        [env.python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input", *WEROBOT_PACKAGES],
        capture_output=True,
        text=True,
        env=clean,
        timeout=600,
    )
    if pip.returncode != 0:
        raise RuntimeError(f"pip install {' '.join(WEROBOT_PACKAGES)} failed: {pip.stderr.strip()[-300:]}")
    probe = subprocess.run(
        [
            env.python,
            "-c",
            (
                "import importlib.metadata as m, json, platform, bottle\n"
                "names = ['WeRoBot', 'bottle', 'cryptography', 'gunicorn', 'waitress']\n"
                "picks = None\n"
                "for adapter in bottle.AutoServer.adapters:  # what server='auto' tries, in order\n"
                "    mod = {'WaitressServer': 'waitress', 'PasteServer': 'paste', 'TwistedServer': 'twisted',\n"
                "           'CherryPyServer': 'cherrypy', 'CherootServer': 'cheroot', 'WSGIRefServer': 'wsgiref'}.get(adapter.__name__)\n"
                "    try:\n"
                "        __import__(mod); picks = adapter.__name__; break\n"
                "    except Exception:\n"
                "        pass\n"
                "print(json.dumps({'versions': {n: m.version(n) for n in names} | {'Python': platform.python_version()},"
                " 'auto': picks, 'order': [a.__name__ for a in bottle.AutoServer.adapters]}))"
            ),
        ],
        capture_output=True,
        text=True,
        env=clean,
        cwd=directory,
        timeout=60,
    )
    if probe.returncode != 0:
        raise RuntimeError(f"WeRoBot's venv does not work: {probe.stderr.strip()[-300:]}")
    found = json.loads(probe.stdout)
    env.versions = found["versions"]
    env.auto_picks = f"{found['auto']} (first importable of {', '.join(found['order'])})"
    helptext = subprocess.run([env.gunicorn, "--help"], capture_output=True, text=True, env=clean, timeout=60).stdout
    if "--no-control-socket" in helptext:  # gunicorn 24+ would otherwise make ~/.gunicorn/gunicorn.ctl
        env.gunicorn_flags.append("--no-control-socket")
    env.took_s = time.monotonic() - began
    return env


def check_documented_target(venv: WeRoBotEnv, workdir: Path, account: Account) -> str:
    """What `gunicorn --check-config werobot_app:robot.wsgi` (the guide's form) says, in one line."""
    shutil.copy(BENCH_DIR / "werobot_app.py", workdir / "werobot_app.py")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(
        PYTHONDONTWRITEBYTECODE="1",
        WEROBOT_TOKEN=account.token,
        WEROBOT_APP_ID=account.appid,
        WEROBOT_AES_KEY=account.aes_key,
    )
    done = subprocess.run(
        [venv.gunicorn, "--check-config", *venv.gunicorn_flags, "werobot_app:robot.wsgi"],
        capture_output=True,
        text=True,
        env=env,
        cwd=workdir,
        timeout=60,
    )
    if done.returncode == 0:
        return "accepted"
    lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    return "refused: " + (lines[-1] if lines else f"exit code {done.returncode}")


class WeRoBotServer(hb.Server):
    """benchmarks/werobot_app.py (copied into its own temporary directory, where WeRoBot's default
    SQLite session file goes too) on gunicorn or robot.run(server="auto"), in its own session."""

    def __init__(
        self, how: str, label: str, workdir: Path, venv: WeRoBotEnv, account: Account, reply: str, messages: Messages
    ):
        super().__init__(hb.Target(label, "werobot", 1), workdir, "")
        self.how, self.venv, self.account, self.reply = how, venv, account, reply
        self._verify = messages.verify_query()
        shutil.copy(BENCH_DIR / "werobot_app.py", workdir / "werobot_app.py")

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def url(self) -> str:  # what hb.Server.start polls for a 200: WeChat's signed URL verification
        return f"{self.base}{OA_PATH}?{self._verify}"

    def _command_and_env(self) -> tuple[list[str], dict[str, str]]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        env.update(
            PYTHONUNBUFFERED="1",
            PYTHONDONTWRITEBYTECODE="1",
            WEROBOT_TOKEN=self.account.token,
            WEROBOT_APP_ID=self.account.appid,
            WEROBOT_AES_KEY=self.account.aes_key,
            WEROBOT_REPLY=self.reply,
        )
        if self.how == GUNICORN:
            cmd = [
                self.venv.gunicorn,
                "--workers",
                "1",
                "--bind",
                f"{HOST}:{self.port}",
                *self.venv.gunicorn_flags,
                "werobot_app:application",
            ]
        else:
            cmd = [self.venv.python, "werobot_app.py", "--host", HOST, "--port", str(self.port), "--server", "auto"]
        return cmd, env

    def stop(self) -> float | None:
        """gunicorn: SIGTERM, its graceful stop (SIGINT would be its quick one, cutting a request
        short); then http_baseline's stop, which also covers robot.run/Waitress."""
        began = time.monotonic()
        if self.how == GUNICORN and self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=hb.STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        rest = super().stop()
        return None if rest is None else time.monotonic() - began

    def log_problems(self) -> list[str]:
        """Warning/error lines of the plain-text log; a traceback counts once, as its exception line."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        problems, i = [], 0
        while i < len(lines):
            line = lines[i]
            if line.lstrip().startswith("Traceback (most recent call last)"):
                indent = len(line) - len(line.lstrip())  # WeRoBot's own log indents its tracebacks by 4
                j = i + 1
                while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent):
                    j += 1
                problems.append("Traceback → " + (lines[j].strip() if j < len(lines) else "(cut off)"))
                i = j + 1
                continue
            if re.search(r"Error|Exception|WARNING|CRITICAL|\[E ", line):
                problems.append(line.strip())
            i += 1
        return problems


def werobot_label(how: str, venv: WeRoBotEnv | None) -> str:
    v = (venv.versions if venv else {}) or {}
    if how == GUNICORN:
        return f"WeRoBot {WEROBOT_VERSION}, gunicorn {v.get('gunicorn', '?')} (1 sync worker)"
    return f"WeRoBot {WEROBOT_VERSION}, robot.run auto → Waitress {v.get('waitress', '?')} (1 process)"


def run_werobot(
    how: str,
    workdir: Path,
    venv: WeRoBotEnv,
    account: Account,
    messages: Messages,
    reply: str,
    args: argparse.Namespace,
    servers: list,
) -> Run:
    label = werobot_label(how, venv)
    run = Run(label)
    openids = [f"o{secrets.token_hex(13)}" for _ in range(args.followers)]  # its own senders
    server = WeRoBotServer(how, label, workdir, venv, account, reply, messages)
    servers.append(server)
    print(f"- {label} on port {server.port}: starting", flush=True)
    try:
        run.start_s = server.start()
        first = ask_once(server.base, messages, openids[0])
        if first != reply:
            raise RuntimeError(f"WeRoBot answered {first[:80]!r}, not the fixed reply")
        print(f"  answering after {run.start_s:.1f} s; its reply checked", flush=True)

        def watch_cpu() -> idb.CpuWatch:
            return idb.CpuWatch({"WeRoBot server": server.proc.pid})

        verify = idb.measure_wrk(VERIFY_TARGET, label, server.url, None, watch_cpu, args)
        run.rows.append(verify)
        run.rows.append(
            measure_messages(
                WEROBOT_TARGET, label, server.base, messages, openids, lambda c: c == reply, watch_cpu, args, workdir
            )
        )
        time.sleep(SETTLE_S)  # as for our server: the requests cut off at the end finish before the stop
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        why = str(exc).splitlines()[0][:160]
        print(f"  FAILED: {exc}", file=sys.stderr)
        for line in server.log_path.read_text(errors="replace").splitlines()[-20:] if server.log_path.exists() else []:
            print(f"  | {line}", file=sys.stderr)
        done = {r.target for r in run.rows}
        run.rows += [idb.Row(t, label, failed=why) for t in (VERIFY_TARGET, WEROBOT_TARGET) if t not in done]
    finally:
        run.stop_s = server.stop()
        servers.remove(server)
        run.log_problems = server.log_problems()
        server.keep_log(args.keep_logs)
        for kind, n in log_kinds(run.log_problems):
            print(f"  log: {n} × {kind}")
    return run


# -- report ------------------------------------------------------------------------------------


def table(rows: list[idb.Row]) -> list[str]:
    lines = [
        "| target | server | requests/s | p50 ms | p99 ms | ratio to /healthz |",
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


def log_kinds(problems: list[str], top: int = 4) -> list[tuple[str, int]]:
    """The server's warning/error lines grouped by kind (numbers and task names blanked), most frequent first."""
    kinds: dict[str, int] = {}
    for line in problems:
        kind = re.sub(r"\s+", " ", re.sub(r"\d+", "N", line)).replace("`", "'")[:200]
        kinds[kind] = kinds.get(kind, 0) + 1
    return sorted(kinds.items(), key=lambda kv: -kv[1])[:top]


def section(
    runs: list[Run],
    venv: WeRoBotEnv | None,
    venv_failed: str | None,
    sim_problems: list[str],
    reference: str | None,
    args: argparse.Namespace,
    machine: str,
    when: str,
) -> str:
    rows = [r for run in runs for r in run.rows]
    url = f"http://{HOST}:PORT"
    healthz_cmd = " ".join(shlex.quote(p) for p in hb.wrk_command(args, f"{url}/healthz", args.duration))
    bot_cmd = " ".join(shlex.quote(p) for p in script_cmd(args, url + OA_PATH, args.duration, "bot.lua"))
    verify_cmd = " ".join(
        shlex.quote(p)
        for p in hb.wrk_command(args, f"{url}{OA_PATH}?signature=…&timestamp=…&nonce=…&echostr=…", args.duration)
    )
    warmup = " ".join(hb.wrk_command(args, f"{url}/...", args.warmup, latency=False))
    versions = venv.versions if venv else {}
    body = [
        SECTION,
        "",
        f"Measured {when} by `.venv/bin/python benchmarks/bot.py`"
        + (f" ({' '.join(sys.argv[1:])})" if sys.argv[1:] else "")
        + ".",
        "",
        *table(rows),
        "",
        '- What each POST is: a safe-mode (`encrypt_type=aes`) text message "身份证过期了怎么办" built as WeChat '
        "builds it (`tests/oa_pusher.py`: AES-256-CBC envelope with the AppID, `signature` and `msg_signature` over "
        "a current timestamp and a fresh nonce), each with a MsgId never used before in the run. Distinct messages "
        "matter: the callback de-duplicates on MsgId (WeChat retries unanswered messages) and answers a repeat from "
        "its Redis cache, which would not measure the real work. The messages are generated right before each wrk "
        "run into a file (path?query TAB body per line; at least "
        f"`--messages` {args.messages} and 1.5 × the warm-up rate × the duration) and a wrk Lua script sends each "
        'once (`request()` returns `wrk.format("POST", path?query, headers, body)`), so every timestamp is within '
        "seconds of the server clock (the server refuses more than 5 minutes). The script counts requests that "
        "would have repeated a message, non-200 answers, bodies that are not an encrypted reply and `success` "
        f"(answer deferred past the deadline), and keeps up to {args.samples} replies spread over the run, which "
        "are checked here: MsgSignature, decryption, AppID, MsgType text and the content.",
        f"- Zhangban: `server.py serve`, 1 worker, `LOG_LEVEL=WARNING`, after `server.py load-demo` with the same "
        "environment, official account `WECHAT_OA_APPID`/`WECHAT_OA_SECRET` (the simulator's default account), "
        "`WECHAT_OA_TOKEN` and `WECHAT_OA_AES_KEY` generated for the run, `WECHAT_API_BASE` = the WeChat simulator "
        f"as its own process (`python -m wechat.simulator`). *{EMBEDDED}*: the default, SQLite under the temporary "
        f"`var/`, fakeredis. *{PRODUCTION}*: a fresh database on `{idb.PG_ADMIN_URL}` (dropped afterwards), "
        f"`REDIS_URL={hb.REDIS_URL}` with a throw-away `REDIS_KEY_PREFIX` (its keys deleted afterwards), random "
        "`SECRET_KEY` and `FIELD_ENCRYPTION_KEY`, `TASK_BROKER=memory`; stopped (SIGINT) "
        f"{SETTLE_S:.0f} s after the last request, so the answers to the messages wrk cut off at the end "
        "of its run finish first. The answer must be the guide of "
        f"{MARKER} found by the catalogue search. Per message the server checks both signatures and the "
        "timestamp, decrypts, parses with defusedxml, claims the MsgId in Redis (SET NX), reads and updates the "
        "follower row, runs the search (jieba + BM25, index built once per process), reads the cached guide from "
        f"Redis, builds, encrypts and caches the reply. The messages come from {args.followers} followers "
        "registered at the simulator with a unionid (message *i* from follower *i* mod "
        f"{args.followers}): the first message of each (in the warm-up) also asks the simulator for the unionid.",
        f"- WeRoBot {WEROBOT_VERSION} from PyPI, installed by this script into a throw-away virtual environment under "
        "the run's temporary directory (`python -m venv`, then `pip install "
        f"{' '.join(WEROBOT_PACKAGES)}`; deleted at the end, never in the project's requirements): "
        + (", ".join(f"{k} {v}" for k, v in versions.items()) if versions else "versions unknown")
        + (f", set up in {venv.took_s:.0f} s" if venv else "")
        + ". "
        "`benchmarks/werobot_app.py`: `WeRoBot()` with `TOKEN`, `APP_ID` and `ENCODING_AES_KEY` (the same account), "
        "one `@robot.text` handler returning a fixed text — the reply our embedded server gave in its set-up check, "
        "so both encrypt the same content — and WeRoBot's defaults otherwise, including its default session storage "
        "(SQLite file in the working directory: a read and a committed write per message). Served the two ways "
        'WeRoBot\'s deployment guide (docs/deploy.rst, "部署") shows, each one process: '
        f"`gunicorn --workers 1 --bind 127.0.0.1:PORT {' '.join(venv.gunicorn_flags) + ' ' if venv and venv.gunicorn_flags else ''}"
        'werobot_app:application` ("通过 WSGI HTTP Server 运行"; gunicorn\'s default sync worker, which closes the '
        "connection after each answer; `application` is `robot.wsgi`: the guide's target form "
        f"`robot:robot.wsgi`, checked with `gunicorn --check-config werobot_app:robot.wsgi`, was "
        f"{venv.documented_target if venv else 'not checked'}), and "
        '`python werobot_app.py` = `robot.run(server="auto")` (the default; the guide says it can run in '
        "production once a server is installed), which picked "
        f"{venv.auto_picks if venv else '?'} with Waitress's default 4 threads. Its messages are generated the "
        f"same way, from {args.followers} random OpenIDs, and each reply must decrypt to exactly the fixed text. "
        "WeRoBot checks `signature` and `msg_signature` but not the timestamp's age, and does not de-duplicate. "
        f"Its `{VERIFY_TARGET}` row (signature check, echo) is its cheapest request.",
        f"- Commands: `{healthz_cmd}`; `{bot_cmd}`; WeRoBot's cheapest: `{verify_cmd}`; each after a warm-up "
        f"`{warmup}` (with the same `-s` script and its own messages for the POSTs). Each server is started fresh "
        "on a free 127.0.0.1 port, the others stopped. The ratio column is requests/s divided by `/healthz` "
        f"requests/s of the same Zhangban server; for WeRoBot rows, by the {reference or '(none measured)'} "
        "`/healthz` of this run.",
        f"- Machine: {machine}.",
        "- wrk (and its Lua script), the simulator and the server share the cores, so these are ceilings of this "
        "machine, not of production hardware; compare rows within one run.",
    ]
    measured = [r.others_cpu for r in rows if r.rps is not None]
    if measured:
        body.append(
            f"- Noise: other processes used at most {max(measured):.0%} of the CPU during the measured runs "
            f"(rows above {hb.BUSY:.0%} are flagged below; a disturbed row is measured again, up to "
            f"{args.retries} times, keeping the least disturbed attempt). Counted as ours: the server "
            "(its process group), the simulator, wrk, this script and, in production mode, the PostgreSQL "
            "backends of the benchmark's database and the whole redis-server process."
        )
    starts = ", ".join(f"{run.backend}: {run.start_s:.1f} s" for run in runs if run.start_s is not None)
    if starts:
        body.append(
            f"- Time from start to the first answer (after load-demo for Zhangban): {starts}. load-demo said: "
            + "; ".join(f"{run.backend}: `{run.load_demo}`" for run in runs if run.load_demo)
            + "."
        )
    by = {(r.target, r.backend): r for r in rows}
    ours = [by.get((BOT_TARGET, b)) for b in (EMBEDDED, PRODUCTION)]
    theirs = [r for r in rows if r.target == WEROBOT_TARGET and r.rps]
    compare = [f"{o.backend} / {t.backend} = {o.rps / t.rps:.2f}" for o in ours if o and o.rps for t in theirs]
    if compare:
        body.append("- Zhangban's bot requests/s divided by WeRoBot's: " + "; ".join(compare) + ".")
    notes = []
    if venv_failed:
        notes.append(f"WeRoBot's virtual environment: {venv_failed}")
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
                f"{run.backend}: {len(run.log_problems)} warning/error line(s) in the server's log: "
                + "; ".join(f"{n} × `{kind}`" for kind, n in log_kinds(run.log_problems))
            )
        elif run.start_s is not None:
            notes.append(f"{run.backend}: no warning or error in the server's log")
        if run.stop_s is not None and run.stop_s > 5:
            notes.append(f"{run.backend}: the server took {run.stop_s:.1f} s to stop")
        notes += [f"{run.backend}: {n}" for n in run.cleanup + run.extra_notes]
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
        description="Official-account bot: encrypted POST /wechat/oa vs /healthz, and WeRoBot (see benchmarks/README.md)."
    )
    parser.add_argument(
        "--duration", type=hb.positive, default=10, help="seconds of each measured wrk run (default 10)"
    )
    parser.add_argument("--warmup", type=hb.positive, default=2, help="seconds of each wrk warm-up run (default 2)")
    parser.add_argument("--connections", type=hb.positive, default=32, help="wrk connections (default 32)")
    parser.add_argument("--threads", type=hb.positive, default=1, help="wrk threads (default 1)")
    parser.add_argument(
        "--messages",
        type=hb.positive,
        default=20000,
        help="at least this many distinct messages per measured run (default 20000; more when the "
        "warm-up shows they would run out)",
    )
    parser.add_argument("--followers", type=hb.positive, default=200, help="senders of the messages (default 200)")
    parser.add_argument(
        "--samples", type=hb.positive, default=200, help="replies decrypted and checked per run (default 200)"
    )
    parser.add_argument("--no-production", action="store_true", help="skip the PostgreSQL + Redis backend")
    parser.add_argument("--no-werobot", action="store_true", help="skip WeRoBot (no virtual environment is made)")
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
        help="measure a target again, up to N times, when other processes disturbed it (default 2)",
    )
    parser.add_argument(
        "--keep-logs", type=Path, metavar="DIR", help="copy the servers' and simulator's output into DIR"
    )
    args = parser.parse_args(argv)
    if args.retries < 0:
        parser.error("--retries cannot be negative")
    if args.threads > args.connections:
        parser.error("--threads cannot exceed --connections")
    if args.duration + 30 > MAX_SKEW_S - 30:
        parser.error(
            f"--duration: at most {MAX_SKEW_S - 60} s (the messages' timestamps must stay within "
            f"{MAX_SKEW_S} s of the server clock)"
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
    print(f"Official-account bot benchmark, {when}\n{machine}\n")
    if args.no_production:
        skip = "--no-production"
    elif not hb.redis_answers():
        skip = f"no Redis on {HOST}:{hb.REDIS_PORT}"
    else:
        skip = idb.pg_answers()

    runs: list[Run] = []
    servers: list = []
    sim_problems: list[str] = []
    venv: WeRoBotEnv | None = None
    venv_failed: str | None = None
    reference: str | None = None
    interrupted = False
    prefix = f"zbbench{secrets.token_hex(4)}:"
    account = Account()
    messages = Messages(account)
    tmp = tempfile.TemporaryDirectory(prefix="zb-bench-bot-")
    sim = idb.Simulator(Path(tmp.name))
    try:
        if not args.no_werobot:
            print(
                f"WeRoBot: making a throw-away virtual environment (pip install {' '.join(WEROBOT_PACKAGES)})",
                flush=True,
            )
            try:
                venv = make_werobot_env(Path(tmp.name))
                print(f"  done in {venv.took_s:.0f} s: {venv.versions}; server 'auto' → {venv.auto_picks}", flush=True)
                check_dir = Path(tmp.name) / "werobot-check"
                check_dir.mkdir()
                venv.documented_target = check_documented_target(venv, check_dir, account)
                print(
                    f"  gunicorn --check-config werobot_app:robot.wsgi (the guide's form): {venv.documented_target}",
                    flush=True,
                )
            except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError) as exc:
                venv_failed = str(exc).splitlines()[0][:200]
                print(f"  FAILED: {exc}", file=sys.stderr)
        print(f"WeChat simulator on port {sim.port}: answering after {sim.start():.1f} s", flush=True)
        openids = register_followers(sim, args.followers)
        print(f"{len(openids)} followers registered at the simulator (each with a unionid)", flush=True)
        for n, backend in enumerate([EMBEDDED, PRODUCTION]):
            if backend == PRODUCTION and skip:
                print(f"- {backend}: skipped ({skip})")
                run = Run(backend, skipped=skip)
                run.rows = [idb.Row(t, backend, skipped=skip) for t in ("GET /healthz", BOT_TARGET)]
                runs.append(run)
                continue
            workdir = Path(tmp.name) / f"{n}-{'production' if backend == PRODUCTION else 'embedded'}"
            workdir.mkdir()
            runs.append(run_zhangban(backend, workdir, prefix, sim, account, messages, openids, args, servers))
        healthz = next((r for run in runs for r in run.rows if r.target == "GET /healthz" and r.rps), None)
        reference = healthz.backend if healthz else None
        reply = next((run.first_reply for run in runs if run.first_reply), None)
        if args.no_werobot:
            pass
        elif venv is None:
            runs.append(Run("WeRoBot", rows=[idb.Row(WEROBOT_TARGET, "WeRoBot", failed=venv_failed or "no venv")]))
        else:
            if reply is None:
                reply = f"【{MARKER}】"  # no Zhangban reply to copy: a short fixed text
            for n, how in enumerate([GUNICORN, WAITRESS]):
                workdir = Path(tmp.name) / f"werobot-{n}-{how}"
                workdir.mkdir()
                run = run_werobot(how, workdir, venv, account, messages, reply, args, servers)
                for r in run.rows:
                    if r.rps and healthz and healthz.rps:
                        r.ratio = r.rps / healthz.rps
                runs.append(run)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping the servers", file=sys.stderr)
    except RuntimeError as exc:  # the simulator did not start, or the followers could not be registered
        print(f"FAILED: {exc}", file=sys.stderr)
        runs.append(Run(EMBEDDED, rows=[idb.Row("all", EMBEDDED, failed=str(exc)[:160])]))
    finally:
        for server in list(servers):  # interrupted mid-run: the run's own finally has run already
            server.stop()
        sim.stop()
        sim_problems = sim.log_problems()
        if args.keep_logs and sim.log_path.exists():
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            shutil.copy(sim.log_path, args.keep_logs / sim.log_path.name)
        tmp.cleanup()  # the WeRoBot venv, the SQLite files, the message files
        print(f"removed the temporary directory {tmp.name} (WeRoBot's virtual environment included)", flush=True)

    if interrupted:
        return 130
    text = section(runs, venv, venv_failed, sim_problems, reference, args, machine, when)
    print()
    print(text)
    if not args.no_write:
        hb.write_results(text, SECTION)
        print(f"written to {hb.RESULTS.relative_to(ROOT)}")
    rows = [r for run in runs for r in run.rows]
    return 1 if any(r.failed for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
