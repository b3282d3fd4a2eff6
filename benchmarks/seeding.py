"""Seeding a benchmark's PostgreSQL database straight with asyncpg, and the counts the reports need:
citizens, cases handed to the platform, push grants, push drains, `pg_stat_activity` samples.
Shared by callbacks.py, payments.py and evaluation.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import harness as h

ITEM_NAME = "居民身份证换领"
PUSH_STATUSES = ("pending", "sending", "sent", "inbox_only", "failed")
SETTLED = ("sent", "inbox_only", "failed")
SUBSCRIBE_SEND = "/cgi-bin/message/subscribe/send"
POLL_S = 0.5
GRANTS_PER_USER = 1000  # one-time subscriptions per citizen: more than they can use in a run


@dataclass
class SeededUser:
    id: int
    openid: str


class Database:
    """A benchmark server's PostgreSQL database (after `migrate` and `load-demo`)."""

    def __init__(self, url: str):
        self.url = url
        self.users: list[SeededUser] = []
        self.item: tuple[int, str, str] | None = None
        self.next_no = 1
        self.day = dt.datetime.now(h.CHINA).strftime("%Y%m%d")

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

    def count(self, sql: str, *args) -> int:
        return int(self.fetch(sql, *args)[0][0])

    @staticmethod
    async def unfilled(conn, table: str, filled: set[str]) -> list[str]:
        """NOT NULL columns of `table` without a default that the seeding does not fill: the
        schema moved on and the seeding must follow (it says so rather than insert bad rows)."""
        rows = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1 "
            "AND is_nullable = 'NO' AND column_default IS NULL",
            table,
        )
        return sorted({r[0] for r in rows} - filled)

    def seed_users(self, count: int) -> list[SeededUser]:
        async def work(conn):
            missing = await self.unfilled(
                conn, "users", {"openid", "identity_level", "is_active", "created_at", "updated_at"}
            )
            if missing:
                raise RuntimeError(f"seeding: users.{', '.join(missing)} must be filled (update benchmarks/seeding.py)")
            openids = ["o" + secrets.token_urlsafe(21)[:27] for _ in range(count)]
            rows = await conn.fetch(
                "INSERT INTO users (openid, identity_level, is_active, created_at, updated_at) "
                "SELECT o, 'L1', true, now(), now() FROM unnest($1::text[]) AS t(o) RETURNING id, openid",
                openids,
            )
            return [SeededUser(int(r[0]), r[1]) for r in rows]

        self.users += self.run(work)
        return self.users

    def seed_cases(self, count: int, status: str = "delivered_to_platform") -> list[str]:
        """`count` cases of 居民身份证换领 handed to the platform (platform_seq 0, one `system` case
        event), case i owned by user i mod len(users)."""

        async def work(conn):
            if self.item is None:
                row = await conn.fetchrow(
                    "SELECT id, code, name FROM service_items WHERE name = $1 AND is_current ORDER BY version DESC LIMIT 1",
                    ITEM_NAME,
                )
                if row is None:
                    raise RuntimeError(f"seeding: no current service item named {ITEM_NAME} (did load-demo run?)")
                self.item = (int(row[0]), row[1], row[2])
                filled = {"case_no", "user_id", "service_item_id", "service_code", "service_name", "status",
                          "materials", "platform_seq", "row_version", "submitted_at", "updated_at", "fee_ref",
                          "platform_heard_at"}  # fmt: skip
                missing = await self.unfilled(conn, "cases", filled)
                missing += [
                    f"case_events.{c}"
                    for c in await self.unfilled(
                        conn, "case_events", {"case_id", "at", "actor_type", "from_status", "to_status", "note", "data"}
                    )
                ]
                if missing:
                    raise RuntimeError(
                        f"seeding: cases.{', '.join(missing)} must be filled (update benchmarks/seeding.py)"
                    )
            numbers = range(self.next_no, self.next_no + count)
            case_nos = [f"ZB{self.day}{n:06d}" for n in numbers]
            owners = [self.users[n % len(self.users)].id for n in numbers]
            item_id, code, name = self.item
            async with conn.transaction():
                # row_version 2: created (1), then handed to the platform by the relay (+1).
                ids = [
                    r[0]
                    for r in await conn.fetch(
                        "INSERT INTO cases (case_no, user_id, service_item_id, service_code, service_name, status, "
                        "materials, platform_seq, row_version, submitted_at, updated_at, fee_ref, platform_heard_at) "
                        "SELECT c, u, $3, $4, $5, $6, '{}'::jsonb, 0, 2, now(), now(), '', now() "
                        "FROM unnest($1::text[], $2::bigint[]) AS t(c, u) RETURNING id",
                        case_nos,
                        owners,
                        item_id,
                        code,
                        name,
                        status,
                    )
                ]
                await conn.execute(
                    "INSERT INTO case_events (case_id, at, actor_type, from_status, to_status, note, data) "
                    "SELECT i, now(), 'system', 'submitted', 'delivered_to_platform', '已推送至审批部门', '{}'::jsonb "
                    "FROM unnest($1::bigint[]) AS t(i)",
                    ids,
                )
            return case_nos

        if self.next_no + count > 10**6:
            raise RuntimeError("seeding: more than 999,999 cases in one database")
        case_nos = self.run(work)
        self.next_no += count
        return case_nos

    def seed_grants(self, template_id: str, grants: int = GRANTS_PER_USER) -> int:
        """Zhangban's record that each citizen has `grants` one-time subscriptions left for
        `template_id`, as `handlers.push.record_grants` writes after wx.requestSubscribeMessage."""

        async def work(conn):
            await conn.execute(
                "INSERT INTO subscription_grants (user_id, template_id, remaining, accepted_total, last_result, "
                "updated_at) SELECT u, $2, $3, $3, 'accept', now() FROM unnest($1::bigint[]) AS x(u)",
                [u.id for u in self.users],
                template_id,
                grants,
            )
            return len(self.users)

        return self.run(work)

    def push_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(PUSH_STATUSES, 0)
        for status, n in self.fetch("SELECT push_status, count(*) FROM notifications GROUP BY 1"):
            counts[str(status)] = int(n)
        return counts

    def case_statuses(self) -> dict[str, int]:
        return {s: int(n) for s, n in self.fetch("SELECT status, count(*) FROM cases GROUP BY 1 ORDER BY 2 DESC")}


