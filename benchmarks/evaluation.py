"""Evaluation benchmark (好差评): the console's statistics query on PostgreSQL with 100,000 cases and
60,000 evaluations, in-process and over HTTP, and `POST /api/v1/cases/{case_no}/evaluation`
accepted per second with 1 and 2 Sanic workers, each against `GET /healthz` of the same server.

    .venv/bin/python benchmarks/evaluation.py [--duration 10] [--workers 1,2] [--no-write]

Production backend only, set up as benchmarks/payments.py does (and with its plumbing, imported):
one fresh PostgreSQL database on postgresql://postgres@127.0.0.1:5432 for the whole run (dropped
afterwards), Redis on 127.0.0.1:6379 with a throw-away REDIS_KEY_PREFIX (its keys deleted
afterwards), `TASK_BROKER=redis`, random SECRET_KEY / FIELD_ENCRYPTION_KEY, `server.py migrate` and
`server.py load-demo` with exactly the server's environment; then, per row of `--workers`,
`server.py serve` with `WORKERS=N` and `LOG_LEVEL=WARNING`, one `server.py worker --processes 1`
and one `server.py scheduler` beside it, on that same database. Every production channel is
configured against its simulator, each its own process: the WeChat simulator (mini-program and
official account), the platform simulator (the core platform, which also receives the evaluations'
relay) and the payment simulators (`server.py pay-sim`, with a merchant registered for the run).

Seeded in PostgreSQL with asyncpg COPY after load-demo (`--seed` fixes the random draw): `--users`
citizens; `--cases` cases of the catalogue's current items (so spread over its departments)
submitted over the last 365 days, `--evaluations` of them rated: a `--default-share` of them the
default 基本满意 (level 3, `active=false`, channel `default`, 7 days after the decision), the others
given actively (levels 70% 5, 15% 4, 8% 3, 4% 2, 3% 1; channel mini-program or official account;
tags from the level's list); the cases left unrated are withdrawn or still in progress (nothing to
rate), and every case was heard from the platform at seeding (so the platform sweep leaves them
alone). Every 差评 (levels 1-2) has its rectification, in mixed states (closed, awaiting the
citizen, rectifying, verifying, excluded after an approved 申诉), done on time or late, the open ones
past their deadline already escalated (so the deadline sweep has nothing to do); and `--tickets`
consultations and complaints over the same days and departments, answered on time, late or not yet.
Then `VACUUM ANALYZE` of the seeded tables, as autovacuum would leave a live database.

Statistics (`handlers.stats.evaluation_stats`, `GET /console/api/stats/evaluations`), two queries:
one month (the last whole calendar month) for one department (psb), and one year (the last 366
days, the longest range allowed) for all departments. In this script's process, through Tortoise on
the run's database with the server stopped: `--stats-runs` timed calls of each after 2 untimed (p50,
p95); the SQL each call sends is captured from Tortoise's log and the evaluation aggregate (the main
query) is run again under `EXPLAIN (ANALYZE, BUFFERS)`. Over HTTP, per row: an official created with
`server.py create-official --role admin` signs in (`POST /console/api/session`) and wrk sends the
two GETs with the session cookie (`--stats-connections` connections). The figures are checked: the
endpoint's answer and the in-process call must equal counts computed here with plain SQL on the
seeded data (China days, excluded reviews left out), else the run fails.

Evaluations accepted: a citizen signs in through the WeChat simulator; `--rate-cases` cases of
theirs are seeded in status `closed` with their case events (approved, then closed, an hour ago:
decided, and too recent for the default rating). Each request rates a distinct case once:
`{"level", "tags", "comment"}`, level 5 with a comment, or for a `--bad-share` level 1 or 2 with a
bad tag (a 差评: it opens a rectification with its loop event). Per request the server checks the
token, reads the case, writes the evaluation (its comment sealed), its outbox row for the platform
and, for a 差评, the rectification, in one transaction, then kicks the relay. The requests are
written into a file that a wrk Lua script sends once each, counting 201 and other answers and
keeping the others (up to 20); the evaluations written are counted in the database next to the
requests sent. A probe first: 201; the same again 409 `already_evaluated`; a case still in review
409 `evaluation_not_open`; a level 1 answers 201 with its rectification.

Results are printed and, unless `--no-write`, written to the `## Evaluation (statistics and POST
/api/v1/cases/{case_no}/evaluation)` section of benchmarks/RESULTS.md; the other sections are kept.
`--budget` seconds after the start the script no longer waits for a quiet machine nor measures
again, so it ends by itself on a busy machine (disturbed rows are flagged). Exit codes: 0 done, 1 a
measurement or the figures check failed, 2 wrk, PostgreSQL or Redis missing or bad arguments, 130
interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.util
import json
import logging
import math
import random
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))
import callbacks as cb  # noqa: E402  (the database helper, seeded citizens, platform simulator, helpers)
import catalogue as cat  # noqa: E402  (a server that can run `migrate` / `load-demo` with its own environment)
import http_baseline as hb  # noqa: E402  (the shared benchmark plumbing)
import identity as idb  # noqa: E402  (simulator, PostgreSQL, wrk rows, CPU watch, citizen)
import materials  # noqa: E402  (the time budget)

import bot  # noqa: E402  (the official account's settings, wrk Lua run files, report helpers)


def _load_payments_benchmark():
    """benchmarks/payments.py, imported under another name: `payments` is the project's package
    (payments.py itself imports it), so the benchmark cannot be imported by its own name."""
    spec = importlib.util.spec_from_file_location("bench_payments", Path(__file__).resolve().parent / "payments.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_payments"] = module
    spec.loader.exec_module(module)
    return module


pay = _load_payments_benchmark()  # the merchant, the pay-sim, the time budget's helper

ROOT = hb.ROOT
HOST = hb.HOST
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))
from handlers.evaluation.tags import TAGS  # noqa: E402

SECTION = "## Evaluation (statistics and POST /api/v1/cases/{case_no}/evaluation)"
STATS_PATH = "/console/api/stats/evaluations"
RATE_PATH = "/api/v1/cases/{case_no}/evaluation"
TARGET = "POST " + RATE_PATH
SESSION_PATH = "/console/api/session"
DEPARTMENT = "psb"  # the month query's department, by code: the catalogue's largest
LEVEL_WEIGHTS = {5: 70, 4: 15, 3: 8, 2: 4, 1: 3}  # of the evaluations given actively
DEFAULT_LEVEL = 3  # handlers.evaluation.tags.DEFAULT_LEVEL: the default 基本满意
CHINA = dt.timezone(dt.timedelta(hours=8))
DAYS = 365
SETTLE_S = 2.0  # after a wrk run, for the requests it cut off
WARM_RATE = 400  # evaluations/s the warm-up file is sized for
budgeted = pay.budgeted  # quiet waits and retries cut to what is left of pay.BUDGET, set in main()


# -- the two queries ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    name: str
    start: dt.date
    end: dt.date
    department: str | None

    @property
    def path(self) -> str:
        dept = f"&department={quote(self.department)}" if self.department else ""
        return f"{STATS_PATH}?from={self.start.isoformat()}&to={self.end.isoformat()}{dept}"

    @property
    def target(self) -> str:
        return f"GET stats, {self.name}"


def department_name(code: str) -> str:
    """The name the catalogue (data/catalogue.yaml, what load-demo publishes) gives department `code`."""
    import yaml

    departments = yaml.safe_load(cat.CATALOGUE_FILE.read_text(encoding="utf-8"))["departments"]
    return next(d["name"] for d in departments if d["code"] == code)


def queries(today: dt.date, department: str) -> list[Query]:
    """The last whole calendar month for `department` (its catalogue name, as items and evaluations
    store it), and the last 366 days for all."""
    last = today.replace(day=1) - dt.timedelta(days=1)
    return [
        Query(f"one month ({last:%Y-%m}), {department} ({DEPARTMENT})", last.replace(day=1), last, department),
        Query("one year (366 days), all departments", today - dt.timedelta(days=365), today, None),
    ]


# -- PostgreSQL: seeding with COPY, the figures in plain SQL -----------------------------------


@dataclass
class Seeded:
    cases: int = 0
    evaluations: int = 0
    defaults: int = 0
    levels: Counter = field(default_factory=Counter)
    rectifications: Counter = field(default_factory=Counter)
    tickets: Counter = field(default_factory=Counter)
    departments: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    vacuum_s: float = 0.0


def _weighted(rng: random.Random, weights: dict) -> object:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


class Database(cb.Database):
    """callbacks.py's database helper (citizens), plus the history of 好差评 and the citizen's cases."""

    async def _next_id(self, conn, table: str) -> int:
        return int(await conn.fetchval(f"SELECT coalesce(max(id), 0) + 1 FROM {table}"))

    async def _copy(self, conn, table: str, columns: list[str], records: list[tuple]) -> None:
        missing = await self._unfilled(conn, table, set(columns))
        if missing:
            raise RuntimeError(
                f"seeding: {table}.{', '.join(missing)} must be filled (update benchmarks/evaluation.py)"
            )
        await conn.copy_records_to_table(table, records=records, columns=columns)
        if "id" in columns:
            await conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")

    def items(self) -> list[tuple[int, str, str, str]]:
        return [
            (int(r[0]), r[1], r[2], r[3])
            for r in self.fetch(
                "SELECT id, code, name, department FROM service_items WHERE is_current ORDER BY department, code"
            )
        ]

    def seed_history(self, args: argparse.Namespace, now: dt.datetime) -> Seeded:
        """`args.cases` cases over the last DAYS days, `args.evaluations` of them rated, the
        rectifications of the 差评 and `args.tickets` tickets, with COPY; then VACUUM ANALYZE."""
        rng = random.Random(args.seed)
        items = self.items()
        if not items:
            raise RuntimeError("seeding: no current service item (did load-demo run?)")
        departments = sorted({i[3] for i in items})
        users = [u.id for u in self.users]
        seeded = Seeded()
        began = time.monotonic()

        async def work(conn):
            case_id, eval_id = await self._next_id(conn, "cases"), await self._next_id(conn, "evaluations")
            rect_id, ticket_id = await self._next_id(conn, "rectifications"), await self._next_id(conn, "tickets")
            cases, evaluations, rects, tickets = [], [], [], []
            per_day: Counter = Counter()
            rated = set(rng.sample(range(args.cases), args.evaluations))
            for n in range(args.cases):
                item_id, code, name, dept = rng.choice(items)
                user = users[n % len(users)]
                cid = case_id + n
                if n in rated:
                    # Rated within the window: the evaluation falls in the last DAYS days.
                    default = rng.random() < args.default_share
                    decided = now - dt.timedelta(seconds=rng.uniform(1 if not default else 8, DAYS) * 86400)
                    if default:
                        decided -= dt.timedelta(days=7)
                    submitted = decided - dt.timedelta(seconds=rng.uniform(1, 15) * 86400)
                    status = _weighted(rng, {"closed": 85, "result_issued": 8, "rejected": 7})
                    if default:
                        level, active, channel, at, tags = (
                            DEFAULT_LEVEL,
                            False,
                            "default",
                            decided + dt.timedelta(7),
                            [],
                        )
                        seeded.defaults += 1
                    else:
                        level = _weighted(rng, LEVEL_WEIGHTS)
                        active, channel = True, _weighted(rng, {"miniprogram": 85, "official_account": 15})
                        at = decided + dt.timedelta(seconds=rng.uniform(60, 6 * 86400))
                        at = min(at, now - dt.timedelta(minutes=5))
                        tags = rng.sample(TAGS[level], rng.randint(0, 2))
                    seeded.levels[level] += 1
                    seeded.departments[dept] += 1
                    eid = eval_id + len(evaluations)
                    evaluations.append(
                        (eid, cid, user, dept, code, level, json.dumps(tags, ensure_ascii=False), None, active,
                         channel, "L2" if active else "", at)
                    )  # fmt: skip
                    if level in (1, 2):
                        rects.append(self._rectification(rng, rect_id + len(rects), eid, cid, dept, at, now, seeded))
                else:
                    submitted = now - dt.timedelta(seconds=rng.uniform(0, DAYS) * 86400)
                    status = _weighted(
                        rng, {"withdrawn": 35, "in_review": 35, "accepted": 15, "correction_requested": 15}
                    )
                day = submitted.astimezone(CHINA).strftime("%Y%m%d")
                per_day[day] += 1
                cases.append(
                    (cid, f"ZB{day}{500000 + per_day[day]:06d}", user, item_id, code, name, status, "{}", "", 1,
                     3, submitted, min(now, submitted + dt.timedelta(days=1)), now)
                )  # fmt: skip
            for n in range(args.tickets):
                kind = _weighted(rng, {"consultation": 70, "complaint": 30})
                created = now - dt.timedelta(seconds=rng.uniform(0, DAYS) * 86400)
                due = created + dt.timedelta(days=2 if kind == "consultation" else 5)
                outcome = _weighted(rng, {"on time": 75, "late": 13, "not yet": 12})
                if due > now and outcome == "late":
                    outcome = "not yet"
                answered = None
                if outcome == "on time":
                    answered = created + (due - created) * rng.uniform(0.05, 0.95)
                elif outcome == "late":
                    answered = due + dt.timedelta(seconds=rng.uniform(600, 3 * 86400))
                    answered = min(answered, now)
                status = "open" if answered is None else _weighted(rng, {"answered": 30, "closed": 70})
                seeded.tickets[f"{kind} {outcome}"] += 1
                oa = rng.random() < 0.7
                tickets.append(
                    (ticket_id + n, f"TK{created.astimezone(CHINA):%Y%m%d}{n:06d}", kind,
                     "o" + secrets.token_hex(13) if oa else "", None, rng.choice(departments), None,
                     secrets.token_bytes(48), status, secrets.token_bytes(64) if answered else None,
                     f"bench:{n}", created, answered, "official_account" if oa else "miniprogram", None, due)
                )  # fmt: skip
            seeded.cases, seeded.evaluations = len(cases), len(evaluations)
            async with conn.transaction():
                await self._copy(
                    conn,
                    "cases",
                    ["id", "case_no", "user_id", "service_item_id", "service_code", "service_name", "status",
                     "materials", "fee_ref", "platform_seq", "row_version", "submitted_at", "updated_at",
                     "platform_heard_at"],
                    cases,
                )  # fmt: skip
                await self._copy(
                    conn,
                    "evaluations",
                    ["id", "case_id", "user_id", "department", "service_code", "level", "tags", "comment_enc",
                     "active", "channel", "identity_level", "created_at"],
                    evaluations,
                )  # fmt: skip
                await self._copy(
                    conn,
                    "rectifications",
                    ["id", "evaluation_id", "case_id", "department", "status", "round", "verify_due_at",
                     "rectify_due_at", "verified_at", "rectified_at", "citizen_answer", "answered_at", "reminded_at",
                     "escalated_at", "exclusion", "exclusion_reason", "exclusion_decision", "closed_at", "on_time",
                     "created_at", "updated_at"],
                    rects,
                )  # fmt: skip
                await self._copy(
                    conn,
                    "tickets",
                    ["id", "ticket_no", "kind", "oa_openid", "user_id", "department", "service_code", "content_enc",
                     "status", "answer_enc", "dedup_key", "created_at", "answered_at", "channel", "case_no",
                     "due_at"],
                    tickets,
                )  # fmt: skip
            seeded.seconds = time.monotonic() - began
            began_vacuum = time.monotonic()
            for table in ("cases", "evaluations", "rectifications", "tickets"):
                await conn.execute(f"VACUUM ANALYZE {table}")
            seeded.vacuum_s = time.monotonic() - began_vacuum

        self.run(work)
        return seeded

    @staticmethod
    def _rectification(rng, rid, eid, cid, dept, at, now, seeded: Seeded) -> tuple:
        """A 差评's rectification in one of the loop's states, consistent with its deadlines."""
        verify_due, rectify_due = at + dt.timedelta(days=1), at + dt.timedelta(days=21)
        state = _weighted(
            rng, {"closed": 62, "awaiting_citizen": 8, "rectifying": 8, "verifying": 5, "excluded": 10, "refused": 7}
        )
        if now - at < dt.timedelta(days=2) and state not in ("verifying", "rectifying"):
            state = "verifying"  # too recent for anything else
        status, exclusion, reason, decision = state, "none", "", ""
        verified = rectified = answer = answered = closed = on_time = reminded = escalated = None
        if state == "excluded":
            exclusion, reason, decision = "approved", "非本部门原因（系统故障）", "核实属实，同意不计入"
            closed = at + dt.timedelta(days=rng.uniform(1, 10))
        if state == "refused":  # a 申诉 refused, then the loop went on to its end
            status, exclusion, reason, decision = "closed", "refused", "群众误解政策", "理由不成立，继续整改"
        if status in ("rectifying", "awaiting_citizen", "closed"):
            verified = at + dt.timedelta(hours=rng.uniform(1, 30))
        if status in ("awaiting_citizen", "closed"):
            on_time = rng.random() < 0.8
            span = (
                (rectify_due - verified) * rng.uniform(0.1, 0.95) if on_time else dt.timedelta(days=rng.uniform(1, 10))
            )
            rectified = verified + span if on_time else rectify_due + span
            if rectified > now:
                rectified, on_time = now - dt.timedelta(minutes=1), now - dt.timedelta(minutes=1) <= rectify_due
        if status == "closed":
            answer, answered = "satisfied", rectified + dt.timedelta(hours=rng.uniform(1, 48))
            closed = answered = min(answered, now)
        if status in ("verifying", "rectifying"):  # the sweep has done its part for these already
            due = verify_due if status == "verifying" else rectify_due
            if due <= now:
                escalated = due + dt.timedelta(minutes=5)
            elif due - now <= dt.timedelta(hours=8):
                reminded = now
        seeded.rectifications[state] += 1
        updated = max(x for x in (at, verified, rectified, answered, closed, reminded, escalated) if x is not None)
        return (
            rid, eid, cid, dept, status, 1, verify_due, rectify_due, verified, rectified, answer, answered, reminded,
            escalated, exclusion, reason, decision, closed, on_time, at, min(updated, now),
        )  # fmt: skip

    def seed_closed_cases(self, user_id: int, count: int, first_no: int, status: str = "closed") -> list[str]:
        """`count` cases of `user_id` in `status`; closed ones with their case events (approved, then
        closed, an hour ago): decided, and too recent for the default rating."""
        now = dt.datetime.now(dt.UTC)
        day = now.astimezone(CHINA).strftime("%Y%m%d")

        async def work(conn):
            item = await conn.fetchrow(
                "SELECT id, code, name FROM service_items WHERE name = $1 AND is_current ORDER BY version DESC LIMIT 1",
                cb.ITEM_NAME,
            )
            cid = await self._next_id(conn, "cases")
            event_id = await self._next_id(conn, "case_events")
            case_nos = [f"ZB{day}{first_no + n:06d}" for n in range(count)]
            submitted = now - dt.timedelta(days=10)
            cases = [
                (cid + n, no, user_id, item[0], item[1], item[2], status, "{}", "", 3 if status == "closed" else 1,
                 5, submitted, now - dt.timedelta(hours=1), now)
                for n, no in enumerate(case_nos)
            ]  # fmt: skip
            events = []
            if status == "closed":
                for n in range(count):
                    events.append((event_id + 2 * n, cid + n, now - dt.timedelta(hours=2), "platform", None,
                                   "in_review", "approved", "审批通过", "{}"))  # fmt: skip
                    events.append((event_id + 2 * n + 1, cid + n, now - dt.timedelta(hours=1), "platform", None,
                                   "approved", "closed", "已办结", "{}"))  # fmt: skip
            async with conn.transaction():
                await self._copy(
                    conn,
                    "cases",
                    ["id", "case_no", "user_id", "service_item_id", "service_code", "service_name", "status",
                     "materials", "fee_ref", "platform_seq", "row_version", "submitted_at", "updated_at",
                     "platform_heard_at"],
                    cases,
                )  # fmt: skip
                if events:
                    await self._copy(
                        conn,
                        "case_events",
                        ["id", "case_id", "at", "actor_type", "actor_id", "from_status", "to_status", "note", "data"],
                        events,
                    )
            return case_nos

        return self.run(work)

    def user_id(self, openid: str) -> int:
        return int(self.fetch("SELECT id FROM users WHERE openid = $1", openid)[0][0])

    def written(self, user_id: int) -> dict[str, int]:
        row = self.fetch(
            "SELECT (SELECT count(*) FROM evaluations WHERE user_id = $1 AND channel = 'miniprogram'), "
            "(SELECT count(*) FROM rectifications r JOIN evaluations e ON e.id = r.evaluation_id WHERE e.user_id = $1), "
            "(SELECT count(*) FROM outbox WHERE kind = 'evaluation')",
            user_id,
        )[0]
        return dict(zip(("evaluations", "rectifications", "evaluation outbox rows"), map(int, row), strict=True))

    def figures(self, q: Query) -> dict:
        """The counts behind the endpoint's figures, in plain SQL (China days; excluded reviews out)."""
        lo_hi = (
            "created_at >= ($1::date)::timestamp AT TIME ZONE 'Asia/Shanghai' "
            "AND created_at < ($2::date + 1)::timestamp AT TIME ZONE 'Asia/Shanghai' "
            "AND ($3::text IS NULL OR department = $3)"
        )
        params = (q.start, q.end, q.department)
        levels = {str(n): {"all": 0, "active": 0} for n in range(1, 6)}
        for level, n, given in self.fetch(
            f"SELECT level, count(*), count(*) FILTER (WHERE active) FROM evaluations e WHERE {lo_hi} AND NOT EXISTS "
            "(SELECT 1 FROM rectifications r WHERE r.evaluation_id = e.id AND r.exclusion = 'approved') GROUP BY level",
            *params,
        ):
            levels[str(level)] = {"all": int(n), "active": int(given)}
        rect = self.fetch(
            "SELECT count(*), count(*) FILTER (WHERE status = 'closed'), count(rectified_at), "
            f"count(*) FILTER (WHERE on_time) FROM rectifications WHERE {lo_hi} AND exclusion <> 'approved'",
            *params,
        )[0]
        tickets = {k: {"received": 0, "answered": 0, "answered_on_time": 0} for k in ("consultation", "complaint")}
        for kind, n, answered, in_time in self.fetch(
            "SELECT kind, count(*), count(answered_at), count(*) FILTER (WHERE answered_at <= due_at) FROM tickets "
            f"WHERE {lo_hi} GROUP BY kind",
            *params,
        ):
            tickets[kind] = {"received": int(n), "answered": int(answered), "answered_on_time": int(in_time)}
        total = sum(v["all"] for v in levels.values())
        active = sum(v["active"] for v in levels.values())
        return {
            "evaluations": {"total": total, "active": active, "default": total - active, "by_level": levels},
            "bad_reviews": {
                "total": levels["1"]["all"] + levels["2"]["all"],
                "rectifications": int(rect[0]),
                "closed": int(rect[1]),
                "rectified": int(rect[2]),
                "rectified_on_time": int(rect[3]),
            },
            "tickets": tickets,
        }


