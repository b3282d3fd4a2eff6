"""Platform callbacks benchmark: signed `POST /bridge/callback` on PostgreSQL against `GET /healthz`,
with 1 and 2 Sanic workers, and how fast the progress pushes they queue drain through the WeChat
simulator.

    .venv/bin/python benchmarks/callbacks.py [--duration 10] [--cases 10000] [--workers 1,2]

Production backend only. Per row of `--workers` (default 1 and 2 Sanic workers), everything fresh:
a new PostgreSQL database on postgresql://postgres@127.0.0.1:5432 (dropped afterwards), Redis on
127.0.0.1:6379 with a throw-away REDIS_KEY_PREFIX (its keys deleted afterwards), `TASK_BROKER=redis`,
random SECRET_KEY / FIELD_ENCRYPTION_KEY, `server.py migrate` and `server.py load-demo` with exactly
the server's environment, then `server.py serve` with `WORKERS=N`, `LOG_LEVEL=WARNING`, plus one
`server.py worker --processes 1` and one `server.py scheduler` beside it (they run the push jobs the
callbacks queue). The core-platform settings (PLATFORM_BASE_URL / PLATFORM_APP_KEY /
PLATFORM_SECRET) point at the platform simulator (`python -m bridge.simulator`, its own process) with a
key and secret generated for the run: the cases are seeded as already delivered, so nothing is
relayed to it, and it is there so that a relay or sweep that does call finds a platform that answers.
WeChat (WECHAT_API_BASE, WECHAT_MP_*) is the WeChat simulator (`python -m wechat.simulator`), also its
own process; PUSH_MP_TEMPLATE_ID is a template id made for the run and PUSH_QUIET_HOURS is empty, so
no push waits for morning.

Seeding, directly in PostgreSQL (asyncpg) after load-demo: `--users` citizens (an openid each) and
`--cases` cases of 居民身份证换领 in status `delivered_to_platform` (platform_seq 0, one `system`
case event submitted -> delivered_to_platform), case i owned by citizen i mod --users; more cases
are added while the server runs when the warm-up shows the measured run would need them.

What is measured, on the same server: wrk's `GET /healthz` (the ceiling), then the callbacks. Every
request is a distinct callback as the platform sends it: a body {"case_no", "platform_case_id",
"seq", "event", "at", "data"} signed with bridge.signing (HMAC-SHA256 over method, path, a current
timestamp, a fresh nonce and the body's SHA-256). The server verifies the signature, takes the nonce
in Redis (SET NX: a repeated nonce is refused, so no request may be sent twice), validates the body
and applies the event under a row lock (`handlers.cases.platform_events.apply_platform_event`): one case-event
row, the case's status, seq and row_version, and whatever the push pipeline adds (a notification and
a queued push job). Each case gets seq 1 accepted, 2 in_review, 3 approved, 4 result_issued
({"kind": "electronic", "licence_no"}) and 5 closed, each a real transition. The requests are written
just before each wrk run (so every timestamp is within seconds of the server's clock; the server
refuses more than 300 s) into a file that a wrk Lua script sends once each, in file order; the file
takes the cases in batches of `--batch` and gives all of a batch its seq 1, then its seq 2, and so on,
so that the next event of a case is sent a whole batch later and nearly every callback is applied in
order. The Lua script counts the answers: "applied", "duplicate" (an older seq arriving after a newer
one), "ignored", non-200 and any request sent twice, and keeps a sample of the answers, which are
checked here. After the run (and 2 s for the requests wrk cut off), the platform case events written
during it are counted in the database next to the requests sent.

Progress pushes (only when the database has the `notifications` table; otherwise "push pipeline not
present" and this part is skipped): the measured run starts once the warm-up's pushes are done;
the push counts by `push_status` are taken at its start and end, then polled every 0.5 s until
nothing is pending or sending (`--drain-timeout`): settled per second during the run and from its
end until drained, and the subscribe messages the WeChat simulator received. Then, on the last
row's server, a backlog drain per `--drain-processes` (default 1 and 2): the worker is stopped,
`--backlog` more callbacks are sent (httpx, 16 in flight), a worker with that many processes is
started and the backlog is timed from its first settled push until nothing is pending. The citizens
are registered at the WeChat simulator with one-time subscription grants for the run's template;
Zhangban's own grant records are the job of `seed_push_grants()`.

Results are printed and, unless `--no-write`, written to the `## Platform callbacks (POST
/bridge/callback) and progress pushes` section of benchmarks/RESULTS.md; other sections are kept.
The server, simulator, wrk, CPU-noise and report plumbing is shared with benchmarks/http_baseline.py,
identity.py, catalogue.py and bot.py. Exit codes: 0 done, 1 a measurement failed, 2 wrk, PostgreSQL
or Redis missing or bad arguments, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import catalogue as cat  # noqa: E402  (a server that can run `migrate` / `load-demo` with its own environment)
import http_baseline as hb  # noqa: E402  (the shared benchmark plumbing)
import identity as idb  # noqa: E402  (simulator, PostgreSQL, wrk rows, CPU watch)

import bot  # noqa: E402  (the wrk Lua run files, report helpers)

ROOT = hb.ROOT
HOST = hb.HOST
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))
from bridge.signing import dumps_body, sign  # noqa: E402

SECTION = "## Platform callbacks (POST /bridge/callback) and progress pushes"
CALLBACK_PATH = "/bridge/callback"
TARGET = f"POST {CALLBACK_PATH}"
ITEM_NAME = "居民身份证换领"
EVENTS = ("accepted", "in_review", "approved", "result_issued", "closed")  # seq 1..5, each a real transition
MAX_SKEW_S = 300  # bridge.signing.DEFAULT_MAX_SKEW_S: the server refuses older timestamps
SETTLE_S = 2.0  # after a wrk run, for the requests it cut off
WARM_RATE = 2500  # callbacks/s the warm-up file is sized for (more would only repeat requests)
CHINA = dt.timezone(dt.timedelta(hours=8))
# Columns of `cases` the relay sets when it hands a case over, filled when the schema has them
# (a case never heard from is what the platform sweep asks the platform about).
DELIVERED_EXTRAS = {"platform_heard_at": "now()"}
PUSH_STATUSES = ("pending", "sending", "sent", "inbox_only", "failed")
SETTLED = ("sent", "inbox_only", "failed")
SUBSCRIBE_SEND = "/cgi-bin/message/subscribe/send"
POLL_S = 0.5
GRANTS_PER_USER = 1000  # one-time subscriptions per citizen: more than they can use in a run


# -- the platform's side -----------------------------------------------------------------------


@dataclass
class Platform:
    """The core platform of the run: a key and secret generated for it."""

    app_key: str = field(default_factory=lambda: "zbbench_" + secrets.token_hex(4))
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    def body(self, case_no: str, seq: int) -> bytes:
        event = EVENTS[seq - 1]
        data = {"kind": "electronic", "licence_no": f"DZZZ{case_no[2:]}"} if event == "result_issued" else {}
        return dumps_body(
            {
                "case_no": case_no,
                "platform_case_id": f"PT{case_no[2:]}",
                "seq": seq,
                "event": event,
                "at": dt.datetime.now(CHINA).isoformat(timespec="seconds"),
                "data": data,
            }
        )

    def signed(self, case_no: str, seq: int) -> tuple[dict[str, str], bytes]:
        body = self.body(case_no, seq)
        return sign("POST", CALLBACK_PATH, body, app_key=self.app_key, secret=self.secret), body

    def write(self, path: Path, case_nos: list[str], batch: int) -> tuple[int, float]:
        """Every event of `case_nos`, batch by batch and within a batch seq by seq, one
        `timestamp TAB nonce TAB signature TAB body` line each; returns (lines, time written)."""
        began = time.time()
        lines = 0
        with open(path, "w", encoding="utf-8") as out:
            for start in range(0, len(case_nos), batch):
                chunk = case_nos[start : start + batch]
                for seq in range(1, len(EVENTS) + 1):
                    for case_no in chunk:
                        headers, body = self.signed(case_no, seq)
                        out.write(
                            f"{headers['X-Timestamp']}\t{headers['X-Nonce']}\t{headers['X-Signature']}\t"
                            f"{body.decode()}\n"
                        )
                        lines += 1
        return lines, began

    def env(self, base_url: str) -> dict[str, str]:
        return {"PLATFORM_BASE_URL": base_url, "PLATFORM_APP_KEY": self.app_key, "PLATFORM_SECRET": self.secret}


class PlatformSim(idb.Simulator):
    """`python -m bridge.simulator` on a free port with the run's key and secret, in its own session."""

    def __init__(self, workdir: Path, platform: Platform):
        super().__init__(workdir)
        self.platform = platform
        self.log_path = workdir / "platform-sim.log"

    def start(self) -> float:
        import httpx

        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "wb")
        began = time.monotonic()
        self.proc = subprocess.Popen(
            [
                hb.python_bin(),
                "-m",
                "bridge.simulator",
                "--host",
                HOST,
                "--port",
                str(self.port),
                "--app-key",
                self.platform.app_key,
                "--secret",
                self.platform.secret,
                "--script",
                "happy",
                "--step-delay",
                "3600",
            ],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        while time.monotonic() < began + hb.START_TIMEOUT:
            if self.proc.poll() is not None:
                raise RuntimeError(f"platform simulator exited with code {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/__sim__/stats", timeout=1).status_code == 200:
                    return time.monotonic() - began
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"platform simulator did not answer within {hb.START_TIMEOUT:.0f} s")


