"""Dashboard benchmark (issue 15): `GET /console/api/dashboard`, `GET /console/api/alerts` and, once
the console pages exist, the dashboard page `GET /console/`, with 100,000 cases in PostgreSQL.

    .venv/bin/python benchmarks/dashboard.py [--cases 100000] [--requests 30] [--no-write]

Production backend only, with the plumbing of benchmarks/evaluation.py (imported): the database
`zb_bench_dash` on postgresql://postgres@127.0.0.1:5432 (made for the run, dropped after), Redis on
127.0.0.1:6379 under a throw-away REDIS_KEY_PREFIX (deleted after), every production channel
configured against its simulator (WeChat, the core platform, the payment simulator: a production
server refuses simulated channels), `server.py migrate` and `load-demo`, then `server.py serve`
with one Sanic worker. No job worker or scheduler runs: a sweep would change the figures while
they are measured.

Seeded with plain SQL (INSERT ... SELECT over generate_series) after load-demo: `--cases` cases of
the catalogue's current items spread evenly over the last 365 days (so over its departments and
its fully online items), with their case events (submitted, delivered, accepted, and for 85% of
those older than 20 days the decision 1-25 days later, then closed); two progress notifications
per delivered case, each with its push attempts (subscribe or template delivered, inbox only, or
failed after retries); evaluations for 60% of the decided cases and the rectifications of their
差评; tickets; the outbox rows of the deliveries. Then VACUUM ANALYZE.

Measured, with an admin of the public security bureau signed in: each request `--warmup` times
untimed, then `--requests` times one after another (a single client: the time one official waits),
p50 and p95 of the wall time of each answer; the answer's figures are checked against a count made
here with SQL (cases in the range). Results are printed as a markdown table and, unless
`--no-write`, written to the "## Dashboard (issue 15)" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.util
import os
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
import callbacks as cb  # noqa: E402
import catalogue as cat  # noqa: E402
import http_baseline as hb  # noqa: E402
import identity as idb  # noqa: E402

import bot  # noqa: E402

SECTION = "## Dashboard (issue 15)"
DB_NAME = "zb_bench_dash"
DEPARTMENT = "psb"
SESSION_PATH = "/console/api/session"
CHINA = ZoneInfo("Asia/Shanghai")


def _load(name: str, file: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


pay = _load("bench_payments", "payments.py")  # the merchant and the payment simulator
ROOT = hb.ROOT
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))


# -- seeding ---------------------------------------------------------------------------------

SEED_SQL = [
    # Citizens.
    """INSERT INTO users (identity_level, is_active, created_at, updated_at)
       SELECT 'L3', true, now() - interval '400 days', now() FROM generate_series(1, {users})""",
    # Cases over the last 365 days, items taken in turn; decided ones older than 20 days.
    """CREATE TEMP TABLE seed_items AS
       SELECT row_number() OVER (ORDER BY id) - 1 AS n, id, code, name FROM service_items WHERE is_current""",
    """CREATE TEMP TABLE seed_cases AS
       SELECT g, now() - (g::float / {cases}) * interval '365 days' AS submitted_at, random() AS r,
              1 + floor(random() * 25)::int AS took
       FROM generate_series(1, {cases}) g""",
    """INSERT INTO cases (case_no, user_id, service_item_id, service_code, service_name, status, materials,
                         fee_ref, platform_case_id, platform_seq, row_version, submitted_at, updated_at,
                         platform_heard_at, overdue_at)
       SELECT 'ZBB' || lpad(s.g::text, 9, '0'),
              (SELECT min(id) FROM users) + (s.g % {users}),
              i.id, i.code, i.name,
              CASE WHEN s.r < 0.04 THEN 'withdrawn'
                   WHEN s.submitted_at > now() - interval '20 days' THEN
                        (ARRAY['submitted','delivered_to_platform','accepted','in_review','correction_requested'])
                        [1 + (s.g % 5)]
                   WHEN s.r < 0.89 THEN 'closed'
                   WHEN s.r < 0.97 THEN 'rejected'
                   ELSE 'in_review' END,
              '{{}}', '', 'P' || s.g, 3, 4, s.submitted_at, s.submitted_at, s.submitted_at,
              CASE WHEN s.r > 0.85 AND s.r < 0.89 THEN s.submitted_at + interval '20 days' END
       FROM seed_cases s JOIN seed_items i ON i.n = s.g % (SELECT count(*) FROM seed_items)""",
    # Case events: submitted, delivered, accepted, the decision, closed.
    """INSERT INTO case_events (case_id, at, actor_type, actor_id, from_status, to_status, note, data)
       SELECT c.id, c.submitted_at, 'citizen', c.user_id::text, NULL, 'submitted', '网上申请已提交', '{{}}'
       FROM cases c""",
    """INSERT INTO case_events (case_id, at, actor_type, from_status, to_status, note, data)
       SELECT c.id, c.submitted_at + interval '1 minute', 'system', 'submitted', 'delivered_to_platform', '', '{{}}'
       FROM cases c WHERE c.status NOT IN ('submitted', 'withdrawn')""",
    """INSERT INTO case_events (case_id, at, actor_type, from_status, to_status, note, data)
       SELECT c.id, c.submitted_at + interval '3 hours', 'platform', 'delivered_to_platform', 'accepted', '', '{{}}'
       FROM cases c WHERE c.status NOT IN ('submitted', 'withdrawn', 'delivered_to_platform')""",
    """INSERT INTO case_events (case_id, at, actor_type, from_status, to_status, note, data)
       SELECT c.id, c.submitted_at + s.took * interval '1 day', 'platform', 'accepted',
              CASE WHEN c.status = 'rejected' THEN 'rejected' ELSE 'approved' END, '', '{{}}'
       FROM cases c JOIN seed_cases s ON c.case_no = 'ZBB' || lpad(s.g::text, 9, '0')
       WHERE c.status IN ('closed', 'rejected')""",
    """INSERT INTO case_events (case_id, at, actor_type, from_status, to_status, note, data)
       SELECT e.case_id, e.at + interval '1 day', 'platform', 'approved', 'closed', '', '{{}}'
       FROM case_events e WHERE e.to_status = 'approved'""",
    # The outbox rows of the deliveries.
    """INSERT INTO outbox (kind, case_id, payload, status, attempts, next_attempt_at, last_error, created_at, done_at)
       SELECT 'deliver_case', c.id, '{{}}', CASE WHEN c.status = 'submitted' THEN 'pending' ELSE 'done' END, 1,
              c.submitted_at, '', c.submitted_at, c.submitted_at + interval '1 minute'
       FROM cases c WHERE c.status <> 'withdrawn'""",
    # Two progress notifications per delivered case (accepted, and the decision or in review).
    """INSERT INTO notifications (dedup_key, user_id, case_id, kind, title, body, page, urgent, push_status,
                                  channel, attempts, next_attempt_at, sent_at, created_at)
       SELECT 'bench:' || e.id, c.user_id, c.id, e.to_status, '办件进度', '您的办件有新进展', '', false,
              CASE WHEN e.id % 20 = 0 THEN 'failed' WHEN e.id % 7 = 0 THEN 'inbox_only' ELSE 'sent' END,
              CASE WHEN e.id % 20 = 0 THEN '' WHEN e.id % 7 = 0 THEN 'inbox'
                   WHEN e.id % 3 = 0 THEN 'template' ELSE 'subscribe' END,
              1, e.at, e.at, e.at
       FROM case_events e JOIN cases c ON c.id = e.case_id
       WHERE e.to_status IN ('accepted', 'approved', 'rejected')""",
    """INSERT INTO push_attempts (notification_id, channel, started_at, finished_at, result, errcode, detail)
       SELECT n.id, CASE WHEN n.channel = '' THEN 'template' ELSE n.channel END, n.created_at, n.created_at,
              CASE WHEN n.push_status = 'failed' THEN 'transient' WHEN n.channel = 'inbox' THEN 'inbox_only'
                   ELSE 'ok' END,
              CASE WHEN n.push_status = 'failed' THEN 45009 ELSE 0 END, ''
       FROM notifications n""",
    """INSERT INTO push_attempts (notification_id, channel, started_at, finished_at, result, errcode, detail)
       SELECT n.id, 'subscribe', n.created_at, n.created_at, 'no_grant', 43101, ''
       FROM notifications n WHERE n.channel IN ('template', 'inbox')""",
    # Evaluations of 60% of the decided cases, rectifications of their 差评.
    """INSERT INTO evaluations (case_id, user_id, department, service_code, level, tags, active, channel,
                                identity_level, created_at)
       SELECT c.id, c.user_id, i.department, c.service_code,
              (ARRAY[5,5,5,5,5,5,5,4,4,3,3,3,2,1])[1 + (c.id % 14)], '[]', c.id % 5 <> 0,
              CASE WHEN c.id % 5 = 0 THEN 'default' ELSE 'miniprogram' END, 'L3', e.at + interval '2 days'
       FROM cases c JOIN service_items i ON i.id = c.service_item_id
       JOIN case_events e ON e.case_id = c.id AND e.to_status IN ('approved', 'rejected')
       WHERE c.id % 10 < 6""",
    """INSERT INTO rectifications (evaluation_id, case_id, department, status, round, verify_due_at, rectify_due_at,
                                   rectified_at, exclusion, exclusion_reason, exclusion_decision, closed_at, on_time,
                                   created_at, updated_at)
       SELECT v.id, v.case_id, v.department,
              CASE WHEN v.created_at > now() - interval '10 days' THEN 'rectifying' ELSE 'closed' END, 1,
              v.created_at + interval '1 day', v.created_at + interval '21 days',
              CASE WHEN v.created_at > now() - interval '10 days' THEN NULL
                   ELSE v.created_at + (v.id % 25) * interval '1 day' END,
              'none', '', '', NULL,
              CASE WHEN v.created_at > now() - interval '10 days' THEN NULL ELSE v.id % 25 <= 21 END,
              v.created_at, v.created_at
       FROM evaluations v WHERE v.level <= 2""",
    # Consultations and complaints.
    """INSERT INTO tickets (ticket_no, kind, oa_openid, department, content_enc, status, dedup_key, created_at,
                            answered_at, channel, due_at)
       SELECT 'TB' || g, CASE WHEN g % 3 = 0 THEN 'complaint' ELSE 'consultation' END, '',
              (SELECT department FROM service_items WHERE is_current ORDER BY id LIMIT 1 OFFSET g % 7),
              decode('78', 'hex'),
              CASE WHEN g % 50 = 0 THEN 'open' ELSE 'answered' END, 'bench-ticket-' || g,
              now() - (g::float / {tickets}) * interval '365 days',
              CASE WHEN g % 50 = 0 THEN NULL ELSE now() - (g::float / {tickets}) * interval '365 days'
                   + interval '1 day' END,
              'miniprogram', now() - (g::float / {tickets}) * interval '365 days' + interval '3 days'
       FROM generate_series(1, {tickets}) g""",
]
TABLES = "users cases case_events outbox notifications push_attempts evaluations rectifications tickets".split()


async def seed(url: str, args: argparse.Namespace) -> dict[str, int]:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        for sql in SEED_SQL:
            await conn.execute(sql.format(users=args.users, cases=args.cases, tickets=args.tickets))
        counts = {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES}
        await conn.execute("VACUUM ANALYZE")
        return counts
    finally:
        await conn.close()


async def count_cases(url: str, first: dt.date, last: dt.date, department: str | None) -> int:
    """Cases submitted on China days `first`..`last`, counted here with plain SQL."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(
            """SELECT count(*) FROM cases c JOIN service_items i ON i.id = c.service_item_id
               WHERE (c.submitted_at AT TIME ZONE 'Asia/Shanghai')::date BETWEEN $1 AND $2
                 AND ($3::text IS NULL OR i.department = $3)""",
            first,
            last,
            department,
        )
    finally:
        await conn.close()