def compare(expected: dict, answer: dict, where: str = "") -> list[str]:
    """Where `answer` (the endpoint's JSON) differs from the SQL counts in `expected`."""
    problems = []
    for key, want in expected.items():
        got = answer.get(key) if isinstance(answer, dict) else None
        if isinstance(want, dict):
            problems += compare(want, got or {}, f"{where}{key}.")
        elif got != want:
            problems.append(f"{where}{key}: {got} (SQL: {want})")
    return problems


def rates_consistent(answer: dict) -> list[str]:
    """The rates the endpoint gives are its counts' ratios (null with nothing to divide by)."""
    e, b = answer["evaluations"], answer["bad_reviews"]
    good = sum(e["by_level"][str(n)]["all"] for n in (3, 4, 5))
    good_active = sum(e["by_level"][str(n)]["active"] for n in (3, 4, 5))
    pairs = [
        ("good_rate", e["good_rate"], good, e["total"]),
        ("active_good_rate", e["active_good_rate"], good_active, e["active"]),
        ("unrated_rate", e["unrated_rate"], e["default"], e["total"]),
        ("rectification_rate", b["rectification_rate"], b["closed"], b["rectifications"]),
        ("bad on_time_rate", b["on_time_rate"], b["rectified_on_time"], b["rectified"]),
    ] + [
        (f"{k} on_time_rate", t["on_time_rate"], t["answered_on_time"], t["answered"])
        for k, t in answer["tickets"].items()
    ]
    return [
        f"{name}: {got} for {part}/{whole}"
        for name, got, part, whole in pairs
        if got != (round(part / whole, 4) if whole else None)
    ]


