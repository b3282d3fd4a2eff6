"""Platform callbacks and progress pushes: signed `POST /bridge/callback` on PostgreSQL + Redis
against `GET /healthz` of the same server, and how fast the pushes they queue drain.

    .venv/bin/python benchmarks/callbacks.py [--quick] [--duration 10] [--workers 1,2] [--drain-processes 1,2]

What it measures, per row of `--workers` (production only, a fresh database per row, `migrate` and
`load-demo` with the server's environment, a `server.py worker --processes 1` and a `server.py
scheduler` beside the server, `check-jobs` first):

- Callbacks/s, p50 and p99: each request a status callback as the core platform sends it
  (`{"case_no", "platform_case_id", "seq", "event", "at", "data"}`, signed with `bridge.signing`,
  a fresh nonce and a current timestamp), sent once each by a wrk Lua script. Per request the server
  checks the signature, takes the nonce in Redis, and applies the event under the case's row lock
  (a case event, the status, a notification and its push job). Cases are seeded straight into the
  database in `delivered_to_platform`; each gets seq 1 accepted, 2 in_review, 3 approved,
  4 result_issued, 5 closed, written batch by batch (`--batch` cases: all their seq 1, then their
  seq 2, ...) so the next event of a case follows a whole batch later. Answers are counted by
  `result`; a probe first checks `applied`, then `401 nonce_reused` for the same request and
  `duplicate` for the same event newly signed.
- Pushes: every citizen holds one-time grants both at the WeChat simulator and in Zhangban, so
  every push is a real subscribe message. Settled/s during the measured run, in the drain right
  after it, and, on the last row, as a backlog (`--backlog` callbacks sent with the worker stopped,
  then a worker with each of `--drain-processes` processes timed until nothing is pending).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import secrets
import sys
import time

import harness as h
import seeding

SECTION = "## Platform callbacks (POST /bridge/callback) and progress pushes"
PATH = "/bridge/callback"
TARGET = f"POST {PATH}"
EVENTS = ("accepted", "in_review", "approved", "result_issued", "closed")


def extra(p) -> None:
    p.add_argument("--users", type=int, default=2000, help="citizens seeded (2000)")
    p.add_argument("--cases", type=int, default=10000, help="cases seeded before the server starts (10000)")
    p.add_argument("--batch", type=int, default=500, help="cases per batch in the request file (500)")
    p.add_argument("--backlog", type=int, default=2000, help="callbacks queued for each backlog drain (2000)")
    p.add_argument("--drain-processes", default="1,2", help="worker processes of the backlog drains (1,2)")
    p.add_argument("--drain-timeout", type=float, default=180, help="seconds a drain may take (180)")


class Platform:
    """The core platform's side: signed callbacks with the run's app key and secret."""

    def __init__(self, channels: h.Channels):
        from bridge.signing import dumps_body, sign

        self.key, self.secret, self._dumps, self._sign = (
            channels.platform_key,
            channels.platform_secret,
            dumps_body,
            sign,
        )

    def body(self, case_no: str, seq: int) -> bytes:
        event = EVENTS[seq - 1]
        data = {"kind": "electronic", "licence_no": f"DZZZ{case_no[2:]}"} if event == "result_issued" else {}
        at = dt.datetime.now(h.CHINA).isoformat(timespec="seconds")
        return self._dumps({"case_no": case_no, "platform_case_id": f"PT{case_no[2:]}", "seq": seq, "event": event,
                            "at": at, "data": data})  # fmt: skip

    def signed(self, case_no: str, seq: int, body: bytes | None = None) -> tuple[dict[str, str], bytes]:
        body = body or self.body(case_no, seq)
        headers = self._sign("POST", PATH, body, app_key=self.key, secret=self.secret)
        return {**headers, "Content-Type": "application/json"}, body

    def requests(self, case_nos: list[str], batch: int):
        for start in range(0, len(case_nos), batch):
            chunk = case_nos[start : start + batch]
            for seq in range(1, len(EVENTS) + 1):
                for case_no in chunk:
                    headers, body = self.signed(case_no, seq)
                    yield "POST", PATH, headers, body.decode()


def probe(base: str, platform: Platform, case_no: str) -> str:
    import httpx

    headers, body = platform.signed(case_no, 1)
    seen = []
    for what, hdrs, want_status, want in (
        ("first", headers, 200, "applied"),
        ("same nonce", headers, 401, "nonce_reused"),
        ("re-signed", platform.signed(case_no, 1, body)[0], 200, "duplicate"),
    ):
        response = httpx.post(base + PATH, content=body, headers=hdrs, timeout=30)
        answer = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        got = answer.get("result") if response.status_code == 200 else answer.get("code")
        if response.status_code != want_status or got != want:
            raise RuntimeError(f"probe callback ({what}) answered {response.status_code} {response.text[:200]}")
        seen.append(f"{what} → {response.status_code} {got}")
    return "; ".join(seen)


async def send_backlog(base: str, platform: Platform, case_nos: list[str]) -> dict[str, int]:
    import httpx

    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        totals = {}
        for seq in range(1, len(EVENTS) + 1):

            async def one(case_no, seq=seq):
                headers, body = platform.signed(case_no, seq)
                response = await client.post(PATH, content=body, headers=headers)
                return (response.json().get("result") if response.status_code == 200 else response.status_code), True

            load = await h.drive(one, 16, items=case_nos)
            for k, v in load.outcomes.items():
                totals[k] = totals.get(k, 0) + v
    return totals


def run_row(s: h.Session, workers: int, last: bool, platform: Platform, pushes: list[dict], args) -> list[h.Row]:
    template = f"zbbench_progress_{secrets.token_hex(6)}"
    server = s.zhangban(h.PRODUCTION, workers, env={"PUSH_MP_TEMPLATE_ID": template}, name=h.workers_label(workers))
    db = seeding.Database(server.env["DATABASE_URL"])
    pool = seeding.Pool(db)
    try:
        s.note(f"{server.label}: load-demo: {server.prepare()}")
        db.seed_users(args.users)
        pool.take(0)
        pool.cases = db.seed_cases(args.cases + 1)
        pool.seeded = len(pool.cases)
        asyncio.run(seeding.grant_at_sim(s.channels, db.users, template))
        db.seed_grants(template)
        server.start(helpers=True)
        s.note(f"{server.label}: check-jobs: {server.cli('check-jobs', '--timeout', '30', timeout=90)}; "
               f"probe: {probe(server.base, platform, pool.take(1)[0])}")  # fmt: skip
        ceiling = s.ceiling(server)
        requests = h.Requests(s.tmp, f"callbacks-{workers}", args.threads,
                              markers=['"result":"applied"', '"result":"duplicate"', '"result":"ignored"'])  # fmt: skip
        marks: dict = {}

        def refill(count: int) -> None:
            requests.write(platform.requests(pool.take(math.ceil(count / len(EVENTS))), args.batch))

        def on_start() -> None:
            time.sleep(2.0)  # the warm-up's cut-off requests finish, and its pushes drain
            seeding.drain(db, s.channels, "after the warm-up", 1, args.drain_timeout)
            marks["events0"] = db.count("SELECT count(*) FROM case_events WHERE actor_type = 'platform'")
            marks["start"] = (time.monotonic(), db.push_counts(), seeding.subscribe_sends(s.channels))

        def on_end(row: h.Row) -> None:
            t0, c0, sends0 = marks["start"]
            now, counts, sends = time.monotonic(), db.push_counts(), seeding.subscribe_sends(s.channels)
            during = seeding.Drain("during the measured run", 1, seconds=now - t0, sends=sends - sends0)
            during.settled = sum(counts[k] - c0[k] for k in seeding.SETTLED)
            during.sent = counts["sent"] - c0["sent"]
            after = seeding.drain(db, s.channels, "drain after the measured run", 1, args.drain_timeout,
                                  since=(now, counts, sends))  # fmt: skip
            pushes.extend([during.cells(server.label), after.cells(server.label)])
            s.note(f"{server.label}, pushes drain after the measured run: {after.timeline_note()}")
            events = db.count("SELECT count(*) FROM case_events WHERE actor_type = 'platform'") - marks["events0"]
            row.extra = {"platform case events written": events}

        row = s.wrk(TARGET, server, PATH, ceiling=ceiling, requests=requests, refill=refill, rate_guess=1000,
                    on_start=on_start, on_end=on_end, settle=0.0)  # fmt: skip
        if not row.failed:
            bad = [(st, b[:80]) for st, b in row.samples if st != 200 or json.loads(b).get("result") != "applied"]
            s.note(f"{TARGET}, {server.label}: {h.sent_note(row)}; {len(row.samples)} sampled answers checked, "
                   f"{len(row.samples) - len(bad)} `applied`" + (f"; others: {bad[:5]}" if bad else ""))  # fmt: skip
            if row.sent.get("reused") or set(row.statuses) - {200}:
                s.failed = True
        if last:
            for processes in [int(p) for p in str(args.drain_processes).split(",") if p.strip()]:
                server.stop_helpers()
                server.helpers = [hp for hp in server.helpers if hp.name != "worker"]
                answers = asyncio.run(
                    send_backlog(server.base, platform, pool.take(math.ceil(args.backlog / len(EVENTS))))
                )
                server.add_helper("worker", ["worker", "--processes", str(processes)])
                if not any(hp.name == "scheduler" and hp.running() for hp in server.helpers):
                    server.add_helper("scheduler", ["scheduler"])
                d = seeding.drain(db, s.channels, f"backlog drain ({args.backlog} callbacks queued, worker stopped)",
                                  processes, args.drain_timeout)  # fmt: skip
                pushes.append(d.cells(server.label))
                s.note(f"{server.label}, backlog drain with {processes} process(es): callbacks {h.outcomes(answers)}; "
                       f"{d.timeline_note()}")  # fmt: skip
                s.summarise_value(f"push backlog drain, {processes} worker process(es)", server.label,
                                  d.settled / d.seconds if d.seconds else None, "pushes settled/s")  # fmt: skip
        s.note(f"{server.label}: cases by status at the end: {h.outcomes(db.case_statuses())}")
        rows = [ceiling, row]
    except Exception as exc:  # ours, httpx's, asyncpg's: the row says what went wrong
        rows = [s.failed_row(TARGET, server.label, exc)]
    s.stop(server)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = h.parse_args(__doc__, argv, extra, workers="1,2",
                        quick={"workers": "2", "users": 300, "cases": 2000, "backlog": 500, "drain_processes": "2"})  # fmt: skip
    args.no_embedded = True
    with h.Session(args, SECTION, "benchmarks/callbacks.py") as s:
        if s.production_missing:
            print(f"needs PostgreSQL and Redis: {s.production_missing}", file=sys.stderr)
            return 2
        platform = Platform(s.channels)
        rows, pushes = [], []
        for i, workers in enumerate(args.worker_counts):
            rows += run_row(s, workers, i == len(args.worker_counts) - 1, platform, pushes, args)
        s.wrk_table("", rows)
        s.table("Progress pushes (settled = sent, inbox_only or failed; sent = carried by a WeChat message):", pushes,
                {"seconds": 1})  # fmt: skip
        return s.finish(
            [
                "Servers: one row each, a fresh PostgreSQL database and Redis prefix, `TASK_BROKER=redis`, "
                "`server.py migrate` and `load-demo` with the server's environment, then `serve` with `WORKERS=N` "
                "beside `worker --processes 1` and `scheduler`; every channel configured against the simulators "
                "(the platform simulator with the run's app key and secret), `PUSH_MP_TEMPLATE_ID` made for the run, "
                "`PUSH_QUIET_HOURS` empty.",
                f"Seeded with asyncpg after load-demo: {args.users} citizens (each granted 1000 one-time "
                f"subscriptions at the WeChat simulator and in Zhangban), {args.cases} cases of 居民身份证换领 in "
                "`delivered_to_platform` at first, more as the runs take them.",
                f"Commands: `wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency` on `/healthz`, "
                "and with `-s` the Lua script sending each signed callback once; each after a "
                f"{args.warmup} s warm-up with its own callbacks. The ratio is to `/healthz` of the same server.",
                "Pushes: *during the measured run* counts pushes settled between its start (once the warm-up's "
                "pushes drained) and its end; *drain after* from its end until nothing is pending or sending "
                "(polled every 0.5 s); *backlog drain* from the first push settled until none is left.",
            ]
        )


if __name__ == "__main__":
    sys.exit(main())
