"""Notices: the fan-out of one notice to every follower of the official account, on PostgreSQL and
Redis: messages per second to the WeChat simulator, and the sending worker's peak memory.

    .venv/bin/python benchmarks/notices.py [--quick] [--sizes 10000,100000] [--rate 0]

What it measures, per size (production only, a fresh database and Redis prefix each, `migrate`,
every channel configured against the simulators): the followers are registered at the WeChat
simulator in one control call (`/__sim__/users/bulk`) and seeded straight into the `followers`
table with asyncpg COPY, not linked to citizens, so every recipient is one template message. Then
`server.py worker --processes 1` and `server.py scheduler` start with `NOTICE_SEND_RATE=--rate` (0:
no limit, what the pipeline can do). After `--idle` seconds of idle ticks the worker's resident
high-water mark (VmHWM, the largest of its processes) is read, a notice to every follower is
inserted as `sending`, and `zb.notices` (every 5 s) sends it in slices of at most 60 s under its
Redis lock. messages/s = recipients / time from the first delivered one to the notice's `sent`
(polled every 0.5 s). Afterwards: VmHWM again (flat memory: the audience is streamed), the
simulator's count of template calls (must equal the recipients) and the delivery rows (all `sent`,
distinct), and the CPU each message cost in each of our processes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
import sys
import time
from pathlib import Path

import harness as h

SECTION = "## Notices (fan-out to followers)"
TEMPLATE_PATH = "/cgi-bin/message/template/send"


def extra(p) -> None:
    p.add_argument("--sizes", default="10000,100000", help="recipients per run (10000,100000)")
    p.add_argument("--rate", type=int, default=0, help="NOTICE_SEND_RATE (0: no limit)")
    p.add_argument("--idle", type=float, default=12, help="seconds of idle ticks before the baseline (12)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds a send may take (1800)")


def vm_hwm_kib(root: int) -> int:
    """The largest VmHWM among `root` and its descendants (from /proc)."""
    peak, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return peak


async def seed(url: str, size: int, prefix: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        now = dt.datetime.now(dt.UTC)
        await conn.copy_records_to_table(
            "followers",
            records=((f"{prefix}{i:07d}", None, None, True, None, now, now) for i in range(size)),
            columns=["oa_openid", "unionid", "user_id", "subscribed", "last_message_at", "created_at", "updated_at"],
        )
        return await conn.fetchval(
            """INSERT INTO notices (title, body, link_kind, link_target, image_url, audience, status, scheduled_at,
                   department, created_by, total, sent, failed, skipped, cursor, exhausted, paused_until, quota_hits,
                   published_at, finished_at, cancelled_at, created_at, updated_at)
               VALUES ('基准测试通知', '通知群发基准测试。', 'none', '', NULL, $1, 'sending', NULL, '泸州市公安局', 1,
                   $2, 0, 0, 0, NULL, false, NULL, 0, $3, NULL, NULL, $3, $3) RETURNING id""",
            json.dumps({"kind": "followers"}),
            size,
            now,
        )
    finally:
        await conn.close()


def run_size(s: h.Session, size: int, args) -> dict:
    env = {"NOTICE_SEND_RATE": str(args.rate), "PUSH_MP_TEMPLATE_ID": "bench-progress-mp",
           "PUSH_OA_TEMPLATE_ID": "bench-progress-oa"}  # fmt: skip
    server = s.zhangban(h.PRODUCTION, env=env, name=f"{size:,} recipients")
    url = server.env["DATABASE_URL"]
    server.prepare(demo=False)
    prefix = f"bn{secrets.token_hex(3)}_"
    s.channels.wechat.control("__sim__/users/bulk", {"appid": s.channels.oa_appid, "prefix": prefix, "count": size})
    calls0 = s.channels.wechat.calls().get(TEMPLATE_PATH, 0)
    worker = server.add_helper("worker", ["worker", "--processes", "1"])
    server.add_helper("scheduler", ["scheduler"])
    time.sleep(args.idle)
    baseline = vm_hwm_kib(worker.pid)
    notice_id = asyncio.run(seed(url, size, prefix))
    first = done = None
    deadline = time.monotonic() + args.timeout
    with s.watch(server) as watch:
        while time.monotonic() < deadline and done is None:
            status, sent = h.pg_fetch(url, "SELECT status, sent FROM notices WHERE id = $1", notice_id)[0]
            if first is None and sent > 0:
                first = time.monotonic()
            if status == "sent":
                done = time.monotonic()
            elif not worker.running():
                raise RuntimeError(f"the worker exited: {worker.log_path.read_text()[-600:]}")
            else:
                time.sleep(0.5)
    if done is None or first is None:
        counts = h.pg_fetch(url, "SELECT status, sent, failed, skipped FROM notices WHERE id = $1", notice_id)[0]
        raise RuntimeError(
            f"the notice to {size:,}: (status, sent, failed, skipped) {counts} after {args.timeout:.0f} s"
        )
    peak = vm_hwm_kib(worker.pid)
    calls = s.channels.wechat.calls().get(TEMPLATE_PATH, 0) - calls0
    rows, distinct = h.pg_fetch(
        url,
        "SELECT count(*), count(DISTINCT recipient) FROM notice_deliveries WHERE notice_id = $1 AND status = 'sent'",
        notice_id,
    )[0]
    if rows != distinct or calls != size or rows != size:
        s.failed = True
        s.note(
            f"{size:,}: {calls:,} template calls and {rows:,} rows sent ({distinct:,} distinct) for {size:,} recipients"
        )
    per = {name: watch.core_share(name) * watch.seconds / size * 1000 for name in watch.used}
    s.note(
        f"{size:,} recipients: CPU per message: " + ", ".join(f"{k} {v:.2f} ms" for k, v in per.items() if v >= 0.01)
    )
    s.stop(server)
    rate = size / (done - first)
    s.summarise_value(f"notice fan-out to {size:,}", "worker, 1 process", rate, "messages/s")
    return {"recipients": size, "send time s": done - first, "messages/s": rate,
            "worker VmHWM idle MiB": baseline / 1024, "worker VmHWM after send MiB": peak / 1024,
            "template calls": calls, "rows sent": rows, "_others": watch.others()}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = h.parse_args(__doc__, argv, extra, quick={"sizes": "2000", "idle": 6})
    with h.Session(args, SECTION, "benchmarks/notices.py", needs_wrk=False) as s:
        if s.production_missing:
            print(f"needs PostgreSQL and Redis: {s.production_missing}", file=sys.stderr)
            return 2
        rows = []
        for size in [int(x) for x in args.sizes.split(",") if x.strip()]:
            try:
                rows.append(run_size(s, size, args))
            except Exception as exc:  # ours, httpx's, asyncpg's: the row says what went wrong
                s.failed_row("notice fan-out", f"{size:,} recipients", exc)
        s.table("", rows, {"send time s": 1, "worker VmHWM idle MiB": 1, "worker VmHWM after send MiB": 1})
        return s.finish(
            [
                "Per size: a fresh PostgreSQL database and Redis prefix, `server.py worker --processes 1` and "
                "`server.py scheduler` (`TASK_BROKER=redis`), every channel configured against the simulators. "
                "Followers seeded with COPY, not linked to citizens: each recipient is one official-account template "
                f"message. `NOTICE_SEND_RATE={args.rate}`.",
                "send time: first delivered recipient to the notice's `sent` status, polled every 0.5 s (the 5 s gaps "
                "between 60 s slices included); messages/s = recipients / send time.",
                f"VmHWM: the worker's resident high-water mark after {args.idle:g} s of idle ticks and after the send.",
                "template calls: what the simulator counted during the run (must equal the recipients).",
            ]
        )


if __name__ == "__main__":
    sys.exit(main())