def check_figures(db: Database, q: Query, answer: dict) -> tuple[str, list[str]]:
    """("figures checked: …", []) or (a summary, the differences)."""
    problems = compare(db.figures(q), answer) + rates_consistent(answer)
    e, b = answer["evaluations"], answer["bad_reviews"]
    t = answer["tickets"]
    summary = (
        f"{e['total']:,} evaluations ({e['active']:,} given, {e['default']:,} default; 好评率 {e['good_rate']}, "
        f"主动评价好评率 {e['active_good_rate']}, 未评价率 {e['unrated_rate']}), {b['total']:,} 差评 with "
        f"{b['rectifications']:,} rectifications counted (差评整改率 {b['rectification_rate']}, 整改按时率 "
        f"{b['on_time_rate']}), tickets "
        + ", ".join(f"{k} {v['received']:,} (答复按时率 {v['on_time_rate']})" for k, v in t.items())
    )
    return summary, problems


# -- in-process: evaluation_stats through Tortoise, EXPLAIN ANALYZE ----------------------------


class SqlLog(logging.Handler):
    """Keeps the (query, values) Tortoise's asyncpg client logs at DEBUG while it is attached."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.seen: list[tuple[str, list]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.args, tuple) and len(record.args) == 2 and isinstance(record.args[0], str):
            self.seen.append((record.args[0], list(record.args[1] or [])))


@dataclass
class InProcess:
    query: Query
    runs: int
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    min_ms: float = 0.0
    sql_count: int = 0
    planning_ms: float | None = None
    execution_ms: float | None = None
    plan: str = ""
    buffers: str = ""
    answer: dict = field(default_factory=dict)
    others_cpu: float = 0.0


def plan_outline(lines: list[str]) -> str:
    """The plan's nodes, outermost first, without costs ("HashAggregate ← Hash Anti Join ← …")."""
    nodes = []
    for line in lines:
        text = line.strip().removeprefix("->").strip()
        if not text or text.startswith(("Planning", "Execution", "Buffers", "Sort Key", "Group Key")) or ":" in text:
            continue
        node = re.sub(r"\s*\(cost=.*$", "", text)
        nodes.append(re.sub(r"\s*\(actual.*$", "", node))
    return " ← ".join(nodes[:8])


