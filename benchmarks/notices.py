"""Notices benchmark: the fan-out of one notice to 10,000 and 100,000 followers, on PostgreSQL
and Redis: messages per second to the WeChat simulator, and the sending worker's peak memory.

    .venv/bin/python benchmarks/notices.py [--sizes 10000,100000] [--rate 0] [--no-write]

Per size, everything fresh: a new PostgreSQL database on postgresql://postgres@127.0.0.1:5432
(dropped afterwards), Redis on 127.0.0.1:6379 with a throw-away REDIS_KEY_PREFIX (its keys deleted
afterwards), `TASK_BROKER=redis`, random SECRET_KEY / FIELD_ENCRYPTION_KEY, `server.py migrate`.
WeChat is the WeChat simulator (`python -m wechat.simulator`, its own process), which is told about
the N followers in one control call (`/__sim__/users/bulk`); the core platform and the payment
channels are left to the in-process simulators of a staging deployment (`ALLOW_SIMULATORS=staging`),
which a notice never calls. The N followers are seeded straight into the `followers` table with
asyncpg (COPY), not linked to citizens, so every recipient is one template message.

Then `server.py worker --processes 1` and `server.py scheduler` start, with `NOTICE_SEND_RATE`
(`--rate`, default 0: no limit, to measure what the pipeline can do) and the default
`NOTICE_BATCH`. Once the worker has run a few idle ticks, its resident high-water mark (VmHWM from
/proc, the largest of the worker's processes) is read as the baseline, a notice to every follower
is inserted as `sending`, and the `zb.notices` job (every 5 s) sends it in slices of at most 60 s,
one sender under its Redis lock. The database is polled every 0.5 s; the rate is the recipients
over the time from the first delivered one to the notice's `sent` status (the 5 s ticks between
slices included). Afterwards: VmHWM again, the simulator's count of template calls (must be N: no
recipient twice) and the delivery rows (N, all `sent`).

Results are printed and, unless `--no-write`, written to the `## Notices (fan-out to followers)`
section of benchmarks/RESULTS.md; the other sections are kept.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import http_baseline as hb  # noqa: E402  (the shared benchmark plumbing)
import identity as idb  # noqa: E402  (the WeChat simulator process, PostgreSQL helpers)

ROOT = hb.ROOT
SECTION = "## Notices (fan-out to followers)"
OA_APPID, OA_SECRET = "wx_sim_officialacct", "sim_oa_secret_0123456789abcdef"
MP_APPID, MP_SECRET = "wx_sim_miniprogram", "sim_mp_secret_0123456789abcdef"
TEMPLATE_PATH = "/cgi-bin/message/template/send"


@dataclass
class Result:
    size: int
    seconds: float
    per_second: float
    baseline_kib: int
    peak_kib: int
    sim_calls: int
    rows_sent: int
    slices: int


def descendants(pid: int) -> list[int]:
    out = []
    try:
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    except OSError:
        return out
    for child in map(int, children):
        out += [child, *descendants(child)]
    return out


def vm_hwm_kib(pids: list[int]) -> int:
    peak = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            continue
    return peak


def spawn(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    handle = open(log, "wb")
    return subprocess.Popen(
        [hb.python_bin(), str(ROOT / "server.py"), *args],
        env=env,
        cwd=ROOT,
        stdout=handle,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(10)


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


async def poll(url: str, notice_id: int) -> tuple[str, int]:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow("SELECT status, sent FROM notices WHERE id = $1", notice_id)
        return row["status"], row["sent"]
    finally:
        await conn.close()


def run_size(size: int, args: argparse.Namespace, workdir: Path, sim: idb.Simulator) -> Result:
    tag = secrets.token_hex(3)
    db_name = f"zbbench_notices_{tag}"
    asyncio.run(idb._pg(f'CREATE DATABASE "{db_name}"'))
    url = idb.pg_url_for(db_name).replace("postgresql://", "postgres://", 1)
    prefix = f"zbbn{tag}:"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "DATABASE_URL": url,
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "REDIS_KEY_PREFIX": prefix,
        "TASK_BROKER": "redis",
        "SECRET_KEY": secrets.token_urlsafe(48),
        "FIELD_ENCRYPTION_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        "WECHAT_API_BASE": sim.url,
        "WECHAT_MP_APPID": MP_APPID,
        "WECHAT_MP_SECRET": MP_SECRET,
        "WECHAT_OA_APPID": OA_APPID,
        "WECHAT_OA_SECRET": OA_SECRET,
        "WECHAT_OA_TOKEN": secrets.token_urlsafe(24),
        "WECHAT_OA_AES_KEY": base64.b64encode(secrets.token_bytes(32)).decode()[:-1],
        "PUSH_MP_TEMPLATE_ID": "bench-progress-mp",
        "PUSH_OA_TEMPLATE_ID": "bench-progress-oa",
        "ALLOW_SIMULATORS": "staging",
        "SIMULATOR_SECRET": secrets.token_urlsafe(32),
        "NOTICE_SEND_RATE": str(args.rate),
        "LOG_LEVEL": "WARNING",
        "PUBLIC_BASE_URL": "http://127.0.0.1:9",
    }
    worker = scheduler = None
    try:
        migrated = subprocess.run(
            [hb.python_bin(), str(ROOT / "server.py"), "migrate"], env=env, cwd=ROOT, capture_output=True, text=True
        )
        if migrated.returncode != 0:
            raise RuntimeError(f"migrate failed: {migrated.stderr[-2000:]}")
        openids = f"bn{tag}_"
        sim.control("users/bulk", {"appid": OA_APPID, "prefix": openids, "count": size})
        calls_before = json.loads(
            subprocess.run(["curl", "-s", sim.url + "/__sim__/stats"], capture_output=True, text=True).stdout
        )["calls"].get(TEMPLATE_PATH, 0)
        worker = spawn(["worker", "--processes", "1"], env, workdir / f"worker-{size}.log")
        scheduler = spawn(["scheduler"], env, workdir / f"scheduler-{size}.log")
        time.sleep(args.idle)  # a few idle ticks: the worker's own baseline
        baseline = vm_hwm_kib([worker.pid, *descendants(worker.pid)])
        notice_id = asyncio.run(seed(url, size, openids))
        first = done = None
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            status, sent = asyncio.run(poll(url, notice_id))
            if first is None and sent > 0:
                first = time.monotonic()
            if status == "sent":
                done = time.monotonic()
                break
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited: {(workdir / f'worker-{size}.log').read_text()[-2000:]}")
            time.sleep(0.5)
        if done is None or first is None:
            raise RuntimeError(f"the notice to {size} was not sent within {args.timeout} s")
        peak = vm_hwm_kib([worker.pid, *descendants(worker.pid)])
        stats = json.loads(
            subprocess.run(["curl", "-s", sim.url + "/__sim__/stats"], capture_output=True, text=True).stdout
        )
        sim_calls = stats["calls"].get(TEMPLATE_PATH, 0) - calls_before
        rows = asyncio.run(
            idb._pg(
                f"SELECT count(*), count(DISTINCT recipient) FROM notice_deliveries WHERE notice_id = {notice_id} "
                "AND status = 'sent'",
                url,
                fetch=True,
            )
        )[0]
        if rows[0] != rows[1]:
            raise RuntimeError(f"duplicate delivery rows: {rows}")
        seconds = done - first
        slices = max(1, int(seconds // 60) + 1)
        return Result(size, seconds, size / seconds, baseline, peak, sim_calls, rows[0], slices)
    finally:
        for proc in (scheduler, worker):
            if proc is not None:
                stop(proc)
        asyncio.run(idb._pg(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        import redis

        client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def section(results: list[Result], args: argparse.Namespace, machine: str, when: str) -> str:
    lines = [
        SECTION,
        "",
        f"Measured {when} by `.venv/bin/python benchmarks/notices.py` (`--rate {args.rate}`).",
        "",
        "| recipients | send time s | messages/s | worker VmHWM idle MiB | worker VmHWM after send MiB | template calls | rows sent |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.size:,} | {r.seconds:.1f} | {r.per_second:,.0f} | {r.baseline_kib / 1024:.1f} | "
            f"{r.peak_kib / 1024:.1f} | {r.sim_calls:,} | {r.rows_sent:,} |"
        )
    lines += [
        "",
        "- Per size: a fresh PostgreSQL database and Redis prefix, `server.py worker --processes 1` and "
        "`server.py scheduler` (production mode, `TASK_BROKER=redis`), the WeChat simulator as its own process. "
        "Followers seeded with asyncpg COPY, not linked to citizens: each recipient is one official-account "
        "template message (no inbox row). The notice is inserted as `sending`; `zb.notices` (every 5 s) sends it "
        "in slices of at most 60 s under its Redis lock, `NOTICE_BATCH` 200 recipients read per keyset page, "
        "8 messages in flight.",
        "- send time: first delivered recipient to the notice's `sent` status, polled every 0.5 s (the 5 s "
        "gaps between 60 s slices included); messages/s = recipients / send time.",
        "- VmHWM: the resident high-water mark from /proc of the worker's processes (the largest), read after "
        f"{args.idle:.0f} s of idle ticks and again once the notice was sent: flat memory means the audience is "
        "streamed, never loaded whole.",
        "- template calls: what the simulator counted on `/cgi-bin/message/template/send` during the run "
        "(must equal the recipients: nobody twice); rows sent: delivery rows `sent`, one per recipient (checked distinct).",
        f"- Machine: {machine}. The worker, the scheduler, PostgreSQL, Redis and the simulator share its cores.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--rate", type=int, default=0, help="NOTICE_SEND_RATE (0: no limit)")
    parser.add_argument("--idle", type=float, default=12.0, help="seconds of idle ticks before the baseline")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if (why := idb.pg_answers()) is not None:
        print(why, file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="zb-bench-notices-") as tmp:
        workdir = Path(tmp)
        sim = idb.Simulator(workdir)
        sim.start()
        try:
            for size in sizes:
                result = run_size(size, args, workdir, sim)
                print(
                    f"{size:>7}: {result.seconds:7.1f} s  {result.per_second:8.0f} msg/s  "
                    f"VmHWM {result.baseline_kib / 1024:.1f} -> {result.peak_kib / 1024:.1f} MiB  "
                    f"calls {result.sim_calls}  rows {result.rows_sent}",
                    flush=True,
                )
                results.append(result)
        finally:
            sim.stop()
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = section(results, args, hb.machine_line(), when)
    print(text)
    if not args.no_write:
        hb.write_results(text, SECTION)
    failed = [r for r in results if r.sim_calls != r.size or r.rows_sent != r.size]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