def sim_calls(sim: idb.Simulator) -> dict[str, int]:
    """A simulator's `GET /__sim__/stats` call counts ({} when it does not answer)."""
    import httpx

    try:
        return dict(httpx.get(sim.url + "/__sim__/stats", timeout=10).json().get("calls", {}))
    except (httpx.HTTPError, ValueError):
        return {}


def subscribe_sends(sim: idb.Simulator) -> int:
    return sum(n for path, n in sim_calls(sim).items() if path.endswith(SUBSCRIBE_SEND))


# -- PostgreSQL: seeding and counting ----------------------------------------------------------


@dataclass
class SeededUser:
    id: int
    openid: str
    template_id: str  # the run's PUSH_MP_TEMPLATE_ID
    grants: int  # one-time subscriptions granted at the WeChat simulator


async def seed_push_grants(conn, users: list[SeededUser]) -> int:
    """Records in Zhangban's grant table that each of `users` has `user.grants` one-time
    subscriptions left for `user.template_id`, as `handlers.push.record_grants` does after
    wx.requestSubscribeMessage answered "accept" (the simulator holds the same grants)."""
    await conn.execute(
        "INSERT INTO subscription_grants (user_id, template_id, remaining, accepted_total, last_result, updated_at)"
        " SELECT u, t, g, g, 'accept', now() FROM unnest($1::bigint[], $2::text[], $3::int[]) AS x(u, t, g)",
        [u.id for u in users],
        [u.template_id for u in users],
        [u.grants for u in users],
    )
    return len(users)


class Database:
    """The row's PostgreSQL database: seeding and the counts the report needs."""

    def __init__(self, name: str):
        self.name = name
        self.url = idb.pg_url_for(name)
        self.users: list[SeededUser] = []
        self.item: tuple[int, str, str] | None = None  # id, code, name of the seeded cases' service item
        self.extras: dict[str, str] = {}  # DELIVERED_EXTRAS the schema has
        self.next_no = 1
        self.day = dt.datetime.now(CHINA).strftime("%Y%m%d")

    def run(self, work: Callable, *args):
        async def go():
            import asyncpg

            conn = await asyncpg.connect(self.url, timeout=10)
            try:
                return await work(conn, *args)
            finally:
                await conn.close()

        return asyncio.run(go())

    def fetch(self, sql: str, *args) -> list[tuple]:
        async def work(conn):
            return [tuple(r) for r in await conn.fetch(sql, *args)]

        return self.run(work)

    # -- seeding -------------------------------------------------------------------------------

    @staticmethod
    async def _unfilled(conn, table: str, filled: set[str]) -> list[str]:
        """NOT NULL columns of `table` without a default that the seeding does not fill."""
        rows = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1 "
            "AND is_nullable = 'NO' AND column_default IS NULL",
            table,
        )
        return sorted({r[0] for r in rows} - filled)

    def seed_users(self, count: int, template_id: str) -> list[SeededUser]:
        async def work(conn):
            missing = await self._unfilled(
                conn, "users", {"openid", "identity_level", "is_active", "created_at", "updated_at"}
            )
            if missing:
                raise RuntimeError(
                    f"seeding: users.{', '.join(missing)} must be filled (update benchmarks/callbacks.py)"
                )
            openids = ["o" + secrets.token_urlsafe(21)[:27] for _ in range(count)]  # 28 characters, like WeChat's
            rows = await conn.fetch(
                "INSERT INTO users (openid, identity_level, is_active, created_at, updated_at) "
                "SELECT o, 'L1', true, now(), now() FROM unnest($1::text[]) AS t(o) RETURNING id, openid",
                openids,
            )
            return [SeededUser(int(r[0]), r[1], template_id, GRANTS_PER_USER) for r in rows]

        self.users = self.run(work)
        return self.users

    def seed_cases(self, count: int) -> list[str]:
        """`count` more cases in `delivered_to_platform`, case i owned by user i mod len(users)."""
        if self.next_no + count > 10**6:
            raise RuntimeError("seeding: more than 999,999 cases in one database")

        async def work(conn):
            if self.item is None:
                row = await conn.fetchrow(
                    "SELECT id, code, name FROM service_items WHERE name = $1 AND is_current "
                    "ORDER BY version DESC LIMIT 1",
                    ITEM_NAME,
                )
                if row is None:
                    raise RuntimeError(f"seeding: no current service item named {ITEM_NAME} (did load-demo run?)")
                self.item = (int(row[0]), row[1], row[2])
                columns = {
                    r[0]
                    for r in await conn.fetch(
                        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
                        "AND table_name = 'cases'"
                    )
                }
                self.extras = {k: v for k, v in DELIVERED_EXTRAS.items() if k in columns}
                missing = await self._unfilled(
                    conn,
                    "cases",
                    set(self.extras)
                    | {
                        "case_no",
                        "user_id",
                        "service_item_id",
                        "service_code",
                        "service_name",
                        "status",
                        "materials",
                        "platform_seq",
                        "row_version",
                        "submitted_at",
                        "updated_at",
                    },
                )
                missing += [
                    f"case_events.{c}"
                    for c in await self._unfilled(
                        conn, "case_events", {"case_id", "at", "actor_type", "from_status", "to_status", "note", "data"}
                    )
                ]
                if missing:
                    raise RuntimeError(
                        f"seeding: cases.{', '.join(missing)} must be filled (update benchmarks/callbacks.py)"
                    )
            numbers = range(self.next_no, self.next_no + count)
            case_nos = [f"ZB{self.day}{n:06d}" for n in numbers]  # ^ZB\d{14}$
            owners = [self.users[n % len(self.users)].id for n in numbers]
            item_id, code, name = self.item
            extra_columns = "".join(f", {k}" for k in self.extras)
            extra_values = "".join(f", {v}" for v in self.extras.values())
            async with conn.transaction():
                # row_version 2: created (1), then handed to the platform by the relay (+1).
                ids = [
                    r[0]
                    for r in await conn.fetch(
                        "INSERT INTO cases (case_no, user_id, service_item_id, service_code, service_name, status, "
                        f"materials, platform_seq, row_version, submitted_at, updated_at{extra_columns}) "
                        "SELECT c, u, $3, $4, $5, 'delivered_to_platform', '{}'::jsonb, 0, 2, now(), now()"
                        f"{extra_values} FROM unnest($1::text[], $2::bigint[]) AS t(c, u) RETURNING id",
                        case_nos,
                        owners,
                        item_id,
                        code,
                        name,
                    )
                ]
                await conn.execute(
                    "INSERT INTO case_events (case_id, at, actor_type, from_status, to_status, note, data) "
                    "SELECT i, now(), 'system', 'submitted', 'delivered_to_platform', '已推送至审批部门', '{}'::jsonb "
                    "FROM unnest($1::bigint[]) AS t(i)",
                    ids,
                )
            return case_nos

        case_nos = self.run(work)
        self.next_no += count
        return case_nos

    def seed_grants(self) -> int:
        async def work(conn):
            return await seed_push_grants(conn, self.users)

        return int(self.run(work) or 0)

    # -- counts --------------------------------------------------------------------------------

    def platform_events(self) -> int:
        return int(self.fetch("SELECT count(*) FROM case_events WHERE actor_type = 'platform'")[0][0])

    def case_statuses(self) -> dict[str, int]:
        return {s: int(n) for s, n in self.fetch("SELECT status, count(*) FROM cases GROUP BY 1 ORDER BY 2 DESC")}

    def push_present(self) -> bool:
        rows = self.fetch(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'public' "
            "AND table_name = 'notifications' AND column_name = 'push_status'"
        )
        return bool(rows[0][0])

    def push_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(PUSH_STATUSES, 0)
        for status, n in self.fetch("SELECT push_status, count(*) FROM notifications GROUP BY 1"):
            counts[str(status)] = int(n)
        return counts

    def grants_left(self) -> int | None:
        try:
            return int(self.fetch("SELECT coalesce(sum(remaining), 0) FROM subscription_grants")[0][0])
        except Exception:  # no such table (yet)
            return None


