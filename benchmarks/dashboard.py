"""Dashboard benchmark (issue 15): `GET /console/api/dashboard`, `GET /console/api/alerts` and, once
the console pages exist, the dashboard page `GET /console/`, with 100,000 cases in PostgreSQL.

    .venv/bin/python benchmarks/dashboard.py [--quick] [--cases 100000] [--requests 30] [--no-write]

Production backend only, on benchmarks/harness.py: a fresh PostgreSQL database (dropped after),
Redis under a throw-away REDIS_KEY_PREFIX (deleted after), every production channel configured
against its simulator (a production server refuses simulated channels), `server.py migrate` and
`load-demo`, then `server.py serve` with one Sanic worker. No job worker or scheduler runs: a
sweep would change the figures while they are measured.

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

import asyncio
import datetime as dt
import secrets
import sys
import time
from zoneinfo import ZoneInfo

import harness as h

SECTION = "## Dashboard (issue 15)"
DEPARTMENT = "psb"
SESSION_PATH = "/console/api/session"
CHINA = ZoneInfo("Asia/Shanghai")


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


async def seed(url: str, args) -> dict[str, int]:
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


def extra(p) -> None:
    p.add_argument("--cases", type=int, default=100_000)
    p.add_argument("--users", type=int, default=5_000)
    p.add_argument("--tickets", type=int, default=5_000)
    p.add_argument("--requests", type=int, default=30)
    p.add_argument("--untimed", type=int, default=3, help="untimed requests before the timed ones (3)")


def main(argv: list[str] | None = None) -> int:
    args = h.parse_args(__doc__, argv, extra, quick={"cases": 10_000, "users": 1_000, "tickets": 1_000, "requests": 5})
    args.no_embedded = True
    with h.Session(args, SECTION, "benchmarks/dashboard.py", needs_wrk=False) as s:
        if s.production_missing:
            print(f"{s.production_missing}: this benchmark measures the production backend only.", file=sys.stderr)
            return 2
        import httpx

        server = s.zhangban(h.PRODUCTION, 1, name="1 Sanic worker")
        url = server.env["DATABASE_URL"]
        rows = []
        try:
            s.note(f"load-demo: {server.prepare()}")
            began = time.monotonic()
            counts = asyncio.run(seed(url, args))
            s.note(f"seeded in {time.monotonic() - began:.1f} s: " + ", ".join(f"{n:,} {t}" for t, n in counts.items()))
            username, password = f"bench{secrets.token_hex(3)}", secrets.token_urlsafe(18)
            server.cli("create-official", "--username", username, "--department", DEPARTMENT, "--role", "admin",
                       "--password-stdin", stdin=password + "\n")  # fmt: skip
            server.start()  # no job worker or scheduler: a sweep would change the figures while measured
            client = httpx.Client(base_url=server.base, timeout=120)
            signed = client.post(SESSION_PATH, json={"username": username, "password": password})
            if signed.status_code != 200:
                raise RuntimeError(f"sign-in answered {signed.status_code}: {signed.text[:200]}")
            today = dt.datetime.now(dt.UTC).astimezone(CHINA).date()
            month = (today - dt.timedelta(days=29), today)
            year = (today - dt.timedelta(days=365), today)
            psb = "泸州市公安局"
            targets = [
                ("API", "dashboard, one department, 30 days", f"/console/api/dashboard?department={psb}", month, psb),
                ("API", "dashboard, all departments, 30 days", "/console/api/dashboard", month, None),
                ("API", "dashboard, all departments, 366 days", f"/console/api/dashboard?from={year[0]}&to={year[1]}",
                 year, None),
                ("API", "alerts, all departments", "/console/api/alerts", None, None),
            ]  # fmt: skip
            page = client.get("/console/")
            if page.status_code == 200 and "text/html" in page.headers.get("content-type", ""):
                targets += [
                    ("page", "dashboard page, one department, 30 days", f"/console/?department={psb}", month, psb),
                    ("page", "dashboard page, all departments, 30 days", "/console/", month, None),
                ]
            else:
                s.note(f"the dashboard page `GET /console/` answered {page.status_code}: not measured")
            for kind, label, path, days, department in targets:
                h.wait_until_quiet(min(args.quiet_wait, max(0.0, s.left())))
                with s.watch(server) as watch:
                    times, answer = timed(client, path, args.untimed, args.requests)
                check = ""
                if kind == "API" and days is not None:
                    expected = asyncio.run(count_cases(url, *days, department))
                    got = answer.json()["cases"]["submitted"]
                    check = f"{got:,} cases (SQL: {expected:,})" + (" MISMATCH" if got != expected else "")
                    s.failed |= got != expected
                rows.append({"what": kind, "request": label, "p50 ms": p(times, 0.5), "p95 ms": p(times, 0.95),
                             "figures": check, "_others": watch.others()})  # fmt: skip
            client.close()
        except Exception as exc:  # the notes say what went wrong
            s.failed_row("dashboard", server.label, exc)
            s.note(f"FAILED: {type(exc).__name__}: {exc}"[:300])
        s.stop(server)
        s.table("", rows, {"p50 ms": 1, "p95 ms": 1})
        return s.finish(
            [
                f"{args.cases:,} cases over the last 365 days in PostgreSQL, one Sanic worker, one client sending each "
                f"request {args.requests} times in a row after {args.untimed} untimed; no job worker or scheduler.",
            ]
        )


if __name__ == "__main__":
    sys.exit(main())