class Pool:
    """Seeded cases no run has used yet; `take()` seeds more when it runs short."""

    def __init__(self, db: Database, seed: Callable[[int], list[str]] | None = None):
        self.db, self.cases, self.seeded = db, [], 0
        self._seed = seed or db.seed_cases

    def take(self, count: int) -> list[str]:
        if count > len(self.cases):
            more = count - len(self.cases)
            self.cases += self._seed(more)
            self.seeded += more
        taken, self.cases = self.cases[:count], self.cases[count:]
        return taken


async def grant_at_sim(
    channels: h.Channels, users: list[SeededUser], template_id: str, grants: int = GRANTS_PER_USER
) -> None:
    """Each citizen registered at the WeChat simulator with `grants` one-time subscriptions."""
    import httpx

    async with httpx.AsyncClient(base_url=channels.wechat.url, timeout=30) as client:

        async def one(user):
            response = await client.post(
                "/__sim__/subscriptions",
                json={"appid": h.SIM_APPID, "openid": user.openid, "template_id": template_id, "count": grants},
            )
            if response.status_code != 200:
                raise RuntimeError(f"simulator subscriptions: {response.status_code} {response.text[:200]}")
            return "granted", True

        load = await h.drive(one, 16, items=users)
    if load.outcomes.get("granted", 0) != len(users):
        raise RuntimeError(f"simulator subscriptions: {h.outcomes(load.outcomes)}")


def subscribe_sends(channels: h.Channels) -> int:
    return sum(n for path, n in channels.wechat.calls().items() if path.endswith(SUBSCRIBE_SEND))