class Pool:
    """Seeded cases no wrk run has used yet; `take()` seeds more when it runs short."""

    def __init__(self, db: Database):
        self.db = db
        self.cases: list[str] = []
        self.seeded = 0

    def seed(self, count: int) -> None:
        self.cases += self.db.seed_cases(count)
        self.seeded += count

    def take(self, count: int) -> list[str]:
        if count > len(self.cases):
            self.seed(count - len(self.cases))
        taken, self.cases = self.cases[:count], self.cases[count:]
        return taken


# -- wrk with a Lua script that sends each signed callback once ---------------------------------

LUA = r"""-- written by benchmarks/callbacks.py: sends each signed callback of REQUESTS once, counts the answers
local requests_file, samples_file, summary_file = %(requests)s, %(samples)s, %(summary)s
local nthreads, every, max_samples, max_bad = %(threads)d, %(every)d, %(max_samples)d, 20
local app_key, path = %(app_key)s, %(path)s

local threads, made = {}, 0
function setup(thread)
  made = made + 1
  thread:set("tid", made)
  table.insert(threads, thread)
end

local reqs, i, out, bad_sampled = {}, 0, nil, 0
n, issued, reused, responses, non200, applied, duplicate, ignored, other, sampled = 0, 0, 0, 0, 0, 0, 0, 0, 0, 0

function init(args)
  local line_no = 0
  for line in io.lines(requests_file) do
    if line_no %% nthreads == tid - 1 then  -- each thread its own share: no callback sent twice
      local a = line:find("\t", 1, true)
      local b = line:find("\t", a + 1, true)
      local c = line:find("\t", b + 1, true)
      n = n + 1
      reqs[n] = wrk.format("POST", path, {
        ["Content-Type"] = "application/json", ["X-App-Key"] = app_key,
        ["X-Timestamp"] = line:sub(1, a - 1), ["X-Nonce"] = line:sub(a + 1, b - 1),
        ["X-Signature"] = line:sub(b + 1, c - 1)}, line:sub(c + 1))
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
  elseif body:find('"applied"', 1, true) then
    applied = applied + 1
  elseif body:find('"duplicate"', 1, true) then
    duplicate = duplicate + 1
  elseif body:find('"ignored"', 1, true) then
    ignored = ignored + 1
  else
    other = other + 1
  end
  local keep = sampled < max_samples and responses %% every == 0
  if status ~= 200 and bad_sampled < max_bad then
    keep = true
    bad_sampled = bad_sampled + 1
  end
  if keep then
    sampled = sampled + 1
    out:write(status, " ", #body, "\n", body, "\n")
    out:flush()
  end
end

function done(summary, latency, requests)
  local f = assert(io.open(summary_file, "w"))
  for _, t in ipairs(threads) do
    for _, k in ipairs({"n", "issued", "reused", "responses", "non200", "applied", "duplicate", "ignored", "other",
                        "sampled"}) do
      f:write(k, " ", tostring(t:get(k)), "\n")
    end
  end
  f:close()
end
"""

COUNTERS = ("n", "issued", "reused", "responses", "non200", "applied", "duplicate", "ignored", "other", "sampled")


