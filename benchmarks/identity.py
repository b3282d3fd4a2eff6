"""Identity: `GET /api/v1/me` (token check, two database reads, six decryptions) and
`POST /api/v1/auth/login` (jscode2session at the WeChat simulator, database and Redis writes).

    .venv/bin/python benchmarks/identity.py [--quick] [--duration 10] [--logins 3000] [--concurrency 16]

What it measures, per backend (embedded, production), on one server (1 worker):

- `GET /healthz` (the ceiling) and `GET /api/v1/me` with the same wrk command plus the bearer token
  of a citizen who declared a name and ID number (L2), bound a phone and one mailing address, so
  each `/me` looks up the token, reads the user and the addresses and decrypts six fields.
- Logins/s, p50 and p99: one-time wx.login codes minted beforehand at the WeChat simulator, posted
  once each with asyncio + httpx (`--concurrency` in flight). The server allows 30 logins a minute
  per client IP, so code i is sent from loopback address 127.0.0.{2 + i mod --addresses} (at most
  25 each); the audit log's logins per IP confirm what the server saw.
"""

from __future__ import annotations

import asyncio
import sys

import harness as h

SECTION = "## Identity (GET /api/v1/me, POST /api/v1/auth/login)"
LOGIN_LIMIT_PER_IP, PER_ADDRESS_MAX = 30, 25


def extra(p) -> None:
    p.add_argument("--logins", type=int, default=3000, help="timed logins per backend (3000)")
    p.add_argument("--concurrency", type=int, default=16, help="logins in flight (16)")
    p.add_argument("--addresses", type=int, default=199, help="loopback source addresses (199)")


def full_profile(s: h.Session, server: h.Zhangban) -> h.Citizen:
    """A citizen with a declared name and ID number, a phone and a mailing address."""
    import random

    citizen = h.Citizen(server.base, s.channels)
    citizen.declare()
    phone = f"139{random.randint(10000000, 99999999)}"
    code = s.channels.wechat.control(
        "__sim__/phone-code", {"appid": h.SIM_APPID, "openid": citizen.openid, "phone": phone}
    )["code"]
    citizen.call("POST", "/api/v1/me/phone", json={"code": code})
    citizen.call("POST", "/api/v1/me/addresses",
                 json={"recipient": "周九", "phone": phone, "region_code": "510502", "detail": "江阳区酒城大道三段18号"})  # fmt: skip
    me = citizen.call("GET", "/api/v1/me")
    if not (me.get("name_masked") and me.get("phone_masked") and len(me.get("addresses", [])) == 1):
        raise RuntimeError(f"set-up: /me is not the full profile: {me}")
    return citizen


async def mint(s: h.Session, count: int) -> list[str]:
    import httpx

    async with httpx.AsyncClient(base_url=s.channels.wechat.url, timeout=30) as client:

        async def one(_):
            response = await client.post("/__sim__/login-code", json={"appid": h.SIM_APPID})
            response.raise_for_status()
            codes.append(response.json()["code"])
            return "minted", True

        codes: list[str] = []
        await h.drive(one, 16, items=list(range(count)))
    return codes


async def logins(url: str, codes: list[str], addresses: list[str], concurrency: int) -> tuple[h.Load, h.Load]:
    """A warm-up login per address (opening its connection), then the timed ones."""
    import httpx

    clients = [httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address=a), timeout=30) for a in addresses]

    async def send(item):
        i, code = item
        response = await clients[i % len(clients)].post(url, json={"code": code})
        if response.status_code == 200:
            return "200", True
        return f"{response.status_code} {response.json().get('code', '?')}", False

    try:
        warm = await h.drive(send, concurrency, items=list(enumerate(codes[: len(addresses)])))
        timed = await h.drive(send, concurrency, items=list(enumerate(codes[len(addresses) :], len(addresses))))
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    return warm, timed