async def _in_process(url: str, qs: list[Query], runs: int) -> list[InProcess]:
    from tortoise import Tortoise, connections

    from handlers.stats import evaluation_stats
    from storage.db import tortoise_config

    await Tortoise.init(config=tortoise_config(SimpleNamespace(DATABASE_URL=url)))
    log = logging.getLogger("tortoise.db_client")
    results = []
    try:
        for q in qs:
            out = InProcess(q, runs)
            kw = {"start": q.start, "end": q.end, "department": q.department}
            for _ in range(2):  # warm-up: the pool's connection, prepared statements, the caches
                await evaluation_stats(**kw)
            samples = []
            with idb.CpuWatch({}) as watch:
                for _ in range(runs):
                    began = time.perf_counter_ns()
                    out.answer = await evaluation_stats(**kw)
                    samples.append((time.perf_counter_ns() - began) / 1e6)
            out.others_cpu = watch.others()
            samples.sort()
            out.p50_ms, out.p95_ms, out.min_ms = idb.percentile(samples, 50), idb.percentile(samples, 95), samples[0]
            capture = SqlLog()
            level = log.level
            log.addHandler(capture)
            log.setLevel(logging.DEBUG)
            try:
                await evaluation_stats(**kw)
            finally:
                log.removeHandler(capture)
                log.setLevel(level)
            out.sql_count = len(capture.seen)
            main = next((s for s in capture.seen if 'FROM "evaluations"' in s[0] and "GROUP BY" in s[0]), None)
            if main is not None:
                _, rows = await connections.get("default").execute_query(
                    "EXPLAIN (ANALYZE, BUFFERS) " + main[0], main[1]
                )
                lines = [r["QUERY PLAN"] for r in rows]
                text = "\n".join(lines)
                planning = re.search(r"Planning Time: ([\d.]+) ms", text)
                execution = re.search(r"Execution Time: ([\d.]+) ms", text)
                out.planning_ms = float(planning.group(1)) if planning else None
                out.execution_ms = float(execution.group(1)) if execution else None
                out.plan = plan_outline(lines)
                buffers = re.search(r"Buffers: (.+)", text)  # the first: the top node's
                out.buffers = buffers.group(1) if buffers else ""
            results.append(out)
    finally:
        await Tortoise.close_connections()
    return results


def measure_in_process(db: Database, qs: list[Query], args: argparse.Namespace) -> tuple[list[InProcess], list[str]]:
    """Timed calls of evaluation_stats in this process, EXPLAIN ANALYZE, and the figures checked."""
    pay.BUDGET.quiet_wait(args)
    results = asyncio.run(_in_process(db.url, qs, args.stats_runs))
    problems = []
    for r in results:
        summary, wrong = check_figures(db, r.query, r.answer)
        problems += [f"in-process, {r.query.name}: {p}" for p in wrong]
        print(
            f"  {r.query.name}: p50 {r.p50_ms:.1f} ms, p95 {r.p95_ms:.1f} ms over {r.runs} calls ({r.sql_count} "
            f"queries each; other processes used {r.others_cpu:.0%} of the CPU); EXPLAIN ANALYZE of the evaluation "
            f"aggregate: planning {hb.fmt(r.planning_ms, 2)} ms, execution {hb.fmt(r.execution_ms, 2)} ms; "
            f"{r.plan}\n    {summary}",
            flush=True,
        )
    return results, problems


# -- the console's official and the citizen -----------------------------------------------------


class ConsoleSession:
    """An admin official signed in to the console; `header()` is its session cookie (for identity.measure_wrk)."""

    def __init__(self, server: cat.CatalogueServer, username: str, password: str):
        import httpx

        response = httpx.post(server.base + SESSION_PATH, json={"username": username, "password": password}, timeout=30)
        if response.status_code != 200 or not response.cookies.get("zb_console"):
            raise RuntimeError(f"console sign-in answered {response.status_code}: {response.text[:200]}")
        self.base, self.cookie = server.base, response.cookies["zb_console"]

    def header(self, needed_s: float = 0) -> str:
        return f"Cookie: zb_console={self.cookie}"

    def get(self, path: str) -> dict:
        import httpx

        response = httpx.get(self.base + path, headers={"Cookie": f"zb_console={self.cookie}"}, timeout=60)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path} answered {response.status_code}: {response.text[:200]}")
        return response.json()


def create_official(server: cat.CatalogueServer) -> tuple[str, str]:
    """`server.py create-official --role admin` with the server's environment; (username, password)."""
    username, password = f"bench{secrets.token_hex(3)}", secrets.token_urlsafe(18)
    cmd, env = server._command_and_env()
    done = subprocess.run(
        cmd[:2] + ["create-official", "--username", username, "--department", DEPARTMENT, "--role", "admin",
                   "--password-stdin"],
        cwd=server.workdir,
        env=env,
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"create-official exited {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}")
    return username, password


def sign_in_citizen(server: cat.CatalogueServer, wsim: idb.Simulator, openid: str | None) -> tuple[idb.Citizen, str]:
    """A citizen signed in through the WeChat simulator (the same one again when `openid` is given)."""
    import httpx

    minted = wsim.control("login-code", {"appid": idb.SIM_APPID, **({"openid": openid} if openid else {})})
    login = httpx.post(server.base + idb.LOGIN_PATH, json={"code": minted["code"]}, timeout=30)
    if login.status_code != 200:
        raise RuntimeError(f"citizen login answered {login.status_code}: {login.text[:200]}")
    return idb.Citizen(server.base, login.json()), minted["openid"]


class CasePool:
    """The citizen's closed cases no request has used yet; more are seeded when it runs short."""

    def __init__(self, db: Database, user_id: int):
        self.db, self.user_id = db, user_id
        self.cases: list[str] = []
        self.seeded = 0

    def seed(self, count: int, status: str = "closed") -> list[str]:
        made = self.db.seed_closed_cases(self.user_id, count, 1 + self.seeded, status)
        self.seeded += count
        return made

    def take(self, count: int) -> list[str]:
        if count > len(self.cases):
            self.cases += self.seed(count - len(self.cases))
        taken, self.cases = self.cases[:count], self.cases[count:]
        return taken


def rating_body(rng: random.Random, bad: bool) -> dict:
    if bad:
        level = rng.choice((1, 2))
        return {"level": level, "tags": [rng.choice(TAGS[level])], "comment": "材料要求前后不一致，跑了两趟才办成"}
    return {"level": 5, "tags": [], "comment": "办事很方便，材料一次就审核通过了"}


def write_ratings(path: Path, case_nos: list[str], bad_share: float, rng: random.Random) -> int:
    """One `case_no TAB body` line per case; returns how many are 差评 (levels 1-2)."""
    bad = 0
    with open(path, "w", encoding="utf-8") as out:
        for case_no in case_nos:
            is_bad = rng.random() < bad_share
            bad += is_bad
            out.write(f"{case_no}\t{json.dumps(rating_body(rng, is_bad), ensure_ascii=False)}\n")
    return bad


# -- wrk with a Lua script that rates each case once -------------------------------------------

LUA = r"""-- written by benchmarks/evaluation.py: rates each case of REQUESTS once, counts the answers
local requests_file, samples_file, summary_file = %(requests)s, %(samples)s, %(summary)s
local nthreads, max_bad = %(threads)d, 20
local authorization = %(authorization)s

local threads, made = {}, 0
function setup(thread)
  made = made + 1
  thread:set("tid", made)
  table.insert(threads, thread)
end

local reqs, i, out = {}, 0, nil
n, issued, reused, responses, s201, s409, s4xx, s5xx, other, sampled = 0, 0, 0, 0, 0, 0, 0, 0, 0, 0

function init(args)
  local line_no = 0
  for line in io.lines(requests_file) do
    if line_no %% nthreads == tid - 1 then  -- each thread its own share: no case rated twice
      local a = line:find("\t", 1, true)
      n = n + 1
      reqs[n] = wrk.format("POST", "/api/v1/cases/" .. line:sub(1, a - 1) .. "/evaluation", {
        ["Content-Type"] = "application/json", ["Authorization"] = authorization}, line:sub(a + 1))
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
  if status == 201 then
    s201 = s201 + 1
  elseif status == 409 then
    s409 = s409 + 1
  elseif status >= 400 and status < 500 then
    s4xx = s4xx + 1
  elseif status >= 500 then
    s5xx = s5xx + 1
  else
    other = other + 1
  end
  if status ~= 201 and sampled < max_bad then
    sampled = sampled + 1
    out:write(status, " ", #body, "\n", body, "\n")
    out:flush()
  end
end

function done(summary, latency, requests)
  local f = assert(io.open(summary_file, "w"))
  for _, t in ipairs(threads) do
    for _, k in ipairs({"n", "issued", "reused", "responses", "s201", "s409", "s4xx", "s5xx", "other", "sampled"}) do
      f:write(k, " ", tostring(t:get(k)), "\n")
    end
  end
  f:close()
end
"""