class CallbackRun(bot.LuaRun):
    """bot.py's run files (requests in, Lua script, samples and counters out) with our Lua script."""

    def __init__(self, directory: Path, name: str, threads: int, expected: int, max_samples: int, platform: Platform):
        self.requests, self.script = directory / f"{name}.requests", directory / f"{name}.lua"
        self.samples, self.summary_path = directory / f"{name}.samples", directory / f"{name}.summary"
        every = max(1, expected // max(1, max_samples))
        self.script.write_text(
            LUA
            % {
                "requests": bot.lua_string(str(self.requests)),
                "samples": bot.lua_string(str(self.samples)),
                "summary": bot.lua_string(str(self.summary_path)),
                "threads": threads,
                "every": every,
                "max_samples": max_samples,
                "app_key": bot.lua_string(platform.app_key),
                "path": bot.lua_string(CALLBACK_PATH),
            }
        )

    def counters(self) -> dict[str, int]:
        totals = dict.fromkeys(COUNTERS, 0)
        if not self.summary_path.exists():
            raise RuntimeError("the wrk script wrote no summary")
        for line in self.summary_path.read_text().splitlines():
            key, value = line.split()
            totals[key] = totals.get(key, 0) + int(float(value))
        return totals


def check_samples(samples: list[tuple[int, str]]) -> tuple[int, dict[str, int]]:
    """(answers that are `200 {"ok": true, "result": "applied"}`, the others by kind)."""
    good, problems = 0, {}
    for status, body in samples:
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if (
            status == 200
            and isinstance(answer, dict)
            and answer.get("ok") is True
            and answer.get("result") == "applied"
        ):
            good += 1
            continue
        if status == 200 and isinstance(answer, dict):
            kind = f"200 {answer.get('result')!r}"
        else:
            kind = f"{status} {answer.get('code') if isinstance(answer, dict) else body[:40]!r}"
        problems[kind] = problems.get(kind, 0) + 1
    return good, problems


# -- rows --------------------------------------------------------------------------------------


@dataclass
class CallbackRow(idb.Row):
    counts: dict[str, int] = field(default_factory=dict)
    lines: int = 0  # requests in the measured file
    cases: int = 0  # cases in the measured file
    events_written: int | None = None  # platform case events written during the measured run (+ settle)
    socket_errors: str | None = None
    sample_good: int = 0
    sample_problems: dict[str, int] = field(default_factory=dict)
    warm_rate: float | None = None
    shares: str = ""
    push_start: dict[str, int] | None = None
    push_end: dict[str, int] | None = None
    sends_start: int = 0
    sends_end: int = 0
    push_end_t: float = 0.0  # monotonic time of push_end
    seconds: float = 0.0
    after: Drain | None = None  # the pushes' drain right after the measured run


@dataclass
class Drain:
    """Progress pushes settling: counts polled every POLL_S until nothing is pending or sending."""

    label: str
    processes: int
    start: dict[str, int]
    end: dict[str, int] | None = None
    seconds: float | None = None  # the rate's time window
    settled: int = 0  # in that window
    sent: int = 0
    sends: int = 0  # subscribe messages the WeChat simulator received in the whole drain
    timed_out: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float | None:
        return self.settled / self.seconds if self.seconds else None

    @property
    def sent_rate(self) -> float | None:
        return self.sent / self.seconds if self.seconds else None


def drain(
    db: Database,
    wsim: idb.Simulator,
    label: str,
    processes: int,
    timeout: float,
    *,
    since: tuple[float, dict[str, int], int] | None = None,
) -> Drain:
    """Polls the push counts every POLL_S (one database connection throughout) until nothing is
    pending or sending, or `timeout`. The rate's window starts at `since` (monotonic time, push
    counts and WeChat sends taken then: the end of the measured run), or without it at the first
    poll that saw a push settle (so a worker's start-up is not counted), and ends at the poll that
    saw nothing left."""
    if since is None:
        sends0, start = subscribe_sends(wsim), db.push_counts()
        began, ref_t, ref = time.monotonic(), None, None
    else:
        began, start, sends0 = since
        ref_t, ref = since[0], since[1]
    result = Drain(label, processes, start)
    timeline: list[tuple[float, int]] = []  # (seconds since `began`, pending + sending)

    async def poll(conn) -> tuple[float, dict[str, int]]:
        nonlocal ref_t, ref
        first = time.monotonic()
        k = 0
        while True:
            counts = dict.fromkeys(PUSH_STATUSES, 0)
            for status, n in await conn.fetch("SELECT push_status, count(*) FROM notifications GROUP BY 1"):
                counts[str(status)] = int(n)
            now = time.monotonic()
            left = counts["pending"] + counts["sending"]
            timeline.append((now - began, left))
            if ref is None and sum(counts[s] for s in SETTLED) > sum(start[s] for s in SETTLED):
                ref_t, ref = now, counts
            if left == 0:
                return now, counts
            if now - began > timeout:
                result.timed_out = True
                result.notes.append(f"{left} push(es) still pending or sending after {timeout:.0f} s")
                return now, counts
            k += 1
            await asyncio.sleep(max(0.0, first + k * POLL_S - time.monotonic()))

    now, counts = db.run(poll)
    result.end = counts
    result.sends = subscribe_sends(wsim) - sends0
    if ref is not None and now > ref_t:
        result.seconds = now - ref_t
        result.settled = sum(counts[s] - ref[s] for s in SETTLED)
        result.sent = counts["sent"] - ref["sent"]
    if len(timeline) > 2:
        step = max(1, math.ceil(len(timeline) / 10))
        points = timeline[::step] + ([timeline[-1]] if (len(timeline) - 1) % step else [])
        result.notes.append("pending + sending: " + ", ".join(f"{left} at {t:.1f} s" for t, left in points))
    return result


@dataclass
class RowRun(idb.BackendRun):
    workers: int = 1
    probe: str | None = None
    load_demo: str | None = None
    check_jobs: str | None = None
    seeded_users: int = 0
    seeded_cases: int = 0
    grants_seeded: int | None = None
    push_present: bool | None = None
    drains: list[Drain] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    helper_problems: dict[str, list[str]] = field(default_factory=dict)
    extra_notes: list[str] = field(default_factory=list)


class Helper(hb.Server):
    """`server.py worker` or `server.py scheduler` with the server's environment, in its own session."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], workdir: Path):
        super().__init__(hb.Target(name, "helper", 1), workdir, "")
        self.name, self.argv, self.env = name, argv, env
        self.log_path = workdir / f"{name.replace(' ', '-')}.log"

    def start(self) -> float:
        self._log = open(self.log_path, "ab")
        began = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.workdir,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        time.sleep(0.5)
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with code {self.proc.returncode}: "
                f"{self.log_path.read_text(errors='replace')[-300:]}"
            )
        return time.monotonic() - began

    def keep_log(self, directory: Path | None) -> None:
        if directory and self.log_path.exists():
            directory.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.log_path, directory / f"{self.workdir.name}-{self.log_path.name}")


# -- measuring ---------------------------------------------------------------------------------


def script_cmd(args: argparse.Namespace, url: str, seconds: int, script: Path | str, latency: bool = True) -> list[str]:
    return bot.script_cmd(args, url, seconds, script, latency)


def probe(base: str, platform: Platform, case_no: str) -> str:
    """One callback by hand: applied; the same request again: refused (nonce); the same event
    newly signed: duplicate. Raises RuntimeError when the server answers otherwise."""
    import httpx

    headers, body = platform.signed(case_no, 1)
    headers["Content-Type"] = "application/json"
    seen = []
    with httpx.Client(base_url=base, timeout=30) as client:
        for what, hdrs, want_status, want in (
            ("first", headers, 200, "applied"),
            ("same nonce", headers, 401, "nonce_reused"),
            (
                "re-signed",
                {
                    **sign("POST", CALLBACK_PATH, body, app_key=platform.app_key, secret=platform.secret),
                    "Content-Type": "application/json",
                },
                200,
                "duplicate",
            ),
        ):
            response = client.post(CALLBACK_PATH, content=body, headers=hdrs)
            try:
                answer = response.json()
            except ValueError:
                answer = {}
            got = answer.get("result") if response.status_code == 200 else answer.get("code")
            if response.status_code != want_status or got != want:
                raise RuntimeError(f"probe callback ({what}) answered {response.status_code} {response.text[:200]}")
            seen.append(f"{what} → {response.status_code} {got}")
    return "; ".join(seen)


def measure_callbacks(
    label: str,
    base: str,
    platform: Platform,
    pool: Pool,
    db: Database,
    wsim: idb.Simulator,
    push: bool,
    watch_cpu: Callable[[], idb.CpuWatch],
    args: argparse.Namespace,
    workdir: Path,
) -> CallbackRow:
    """Warm-up then a measured wrk run of distinct signed callbacks on unused cases (again, up to
    --retries, when other processes disturbed it)."""
    url = base + CALLBACK_PATH
    attempts: list[CallbackRow] = []
    per_case = len(EVENTS)
    for attempt in range(args.retries + 1):
        row = CallbackRow(TARGET, label)
        attempts.append(row)
        if args.quiet_wait > 0:
            hb.wait_until_quiet(args.quiet_wait)
        slug = f"workers{label[0]}-{attempt}"
        warm = CallbackRun(workdir, slug + "-warm", args.threads, 0, 0, platform)
        measured = None
        try:
            warm_cases = pool.take(max(args.threads, math.ceil(WARM_RATE * args.warmup / per_case)))
            platform.write(warm.requests, warm_cases, args.batch)
            output, _ = hb.run_wrk(script_cmd(args, url, args.warmup, warm.script, latency=False), args.warmup)
            row.warm_rate = float(re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE).group(1))
            need = max(args.batch, math.ceil(row.warm_rate * args.duration * 1.5 / per_case))
            seeded = pool.seeded
            cases = pool.take(need)
            if pool.seeded > seeded:
                print(f"    seeded {pool.seeded - seeded} more cases for the measured run", flush=True)
            measured = CallbackRun(
                workdir, slug, args.threads, max(1, int(row.warm_rate * args.duration)), args.samples, platform
            )
            time.sleep(SETTLE_S)  # the warm-up's cut-off requests finish before the counts below
            if push:  # and its pushes are done, so the measured run starts with none queued
                warm_drain = drain(db, wsim, "after the warm-up", 1, args.drain_timeout)
                if warm_drain.timed_out:
                    row.notes.append(f"the warm-up's pushes did not drain: {'; '.join(warm_drain.notes)}")
            events0 = db.platform_events()
            row.push_start = db.push_counts() if push else None
            row.sends_start = subscribe_sends(wsim) if push else 0
            row.lines, generated_at = platform.write(measured.requests, cases, args.batch)
            row.cases = len(cases)
            began = time.monotonic()
            with watch_cpu() as watch:
                output, wrk_cpu = hb.run_wrk(script_cmd(args, url, args.duration, measured.script), args.duration)
            row.seconds = time.monotonic() - began
            if push:
                row.push_end_t = time.monotonic()
                row.push_end = db.push_counts()
                row.sends_end = subscribe_sends(wsim)
            oldest_age = time.time() - generated_at
            result = hb.Result(hb.Target(TARGET, "callbacks", 1))
            hb.parse_wrk(output, result)
            row.counts = measured.counters()
            samples = measured.sample_bodies()
            if push:  # at once, so the drain's end is seen within a poll
                row.after = drain(
                    db,
                    wsim,
                    "drain after the measured run",
                    1,
                    args.drain_timeout,
                    since=(row.push_end_t, row.push_end, row.sends_end),
                )
            time.sleep(max(0.0, SETTLE_S - (time.monotonic() - began - row.seconds)))
            row.events_written = db.platform_events() - events0
        except Exception as exc:  # wrk, its output, the database: the row says what went wrong
            row.failed = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
            print(f"  {TARGET}: FAILED: {exc}", file=sys.stderr)
            break
        finally:
            warm.cleanup()
            if measured is not None:
                measured.cleanup()
        row.rps, row.p50_ms, row.p99_ms = result.rps, result.p50_ms, result.p99_ms
        row.socket_errors = result.socket_errors
        row.others_cpu = watch.others(wrk_cpu)
        row.shares = watch.shares()
        row.sample_good, row.sample_problems = check_samples(samples)
        c = row.counts
        row.notes.append(
            f"{c['issued']} callbacks sent ({row.lines} generated for {row.cases} cases, {c['reused']} sent twice), "
            f"{c['responses']} answered: {c['applied']} applied, {c['duplicate']} duplicate, {c['ignored']} ignored, "
            f"{c['other']} other 200, {c['non200']} non-200; {row.events_written} platform case events written; "
            f"wrk socket errors: {result.socket_errors or 'none'}; {len(samples)} sampled answers checked: "
            f"{row.sample_good} `applied`"
            + (
                f", others: {', '.join(f'{k} ×{v}' for k, v in sorted(row.sample_problems.items()))}"
                if row.sample_problems
                else ""
            )
            + f"; warm-up: {row.warm_rate:,.0f}/s; CPU used, in shares of one core: {row.shares}"
        )
        print(
            f"  {TARGET}: {hb.fmt(row.rps, 0)} req/s, p50 {hb.fmt(row.p50_ms, 2)} ms, p99 {hb.fmt(row.p99_ms, 2)} ms"
            f" ({result.requests} requests; other processes used {row.others_cpu:.0%} of the CPU)\n"
            f"    {row.notes[-1]}",
            flush=True,
        )
        if c["reused"]:
            row.notes.append(
                f"{c['reused']} requests repeated an earlier callback (the file was too small) and were "
                "refused as replayed nonces"
            )
        if c["non200"] or c["other"] or c["ignored"]:
            row.notes.append(
                f"ERRORS: {c['non200']} non-200 answers, {c['other']} unexpected 200 bodies, "
                f"{c['ignored']} ignored events"
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


async def _grant_at_sim(sim_url: str, users: list[SeededUser], concurrency: int = 16) -> None:
    """Registers each citizen at the WeChat simulator with `grants` one-time subscriptions: one
    `POST /__sim__/subscriptions` each, which creates the simulator's user of that openid exactly as
    `POST /__sim__/users` does (both call SimState.add_user), then grants."""
    import httpx

    todo = iter(users)

    async def worker(client: httpx.AsyncClient) -> None:
        for user in todo:
            response = await client.post(
                "/__sim__/subscriptions",
                json={
                    "appid": idb.SIM_APPID,
                    "openid": user.openid,
                    "template_id": user.template_id,
                    "count": user.grants,
                },
            )
            if response.status_code != 200 or response.json().get("remaining") != user.grants:
                raise RuntimeError(f"simulator subscriptions: {response.status_code} {response.text[:200]}")

    async with httpx.AsyncClient(base_url=sim_url, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))


async def _send_backlog(base: str, platform: Platform, case_nos: list[str], concurrency: int = 16) -> dict[str, int]:
    """Every event of `case_nos` (seq by seq), `concurrency` in flight; answers by result."""
    import httpx

    outcomes: dict[str, int] = {}
    for seq in range(1, len(EVENTS) + 1):
        todo = iter(case_nos)

        async def worker(client: httpx.AsyncClient, todo=todo, seq=seq) -> None:
            for case_no in todo:
                headers, body = platform.signed(case_no, seq)
                headers["Content-Type"] = "application/json"
                try:
                    response = await client.post(CALLBACK_PATH, content=body, headers=headers)
                    key = response.json().get("result") if response.status_code == 200 else str(response.status_code)
                except (httpx.HTTPError, ValueError) as exc:
                    key = type(exc).__name__
                outcomes[str(key)] = outcomes.get(str(key), 0) + 1

        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return outcomes


def backlog_drains(
    server: cat.CatalogueServer,
    helpers: list[Helper],
    platform: Platform,
    pool: Pool,
    db: Database,
    wsim: idb.Simulator,
    args: argparse.Namespace,
    servers: list,
) -> list[Drain]:
    """Per --drain-processes: the running worker stopped, --backlog callbacks sent, a worker with
    that many processes started (added to `helpers`) and timed until nothing is pending."""
    drains = []
    cmd, env = server._command_and_env()
    for processes in args.drain_processes:
        for helper in helpers:
            if helper.name.startswith("worker") and helper in servers:
                helper.stop()
                servers.remove(helper)
        cases = pool.take(math.ceil(args.backlog / len(EVENTS)))
        outcomes = asyncio.run(_send_backlog(server.base, platform, cases))
        print(
            f"  backlog for {processes} worker process(es): {sum(outcomes.values())} callbacks sent with no worker "
            f"running: {', '.join(f'{k} ×{v}' for k, v in sorted(outcomes.items()))}",
            flush=True,
        )
        current = Helper(
            f"worker x{processes}", cmd[:2] + ["worker", "--processes", str(processes)], env, server.workdir
        )
        servers.append(current)
        helpers.append(current)
        current.start()
        result = drain(
            db,
            wsim,
            f"backlog drain ({len(cases) * len(EVENTS)} callbacks queued with the worker stopped)",
            processes,
            args.drain_timeout,
        )
        result.notes.append("callbacks: " + ", ".join(f"{k} ×{v}" for k, v in sorted(outcomes.items())))
        drains.append(result)
        print_drain(result)
    return drains


def print_drain(d: Drain) -> None:
    end = d.end or {}
    print(
        f"  pushes, {d.label}, {d.processes} worker process(es): {d.settled} settled ({d.sent} sent) in "
        f"{hb.fmt(d.seconds, 1)} s = {hb.fmt(d.rate, 0)}/s; WeChat subscribe messages: {d.sends}; now "
        + ", ".join(f"{s} {end.get(s, 0)}" for s in PUSH_STATUSES)
        + (f"; {'; '.join(d.notes)}" if d.notes else ""),
        flush=True,
    )


# -- one row -----------------------------------------------------------------------------------


def run_row(
    workers: int,
    n: int,
    last: bool,
    tmp: Path,
    wsim: idb.Simulator,
    psim: PlatformSim,
    platform: Platform,
    template_id: str,
    args: argparse.Namespace,
    servers: list,
) -> RowRun:
    label = f"{workers} Sanic worker{'s' if workers > 1 else ''}"
    run = RowRun(label, workers=workers)
    targets = ["GET /healthz", TARGET]
    prefix = f"zbbench{secrets.token_hex(4)}:"
    db_name = f"zbbench_{secrets.token_hex(4)}"
    workdir = tmp / f"{n}-workers{workers}"
    workdir.mkdir()
    try:
        asyncio.run(idb._pg(f'CREATE DATABASE "{db_name}"'))
    except Exception as exc:
        why = f"could not create the database: {type(exc).__name__}: {exc}".splitlines()[0][:160]
        print(f"  FAILED: {why}", file=sys.stderr)
        run.rows = [idb.Row(t, label, failed=why) for t in targets]
        return run
    extra = {
        "DATABASE_URL": idb.pg_url_for(db_name),
        "TASK_BROKER": "redis",
        "WECHAT_API_BASE": wsim.url,
        "WECHAT_MP_APPID": idb.SIM_APPID,
        "WECHAT_MP_SECRET": idb.SIM_SECRET,
        "PUSH_MP_TEMPLATE_ID": template_id,
        "PUSH_QUIET_HOURS": "",
        **platform.env(psim.url),
    }
    server = cat.CatalogueServer(hb.Target(label, "zhangban", workers, redis=True), workdir, prefix, extra)
    server.extra_env["PUBLIC_BASE_URL"] = server.base  # workers build links to it (as in tests/conftest.py)
    servers.append(server)
    helpers: list[Helper] = []
    db = Database(db_name)
    print(f"- {label} on port {server.port}: database {db_name}, Redis prefix {prefix}", flush=True)
    try:
        for command in ("migrate", "load-demo"):
            done = server.cli(command)
            if done.returncode != 0:
                raise RuntimeError(f"{command} exited {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}")
            if command == "load-demo":
                run.load_demo = ((done.stdout.strip() or done.stderr.strip()).splitlines()[-1:] or ["(no output)"])[0]
        run.push_present = db.push_present()
        users = db.seed_users(args.users, template_id)
        pool = Pool(db)
        pool.seed(args.cases + 1)
        probe_case = pool.take(1)[0]
        run.seeded_users = len(users)
        print(
            f"  load-demo: {run.load_demo}; seeded {len(users)} citizens and {pool.seeded} cases of {ITEM_NAME} "
            "in delivered_to_platform",
            flush=True,
        )
        if run.push_present:
            began = time.monotonic()
            asyncio.run(_grant_at_sim(wsim.url, users))
            run.grants_seeded = db.seed_grants()
            print(
                f"  push pipeline present: {len(users)} citizens registered at the WeChat simulator with "
                f"{GRANTS_PER_USER} grants each for {template_id} ({time.monotonic() - began:.1f} s); "
                f"seed_push_grants() recorded {run.grants_seeded} grant row(s) in Zhangban",
                flush=True,
            )
            if not run.grants_seeded:
                run.extra_notes.append(
                    "seed_push_grants() is still a TODO: Zhangban knew of no grant, so pushes "
                    "could only settle as inbox_only, without a WeChat call"
                )
        else:
            print("  push pipeline not present (no notifications.push_status column): pushes skipped", flush=True)
        cmd, env = server._command_and_env()
        for name, argv in (("worker", ["worker", "--processes", "1"]), ("scheduler", ["scheduler"])):
            helper = Helper(name, cmd[:2] + argv, env, workdir)
            servers.append(helper)
            helpers.append(helper)
            helper.start()
        run.start_s = server.start()
        jobs = server.cli("check-jobs", "--timeout", "30", timeout=90)
        run.check_jobs = (jobs.stdout.strip() or jobs.stderr.strip())[-200:]
        if jobs.returncode != 0:
            raise RuntimeError(f"check-jobs: {run.check_jobs}")
        run.probe = probe(server.base, platform, probe_case)
        print(f"  answering after {run.start_s:.1f} s; worker: {run.check_jobs}; probe: {run.probe}", flush=True)

        services = idb.production_services(db_name)

        def watch_cpu() -> idb.CpuWatch:
            groups = {"server": server.proc.pid, "WeChat simulator": wsim.proc.pid, "platform simulator": psim.proc.pid}
            groups.update({h.name: h.proc.pid for h in helpers if h in servers})
            return idb.CpuWatch(groups, services)

        healthz = idb.measure_wrk("GET /healthz", label, f"{server.base}/healthz", None, watch_cpu, args)
        healthz.ratio = 1.0 if healthz.rps else None
        run.rows.append(healthz)
        row = measure_callbacks(
            label, server.base, platform, pool, db, wsim, bool(run.push_present), watch_cpu, args, workdir
        )
        row.ratio = row.rps / healthz.rps if row.rps and healthz.rps else None
        run.rows.append(row)
        if run.push_present and row.push_start is not None and row.push_end is not None:
            during = Drain("during the measured run", 1, row.push_start, row.push_end, row.seconds)
            during.settled = sum(row.push_end[s] - row.push_start[s] for s in SETTLED)
            during.sent = row.push_end["sent"] - row.push_start["sent"]
            during.sends = row.sends_end - row.sends_start
            created = sum(row.push_end[s] - row.push_start[s] for s in PUSH_STATUSES)
            during.notes.append(
                f"{created} notifications created; "
                + ", ".join(f"{s} {row.push_end[s]}" for s in PUSH_STATUSES)
                + " at its end"
            )
            run.drains.append(during)
            print_drain(during)
            if row.after is not None:
                run.drains.append(row.after)
                print_drain(row.after)
            if last and args.drain_processes:
                run.drains += backlog_drains(server, helpers, platform, pool, db, wsim, args, servers)
        run.statuses = db.case_statuses()
        run.seeded_cases = pool.seeded
        print(f"  cases by status now: {', '.join(f'{k} {v}' for k, v in run.statuses.items())}", flush=True)
    except Exception as exc:  # ours, asyncpg's, httpx's: the rows say what went wrong
        why = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        print(f"  FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        for line in server.log_path.read_text(errors="replace").splitlines()[-20:] if server.log_path.exists() else []:
            print(f"  | {line}", file=sys.stderr)
        done = {r.target for r in run.rows}
        run.rows += [idb.Row(t, label, failed=why) for t in targets if t not in done]
    finally:
        run.stop_s = server.stop()
        servers.remove(server)
        run.log_problems = server.log_problems()
        server.keep_log(args.keep_logs)
        for helper in helpers:
            if helper in servers:
                helper.stop()
                servers.remove(helper)
            problems = helper.log_problems()
            if problems:
                run.helper_problems[helper.name] = problems
            helper.keep_log(args.keep_logs)
        try:
            asyncio.run(idb._pg(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
            run.cleanup.append(f"dropped PostgreSQL database {db_name}")
        except Exception as exc:
            run.cleanup.append(f"could not drop PostgreSQL database {db_name}: {type(exc).__name__}: {exc}")
        run.cleanup.append(hb.delete_redis_keys(prefix))
        for line in run.cleanup:
            print(f"  {line}", flush=True)
        for kind, count in bot.log_kinds(run.log_problems):
            print(f"  server log: {count} × {kind}")
        for name, problems in run.helper_problems.items():
            for kind, count in bot.log_kinds(problems):
                print(f"  {name} log: {count} × {kind}")
    return run


# -- report ------------------------------------------------------------------------------------


table = bot.table  # the same requests/s table as the bot benchmark


def landed_table(rows: list[CallbackRow]) -> list[str]:
    lines = [
        "| server | callbacks sent | answered | applied | duplicate | ignored | non-200 | "
        "platform case events written |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        c = r.counts
        written = "—" if r.events_written is None else f"{r.events_written:,}"
        lines.append(
            f"| {r.backend} | {c['issued']:,} | {c['responses']:,} | {c['applied']:,} | {c['duplicate']:,} | "
            f"{c['ignored']:,} | {c['non200']:,} | {written} |"
        )
    return lines


def push_table(runs: list[RowRun]) -> list[str]:
    lines = [
        "| server | phase | worker processes | pushes settled | sent via WeChat | WeChat subscribe messages | "
        "seconds | settled/s | sent/s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        for d in run.drains:
            lines.append(
                f"| {run.backend} | {d.label}{' (timed out)' if d.timed_out else ''} | {d.processes} | "
                f"{d.settled:,} | {d.sent:,} | {d.sends:,} | {hb.fmt(d.seconds, 1)} | {hb.fmt(d.rate, 0)} | "
                f"{hb.fmt(d.sent_rate, 0)} |"
            )
    return lines


def section(
    runs: list[RowRun],
    sim_problems: dict[str, list[str]],
    args: argparse.Namespace,
    machine: str,
    when: str,
    template_id: str,
) -> str:
    rows = [r for run in runs for r in run.rows]
    measured = [r for r in rows if isinstance(r, CallbackRow) and r.counts]
    url = f"http://{HOST}:PORT"
    healthz_cmd = " ".join(shlex.quote(p) for p in hb.wrk_command(args, f"{url}/healthz", args.duration))
    cb_cmd = " ".join(shlex.quote(p) for p in script_cmd(args, url + CALLBACK_PATH, args.duration, "callbacks.lua"))
    warmup = " ".join(hb.wrk_command(args, f"{url}/...", args.warmup, latency=False))
    push = any(run.push_present for run in runs)
    body = [
        SECTION,
        "",
        f"Measured {when} by `.venv/bin/python benchmarks/callbacks.py`"
        + (f" ({' '.join(sys.argv[1:])})" if sys.argv[1:] else "")
        + ".",
        "",
        *table(rows),
        "",
    ]
    if measured:
        body += ["What landed, per measured run:", "", *landed_table(measured), ""]
    if push:
        body += [
            "Progress pushes (settled = sent, inbox_only or failed; sent = carried by a WeChat message):",
            "",
            *push_table(runs),
            "",
        ]
    body += [
        '- What each POST is: a status callback as the core platform sends it, `{"case_no", "platform_case_id", '
        '"seq", "event", "at", "data"}`, signed with `bridge.signing` (X-App-Key, X-Timestamp, X-Nonce, '
        "X-Signature: HMAC-SHA256 over method, path, timestamp, nonce and the body's SHA-256) with a fresh nonce and "
        "a current timestamp. Per request the server checks the signature and the timestamp, takes the nonce in "
        "Redis (SET NX; a repeat is refused with 401, so none may be sent twice), validates the body and applies the "
        "event in a transaction with the case row locked (`SELECT … FOR UPDATE`): a case-event row and the case's "
        "status, seq and row_version" + (", plus a notification and its push job" if push else "") + ". "
        f"Each case gets seq 1 {EVENTS[0]}, 2 {EVENTS[1]}, 3 {EVENTS[2]}, 4 {EVENTS[3]} "
        '(`{"kind": "electronic", "licence_no"}`) and 5 closed, each a real transition. The callbacks are '
        "generated right before each wrk run into a file that a wrk Lua script sends once each (1.5 × the warm-up "
        f"rate × the duration of them), taking the cases in batches of {args.batch}: all of a batch's seq 1, then its "
        "seq 2, …, so the next event of a case follows a whole batch later and nearly all are applied in order "
        "(a later seq overtaking an earlier one is applied with the skipped steps recorded, and the earlier one "
        "answers `duplicate`). The script counts the answers by result and keeps up to "
        f"{args.samples} of them, spread over the run, plus up to 20 non-200 ones, checked here to be "
        '`200 {"ok": true, "result": "applied"}`. Before measuring, one probe callback by hand must answer '
        "`applied`, the same request again `401 nonce_reused` and the same event newly signed `duplicate`.",
        f"- Servers, one row each, everything fresh: a new PostgreSQL database on `{idb.PG_ADMIN_URL}` (dropped "
        f"afterwards), `REDIS_URL={hb.REDIS_URL}` with a throw-away `REDIS_KEY_PREFIX` (its keys deleted "
        "afterwards), `TASK_BROKER=redis`, random `SECRET_KEY` and `FIELD_ENCRYPTION_KEY`; `server.py migrate` and "
        "`server.py load-demo` with the server's environment, then `server.py serve` with `WORKERS=N` and "
        "`LOG_LEVEL=WARNING`, beside one `server.py worker --processes 1` and one `server.py scheduler` with the "
        "same environment (checked with `server.py check-jobs`). `PLATFORM_BASE_URL`/`PLATFORM_APP_KEY`/"
        "`PLATFORM_SECRET`: the platform simulator (`python -m bridge.simulator`, its own process) with a key and "
        "secret generated for the run; the cases are already delivered, so nothing is relayed to it. "
        "`WECHAT_API_BASE`, `WECHAT_MP_APPID`/`SECRET`: the WeChat simulator (`python -m wechat.simulator`, its own "
        f"process); `PUSH_MP_TEMPLATE_ID={template_id}` (made for the run), `PUSH_QUIET_HOURS` empty, "
        "`PUBLIC_BASE_URL` the server's address.",
        f"- Seeded in PostgreSQL after load-demo (asyncpg): {args.users} citizens (an openid each) and at first "
        f"{args.cases} cases of {ITEM_NAME} in `delivered_to_platform` (platform_seq 0, one `system` case event), "
        f"case *i* owned by citizen *i* mod {args.users}; more were added while the server ran when the warm-up "
        "showed the measured run would need them"
        + (
            ": " + ", ".join(f"{run.backend} {run.seeded_cases:,} cases" for run in runs if run.seeded_cases)
            if any(run.seeded_cases for run in runs)
            else ""
        )
        + ".",
    ]
    if push:
        body.append(
            "- Pushes: each citizen registered at the WeChat simulator with "
            f"{GRANTS_PER_USER} one-time subscription grants for the run's template; Zhangban's own grant records "
            "come from `seed_push_grants()` ("
            + ", ".join(f"{run.backend}: {run.grants_seeded} rows" for run in runs if run.grants_seeded is not None)
            + "). *during the measured run*: pushes settled between its start and end over its length (it starts "
            "once the warm-up's pushes are done; the worker shares the cores with the server and wrk). *drain after "
            f"the measured run*: from the end of the run until a poll (every {POLL_S} s) sees nothing pending or "
            "sending; a tail of a few pushes in its timeline (below) are those whose job was never queued, "
            "typically a request wrk cut off at its stop (Sanic cancels the handler when the client goes) after "
            "the commit and before the kick, which the push sweep (every 10 s) sends. *backlog drain*: on the last "
            "row's server the worker is stopped, "
            f"{args.backlog} more callbacks are sent (httpx, 16 in flight, all applied), then a worker with that many "
            "processes is started; timed from the first poll that saw a push settle until nothing is left. "
            "WeChat subscribe messages: calls to `" + SUBSCRIBE_SEND + "` counted by the simulator."
        )
    else:
        body.append(
            "- Pushes: push pipeline not present (no `notifications.push_status` column in the migrated "
            "database): not measured."
        )
    body += [
        f"- Commands: `{healthz_cmd}`; `{cb_cmd}`; each after a warm-up `{warmup}` (with the same `-s` script and its "
        "own callbacks for the POSTs). The ratio column is requests/s divided by `/healthz` requests/s of the same "
        "server.",
        f"- Machine: {machine}.",
        "- wrk (and its Lua script), the simulators, the worker, the scheduler, PostgreSQL and Redis share the cores "
        "with the server, so these are ceilings of this machine, not of production hardware; compare rows within "
        "one run.",
    ]
    noise = [r.others_cpu for r in rows if r.rps is not None]
    if noise:
        body.append(
            f"- Noise: other processes used at most {max(noise):.0%} of the CPU during the measured runs "
            f"(rows above {hb.BUSY:.0%} are flagged below; a disturbed row is measured again, up to "
            f"{args.retries} times, keeping the least disturbed attempt). Counted as ours: the server, worker "
            "and scheduler (their process groups), both simulators, wrk, this script, the PostgreSQL "
            "backends of the run's database and the whole redis-server process."
        )
    starts = ", ".join(f"{run.backend}: {run.start_s:.1f} s" for run in runs if run.start_s is not None)
    if starts:
        body.append(f"- Time from start to the first answer (after migrate, load-demo and seeding): {starts}.")
    notes = []
    for run in runs:
        if run.probe:
            notes.append(f"{run.backend}: probe: {run.probe}; `check-jobs`: {run.check_jobs}")
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
        for d in run.drains:
            notes += [f"{run.backend}, pushes {d.label}, {d.processes} process(es): {n}" for n in d.notes]
        if run.statuses:
            notes.append(
                f"{run.backend}: cases by status at the end: "
                + ", ".join(f"{k} {v:,}" for k, v in run.statuses.items())
            )
        if run.log_problems:
            notes.append(
                f"{run.backend}: {len(run.log_problems)} warning/error line(s) in the server's log: "
                + "; ".join(f"{n} × `{kind}`" for kind, n in bot.log_kinds(run.log_problems))
            )
        elif run.start_s is not None:
            notes.append(f"{run.backend}: no warning or error in the server's log")
        for name, problems in run.helper_problems.items():
            notes.append(
                f"{run.backend}: {len(problems)} warning/error line(s) in the {name}'s log: "
                + "; ".join(f"{n} × `{kind}`" for kind, n in bot.log_kinds(problems))
            )
        if run.stop_s is not None and run.stop_s > 5:
            notes.append(f"{run.backend}: the server took {run.stop_s:.1f} s to stop")
        notes += [f"{run.backend}: {n}" for n in run.cleanup + run.extra_notes]
    for name, problems in sim_problems.items():
        if problems:
            notes.append(f"{name}: {len(problems)} error line(s) in its log, first: `{problems[0][:240]}`")
    if notes:
        body += ["- Notes and problems seen:", *[f"  - {n}" for n in notes]]
    return "\n".join(body) + "\n"


# -- main --------------------------------------------------------------------------------------


def number_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("a comma-separated list of whole numbers, e.g. 1,2") from None
    if any(v < 1 or v > 16 for v in values):
        raise argparse.ArgumentTypeError("each between 1 and 16")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Platform callbacks: signed POST /bridge/callback vs /healthz on PostgreSQL, and the progress "
        "pushes they queue (see benchmarks/README.md)."
    )
    parser.add_argument(
        "--duration", type=hb.positive, default=10, help="seconds of each measured wrk run (default 10)"
    )
    parser.add_argument("--warmup", type=hb.positive, default=2, help="seconds of each wrk warm-up run (default 2)")
    parser.add_argument("--connections", type=hb.positive, default=32, help="wrk connections (default 32)")
    parser.add_argument("--threads", type=hb.positive, default=1, help="wrk threads (default 1)")
    parser.add_argument(
        "--workers", type=number_list, default=[1, 2], metavar="N,N", help="Sanic workers of each row (default 1,2)"
    )
    parser.add_argument("--users", type=hb.positive, default=2000, help="citizens seeded per row (default 2000)")
    parser.add_argument(
        "--cases",
        type=hb.positive,
        default=10000,
        help="cases seeded per row before the server starts (default 10000; more are added when the "
        "warm-up shows they would run out)",
    )
    parser.add_argument(
        "--batch",
        type=hb.positive,
        default=500,
        help="cases per batch in the request file: each gets seq 1..5 a batch apart (default 500)",
    )
    parser.add_argument("--samples", type=hb.positive, default=200, help="answers checked per run (default 200)")
    parser.add_argument(
        "--drain-processes",
        type=lambda s: [] if s.strip() in ("", "0") else number_list(s),
        default=[1, 2],
        metavar="N,N",
        help="worker processes of each backlog drain on the last row, 0 for none (default 1,2)",
    )
    parser.add_argument(
        "--backlog",
        type=hb.positive,
        default=2000,
        help="callbacks queued with the worker stopped, per backlog drain (default 2000)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=180,
        metavar="S",
        help="give up waiting for pushes to drain after S seconds (default 180)",
    )
    parser.add_argument(
        "--no-write", "--dry-run", action="store_true", dest="no_write", help="print only; leave RESULTS.md alone"
    )
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
        "--keep-logs", type=Path, metavar="DIR", help="copy the servers', workers' and simulators' output into DIR"
    )
    args = parser.parse_args(argv)
    if args.retries < 0:
        parser.error("--retries cannot be negative")
    if args.threads > args.connections:
        parser.error("--threads cannot exceed --connections")
    if args.duration + 30 > MAX_SKEW_S - 30:
        parser.error(
            f"--duration: at most {MAX_SKEW_S - 60} s (the callbacks' timestamps must stay within "
            f"{MAX_SKEW_S} s of the server clock)"
        )
    if args.drain_timeout <= 0:
        parser.error("--drain-timeout must be positive")
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
    missing = None if hb.redis_answers() else f"no Redis on {HOST}:{hb.REDIS_PORT}"
    missing = missing or idb.pg_answers()
    if missing:
        print(f"{missing}: this benchmark measures the production backend (PostgreSQL + Redis) only.", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, hb._raise_interrupt)

    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = hb.machine_line()
    print(f"Platform callbacks benchmark, {when}\n{machine}\n")

    runs: list[RowRun] = []
    servers: list = []
    sim_problems: dict[str, list[str]] = {}
    interrupted = False
    platform = Platform()
    template_id = "zbbench_progress_" + secrets.token_hex(6)
    tmp = tempfile.TemporaryDirectory(prefix="zb-bench-callbacks-")
    wsim = idb.Simulator(Path(tmp.name))
    psim = PlatformSim(Path(tmp.name), platform)
    try:
        print(f"WeChat simulator on port {wsim.port}: answering after {wsim.start():.1f} s", flush=True)
        print(f"platform simulator on port {psim.port}: answering after {psim.start():.1f} s", flush=True)
        for n, workers in enumerate(args.workers):
            runs.append(
                run_row(
                    workers,
                    n,
                    n == len(args.workers) - 1,
                    Path(tmp.name),
                    wsim,
                    psim,
                    platform,
                    template_id,
                    args,
                    servers,
                )
            )
        calls = sim_calls(psim)
        if runs and calls:
            runs[-1].extra_notes.append(
                "the platform simulator was called: " + ", ".join(f"{k} ×{v}" for k, v in sorted(calls.items()))
            )
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping the servers", file=sys.stderr)
    except RuntimeError as exc:  # a simulator did not start
        print(f"FAILED: {exc}", file=sys.stderr)
        runs.append(RowRun("all", rows=[idb.Row("all", "all", failed=str(exc)[:160])]))
    finally:
        for server in list(servers):  # interrupted mid-row: the row's own finally has run already
            server.stop()
        for name, sim in (("WeChat simulator", wsim), ("platform simulator", psim)):
            sim.stop()
            sim_problems[name] = sim.log_problems()
            if args.keep_logs and sim.log_path.exists():
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                shutil.copy(sim.log_path, args.keep_logs / sim.log_path.name)
        tmp.cleanup()

    if interrupted:
        return 130
    text = section(runs, sim_problems, args, machine, when, template_id)
    print()
    print(text)
    if not args.no_write:
        hb.write_results(text, SECTION)
        print(f"written to {hb.RESULTS.relative_to(ROOT)}")
    rows = [r for run in runs for r in run.rows]
    return 1 if any(r.failed for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