@dataclass
class Drain:
    """Progress pushes settling (sent, inbox_only or failed) over a window."""

    label: str
    processes: int
    settled: int = 0
    sent: int = 0
    sends: int = 0  # subscribe messages the WeChat simulator received
    seconds: float | None = None
    timed_out: bool = False
    timeline: list[tuple[float, int]] = field(default_factory=list)

    def cells(self, server: str) -> dict:
        rate = self.settled / self.seconds if self.seconds else None
        return {
            "server": server,
            "phase": self.label + (" (timed out)" if self.timed_out else ""),
            "worker processes": self.processes,
            "pushes settled": self.settled,
            "sent via WeChat": self.sent,
            "WeChat subscribe messages": self.sends,
            "seconds": self.seconds,
            "settled/s": rate,
        }

    def timeline_note(self) -> str:
        points = self.timeline[:: max(1, math.ceil(len(self.timeline) / 10))]
        if self.timeline and points[-1] != self.timeline[-1]:
            points.append(self.timeline[-1])
        return "pending + sending: " + ", ".join(f"{left} at {t:.1f} s" for t, left in points)


def drain(db: Database, channels: h.Channels, label: str, processes: int, timeout: float,
          since: tuple[float, dict[str, int], int] | None = None) -> Drain:  # fmt: skip
    """Polls the push counts every POLL_S until nothing is pending or sending (or `timeout`). The
    window starts at `since` (monotonic time, counts and WeChat sends then) or else at the first
    poll that saw a push settle (a worker's start-up is not counted), and ends at the poll that saw
    nothing left."""
    if since is None:
        began, start, sends0 = time.monotonic(), db.push_counts(), subscribe_sends(channels)
        ref_t, ref = None, None
    else:
        began, start, sends0 = since
        ref_t, ref = since[0], since[1]
    result = Drain(label, processes)

    async def poll(conn):
        nonlocal ref_t, ref
        k = 0
        first = time.monotonic()
        while True:
            counts = dict.fromkeys(PUSH_STATUSES, 0)
            for status, n in await conn.fetch("SELECT push_status, count(*) FROM notifications GROUP BY 1"):
                counts[str(status)] = int(n)
            now = time.monotonic()
            left = counts["pending"] + counts["sending"]
            result.timeline.append((now - began, left))
            if ref is None and sum(counts[s] for s in SETTLED) > sum(start[s] for s in SETTLED):
                ref_t, ref = now, counts
            if left == 0 or now - began > timeout:
                result.timed_out = left > 0
                return now, counts
            k += 1
            await asyncio.sleep(max(0.0, first + k * POLL_S - time.monotonic()))

    now, counts = db.run(poll)
    result.sends = subscribe_sends(channels) - sends0
    if ref is not None and now > ref_t:
        result.seconds = now - ref_t
        result.settled = sum(counts[s] - ref[s] for s in SETTLED)
        result.sent = counts["sent"] - ref["sent"]
    return result


class PgActivity:
    """Samples `pg_stat_activity` of the database every `every` s while entered (a thread with its
    own connection): what the server's sessions were doing, on average per sample."""

    def __init__(self, db_name: str, every: float = 0.1):
        self.db_name, self.every = db_name, every
        self.samples, self.states, self.most = 0, Counter(), 0

    def __enter__(self) -> PgActivity:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    async def _run(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(h.PG_ADMIN_URL, timeout=10)
        try:
            while not self._stop.is_set():
                rows = await conn.fetch(
                    "SELECT state, wait_event_type, wait_event FROM pg_stat_activity WHERE datname = $1 "
                    "AND pid <> pg_backend_pid()",
                    self.db_name,
                )
                self.samples += 1
                self.most = max(self.most, len(rows))
                for state, wtype, wevent in rows:
                    self.states[f"{state} ({wtype}:{wevent})" if wtype else f"{state} (on CPU)"] += 1
                await asyncio.sleep(self.every)
        finally:
            await conn.close()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def summary(self) -> str:
        if not self.samples:
            return "no sample"
        return f"up to {self.most} connections; on average per sample ({self.samples} samples): " + ", ".join(
            f"{k} {v / self.samples:.1f}" for k, v in self.states.most_common(6)
        )