COUNTERS = ("n", "issued", "reused", "responses", "s201", "s409", "s4xx", "s5xx", "other", "sampled")


class RatingRun(bot.LuaRun):
    """bot.py's run files (requests in, Lua script, samples and counters out) with our Lua script."""

    def __init__(self, directory: Path, name: str, threads: int, authorization: str):
        self.requests, self.script = directory / f"{name}.requests", directory / f"{name}.lua"
        self.samples, self.summary_path = directory / f"{name}.samples", directory / f"{name}.summary"
        self.script.write_text(
            LUA
            % {
                "requests": bot.lua_string(str(self.requests)),
                "samples": bot.lua_string(str(self.samples)),
                "summary": bot.lua_string(str(self.summary_path)),
                "threads": threads,
                "authorization": bot.lua_string(authorization),
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


# -- rows --------------------------------------------------------------------------------------


@dataclass
class RateRow(idb.Row):
    counts: dict[str, int] = field(default_factory=dict)
    lines: int = 0
    bad_lines: int = 0
    db_delta: dict[str, int] = field(default_factory=dict)
    warm_rate: float | None = None
    shares: str = ""
    answers: dict[str, int] = field(default_factory=dict)
    pg_activity: str = ""


@dataclass
class EvalRun(idb.BackendRun):
    workers: int = 1
    connections: dict[str, int] = field(default_factory=dict)  # wrk connections per target
    check_jobs: str | None = None
    probe: str | None = None
    figures: list[str] = field(default_factory=list)
    helper_problems: dict[str, list[str]] = field(default_factory=dict)
    extra_notes: list[str] = field(default_factory=list)


# -- measuring: the ratings ----------------------------------------------------------------------


def probe(base: str, token: str, db: Database, pool: CasePool, user_id: int, undecided: str) -> str:
    """A rating answers 201; the same again 409 already_evaluated; an undecided case 409
    evaluation_not_open; a level 1 answers 201 with its rectification. RuntimeError otherwise."""
    import httpx

    first, bad = pool.take(2)
    before = db.written(user_id)
    seen = []
    with httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {token}"}) as client:
        for what, case_no, body, status, code in (
            ("first", first, {"level": 5, "tags": ["办事便捷"], "comment": "很方便"}, 201, None),
            ("same again", first, {"level": 4, "tags": []}, 409, "already_evaluated"),
            ("case in review", undecided, {"level": 5, "tags": []}, 409, "evaluation_not_open"),
            ("level 1", bad, {"level": 1, "tags": ["多次跑腿"], "comment": "跑了三趟"}, 201, None),
        ):
            response = client.post(RATE_PATH.format(case_no=case_no), json=body)
            answer = response.json() if response.content else {}
            if response.status_code != status or (code and answer.get("code") != code):
                raise RuntimeError(f"probe ({what}) answered {response.status_code} {response.text[:200]}")
            if what == "level 1" and not (answer.get("evaluation") or {}).get("rectification"):
                raise RuntimeError(f"probe (level 1): no rectification in {response.text[:200]}")
            seen.append(f"{what} → {response.status_code}" + (f" {code}" if code else ""))
    after = db.written(user_id)
    delta = {k: after[k] - before[k] for k in after}
    want = {"evaluations": 2, "rectifications": 1, "evaluation outbox rows": 2}
    if delta != want:
        raise RuntimeError(f"probe: the database changed by {delta}, expected {want}")
    return "; ".join(seen) + "; database: " + ", ".join(f"+{v} {k}" for k, v in delta.items())


def measure_ratings(
    label: str,
    base: str,
    citizen: idb.Citizen,
    pool: CasePool,
    db: Database,
    user_id: int,
    watch_cpu: Callable[[], idb.CpuWatch],
    args: argparse.Namespace,
    workdir: Path,
    rng: random.Random,
) -> RateRow:
    """Warm-up then a measured wrk run rating distinct unused cases (again, up to --retries, when
    other processes disturbed it and the budget allows)."""
    url = base + RATE_PATH.format(case_no="ZB")
    attempts: list[RateRow] = []
    for attempt in range(args.retries + 1):
        run_args = budgeted(args)
        if attempt > run_args.retries:
            print("  the machine was not quiet, but the time budget is spent: keeping this", flush=True)
            break
        row = RateRow(TARGET, label)
        attempts.append(row)
        if run_args.quiet_wait > 0:
            hb.wait_until_quiet(run_args.quiet_wait)
        slug = f"workers{label[0]}-{attempt}"
        authorization = citizen.header(args.warmup + args.duration + 120).split(": ", 1)[1]
        warm, measured = RatingRun(workdir, slug + "-warm", args.threads, authorization), None
        try:
            write_ratings(warm.requests, pool.take(max(args.threads, WARM_RATE * args.warmup)), args.bad_share, rng)
            output, _ = hb.run_wrk(cb.script_cmd(args, url, args.warmup, warm.script, latency=False), args.warmup)
            row.warm_rate = float(re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE).group(1))
            todo = pool.take(max(500, math.ceil(row.warm_rate * args.duration * 1.5)))
            measured = RatingRun(workdir, slug, args.threads, authorization)
            row.bad_lines = write_ratings(measured.requests, todo, args.bad_share, rng)
            row.lines = len(todo)
            time.sleep(SETTLE_S)  # the warm-up's cut-off requests finish before the counts below
            before = db.written(user_id)
            with watch_cpu() as watch, pay.PgActivity(db) as activity:
                output, wrk_cpu = hb.run_wrk(cb.script_cmd(args, url, args.duration, measured.script), args.duration)
            row.pg_activity = activity.summary()
            result = hb.Result(hb.Target(TARGET, "ratings", 1))
            hb.parse_wrk(output, result)
            row.counts = measured.counters()
            samples = measured.sample_bodies()
            time.sleep(SETTLE_S)
            after = db.written(user_id)
            row.db_delta = {k: after[k] - before[k] for k in after}
        except Exception as exc:  # wrk, its output, the database: the row says what went wrong
            row.failed = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
            print(f"  {TARGET}: FAILED: {exc}", file=sys.stderr)
            break
        finally:
            warm.cleanup()
            if measured is not None:
                measured.cleanup()
        row.rps, row.p50_ms, row.p99_ms = result.rps, result.p50_ms, result.p99_ms
        row.others_cpu = watch.others(wrk_cpu)
        row.shares = watch.shares() + f", wrk {wrk_cpu / max(1e-9, watch.seconds):.0%}"
        row.answers = dict(Counter(f"{status} {body[:80]}" for status, body in samples))
        c, d = row.counts, row.db_delta
        row.notes.append(
            f"{c['issued']:,} ratings sent ({row.lines:,} written, {row.bad_lines:,} of them 差评, {c['reused']} sent "
            f"twice), {c['responses']:,} answered: {c['s201']:,} 201, {c['s409']} 409, {c['s4xx']} other 4xx, "
            f"{c['s5xx']} 5xx, {c['other']} other; in the database "
            + ", ".join(f"+{v:,} {k}" for k, v in d.items())
            + f"; wrk socket errors: {result.socket_errors or 'none'}; warm-up: {row.warm_rate:,.0f}/s; "
            f"CPU used, in shares of one core: {row.shares}; PostgreSQL sessions (`pg_stat_activity`): "
            f"{row.pg_activity}"
        )
        print(
            f"  {TARGET}: {hb.fmt(row.rps, 0)} req/s, p50 {hb.fmt(row.p50_ms, 2)} ms, p99 {hb.fmt(row.p99_ms, 2)} ms"
            f" ({result.requests} requests; other processes used {row.others_cpu:.0%} of the CPU)\n"
            f"    {row.notes[-1]}",
            flush=True,
        )
        if c["reused"]:
            row.notes.append(f"{c['reused']} requests repeated an earlier case (the file was too small): 409s")
        if row.answers:
            row.notes.append(
                "non-201 answers seen: " + ", ".join(f"`{k}` ×{v}" for k, v in sorted(row.answers.items()))
            )
        if row.others_cpu <= hb.BUSY:
            break
        if attempt < args.retries:
            print("  the machine was not quiet: measuring again", flush=True)
    chosen = min(attempts, key=lambda r: (r.failed is not None, r.others_cpu))
    chosen.attempts = len(attempts)
    return chosen


# -- one row -----------------------------------------------------------------------------------


@dataclass
class Shared:
    """What the rows share: the database, the Redis prefix, the server's secrets, the people."""

    db: Database
    db_name: str
    prefix: str
    extra: dict[str, str]
    secrets_env: dict[str, str] = field(default_factory=dict)
    official: tuple[str, str] | None = None
    openid: str | None = None
    user_id: int | None = None
    pool: CasePool | None = None
    undecided: str = ""
    rng: random.Random = field(default_factory=lambda: random.Random(7))


def run_row(
    workers: int,
    n: int,
    tmp: Path,
    sims: dict[str, idb.Simulator],
    shared: Shared,
    qs: list[Query],
    args: argparse.Namespace,
    servers: list,
) -> EvalRun:
    label = f"{workers} Sanic worker{'s' if workers > 1 else ''}"
    run = EvalRun(label, workers=workers)
    targets = ["GET /healthz", *(q.target for q in qs), TARGET]
    workdir = tmp / f"{n}-workers{workers}"
    workdir.mkdir()
    wsim = sims["WeChat simulator"]
    server = cat.CatalogueServer(
        hb.Target(label, "zhangban", workers, redis=True),
        workdir,
        shared.prefix,
        {**shared.extra, **shared.secrets_env},
    )
    server.extra_env["PUBLIC_BASE_URL"] = server.base
    servers.append(server)
    helpers: list[cb.Helper] = []
    db = shared.db
    print(f"- {label} on port {server.port}: database {shared.db_name}, Redis prefix {shared.prefix}", flush=True)
    try:
        cmd, env = server._command_and_env()
        shared.secrets_env = {k: env[k] for k in ("SECRET_KEY", "FIELD_ENCRYPTION_KEY")}
        if shared.official is None:
            shared.official = create_official(server)
        for name, argv in (("worker", ["worker", "--processes", "1"]), ("scheduler", ["scheduler"])):
            helper = cb.Helper(name, cmd[:2] + argv, env, workdir)
            servers.append(helper)
            helpers.append(helper)
            helper.start()
        run.start_s = server.start()
        jobs = server.cli("check-jobs", "--timeout", "30", timeout=90)
        run.check_jobs = (jobs.stdout.strip() or jobs.stderr.strip())[-200:]
        if jobs.returncode != 0:
            raise RuntimeError(f"check-jobs: {run.check_jobs}")
        citizen, shared.openid = sign_in_citizen(server, wsim, shared.openid)
        if shared.pool is None:
            shared.user_id = db.user_id(shared.openid)
            shared.pool = CasePool(db, shared.user_id)
            shared.pool.cases = shared.pool.seed(args.rate_cases)
            shared.undecided = shared.pool.seed(1, status="in_review")[0]
            print(f"  seeded {args.rate_cases:,} closed cases of the citizen (user {shared.user_id})", flush=True)
        console = ConsoleSession(server, *shared.official)
        print(f"  answering after {run.start_s:.1f} s; worker: {run.check_jobs}", flush=True)

        services = idb.production_services(shared.db_name)

        def watch_cpu() -> idb.CpuWatch:
            groups = {"server": server.proc.pid, **{name: sim.proc.pid for name, sim in sims.items()}}
            groups.update({h.name: h.proc.pid for h in helpers if h in servers})
            return idb.CpuWatch(groups, services)

        for q in qs:  # the figures, before any rating of this row changes them
            summary, wrong = check_figures(db, q, console.get(q.path))
            run.figures.append(f"{q.name}: " + ("figures checked" if not wrong else "MISMATCH: " + "; ".join(wrong)))
            print(
                f"  {q.name}: {'figures checked' if not wrong else 'FIGURES DIFFER: ' + '; '.join(wrong)}", flush=True
            )
            if wrong:
                run.extra_notes.append(f"{q.name}: the endpoint's figures differ from SQL: {'; '.join(wrong)}")
        healthz = idb.measure_wrk("GET /healthz", label, f"{server.base}/healthz", None, watch_cpu, budgeted(args))
        healthz.ratio = 1.0 if healthz.rps else None
        run.rows.append(healthz)
        run.connections["GET /healthz"] = args.connections
        for q in qs:
            stats_args = cat.with_connections(budgeted(args), args.stats_connections)
            row = idb.measure_wrk(q.target, label, server.base + q.path, console, watch_cpu, stats_args)
            row.ratio = row.rps / healthz.rps if row.rps and healthz.rps else None
            run.rows.append(row)
            run.connections[q.target] = args.stats_connections
        token = citizen.header(120).split()[-1]
        run.probe = probe(server.base, token, db, shared.pool, shared.user_id, shared.undecided)
        print(f"  probe: {run.probe}", flush=True)
        rate = measure_ratings(
            label, server.base, citizen, shared.pool, db, shared.user_id, watch_cpu, args, workdir, shared.rng
        )
        rate.ratio = rate.rps / healthz.rps if rate.rps and healthz.rps else None
        run.rows.append(rate)
        run.connections[TARGET] = args.connections
        calls = cb.sim_calls(sims["platform simulator"])
        run.extra_notes.append(
            "the platform simulator's calls so far: "
            + (", ".join(f"`{k}` ×{v:,}" for k, v in sorted(calls.items())[:6]) or "none")
        )
    except Exception as exc:  # ours, asyncpg's, httpx's: the rows say what went wrong
        why = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        print(f"  FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        for line in server.log_path.read_text(errors="replace").splitlines()[-20:] if server.log_path.exists() else []:
            print(f"  | {line}", file=sys.stderr)
        done = {r.target for r in run.rows}
        run.rows += [idb.Row(t, label, failed=why) for t in targets if t not in done]
    finally:
        if server in servers:
            run.stop_s = server.stop()
            servers.remove(server)
            run.log_problems += server.log_problems()
            server.keep_log(args.keep_logs)
        for helper in helpers:
            if helper in servers:
                helper.stop()
                servers.remove(helper)
            problems = helper.log_problems()
            if problems:
                run.helper_problems[helper.name] = problems
            helper.keep_log(args.keep_logs)
        for kind, count in bot.log_kinds(run.log_problems):
            print(f"  server log: {count} × {kind}")
        for name, problems in run.helper_problems.items():
            for kind, count in bot.log_kinds(problems):
                print(f"  {name} log: {count} × {kind}")
    return run


# -- report ------------------------------------------------------------------------------------


def in_process_table(results: list[InProcess]) -> list[str]:
    lines = [
        "| query | calls | p50 ms | p95 ms | min ms | SQL queries per call | evaluations counted | EXPLAIN ANALYZE of "
        "the evaluation aggregate: planning ms | execution ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.query.name} | {r.runs} | {r.p50_ms:,.1f} | {r.p95_ms:,.1f} | {r.min_ms:,.1f} | {r.sql_count} | "
            f"{r.answer.get('evaluations', {}).get('total', 0):,} | {hb.fmt(r.planning_ms, 2)} | "
            f"{hb.fmt(r.execution_ms, 2)} |"
        )
    return lines


def reads_table(runs: list[EvalRun]) -> list[str]:
    lines = [
        "| target | server | wrk connections | requests/s | p50 ms | p99 ms | ratio to /healthz |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        for r in run.rows:
            if r.target == TARGET:
                continue
            conns = run.connections.get(r.target, "—")
            if r.skipped or r.failed:
                why = f"skipped: {r.skipped}" if r.skipped else f"failed: {r.failed}"
                lines.append(f"| {r.target} | {r.backend} | {conns} | {why} | — | — | — |")
                continue
            lines.append(
                f"| {r.target} | {r.backend} | {conns} | {hb.fmt(r.rps, 0)} | {hb.fmt(r.p50_ms, 2)} | "
                f"{hb.fmt(r.p99_ms, 2)} | {hb.fmt(r.ratio, 3)} |"
            )
    return lines


def ratings_table(runs: list[EvalRun]) -> list[str]:
    lines = [
        "| target | server | wrk connections | requests/s | p50 ms | p99 ms | ratings sent | answered 201 | "
        "evaluations written (database) | rectifications opened (database) | non-201 | ratio to /healthz |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        for r in run.rows:
            if r.target != TARGET:
                continue
            conns = run.connections.get(r.target, "—")
            if r.skipped or r.failed or not isinstance(r, RateRow):
                why = f"skipped: {r.skipped}" if r.skipped else f"failed: {r.failed}"
                lines.append(f"| {r.target} | {r.backend} | {conns} | {why} |" + " — |" * 8)
                continue
            c, d = r.counts, r.db_delta
            lines.append(
                f"| {r.target} | {r.backend} | {conns} | {hb.fmt(r.rps, 0)} | {hb.fmt(r.p50_ms, 2)} | "
                f"{hb.fmt(r.p99_ms, 2)} | {c['issued']:,} | {c['s201']:,} | {d.get('evaluations', 0):,} | "
                f"{d.get('rectifications', 0):,} | {c['s409'] + c['s4xx'] + c['s5xx'] + c['other']:,} | "
                f"{hb.fmt(r.ratio, 3)} |"
            )
    return lines


def section(
    runs: list[EvalRun],
    in_process: list[InProcess],
    seeded: Seeded | None,
    qs: list[Query],
    problems: list[str],
    sim_problems: dict[str, list[str]],
    args: argparse.Namespace,
    machine: str,
    when: str,
) -> str:
    url = f"http://{HOST}:PORT"
    healthz_cmd = " ".join(shlex.quote(p) for p in hb.wrk_command(args, f"{url}/healthz", args.duration))
    stats_args = cat.with_connections(args, args.stats_connections)
    stats_cmd = " ".join(
        shlex.quote(p)
        for p in idb.wrk_cmd(stats_args, url + STATS_PATH + "?from=…&to=…", args.duration, "Cookie: zb_console=…")
    )
    rate_cmd = " ".join(
        shlex.quote(p) for p in cb.script_cmd(args, url + "/api/v1/cases/ZB", args.duration, "ratings.lua")
    )
    warmup = " ".join(hb.wrk_command(args, f"{url}/...", args.warmup, latency=False))
    figures_ok = not problems and all("MISMATCH" not in f for run in runs for f in run.figures)
    body = [
        SECTION,
        "",
        f"Measured {when} by `.venv/bin/python benchmarks/evaluation.py`"
        + (f" ({' '.join(sys.argv[1:])})" if sys.argv[1:] else "")
        + ".",
        "",
        f"Statistics, `handlers.stats.evaluation_stats` called in this script's process through Tortoise on the "
        f"seeded database (server stopped), {args.stats_runs} timed calls per query after 2 untimed:",
        "",
        *in_process_table(in_process),
        "",
        "Statistics over HTTP, `GET /console/api/stats/evaluations` with an admin official's session cookie:",
        "",
        *reads_table(runs),
        "",
        "Evaluations accepted, `POST /api/v1/cases/{case_no}/evaluation` with a citizen's bearer token, each on a "
        f"distinct closed case, {args.bad_share:.0%} of them 差评 (levels 1-2, each opening a rectification):",
        "",
        *ratings_table(runs),
        "",
        (
            "Figures checked: the endpoint's counts (per level given and default, 差评, rectifications closed, done and "
            "done on time, tickets received, answered and answered on time per kind) equal those computed with plain "
            "SQL on the seeded data, and its rates are their ratios, for both queries, in-process and over HTTP on "
            "each server."
            if figures_ok
            else "**Figures differ** between the endpoint and plain SQL: see the notes."
        ),
        "",
    ]
    if seeded is not None:
        levels = ", ".join(f"{k}: {v:,}" for k, v in sorted(seeded.levels.items(), reverse=True))
        body.append(
            f"- Seeded with asyncpg COPY after load-demo (`--seed {args.seed}`) in {seeded.seconds:.1f} s, then `VACUUM "
            f"ANALYZE` of the four tables ({seeded.vacuum_s:.1f} s): {args.users:,} citizens; {seeded.cases:,} cases "
            f"of the catalogue's current items over the last {DAYS} days; {seeded.evaluations:,} evaluations of them "
            f"({seeded.defaults:,} the default 基本满意, level 3, `active=false`, channel `default`; the others given "
            f"actively, levels drawn 70/15/8/4/3% for 5/4/3/2/1; by level {levels}; by department "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(seeded.departments.items()))
            + "); the other cases withdrawn or still in progress; one rectification per 差评 ("
            + ", ".join(f"{k} {v:,}" for k, v in sorted(seeded.rectifications.items()))
            + "; *excluded*: `exclusion=approved`, left out of every figure; *refused*: a 申诉 refused, then closed; "
            "done on time about 80%; open ones past a deadline already escalated); tickets ("
            + ", ".join(f"{k} {v:,}" for k, v in sorted(seeded.tickets.items()))
            + "; their texts placeholder bytes, which the statistics never read)."
        )
    body += [
        "- The queries: "
        + "; ".join(f"*{q.name}*: `{q.path}`" for q in qs)
        + ". Each call of `evaluation_stats` is three aggregate queries (evaluations per level with the given ones "
        "counted apart, excluding those whose rectification is `exclusion=approved`; rectifications; tickets per "
        "kind). The EXPLAIN columns are `EXPLAIN (ANALYZE, BUFFERS)` of the first, with the SQL and parameters "
        "Tortoise sent (captured from its log); plans: "
        + "; ".join(f"*{r.query.name}*: {r.plan} (buffers: {r.buffers or '?'})" for r in in_process)
        + ".",
        "- Each rating: the token looked up in Redis, the case read with its item, the evaluation (comment sealed), "
        "its outbox row for the platform and, for a 差评, the rectification and its loop event, in one transaction, "
        "then the relay kicked (the worker relays it to the platform simulator, which never received the seeded cases: "
        "it answers each relay 404, unknown case, hence the worker's `platform delivery failed` warnings, one per "
        "rating; the relay's work, a signed call and the outbox row's update, is done all the same). The ratings are "
        "written before each "
        "wrk run (1.5 × the warm-up rate × the duration of them, one case each) into a file a wrk Lua script sends "
        "once each, counting 201, 409 and other answers; *evaluations written* is counted in PostgreSQL before the "
        f"run and {SETTLE_S:.0f} s after it. The citizen's closed cases ({args.rate_cases:,} seeded, more when "
        "needed) have their case events (approved, then closed, an hour before), so they are decided but too recent "
        "for the default rating. Before measuring, a probe by hand: "
        + "; ".join(f"{run.backend}: {run.probe}" for run in runs if run.probe)
        + ".",
        f"- Servers: one fresh PostgreSQL database on `{idb.PG_ADMIN_URL}` for the run (dropped afterwards), "
        f"`REDIS_URL={hb.REDIS_URL}` with a throw-away `REDIS_KEY_PREFIX` (keys deleted afterwards), "
        "`TASK_BROKER=redis`, random `SECRET_KEY` and `FIELD_ENCRYPTION_KEY`; `server.py migrate` and `server.py "
        "load-demo` with the server's environment; then per row `server.py serve` with `WORKERS=N` and "
        "`LOG_LEVEL=WARNING` on that database, beside one `server.py worker --processes 1` and one `server.py "
        "scheduler` (checked with `server.py check-jobs`); the second row's database holds the first row's ratings "
        "too. Every production channel is configured against its simulator, each its own process: the WeChat "
        "simulator, the platform simulator (`python -m bridge.simulator`) and the payment simulators (`server.py "
        "pay-sim`, the merchant of benchmarks/payments.py registered there). The official: `server.py "
        f"create-official --department {DEPARTMENT} --role admin --password-stdin`, signed in with `POST "
        "/console/api/session`; the citizen: signed in through the WeChat simulator.",
        f"- Commands: `{healthz_cmd}`; `{stats_cmd}`; `{rate_cmd}`; each after a warm-up `{warmup}` (with the same "
        "connections, header or `-s` script and its own cases for the POSTs). The ratio column is requests/s divided "
        "by `/healthz` requests/s of the same server.",
        f"- Machine: {machine}.",
        "- wrk (and its Lua script), the simulators, the worker, the scheduler, PostgreSQL and Redis share the cores "
        "with the server, so these are ceilings of this machine, not of production hardware; compare rows within one "
        "run.",
    ]
    noise = [r.others_cpu for run in runs for r in run.rows if r.rps is not None] + [r.others_cpu for r in in_process]
    if noise:
        body.append(
            f"- Noise: other processes used at most {max(noise):.0%} of the CPU during the measured runs (rows above "
            f"{hb.BUSY:.0%} are flagged below; a disturbed wrk row is measured again, up to {args.retries} times, "
            f"keeping the least disturbed attempt, until {args.budget:g} s (`--budget`) have passed). Counted as ours: "
            "the server, worker and scheduler (their process groups), the three simulators, wrk, this script, the "
            "PostgreSQL backends of the run's database and the whole redis-server process."
        )
    starts = ", ".join(f"{run.backend}: {run.start_s:.1f} s" for run in runs if run.start_s is not None)
    if starts:
        body.append(f"- Time from start to the first answer: {starts}.")
    notes = list(problems)
    for r in in_process:
        if r.others_cpu > hb.BUSY:
            notes.append(f"in-process, {r.query.name}: other processes used {r.others_cpu:.0%} of the CPU: slow")
    for run in runs:
        if run.check_jobs:
            notes.append(f"{run.backend}: `check-jobs`: {run.check_jobs}")
        notes += [f"{run.backend}, over HTTP: {f}" for f in run.figures]
        for r in run.rows:
            name = f"{r.target}, {r.backend}"
            if r.attempts > 1:
                notes.append(f"{name}: measured {r.attempts} times because other processes disturbed it")
            if r.others_cpu > hb.BUSY:
                notes.append(
                    f"{name}: other processes used {r.others_cpu:.0%} of the CPU while it was measured: "
                    "its numbers are low"
                )
            notes += [f"{name}: {n}" for n in r.notes]
        if run.log_problems:
            notes.append(
                f"{run.backend}: {len(run.log_problems)} warning/error line(s) in the server's log: "
                + "; ".join(f"{n} × `{kind}`" for kind, n in bot.log_kinds(run.log_problems))
            )
        elif run.start_s is not None:
            notes.append(f"{run.backend}: no warning or error in the server's log")
        for name, lines in run.helper_problems.items():
            notes.append(
                f"{run.backend}: {len(lines)} warning/error line(s) in the {name}'s log: "
                + "; ".join(f"{n} × `{kind}`" for kind, n in bot.log_kinds(lines))
            )
        if run.stop_s is not None and run.stop_s > 5:
            notes.append(f"{run.backend}: the server took {run.stop_s:.1f} s to stop")
        notes += [f"{run.backend}: {n}" for n in run.cleanup + run.extra_notes]
    for name, lines in sim_problems.items():
        if lines:
            notes.append(f"{name}: {len(lines)} error line(s) in its log, first: `{lines[0][:240]}`")
    if notes:
        body += ["- Notes and problems seen:", *[f"  - {n}" for n in notes]]
    return "\n".join(body) + "\n"


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Evaluation: the 好差评 statistics on 100,000 cases, in-process and over HTTP, and ratings "
        "accepted per second vs /healthz (see benchmarks/README.md)."
    )
    parser.add_argument(
        "--duration", type=hb.positive, default=10, help="seconds of each measured wrk run (default 10)"
    )
    parser.add_argument("--warmup", type=hb.positive, default=2, help="seconds of each wrk warm-up run (default 2)")
    parser.add_argument("--connections", type=hb.positive, default=32, help="wrk connections (default 32)")
    parser.add_argument(
        "--stats-connections", type=hb.positive, default=8, help="wrk connections of the statistics GETs (default 8)"
    )
    parser.add_argument("--threads", type=hb.positive, default=1, help="wrk threads (default 1)")
    parser.add_argument(
        "--workers", type=cb.number_list, default=[1, 2], metavar="N,N", help="Sanic workers of each row (default 1,2)"
    )
    parser.add_argument("--users", type=hb.positive, default=20000, help="citizens seeded (default 20000)")
    parser.add_argument("--cases", type=hb.positive, default=100_000, help="cases seeded (default 100000)")
    parser.add_argument("--evaluations", type=hb.positive, default=60_000, help="of them rated (default 60000)")
    parser.add_argument(
        "--default-share", type=float, default=0.2, help="share of the evaluations that are the default (0.2)"
    )
    parser.add_argument("--tickets", type=hb.positive, default=10_000, help="tickets seeded (default 10000)")
    parser.add_argument("--seed", type=int, default=20261130, help="random seed of the seeding (default 20261130)")
    parser.add_argument("--stats-runs", type=hb.positive, default=20, help="timed in-process calls (default 20)")
    parser.add_argument(
        "--rate-cases", type=hb.positive, default=20_000, help="closed cases of the citizen seeded (default 20000)"
    )
    parser.add_argument(
        "--bad-share", type=float, default=0.1, help="share of the ratings that are 差评, levels 1-2 (default 0.1)"
    )
    parser.add_argument(
        "--no-write", "--dry-run", action="store_true", dest="no_write", help="print only; leave RESULTS.md alone"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60,
        metavar="S",
        help="before each measurement, wait up to S seconds for other processes to go idle (default 60)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=1,
        metavar="N",
        help="measure a wrk row again, up to N times, when other processes disturbed it (default 1)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=300,
        metavar="S",
        help="after S seconds no more quiet waits nor repeated measurements (default 300)",
    )
    parser.add_argument(
        "--keep-logs", type=Path, metavar="DIR", help="copy the servers', workers' and simulators' output into DIR"
    )
    args = parser.parse_args(argv)
    if args.retries < 0:
        parser.error("--retries cannot be negative")
    if args.threads > min(args.connections, args.stats_connections):
        parser.error("--threads cannot exceed --connections or --stats-connections")
    if args.evaluations > args.cases:
        parser.error("--evaluations cannot exceed --cases")
    if not (0 <= args.default_share <= 1 and 0 <= args.bad_share <= 1):
        parser.error("--default-share and --bad-share are shares between 0 and 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pay.BUDGET = materials.Budget(args.budget)
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

    now = dt.datetime.now(dt.UTC)
    when = now.strftime("%Y-%m-%d %H:%M UTC")
    machine = hb.machine_line()
    print(f"Evaluation benchmark, {when}\n{machine}\n")
    qs: list[Query] = []

    runs: list[EvalRun] = []
    servers: list = []
    sim_problems: dict[str, list[str]] = {}
    in_process: list[InProcess] = []
    problems: list[str] = []
    seeded: Seeded | None = None
    interrupted = failed = False
    platform, account = cb.Platform(), bot.Account()
    tmp = tempfile.TemporaryDirectory(prefix="zb-bench-evaluation-")
    sims: dict[str, idb.Simulator] = {
        "WeChat simulator": idb.Simulator(Path(tmp.name)),
        "platform simulator": cb.PlatformSim(Path(tmp.name), platform),
        "pay-sim": pay.PaySim(Path(tmp.name)),
    }
    db_name = f"zbbench_{secrets.token_hex(4)}"
    prefix = f"zbbench{secrets.token_hex(4)}:"
    created = False
    cleanup: list[str] = []
    try:
        for name, sim in sims.items():
            print(f"{name} on port {sim.port}: answering after {sim.start():.1f} s", flush=True)
        merchant = pay.Merchant(Path(tmp.name))
        merchant.register(sims["pay-sim"])
        asyncio.run(idb._pg(f'CREATE DATABASE "{db_name}"'))
        created = True
        extra = {
            "DATABASE_URL": idb.pg_url_for(db_name),
            "TASK_BROKER": "redis",
            "PUSH_QUIET_HOURS": "",
            **account.server_env(sims["WeChat simulator"].url),
            **platform.env(sims["platform simulator"].url),
            **merchant.env(sims["pay-sim"].url, own_platform=False),
        }
        db = Database(db_name)
        shared = Shared(db, db_name, prefix, extra)
        setup_dir = Path(tmp.name) / "setup"
        setup_dir.mkdir()
        setup = cat.CatalogueServer(hb.Target("setup", "zhangban", 1, redis=True), setup_dir, prefix, extra)
        for command in ("migrate", "load-demo"):
            done = setup.cli(command)
            if done.returncode != 0:
                raise RuntimeError(f"{command} exited {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}")
        _, env = setup._command_and_env()
        shared.secrets_env = {k: env[k] for k in ("SECRET_KEY", "FIELD_ENCRYPTION_KEY")}
        print(f"database {db_name}: migrated and demo catalogue loaded; seeding", flush=True)
        qs = queries(now.astimezone(CHINA).date(), department_name(DEPARTMENT))
        db.seed_users(args.users, "")
        seeded = db.seed_history(args, now)
        print(
            f"  seeded {seeded.cases:,} cases, {seeded.evaluations:,} evaluations ({seeded.defaults:,} default), "
            f"{sum(seeded.rectifications.values()):,} rectifications, {sum(seeded.tickets.values()):,} tickets in "
            f"{seeded.seconds:.1f} s; VACUUM ANALYZE {seeded.vacuum_s:.1f} s",
            flush=True,
        )
        print("- in-process statistics (no server running)", flush=True)
        in_process, problems = measure_in_process(db, qs, budgeted(args))
        for n, workers in enumerate(args.workers):
            runs.append(run_row(workers, n, Path(tmp.name), sims, shared, qs, args, servers))
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping the servers", file=sys.stderr)
    except Exception as exc:  # a simulator, the database, the seeding: say what and stop
        failed = True
        print(f"FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        problems.append(f"FAILED: {type(exc).__name__}: {exc}"[:300])
    finally:
        for server in list(servers):  # interrupted mid-row: the row's own finally has run already
            server.stop()
        for name, sim in sims.items():
            sim.stop()
            sim_problems[name] = sim.log_problems()
            if args.keep_logs and sim.log_path.exists():
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                shutil.copy(sim.log_path, args.keep_logs / sim.log_path.name)
        if created:
            try:
                asyncio.run(idb._pg(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
                cleanup.append(f"dropped PostgreSQL database {db_name}")
            except Exception as exc:
                cleanup.append(f"could not drop PostgreSQL database {db_name}: {type(exc).__name__}: {exc}")
        cleanup.append(hb.delete_redis_keys(prefix))
        for line in cleanup:
            print(line, flush=True)
        tmp.cleanup()

    if interrupted:
        return 130
    if runs:
        runs[-1].cleanup += cleanup
    text = section(runs, in_process, seeded, qs, problems, sim_problems, args, machine, when)
    print()
    print(text)
    if not args.no_write:
        hb.write_results(text, SECTION)
        print(f"written to {hb.RESULTS.relative_to(ROOT)}")
    rows = [r for run in runs for r in run.rows]
    mismatch = problems or any("MISMATCH" in f for run in runs for f in run.figures)
    return 1 if failed or mismatch or any(r.failed for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
