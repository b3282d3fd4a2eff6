"""Progress pushes drained to the WeChat simulator: a backlog of due notifications carried by
`server.py worker --processes N` on PostgreSQL + Redis, settled per second.

    .venv/bin/python benchmarks/push.py [--quick] [--pushes 6000] [--processes 1,2] [--profile DIR]

What it measures, for each `--processes` count (one production server, a fresh database, `migrate`
and `load-demo` with the server's environment; `serve` runs but takes no requests):

- `--users` citizens seeded with asyncpg, each with one case of 居民身份证换领 and 1000 one-time
  subscriptions for the run's template, both at the WeChat simulator and in Zhangban, so every push
  is a real subscribe message (`/cgi-bin/message/subscribe/send`, access token and all).
- `--pushes` due notifications inserted at once (push_status `pending`, due now; several per
  citizen, so the per-citizen order matters as it does after a burst of callbacks), then a worker
  with N processes is started and 4 × N push jobs are queued (as callbacks queue one per change);
  timed from the first push settled until nothing is pending or sending (polled every 0.5 s).
- CPU of every process of ours during the drain (the worker's processes, PostgreSQL's backends of
  the run's database, Redis, the WeChat simulator), per push; with `--profile DIR` a py-spy
  profile of the worker's processes says where their time went (the figures of a profiled run
  are for the profile, not for the table).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time

import harness as h
import seeding

SECTION = "## Push drain (due progress pushes to the WeChat simulator)"
KICKS_PER_PROCESS = 4

KICK = """
import asyncio, sys
from jobs.broker import broker
from jobs.push import push_notification

async def main(n):
    await broker.startup()
    for _ in range(n):
        await push_notification.kiq(0)
    await broker.shutdown()

asyncio.run(main(int(sys.argv[1])))
"""


def extra(p) -> None:
    p.add_argument("--users", type=int, default=2000, help="citizens seeded (2000)")
    p.add_argument("--pushes", type=int, default=6000, help="due pushes per drain (6000)")
    p.add_argument("--processes", default="1,2", help="worker processes of each drain (1,2)")
    p.add_argument("--drain-timeout", type=float, default=300, help="seconds a drain may take (300)")
    p.add_argument("--push-batch", type=int, help="PUSH_BATCH of the worker (its default)")
    p.add_argument("--push-concurrency", type=int, help="PUSH_CONCURRENCY of the worker (its default)")
    p.add_argument("--push-lanes", type=int, help="PUSH_LANES of the worker (its default)")


def seed_notifications(db: seeding.Database, cases: dict[int, int], count: int, tag: str) -> int:
    """`count` due notifications, spread over the citizens in turn, each on the citizen's case."""

    async def work(conn):
        users = list(cases)
        owners = [users[i % len(users)] for i in range(count)]
        rows = await conn.execute(
            "INSERT INTO notifications (dedup_key, user_id, case_id, kind, title, body, page, urgent, push_status, "
            "channel, attempts, next_attempt_at, created_at) "
            "SELECT $1 || n, u, c, 'accepted', '办件已受理', '您的居民身份证换领已受理，请留意后续进度。', "
            "'pages/case/detail?case_no=' || n, false, 'pending', '', 0, now(), now() "
            "FROM unnest($2::bigint[], $3::bigint[], $4::bigint[]) AS t(u, c, n)",
            tag,
            owners,
            [cases[u] for u in owners],
            list(range(count)),
        )
        return int(rows.split()[-1])

    return db.run(work)