# -- measuring -------------------------------------------------------------------------------


def create_official(server) -> tuple[str, str]:
    username, password = f"bench{secrets.token_hex(3)}", secrets.token_urlsafe(18)
    cmd, env = server._command_and_env()
    import subprocess

    done = subprocess.run(
        cmd[:2] + ["create-official", "--username", username, "--department", DEPARTMENT, "--role", "admin",
                   "--password-stdin"],
        cwd=server.workdir, env=env, input=password + "\n", capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"create-official exited {done.returncode}: {(done.stderr or done.stdout)[-300:]}")
    return username, password


def timed(client, path: str, warmup: int, runs: int) -> tuple[list[float], object]:
    for _ in range(warmup):
        client.get(path)
    times, last = [], None
    for _ in range(runs):
        began = time.perf_counter()
        last = client.get(path)
        times.append((time.perf_counter() - began) * 1000)
        if last.status_code != 200:
            raise RuntimeError(f"GET {path} answered {last.status_code}: {last.text[:200]}")
    return times, last


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--tickets", type=int, default=5_000)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--keep-db", action="store_true", help="leave the database for EXPLAIN (drop it yourself)")
    args = parser.parse_args(argv)
    missing = None if hb.redis_answers() else f"no Redis on {hb.HOST}:{hb.REDIS_PORT}"
    missing = missing or idb.pg_answers()
    if missing:
        print(f"{missing}: this benchmark measures the production backend only.", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, hb._raise_interrupt)
    import httpx

    now = dt.datetime.now(dt.UTC)
    when = now.strftime("%Y-%m-%d %H:%M UTC")
    machine = hb.machine_line()
    load_before = os.getloadavg()[0]
    print(f"Dashboard benchmark, {when}\n{machine}\n", flush=True)
    platform, account = cb.Platform(), bot.Account()
    tmp = tempfile.TemporaryDirectory(prefix="zb-bench-dashboard-")
    sims = {
        "WeChat simulator": idb.Simulator(Path(tmp.name)),
        "platform simulator": cb.PlatformSim(Path(tmp.name), platform),
        "pay-sim": pay.PaySim(Path(tmp.name)),
    }
    prefix = f"zbbench{secrets.token_hex(4)}:"
    rows: list[tuple[str, str, float, float, str]] = []
    notes: list[str] = []
    created, server, failed = False, None, False
    url = idb.pg_url_for(DB_NAME)
    try:
        for name, sim in sims.items():
            print(f"{name} on port {sim.port}: answering after {sim.start():.1f} s", flush=True)
        merchant = pay.Merchant(Path(tmp.name))
        merchant.register(sims["pay-sim"])
        asyncio.run(idb._pg(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'))
        asyncio.run(idb._pg(f'CREATE DATABASE "{DB_NAME}"'))
        created = True
        extra = {
            "DATABASE_URL": url,
            "TASK_BROKER": "redis",
            **account.server_env(sims["WeChat simulator"].url),
            **platform.env(sims["platform simulator"].url),
            **merchant.env(sims["pay-sim"].url, own_platform=False),
        }
        workdir = Path(tmp.name) / "server"
        workdir.mkdir()
        server = cat.CatalogueServer(hb.Target("1 Sanic worker", "zhangban", 1, redis=True), workdir, prefix, extra)
        server.extra_env["PUBLIC_BASE_URL"] = server.base
        for command in ("migrate", "load-demo"):
            done = server.cli(command)
            if done.returncode != 0:
                raise RuntimeError(f"{command} exited {done.returncode}: {(done.stderr or done.stdout)[-300:]}")
        began = time.monotonic()
        counts = asyncio.run(seed(url.replace("postgresql://", "postgres://", 1), args))
        seeded = ", ".join(f"{n:,} {t}" for t, n in counts.items())
        print(f"seeded in {time.monotonic() - began:.1f} s: {seeded}", flush=True)
        notes.append(f"seeded: {seeded}")
        username, password = create_official(server)
        print(f"server answering after {server.start():.1f} s", flush=True)
        client = httpx.Client(base_url=server.base, timeout=120)
        signed = client.post(SESSION_PATH, json={"username": username, "password": password})
        if signed.status_code != 200:
            raise RuntimeError(f"sign-in answered {signed.status_code}: {signed.text[:200]}")
        today = now.astimezone(CHINA).date()
        month = (today - dt.timedelta(days=29), today)
        year = (today - dt.timedelta(days=365), today)
        psb = "泸州市公安局"
        targets = [
            ("API", "dashboard, one department, 30 days", f"/console/api/dashboard?department={psb}", month, psb),
            ("API", "dashboard, all departments, 30 days", "/console/api/dashboard", month, None),
            (
                "API",
                "dashboard, all departments, 366 days",
                f"/console/api/dashboard?from={year[0]}&to={year[1]}",
                year,
                None,
            ),
            ("API", "alerts, all departments", "/console/api/alerts", None, None),
        ]
        page = client.get("/console/")
        if page.status_code == 200 and "text/html" in page.headers.get("content-type", ""):
            targets += [
                ("page", "dashboard page, one department, 30 days", f"/console/?department={psb}", month, psb),
                ("page", "dashboard page, all departments, 30 days", "/console/", month, None),
            ]
        else:
            notes.append(f"the dashboard page `GET /console/` answered {page.status_code}: not measured")
        for kind, label, path, days, department in targets:
            times, answer = timed(client, path, args.warmup, args.requests)
            check = ""
            if kind == "API" and days is not None:
                expected = asyncio.run(count_cases(url.replace("postgresql://", "postgres://", 1), *days, department))
                got = answer.json()["cases"]["submitted"]
                check = f"{got:,} cases (SQL: {expected:,})"
                if got != expected:
                    failed = True
                    check += " MISMATCH"
            rows.append((kind, label, p(times, 0.5), p(times, 0.95), check))
            print(f"  {label}: p50 {p(times, 0.5):.1f} ms, p95 {p(times, 0.95):.1f} ms {check}", flush=True)
        client.close()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        failed = True
    except Exception as exc:
        failed = True
        print(f"FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        notes.append(f"FAILED: {type(exc).__name__}: {exc}"[:300])
        if server is not None and server.log_path.exists():
            for line in server.log_path.read_text(errors="replace").splitlines()[-20:]:
                print(f"  | {line}", file=sys.stderr)
    finally:
        if server is not None:
            server.stop()
        for sim in sims.values():
            sim.stop()
        if created and not args.keep_db:
            asyncio.run(idb._pg(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'))
            notes.append(f"dropped PostgreSQL database {DB_NAME}")
        notes.append(hb.delete_redis_keys(prefix))
        tmp.cleanup()

    notes.append(
        f"load average (1 min) {load_before:.1f} at the start and {os.getloadavg()[0]:.1f} at the end on "
        f"{os.cpu_count()} cores shared with other work: the times are upper bounds"
    )
    lines = [
        SECTION,
        "",
        f"{when}. {machine}",
        "",
        f"`benchmarks/dashboard.py`: {args.cases:,} cases over the last 365 days in PostgreSQL, one Sanic worker, "
        f"one client sending each request {args.requests} times in a row after {args.warmup} untimed; no job "
        "worker or scheduler running.",
        "",
        "| what | request | p50 ms | p95 ms | figures |",
        "|---|---|---:|---:|---|",
        *(f"| {k} | {label} | {p50:.1f} | {p95:.1f} | {check} |" for k, label, p50, p95, check in rows),
        "",
        *(f"- {note}" for note in notes),
        "",
    ]
    text = "\n".join(lines)
    print()
    print(text)
    if rows and not args.no_write:
        hb.write_results(text, SECTION)
        print(f"written to {hb.RESULTS.relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
