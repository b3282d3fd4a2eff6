"""Payments: WeChat Pay notifies (`POST /pay/notify/wechat`) against `GET /healthz` of the same
server, order creation per channel against the payment simulators, Alipay RSA2 signing.

    .venv/bin/python benchmarks/payments.py [--quick] [--duration 10] [--workers 1,2] [--no-create] [--no-signing]

What it measures (production only; per row of `--workers` a fresh database, `migrate` and `load-demo`
with the server's environment, a worker and a scheduler beside the server; every channel configured
against its simulator, the merchant's keys generated for the run and registered at the pay-sim):

- Notifies/s, p50 and p99 (target: 1,000/s with 2 workers). The server of these rows trusts a
  WeChat Pay platform key pair generated here, so this script signs the notifies itself with
  `payments.wechatpay`'s helpers: a `TRANSACTION.SUCCESS` body with the transaction encrypted
  (AEAD_AES_256_GCM, APIv3 key) and the `Wechatpay-*` signature headers. Each pays a distinct order
  seeded `paying` (a case `in_review` with a fee): verify, decrypt, `paying → paid` under a row lock,
  the case's `fee_paid_at`, a case event, a notification and a `fee_paid` outbox row. Sent once each
  by a wrk Lua script; orders paid counted in PostgreSQL next to the requests sent. A probe first
  checks 204 and one transition, 204 and no change for the same notify again, 409 for another
  amount, 400 for a forged signature. Where the CPU went per notify, and what PostgreSQL's sessions
  were doing (`pg_stat_activity` every 0.1 s), are noted.
- Order creation per channel (`wechat`: JSAPI prepay at the pay-sim; `alipay_qr`: precreate at the
  pay-sim; `alipay_wap`: a signed URL), on the last row's database, the server restarted with the
  pay-sim's WeChat Pay key: one citizen, asyncio + httpx with `--create-concurrency` in flight, each
  request on a payable case of its own with a fresh `Idempotency-Key`.
- Alipay RSA2 in this process: `payments.alipay.sign_rsa2`/`verify_rsa2` (cryptography) against the
  SDK's `SignatureUtils` (pure-Python `rsa`) on one 2048-bit key and the sign content of a real
  precreate request; the signatures must be byte-identical.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import sys
import time

import harness as h
import seeding
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from payments import alipay as ali
from payments import wechatpay as wxp

SECTION = "## Payments (POST /pay/notify/wechat, order creation, Alipay signing)"
PATH = "/pay/notify/wechat"
TARGET = f"POST {PATH}"
CREATE_PATH = "/api/v1/cases/{case_no}/payments"
CHANNELS = ("wechat", "alipay_qr", "alipay_wap")
FEE_FEN, FEE_REF = 3000, "platform:3"
TARGET_RPS = 1000
ALIPAY_APP_ID, ALIPAY_SELLER = h.Channels.ALIPAY_APP_ID, h.Channels.ALIPAY_SELLER
PAID = ("orders paid", "payment events to paid", "fee_paid outbox rows", "cases fee paid")


def extra(p) -> None:
    p.add_argument("--users", type=int, default=2000, help="citizens seeded per row (2000)")
    p.add_argument("--orders", type=int, default=3000, help="orders seeded before the server starts (3000)")
    p.add_argument("--no-create", action="store_true")
    p.add_argument("--create-concurrency", type=int, default=8)
    p.add_argument("--create-duration", type=float, default=5)
    p.add_argument("--create-warmup", type=float, default=1)
    p.add_argument("--create-cases", type=int, default=3000, help="payable cases seeded per channel (3000)")
    p.add_argument("--no-signing", action="store_true")
    p.add_argument("--sign-iterations", type=int, default=200)
    p.add_argument("--sdk-iterations", type=int, default=20)


class Orders:
    """Cases made payable with one WeChat Pay order `paying` each (as after the JSAPI prepay)."""

    def __init__(self, db: seeding.Database):
        self.db, self.pool, self.seeded = db, seeding.Pool(db), 0

    def make_payable(self, case_nos: list[str], user_id: int | None = None) -> None:
        self.db.fetch(
            "UPDATE cases SET status = 'in_review', fee_fen = $2::int, fee_ref = $3::text, fee_paid_at = NULL, "
            "user_id = coalesce($4::bigint, user_id), updated_at = now() WHERE case_no = ANY($1::text[]) RETURNING 1",
            case_nos,
            FEE_FEN,
            FEE_REF,
            user_id,
        )

    def take(self, count: int) -> list[tuple[str, str, int]]:
        """`count` orders `paying`: (out_trade_no, payer openid, amount)."""
        case_nos = self.pool.take(count)
        self.make_payable(case_nos)
        self.seeded += count

        async def work(conn):
            filled = {"payment_id", "out_trade_no", "case_id", "user_id", "fee_ref", "open_slot", "idempotency_key",
                      "channel", "amount_fen", "state", "pay_data", "refunded_fen", "expires_at", "close_reason",
                      "created_at", "updated_at"}  # fmt: skip
            missing = await self.db.unfilled(conn, "payment_orders", filled)
            if missing:
                raise RuntimeError(f"seeding: payment_orders.{', '.join(missing)} must be filled (update payments.py)")
            rows = await conn.fetch(
                "SELECT c.id, u.id, u.openid FROM cases c JOIN users u ON u.id = c.user_id "
                "WHERE c.case_no = ANY($1::text[]) ORDER BY c.id",
                case_nos,
            )
            stamp = dt.datetime.now(h.CHINA).strftime("%y%m%d")
            nos = [f"ZB{stamp}{secrets.token_hex(10).upper()}" for _ in rows]
            await conn.execute(
                "INSERT INTO payment_orders (payment_id, out_trade_no, case_id, user_id, fee_ref, open_slot, "
                "idempotency_key, channel, amount_fen, state, pay_data, refunded_fen, expires_at, close_reason, "
                "created_at, updated_at) SELECT 'pay_' || left(md5(n), 24), n, c, u, $4::text, "
                "c::text || ':' || $4::text, 'bench-' || n, 'wechat', $5::bigint, 'paying', "
                "jsonb_build_object('prepay_id', 'wx' || n), 0, now() + interval '2 hours', '', now(), now() "
                "FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS t(n, c, u)",
                nos,
                [int(r[0]) for r in rows],
                [int(r[1]) for r in rows],
                FEE_REF,
                FEE_FEN,
            )
            return [(no, r[2], FEE_FEN) for no, r in zip(nos, rows, strict=True)]

        return self.db.run(work)

    def paid(self) -> dict[str, int]:
        row = self.db.fetch(
            "SELECT (SELECT count(*) FROM payment_orders WHERE state = 'paid'), "
            "(SELECT count(*) FROM payment_events WHERE to_state = 'paid'), "
            "(SELECT count(*) FROM outbox WHERE kind = 'fee_paid'), "
            "(SELECT count(*) FROM cases WHERE fee_paid_at IS NOT NULL)"
        )[0]
        return dict(zip(PAID, (int(x) for x in row), strict=True))

    def states(self) -> dict[str, int]:
        sql = "SELECT channel, state, count(*) FROM payment_orders GROUP BY 1, 2 ORDER BY 1, 2"
        return {f"{c} {st}": int(n) for c, st, n in self.db.fetch(sql)}


def notify(ch: h.Channels, order: tuple[str, str, int], amount_fen: int | None = None) -> tuple[dict, str]:
    """(headers, body) of a TRANSACTION.SUCCESS notify of `order`, signed with our platform key."""
    out_trade_no, openid, amount = order
    total = amount if amount_fen is None else amount_fen
    now = dt.datetime.now(h.CHINA)
    transaction = {
        "mchid": ch.MCHID, "appid": h.SIM_APPID, "out_trade_no": out_trade_no,
        "transaction_id": "4200002" + "".join(secrets.choice("0123456789") for _ in range(21)),
        "trade_type": "JSAPI", "trade_state": "SUCCESS", "trade_state_desc": "支付成功", "bank_type": "OTHERS",
        "attach": "", "success_time": wxp.rfc3339(now), "payer": {"openid": openid},
        "amount": {"total": total, "payer_total": total, "currency": "CNY", "payer_currency": "CNY"},
    }  # fmt: skip
    resource = wxp.encrypt_resource(ch.apiv3_key.encode(), wxp.dumps(transaction).encode(),
                                    associated_data="transaction", original_type="transaction")  # fmt: skip
    body = wxp.dumps({"id": secrets.token_hex(18), "create_time": wxp.rfc3339(now), "resource_type": "encrypt-resource",
                      "event_type": wxp.TRADE_EVENT, "summary": "支付成功", "resource": resource})  # fmt: skip
    timestamp, nonce = str(int(time.time())), wxp.new_nonce()
    signature = wxp.rsa_sign(ch.wxpay_platform_key, wxp.signing_message(timestamp, nonce, body))
    headers = {"Content-Type": "application/json", "Wechatpay-Timestamp": timestamp, "Wechatpay-Nonce": nonce,
               "Wechatpay-Signature": signature, "Wechatpay-Serial": ch.wxpay_platform_serial,
               "Wechatpay-Signature-Type": wxp.SIGN_SCHEME}  # fmt: skip
    return headers, body


def probe(base: str, ch: h.Channels, orders: Orders) -> str:
    import httpx

    first, other = orders.take(2)
    before = orders.paid()
    headers, body = notify(ch, first)
    wrong = notify(ch, other, amount_fen=other[2] + 1)
    forged_headers, forged_body = notify(ch, other)
    forged_headers["Wechatpay-Signature"] = headers["Wechatpay-Signature"]
    seen = []
    for what, (hdrs, b), want in (("first", (headers, body), 204), ("same again", (headers, body), 204),
                                  ("other amount", wrong, 409), ("forged signature", (forged_headers, forged_body), 400)):  # fmt: skip
        response = httpx.post(base + PATH, content=b.encode(), headers=hdrs, timeout=30)
        if response.status_code != want:
            raise RuntimeError(f"probe notify ({what}) answered {response.status_code} {response.text[:200]}")
        seen.append(f"{what} → {response.status_code}")
    delta = {k: v - before[k] for k, v in orders.paid().items()}
    if any(v != 1 for v in delta.values()):
        raise RuntimeError(f"probe: the database changed by {delta}, expected 1 of each")
    return "; ".join(seen) + "; database +1 of each: " + ", ".join(delta)


def precreate_content(key: rsa.RSAPrivateKey) -> str:
    """The sign content of a real alipay.trade.precreate request, as payments.alipay builds it."""
    from alipay.aop.api.domain.AlipayTradePrecreateModel import AlipayTradePrecreateModel
    from alipay.aop.api.request.AlipayTradePrecreateRequest import AlipayTradePrecreateRequest

    config = ali.AlipayConfig(
        gateway="http://127.0.0.1:9/alipay/gateway.do",
        app_id=ALIPAY_APP_ID,
        private_key=key,
        alipay_public_key=key.public_key(),
        notify_url="https://zhangban.example.gov.cn/pay/notify/alipay",
        seller_id=ALIPAY_SELLER,
    )
    model = AlipayTradePrecreateModel()
    model.out_trade_no = "ZB20261130100000A1B2C3D4E5"
    model.subject = "居民身份证换领-ZB20261130000123"
    model.total_amount = ali.fen_to_yuan(FEE_FEN)
    model.time_expire = "2026-11-30 10:30:00"
    request = AlipayTradePrecreateRequest(biz_model=model)
    request.notify_url = config.notify_url
    params = ali.Alipay(config, http=object())._signed_params(request)  # type: ignore[arg-type]  (no call made)
    params.pop("sign")
    return ali.sign_content(params)


def measure_signing(s: h.Session, args) -> list[dict]:
    from alipay.aop.api.util.SignatureUtils import sign_with_rsa2, verify_with_rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    content = precreate_content(key)
    private_text = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                     serialization.NoEncryption()).decode()  # fmt: skip
    public_text, public_key = ali.public_key_pem(key.public_key()), key.public_key()
    ours_sig = ali.sign_rsa2(key, content)
    identical = ours_sig == sign_with_rsa2(private_text, content, "utf-8")
    s.note(
        f"Alipay: sign content {len(content.encode()):,} bytes; signatures byte-identical: {'yes' if identical else 'NO'}"
    )
    if not identical:
        s.failed = True
    rows, ours = [], {}
    for op, impl, fn, n in (
        ("sign", "ours: payments.alipay.sign_rsa2 (cryptography)", lambda: ali.sign_rsa2(key, content), args.sign_iterations),
        ("sign", "SDK: SignatureUtils.sign_with_rsa2 (rsa)", lambda: sign_with_rsa2(private_text, content, "utf-8"), args.sdk_iterations),
        ("verify", "ours: payments.alipay.verify_rsa2 (cryptography)", lambda: ali.verify_rsa2(public_key, content, ours_sig), args.sign_iterations),
        ("verify", "SDK: SignatureUtils.verify_with_rsa (rsa)", lambda: verify_with_rsa(public_text, content.encode(), ours_sig), args.sdk_iterations),
    ):  # fmt: skip
        median, p99, others = h.time_call(fn, n)
        ours.setdefault(op, median)
        rows.append({"operation": op, "implementation": impl, "iterations": n, "median ms": median / 1000,
                     "p99 ms": p99 / 1000, "SDK / ours": median / ours[op], "_others": others})  # fmt: skip
    return rows


async def create_load(
    base: str, token: str, case_nos: list[str], channel: str, concurrency: int, seconds: float
) -> h.Load:
    import httpx

    todo = iter(case_nos)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base, timeout=30, limits=limits, headers={"Authorization": f"Bearer {token}"}
    ) as c:

        async def one(_):
            case_no = next(todo, None)
            if case_no is None:
                return "ran out of cases", False
            response = await c.post(CREATE_PATH.format(case_no=case_no), json={"channel": channel},
                                    headers={"Idempotency-Key": "bench-" + secrets.token_hex(12)})  # fmt: skip
            if response.status_code == 201:
                state = response.json().get("status")
                return ("201" if state == "paying" else f"201 {state}"), state == "paying"
            return f"{response.status_code} {response.json().get('code', '') if response.content else ''}", False

        return await h.drive(one, concurrency, seconds=seconds)


def measure_creations(s: h.Session, server: h.Zhangban, orders: Orders, args) -> list[dict]:
    citizen = h.Citizen(server.base, s.channels)
    user_id = orders.db.count("SELECT id FROM users WHERE openid = $1", citizen.openid)
    out = []
    for channel in CHANNELS:
        case_nos = orders.pool.take(args.create_cases)
        orders.make_payable(case_nos, user_id=user_id)
        paying0 = orders.states().get(f"{channel} paying", 0)
        h.wait_until_quiet(min(args.quiet_wait, max(0.0, s.left())))
        warm_n = int(args.create_warmup * 200) + args.create_concurrency
        asyncio.run(create_load(server.base, citizen.token, case_nos[:warm_n], channel, args.create_concurrency,
                                args.create_warmup))  # fmt: skip
        with s.watch(server) as watch:
            load = asyncio.run(create_load(server.base, citizen.token, case_nos[warm_n:], channel,
                                           args.create_concurrency, args.create_duration))  # fmt: skip
        rate, p50, p99 = load.summary()
        paying = orders.states().get(f"{channel} paying", 0) - paying0
        out.append({"channel": channel, "server": server.label, "in flight": args.create_concurrency,
                    "creations/s": rate, "p50 ms": p50, "p99 ms": p99, "created (201)": len(load.latencies),
                    "orders `paying` (database, warm-up included)": paying, "_others": watch.others()})  # fmt: skip
        s.note(f"create {channel}: answers {h.outcomes(load.outcomes)}; CPU in shares of one core: {watch.shares()}")
        if set(load.outcomes) - {"201"}:
            s.failed = True
    for channel in ("wechatpay", "alipay"):
        calls = s.channels.paysim.calls(f"/{channel}/__sim__/stats")
        s.note(f"the pay-sim's {channel} calls: {h.outcomes(calls)}")
    return out


def run_row(s: h.Session, workers: int, last: bool, args, creations: list, summary: list) -> list[h.Row]:
    server = s.zhangban(
        h.PRODUCTION, workers, own_platform=True, env={"PAYMENT_QUERY_AFTER_S": "3600"}, name=h.workers_label(workers)
    )
    db = seeding.Database(server.env["DATABASE_URL"])
    orders = Orders(db)
    try:
        s.note(f"{server.label}: load-demo: {server.prepare()}")
        db.seed_users(args.users)
        orders.pool.cases = db.seed_cases(args.orders)
        server.start(helpers=True)
        s.note(f"{server.label}: check-jobs: {server.cli('check-jobs', '--timeout', '30', timeout=90)}; "
               f"probe: {probe(server.base, s.channels, orders)}")  # fmt: skip
        ceiling = s.ceiling(server)
        requests = h.Requests(s.tmp, f"notifies-{workers}", args.threads)
        marks: dict = {}

        def refill(count: int) -> None:
            requests.write(("POST", PATH, *notify(s.channels, order)) for order in orders.take(count))

        def on_start() -> None:
            time.sleep(2.0)
            marks["paid"] = orders.paid()
            marks["pg"] = seeding.PgActivity(server.db_name).__enter__()

        def on_end(row: h.Row) -> None:
            marks["pg"].__exit__()
            time.sleep(2.0)
            delta = {k: v - marks["paid"][k] for k, v in orders.paid().items()}
            row.extra = {"notifies sent": row.sent.get("issued"), "orders paid (database)": delta["orders paid"],
                         "non-2xx": sum(n for st, n in row.statuses.items() if st >= 300)}  # fmt: skip
            s.note(f"{TARGET}, {server.label}: {h.sent_note(row)}; in the database "
                   + ", ".join(f"+{v:,} {k}" for k, v in delta.items())
                   + f"; PostgreSQL sessions: {marks['pg'].summary()}; {h.cpu_per_request(row)}")  # fmt: skip

        row = s.wrk(TARGET, server, PATH, ceiling=ceiling, requests=requests, refill=refill, rate_guess=300,
                    on_start=on_start, on_end=on_end)  # fmt: skip
        if row.sent.get("reused") or set(row.statuses) - {204}:
            s.failed = True
        if workers == 2 and row.rps:
            summary.append(f"Target ≥ {TARGET_RPS:,} notifies/s with 2 workers: "
                           + (f"**met** ({row.rps:,.0f}/s)." if row.rps >= TARGET_RPS else
                              f"**missed** ({row.rps:,.0f}/s, {row.rps / TARGET_RPS:.0%} of it)."))  # fmt: skip
        if last and not args.no_create:
            server.restart(s.channels.env(own_platform=False))
            creations += measure_creations(s, server, orders, args)
        s.note(f"{server.label}: orders by channel and state at the end: {h.outcomes(orders.states())}")
        rows = [ceiling, row]
    except Exception as exc:  # ours, httpx's, asyncpg's: the row says what went wrong
        rows = [s.failed_row(TARGET, server.label, exc)]
    s.stop(server)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = h.parse_args(__doc__, argv, extra, workers="1,2",
                        quick={"workers": "2", "users": 300, "orders": 1000, "create_cases": 600,
                               "create_duration": 2, "sign_iterations": 50, "sdk_iterations": 5})  # fmt: skip
    args.no_embedded = True
    with h.Session(args, SECTION, "benchmarks/payments.py") as s:
        if s.production_missing:
            print(f"needs PostgreSQL and Redis: {s.production_missing}", file=sys.stderr)
            return 2
        rows, creations, verdict = [], [], []
        for i, workers in enumerate(args.worker_counts):
            rows += run_row(s, workers, i == len(args.worker_counts) - 1, args, creations, verdict)
        s.wrk_table("WeChat Pay notifies (each a distinct notify of its own order, a real `paying → paid`):", rows)
        s.table("Order creation (`POST /api/v1/cases/{case_no}/payments`, each on a case of its own):", creations,
                {"creations/s": 0, "p50 ms": 1, "p99 ms": 1})  # fmt: skip
        if not args.no_signing:
            s.table("Alipay RSA2 on one 2048-bit key, in this process:", measure_signing(s, args),
                    {"median ms": 3, "p99 ms": 3, "SDK / ours": 0})  # fmt: skip
        return s.finish(
            verdict
            + [
                "Servers: per row a fresh PostgreSQL database and Redis prefix, `TASK_BROKER=redis`, `migrate` and "
                "`load-demo` with the server's environment, `serve` with `WORKERS=N` beside a worker and a scheduler, "
                "`PAYMENT_QUERY_AFTER_S=3600` (the sweep leaves the seeded orders alone); every channel configured "
                "against its simulator; for the notifies WeChat Pay's platform key is one generated here.",
                f"Seeded with asyncpg: {args.users} citizens, cases of 居民身份证换领 `in_review` with a fee of "
                f"{FEE_FEN} fen and one WeChat Pay order `paying` each, seeded as the runs take them.",
                f"Commands: `wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency` on `/healthz` and "
                "with `-s` the Lua script sending each notify once, each after a warm-up with its own notifies; "
                "*orders paid* counted in PostgreSQL before the run and 2 s after it.",
                f"Order creation: {args.create_warmup:g} s (not counted) + {args.create_duration:g} s, one citizen "
                "signed in through the WeChat simulator; p50/p99 of the 201 answers measured in the client.",
            ]
        )


if __name__ == "__main__":
    sys.exit(main())