def drain_once(s: h.Session, server: h.Zhangban, db: seeding.Database, cases: dict[int, int], processes: int,
               args) -> dict:  # fmt: skip
    tag = f"bench-{processes}-{secrets.token_hex(3)}-"
    queued = seed_notifications(db, cases, args.pushes, tag)
    worker = server.add_helper("worker", ["worker", "--processes", str(processes)])
    # Measured once the worker runs jobs (its start-up, imports and all, is not a push's cost).
    s.note(
        f"drain with {processes} process(es): check-jobs: {server.cli('check-jobs', '--timeout', '60', timeout=120)}"
    )
    time.sleep(2.0)  # every process of the worker has joined the consumer group
    done = subprocess.run([h.python_bin(), "-c", KICK, str(KICKS_PER_PROCESS * processes)], cwd=h.ROOT,
                          env=server.env, capture_output=True, text=True, timeout=60)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"queuing the push jobs failed: {done.stderr[-300:]}")
    profile = None
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
        profile = h.Profile(worker.pid, min(30.0, args.drain_timeout), args.profile / f"push-drain-{processes}.txt")
        profile.__enter__()
    with s.watch(server) as watch:
        d = seeding.drain(db, s.channels, f"backlog of {queued} due pushes", processes, args.drain_timeout)
    if profile is not None:
        profile.__exit__(None, None, None)
        s.note(f"drain with {processes} process(es): where the worker's time went (py-spy): {profile.summary()}")
    server.stop_helpers()
    server.helpers = [hp for hp in server.helpers if hp is not worker]
    cells = d.cells(server.label)
    cells.pop("server")
    rate = d.settled / d.seconds if d.seconds else None
    cells["share of 1,000/s"] = f"{rate / 1000:.0%}" if rate else "—"
    if d.settled and d.seconds:
        tck = os.sysconf("SC_CLK_TCK")
        per_push = ", ".join(f"{name} {used / tck * 1000 / queued:.2f} ms" for name, used in watch.used.items() if used)
        s.note(f"drain with {processes} process(es): CPU while draining, in shares of one core: {watch.shares()}; "
               f"per push (all {queued} settled in the watch): {per_push}")  # fmt: skip
    s.note(f"drain with {processes} process(es): {d.timeline_note()}")
    attempts = db.fetch(
        "SELECT a.result, coalesce(a.errcode::text, ''), a.detail, count(*) FROM push_attempts a "
        "JOIN notifications n ON n.id = a.notification_id WHERE n.dedup_key LIKE $1 GROUP BY 1, 2, 3 ORDER BY 4 DESC",
        tag + "%",
    )
    s.note(f"drain with {processes} process(es): push attempts by result: "
           + "; ".join(f"{r} {e} {dt[:60]!r} ×{n}" for r, e, dt, n in attempts))  # fmt: skip
    s.summarise_value(f"push backlog drain, {processes} worker process(es)", server.label, rate, "pushes settled/s")
    return cells


def main(argv: list[str] | None = None) -> int:
    args = h.parse_args(__doc__, argv, extra, quick={"users": 500, "pushes": 2000, "processes": "2"})
    args.no_embedded = True
    with h.Session(args, SECTION, "benchmarks/push.py", needs_wrk=False) as s:
        if s.production_missing:
            print(f"needs PostgreSQL and Redis: {s.production_missing}", file=sys.stderr)
            return 2
        template = f"zbbench_progress_{secrets.token_hex(6)}"
        env = {"PUSH_MP_TEMPLATE_ID": template}
        if args.push_batch:
            env["PUSH_BATCH"] = str(args.push_batch)
        if args.push_concurrency:
            env["PUSH_CONCURRENCY"] = str(args.push_concurrency)
        if args.push_lanes:
            env["PUSH_LANES"] = str(args.push_lanes)
        server = s.zhangban(h.PRODUCTION, 1, env=env, name="production")
        db = seeding.Database(server.env["DATABASE_URL"])
        rows = []
        try:
            s.note(f"load-demo: {server.prepare()}")
            users = db.seed_users(args.users)
            case_nos = db.seed_cases(len(users))
            by_no = dict(db.fetch("SELECT case_no, id FROM cases WHERE case_no = ANY($1::text[])", case_nos))
            owner = dict(db.fetch("SELECT id, user_id FROM cases WHERE case_no = ANY($1::text[])", case_nos))
            cases = {int(owner[i]): int(i) for i in by_no.values()}
            asyncio.run(seeding.grant_at_sim(s.channels, users, template))
            db.seed_grants(template)
            server.start()
            for processes in [int(p) for p in str(args.processes).split(",") if p.strip()]:
                h.wait_until_quiet(min(args.quiet_wait, max(0.0, s.left())))
                rows.append(drain_once(s, server, db, cases, processes, args))
        except Exception as exc:
            s.failed = True
            s.note(f"FAILED: {type(exc).__name__}: {exc}")
        s.stop(server)
        s.table("", rows, {"seconds": 1})
        return s.finish(
            [
                "Server: `serve` with one Sanic worker (it takes no requests here), a fresh PostgreSQL database "
                "and Redis prefix, `TASK_BROKER=redis`, every channel configured against the simulators, "
                "`PUSH_MP_TEMPLATE_ID` made for the run, `PUSH_QUIET_HOURS` empty, "
                f"`PUSH_BATCH` {args.push_batch or 'default'}, `PUSH_CONCURRENCY` {args.push_concurrency or 'default'}, "
                f"`PUSH_LANES` {args.push_lanes or 'default'}.",
                f"Seeded with asyncpg: {args.users} citizens, one case each, 1000 one-time subscriptions each at "
                f"the WeChat simulator and in Zhangban; per drain {args.pushes} due notifications inserted at once, "
                f"then `server.py worker --processes N` started (`check-jobs` answered: it runs jobs) and "
                f"{KICKS_PER_PROCESS} × N `zb.push` jobs queued.",
                "settled/s: pushes settled (sent, inbox_only or failed) from the first poll that saw one settle "
                "until the poll that saw none pending or sending, over that time. WeChat subscribe messages: "
                "calls the simulator counted. Target (issue 16): 1,000/s with 2 worker processes.",
            ]
        )


if __name__ == "__main__":
    sys.exit(main())