def measure_logins(s: h.Session, server: h.Zhangban, ceiling: h.Row, count: int, args) -> h.Row:
    target = "POST /api/v1/auth/login"
    addresses = [f"127.0.0.{x}" for x in range(2, 2 + min(args.addresses, 250))]
    if count > len(addresses) * PER_ADDRESS_MAX:
        count = len(addresses) * PER_ADDRESS_MAX
    h.wait_until_quiet(min(args.quiet_wait, max(0.0, s.left())))
    codes = asyncio.run(mint(s, len(addresses) + count))
    with s.watch(server) as watch:
        warm, timed = asyncio.run(logins(server.base + "/api/v1/auth/login", codes, addresses, args.concurrency))
    rps, p50, p99 = timed.summary()
    row = h.Row(target, server.label, rps, p50, p99, ratio=rps / ceiling.rps if rps and ceiling.rps else None)
    row.others_cpu, row.cpu = watch.others(), watch
    sql = "SELECT ip, COUNT(*) FROM audit_log WHERE action = 'auth.login' GROUP BY ip"
    if server.backend == h.PRODUCTION:
        seen = dict(h.pg_fetch(server.env["DATABASE_URL"], sql))
    else:
        import sqlite3

        with sqlite3.connect(next((server.cwd / "var").glob("*.sqlite3")), timeout=10) as conn:
            seen = dict(conn.execute(sql).fetchall())
    ours = {ip: n for ip, n in seen.items() if str(ip) in set(addresses)}
    row.extra = {"logins answered 200": len(timed.latencies)}
    s.note(
        f"{target}, {server.label}: {len(timed.latencies)} of {count} timed logins answered 200 in "
        f"{timed.wall_s:.1f} s (warm-up: {h.outcomes(warm.outcomes)}; timed: {h.outcomes(timed.outcomes)}); the audit "
        f"log has logins from {len(ours)} of the {len(addresses)} source addresses (at most "
        f"{max(ours.values(), default=0)} each; limit {LOGIN_LIMIT_PER_IP}/minute); CPU in shares of one core: "
        f"{watch.shares()}"
    )
    return row


def main(argv: list[str] | None = None) -> int:
    args = h.parse_args(__doc__, argv, extra, quick={"logins": 600, "addresses": 40})
    with h.Session(args, SECTION, "benchmarks/identity.py") as s:
        rows: list[h.Row] = []
        for backend in s.backends():
            server = s.zhangban(backend)
            try:
                server.prepare(demo=False)
                server.start()
                citizen = full_profile(s, server)
                ceiling = s.ceiling(server)
                me = s.wrk("GET /api/v1/me", server, "/api/v1/me", ceiling=ceiling, headers=citizen.headers)
                rows += [ceiling, me, measure_logins(s, server, ceiling, args.logins, args)]
            except Exception as exc:  # ours, httpx's, asyncpg's: the row says what went wrong
                rows.append(s.failed_row("identity", server.label, exc))
            s.stop(server)
        s.wrk_table("", rows)
        return s.finish(
            [
                "Servers: `server.py serve`, 1 worker, `LOG_LEVEL=WARNING`, every channel configured against the "
                "simulators (each its own process). *embedded*: SQLite, fakeredis. *production*: a fresh PostgreSQL "
                "database, Redis with a throw-away prefix, random SECRET_KEY and FIELD_ENCRYPTION_KEY.",
                f"`/healthz` and `/me`: `wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency` "
                f"(`-H 'Authorization: Bearer TOKEN'` for `/me`) after a {args.warmup} s warm-up; the ratio is "
                "requests/s over the same server's `/healthz`.",
                f"Logins: one warm-up login per source address, then up to {args.logins} timed, {args.concurrency} in "
                "flight, each code used once; requests/s = logins answered 200 / wall time of the timed part, "
                "latencies measured in the client (which shares the cores with the server and the simulator).",
            ]
        )


if __name__ == "__main__":
    sys.exit(main())
