"""Evaluation (好差评): the statistics (`GET /console/api/stats/evaluations`, `evaluation_stats`) on
a city-sized history, and ratings accepted (`POST /api/v1/cases/{case_no}/evaluation`).

    .venv/bin/python benchmarks/evaluation.py [--quick] [--duration 10] [--workers 1,2]

What it measures (production only, one fresh database for the run: `migrate` and `load-demo` once,
then per row of `--workers` a server with `WORKERS=N`, a worker and a scheduler beside it):

- Seeding with asyncpg COPY: `--cases` cases of the catalogue's items over the last 365 days,
  `--evaluations` of them rated (`--default-share` the default 基本满意, the others given with
  levels drawn 70/15/8/4/3% for 5..1), a rectification for every 差评 in mixed states, `--tickets`
  tickets answered on time, late or not yet; then `VACUUM ANALYZE`. The sweeps find nothing to do.
- The statistics for two queries (the last whole month for psb, the last 366 days for all): in this
  process through Tortoise with no server running (`--stats-runs` timed calls, p50/p95, and
  `EXPLAIN (ANALYZE, BUFFERS)` of the main aggregate with the SQL Tortoise sent), and over HTTP with
  an admin official's session cookie (`--stats-connections`) next to `/healthz` of the same server.
  The figures are checked against plain SQL on the seeded data, or the run fails.
- Ratings: a citizen rates closed cases of theirs (each request a distinct case, sent once by a wrk
  Lua script; `--bad-share` are 差评 opening a rectification); evaluations and rectifications counted
  in the database next to the requests sent. A probe first checks 201, 409 for the same case again
  and for a case still in review, and a level 1 with its rectification.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import random
import re
import secrets
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace
from urllib.parse import quote

import harness as h
import seeding

from handlers.evaluation.tags import TAGS

SECTION = "## Evaluation (statistics and POST /api/v1/cases/{case_no}/evaluation)"
CATALOGUE_FILE = h.ROOT / "data" / "catalogue.yaml"
STATS_PATH = "/console/api/stats/evaluations"
RATE_PATH = "/api/v1/cases/{case_no}/evaluation"
TARGET = "POST " + RATE_PATH
DEPARTMENT = "psb"  # the month query's department, by code: the catalogue's largest
LEVEL_WEIGHTS = {5: 70, 4: 15, 3: 8, 2: 4, 1: 3}  # of the evaluations given actively
DEFAULT_LEVEL = 3  # handlers.evaluation.tags.DEFAULT_LEVEL: the default 基本满意
CHINA = h.CHINA
DAYS = 365


def extra(p) -> None:
    p.add_argument("--users", type=int, default=20000)
    p.add_argument("--cases", type=int, default=100_000)
    p.add_argument("--evaluations", type=int, default=60_000)
    p.add_argument("--default-share", type=float, default=0.2)
    p.add_argument("--tickets", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=20261130)
    p.add_argument("--stats-runs", type=int, default=20)
    p.add_argument("--stats-connections", type=int, default=8)
    p.add_argument("--rate-cases", type=int, default=20_000)
    p.add_argument("--bad-share", type=float, default=0.1)


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

    departments = yaml.safe_load(CATALOGUE_FILE.read_text(encoding="utf-8"))["departments"]
    return next(d["name"] for d in departments if d["code"] == code)


def queries(today: dt.date, department: str) -> list[Query]:
    """The last whole calendar month for `department` (its catalogue name, as items and evaluations
    store it), and the last 366 days for all."""
    last = today.replace(day=1) - dt.timedelta(days=1)
    return [
        Query(f"one month ({last:%Y-%m}), {department} ({DEPARTMENT})", last.replace(day=1), last, department),
        Query("one year (366 days), all departments", today - dt.timedelta(days=365), today, None),
    ]


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


class Database(seeding.Database):
    """callbacks.py's database helper (citizens), plus the history of 好差评 and the citizen's cases."""

    async def _next_id(self, conn, table: str) -> int:
        return int(await conn.fetchval(f"SELECT coalesce(max(id), 0) + 1 FROM {table}"))

    async def _copy(self, conn, table: str, columns: list[str], records: list[tuple]) -> None:
        missing = await self.unfilled(conn, table, set(columns))
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

    def seed_history(self, args, now: dt.datetime) -> Seeded:
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
                seeding.ITEM_NAME,
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
            with h.CpuWatch({}) as watch:
                for _ in range(runs):
                    began = time.perf_counter_ns()
                    out.answer = await evaluation_stats(**kw)
                    samples.append((time.perf_counter_ns() - began) / 1e6)
            out.others_cpu = watch.others()
            samples.sort()
            out.p50_ms, out.p95_ms, out.min_ms = h.percentile(samples, 50), h.percentile(samples, 95), samples[0]
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


def in_process(s: h.Session, db: Database, qs: list[Query], runs: int) -> list[dict]:
    h.wait_until_quiet(min(s.args.quiet_wait, max(0.0, s.left())))
    out = []
    for r in asyncio.run(_in_process(db.url, qs, runs)):
        summary, wrong = check_figures(db, r.query, r.answer)
        s.note(f"in-process, {r.query.name}: {summary}; plan: {r.plan} (buffers: {r.buffers})")
        if wrong:
            s.note(f"in-process, {r.query.name}: FIGURES DIFFER from SQL: {'; '.join(wrong)}")
            s.failed = True
        out.append({"query": r.query.name, "calls": r.runs, "p50 ms": r.p50_ms, "p95 ms": r.p95_ms,
                    "min ms": r.min_ms, "SQL queries per call": r.sql_count,
                    "evaluations counted": r.answer["evaluations"]["total"],
                    "EXPLAIN ANALYZE planning ms": r.planning_ms, "execution ms": r.execution_ms,
                    "_others": r.others_cpu})  # fmt: skip
    return out


def console_cookie(server: h.Zhangban, username: str, password: str) -> dict[str, str]:
    import httpx

    response = httpx.post(server.base + "/console/api/session", json={"username": username, "password": password},
                          timeout=30)  # fmt: skip
    if response.status_code != 200 or not response.cookies.get("zb_console"):
        raise RuntimeError(f"console sign-in answered {response.status_code}: {response.text[:200]}")
    return {"Cookie": f"zb_console={response.cookies['zb_console']}"}


def rate_row(s: h.Session, server: h.Zhangban, citizen: h.Citizen, pool: CasePool, db: Database, user_id: int,
             ceiling: h.Row, rng: random.Random) -> h.Row:  # fmt: skip
    requests = h.Requests(s.tmp, f"ratings-{server.workers}", s.args.threads)
    marks: dict = {}

    def refill(count: int) -> None:
        def lines():
            for case_no in pool.take(count):
                bad = rng.random() < s.args.bad_share
                body = json.dumps(rating_body(rng, bad), ensure_ascii=False)
                yield (
                    "POST",
                    RATE_PATH.format(case_no=case_no),
                    {**citizen.headers, "Content-Type": "application/json"},
                    body,
                )

        requests.write(lines())

    def on_start() -> None:
        time.sleep(2.0)
        marks["before"] = db.written(user_id)
        marks["pg"] = seeding.PgActivity(db.url.rsplit("/", 1)[1]).__enter__()

    def on_end(row: h.Row) -> None:
        marks["pg"].__exit__()
        time.sleep(2.0)
        delta = {k: v - marks["before"][k] for k, v in db.written(user_id).items()}
        row.extra = {"ratings sent": row.sent.get("issued"), "evaluations written (database)": delta["evaluations"],
                     "rectifications opened (database)": delta["rectifications"],
                     "non-201": sum(n for st, n in row.statuses.items() if st != 201)}  # fmt: skip
        s.note(f"{TARGET}, {server.label}: {h.sent_note(row)}; in the database "
               + ", ".join(f"+{v:,} {k}" for k, v in delta.items())
               + f"; PostgreSQL sessions: {marks['pg'].summary()}; {h.cpu_per_request(row)}")  # fmt: skip

    row = s.wrk(TARGET, server, "/api/v1/cases", ceiling=ceiling, requests=requests, refill=refill, rate_guess=300,
                on_start=on_start, on_end=on_end)  # fmt: skip
    if row.sent.get("reused") or set(row.statuses) - {201}:
        s.failed = True
    return row


def main(argv: list[str] | None = None) -> int:
    args = h.parse_args(__doc__, argv, extra, workers="1,2",
                        quick={"workers": "1", "users": 2000, "cases": 10_000, "evaluations": 6_000, "tickets": 1000,
                               "stats_runs": 5, "rate_cases": 3000})  # fmt: skip
    args.no_embedded = True
    with h.Session(args, SECTION, "benchmarks/evaluation.py") as s:
        if s.production_missing:
            print(f"needs PostgreSQL and Redis: {s.production_missing}", file=sys.stderr)
            return 2
        qs = queries(dt.datetime.now(CHINA).date(), department_name(DEPARTMENT))
        server = s.zhangban(h.PRODUCTION, args.worker_counts[0], name=h.workers_label(args.worker_counts[0]))
        db = Database(server.env["DATABASE_URL"])
        stats, reads, rates = [], [], []
        try:
            s.note(f"load-demo: {server.prepare()}")
            db.seed_users(args.users)
            seeded = db.seed_history(args, dt.datetime.now(dt.UTC))
            s.note(f"seeded with COPY in {seeded.seconds:.1f} s (VACUUM ANALYZE {seeded.vacuum_s:.1f} s): "
                   f"{len(db.users):,} citizens, {seeded.cases:,} cases, {seeded.evaluations:,} evaluations "
                   f"({seeded.defaults:,} default; by level {h.outcomes(seeded.levels)}), rectifications "
                   f"{h.outcomes(seeded.rectifications)}, tickets {h.outcomes(seeded.tickets)}")  # fmt: skip
            stats = in_process(s, db, qs, args.stats_runs)
            username, password = f"bench{secrets.token_hex(3)}", secrets.token_urlsafe(18)
            server.cli("create-official", "--username", username, "--department", DEPARTMENT, "--role", "admin",
                       "--password-stdin", stdin=password + "\n")  # fmt: skip
            rng, pool, user_id, undecided, openid = random.Random(7), None, None, None, None
            for i, workers in enumerate(args.worker_counts):
                if i == 0:
                    server.start(helpers=True)
                else:
                    server.restart({"WORKERS": str(workers)})
                s.note(f"{server.label}: check-jobs: {server.cli('check-jobs', '--timeout', '30', timeout=90)}")
                citizen = h.Citizen(server.base, s.channels, openid=openid)
                openid = citizen.openid
                if pool is None:
                    user_id = db.user_id(citizen.openid)
                    pool = CasePool(db, user_id)
                    pool.cases = pool.seed(args.rate_cases)
                    undecided = pool.seed(1, status="in_review")[0]
                cookie = console_cookie(server, username, password)
                for q in qs:
                    import httpx

                    answer = httpx.get(server.base + q.path, headers=cookie, timeout=60).json()
                    _, wrong = check_figures(db, q, answer)
                    s.note(
                        f"{server.label}, over HTTP: {q.name}: "
                        + ("figures checked" if not wrong else "FIGURES DIFFER: " + "; ".join(wrong))
                    )
                    s.failed |= bool(wrong)
                ceiling = s.ceiling(server)
                reads.append(ceiling)
                for q in qs:
                    reads.append(s.wrk(q.target, server, q.path, ceiling=ceiling, headers=cookie,
                                       connections=args.stats_connections))  # fmt: skip
                s.note(f"{server.label}: probe: {probe(server.base, citizen.token, db, pool, user_id, undecided)}")
                rates.append(rate_row(s, server, citizen, pool, db, user_id, ceiling, rng))
                s.note(
                    f"{server.label}: the platform simulator's calls so far: {h.outcomes(s.channels.platform.calls())}"
                )
        except Exception as exc:  # ours, httpx's, asyncpg's: the row says what went wrong
            reads.append(s.failed_row("evaluation", server.label, exc))
        s.stop(server)
        s.table(f"Statistics in this process through Tortoise (server stopped), {args.stats_runs} timed calls per query:",
                stats, {"p50 ms": 1, "p95 ms": 1, "min ms": 1, "EXPLAIN ANALYZE planning ms": 2, "execution ms": 2})  # fmt: skip
        s.wrk_table(f"Statistics over HTTP, an admin official's session cookie (wrk `-c{args.stats_connections}`; "
                    f"`/healthz` at `-c{args.connections}`):", reads)  # fmt: skip
        s.wrk_table("Evaluations accepted, each on a distinct closed case of the citizen:", rates)
        return s.finish(
            [
                "Servers: one fresh PostgreSQL database and Redis prefix for the run, `TASK_BROKER=redis`, `migrate` "
                "and `load-demo` once, then per row `serve` with `WORKERS=N` beside a worker and a scheduler; every "
                "channel configured against its simulator (the platform simulator never saw the seeded cases: it "
                "answers each relayed evaluation 404, hence the worker's `platform delivery failed` warnings).",
                f"Queries: {'; '.join(f'*{q.name}*: `{q.path}`' for q in qs)}.",
                f"Commands: `wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency` on `/healthz`, "
                f"the stats GETs at `-c{args.stats_connections}` with the cookie, the ratings with `-s` the Lua "
                "script sending each once; each after a warm-up (its own cases for the POSTs).",
            ]
        )


if __name__ == "__main__":
    sys.exit(main())
