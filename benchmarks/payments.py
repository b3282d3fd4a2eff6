"""Payments benchmark: WeChat Pay notifies (`POST /pay/notify/wechat`) on PostgreSQL against
`GET /healthz`, with 1 and 2 Sanic workers; order creation per channel against the payment
simulators; Alipay RSA2 signing and verifying, ours against the SDK's.

    .venv/bin/python benchmarks/payments.py [--duration 10] [--workers 1,2] [--no-write]

Production backend only, set up as benchmarks/callbacks.py does (and with its plumbing): per row of
`--workers`, a fresh PostgreSQL database on postgresql://postgres@127.0.0.1:5432 (dropped
afterwards), Redis on 127.0.0.1:6379 with a throw-away REDIS_KEY_PREFIX (its keys deleted
afterwards), `TASK_BROKER=redis`, random SECRET_KEY / FIELD_ENCRYPTION_KEY, `server.py migrate` and
`server.py load-demo` with exactly the server's environment, then `server.py serve` with
`WORKERS=N` and `LOG_LEVEL=WARNING`, one `server.py worker --processes 1` and one `server.py
scheduler` beside it. Every channel a production server needs is configured: WeChat (mini-program
and official account) is the WeChat simulator (`python -m wechat.simulator`), the core platform is
the platform simulator (`python -m bridge.simulator`), and WeChat Pay and Alipay are the payment
simulators (`python server.py pay-sim --time-scale 0.001`), each its own process. The merchant's
keys (WeChat Pay API key, APIv3 key, Alipay app key) are generated for the run and registered at
the pay-sim, which answers with its platform / Alipay public keys.

Notifies. The server of the notify rows verifies WeChat Pay with a "platform" key pair generated
here (`WECHATPAY_PLATFORM_PUBLIC_KEY` / `WECHATPAY_PLATFORM_SERIAL` = PUB_KEY_ID_0114…), so that
this script can sign notifies itself; `WECHATPAY_API_BASE` still points at the pay-sim, which a
notify never calls. Seeded in PostgreSQL (asyncpg) after load-demo, with callbacks.py's seeding:
`--users` citizens and cases of 居民身份证换领, then turned into cases `in_review` with a fee
(`fee_fen`, `fee_ref='platform:3'`), and one order per case in state `paying` (channel wechat,
`open_slot` "{case_id}:{fee_ref}", `pay_data` with a prepay_id, expiring in 2 hours). Every request
is a distinct notify of one of these orders, as WeChat Pay sends it: a `TRANSACTION.SUCCESS` body
whose `resource` is the transaction (mchid, the mini-program appid, out_trade_no, amount) encrypted
with AEAD_AES_256_GCM under the APIv3 key, signed over `timestamp\\nnonce\\nbody\\n` with the
platform key (`Wechatpay-Timestamp/-Nonce/-Signature/-Serial/-Signature-Type`), built with
payments.wechatpay's own helpers. So each request is a real transition: verify, decrypt, the order
`paying -> paid` under a row lock with its payment event, the case's `fee_paid_at`, a case event, a
notification and a `fee_paid` outbox row, then the push and relay kicks. The notifies are written
just before each wrk run (the server refuses timestamps more than 300 s off) into a file a wrk Lua
script sends once each; it counts 204 answers, 4xx and 5xx, and keeps the non-204 answers it sees
(up to 20), and the orders paid during the run are counted in the database next to the requests sent.
Before measuring, a probe by hand: a notify answers 204 and pays its order (one payment event, one
`fee_paid` outbox row), the same notify again answers 204 and changes nothing, a notify with another
amount answers 409, a forged signature 400.

Order creation (on the last row's database and worker count): the server is restarted with the
pay-sim's WeChat Pay platform key (its answers must verify), a citizen signs in through the WeChat
simulator, and for each channel (wechat: JSAPI prepay at the pay-sim; alipay_qr: precreate at the
pay-sim; alipay_wap: a signed URL, no call) `POST /api/v1/cases/{case_no}/payments` is sent with
asyncio + httpx, `--create-concurrency` in flight for `--create-duration` seconds after
`--create-warmup`, each on a case of its own (one open order per fee) with a fresh Idempotency-Key:
creations/s, p50 and p99 of the 201 answers, and the orders in state `paying` counted in the database.

Alipay signing (in this script's process): `payments.alipay.sign_rsa2` / `verify_rsa2`
(cryptography) and the SDK's `SignatureUtils.sign_with_rsa2` / `verify_with_rsa` (pure-Python
`rsa`) on one 2048-bit key and the sign content of a real precreate request, `--sign-iterations`
timed calls of ours and `--sdk-iterations` of the SDK's; the two signatures must be byte-identical.

Results are printed and, unless `--no-write`, written to the `## Payments (POST
/pay/notify/wechat, order creation, Alipay signing)` section of benchmarks/RESULTS.md; the other
sections are kept. `--budget` seconds after the start the script no longer waits for a quiet
machine nor measures again, so it ends by itself on a busy machine (disturbed rows are flagged).
Exit codes: 0 done, 1 a measurement failed, 2 wrk, PostgreSQL or Redis missing or bad arguments,
130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import math
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import callbacks as cb  # noqa: E402  (seeding, helpers, platform simulator: the closest model)
import catalogue as cat  # noqa: E402  (a server that can run `migrate` / `load-demo` with its own environment)
import http_baseline as hb  # noqa: E402  (the shared benchmark plumbing)
import identity as idb  # noqa: E402  (simulator, PostgreSQL, wrk rows, CPU watch)
import materials  # noqa: E402  (the time budget)

import bot  # noqa: E402  (the official account's settings, wrk Lua run files, report helpers)

ROOT = hb.ROOT
HOST = hb.HOST
# The project's `payments` package, not this script: benchmarks/ comes first on sys.path otherwise
# (the benchmark modules above are imported already; the project has a `bot` package of its own).
sys.path.insert(0, str(ROOT))
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from payments import alipay as ali  # noqa: E402
from payments import wechatpay as wxp  # noqa: E402

SECTION = "## Payments (POST /pay/notify/wechat, order creation, Alipay signing)"
NOTIFY_PATH = "/pay/notify/wechat"
TARGET = f"POST {NOTIFY_PATH}"
CREATE_PATH = "/api/v1/cases/{case_no}/payments"
CHANNELS = ("wechat", "alipay_qr", "alipay_wap")
MCHID, MERCHANT_SERIAL = "1900000109", "3775B6A45ACD588826D15E583A95F5DD00000001"
ALIPAY_APP_ID, ALIPAY_SELLER = "2021000122600001", "2088102177846875"
FEE_FEN, FEE_REF = 3000, "platform:3"
MAX_SKEW_S = 300  # WeChatPayConfig.timestamp_skew_s
SETTLE_S = 2.0  # after a wrk run, for the requests it cut off
WARM_RATE = 1500  # notifies/s the warm-up file is sized for
TARGET_RPS = 1000  # the target with 2 workers
CHINA = dt.timezone(dt.timedelta(hours=8))
BUDGET = materials.Budget(0)  # set in main()


def budgeted(args: argparse.Namespace) -> argparse.Namespace:
    """`args` with the quiet wait cut to what is left of the budget, and no retry once it is spent."""
    left = BUDGET.left()
    return argparse.Namespace(
        **{**vars(args), "quiet_wait": min(args.quiet_wait, left), "retries": args.retries if left > 0 else 0}
    )


# -- the merchant: keys, registration at the pay-sim, the server's settings ---------------------


def new_rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_pem(key: rsa.RSAPrivateKey, pkcs1: bool = False) -> bytes:
    fmt = serialization.PrivateFormat.TraditionalOpenSSL if pkcs1 else serialization.PrivateFormat.PKCS8
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def public_pem(key: rsa.RSAPrivateKey) -> str:
    return ali.public_key_pem(key.public_key())


class Merchant:
    """The run's merchant: keys generated here, PEM files under `directory`."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.merchant_key, self.app_key, self.platform_key = new_rsa(), new_rsa(), new_rsa()
        self.apiv3_key = secrets.token_hex(16)  # 32 ASCII bytes
        self.platform_serial = "PUB_KEY_ID_0114" + "".join(secrets.choice("0123456789") for _ in range(26))
        self.sim_platform_serial = ""
        self.files = {
            "merchant.pem": private_pem(self.merchant_key),
            "alipay_app.pem": private_pem(self.app_key),
            "own_platform_public.pem": public_pem(self.platform_key).encode(),
        }
        for name, content in self.files.items():
            (directory / name).write_bytes(content)

    def register(self, paysim: PaySim) -> None:
        """Registers the merchant at both simulators; keeps their public keys."""
        wechat = paysim.control(
            "wechatpay",
            "merchants",
            {
                "mchid": MCHID,
                "appids": [idb.SIM_APPID],
                "serial_no": MERCHANT_SERIAL,
                "public_key_pem": public_pem(self.merchant_key),
                "apiv3_key": self.apiv3_key,
            },
        )
        app = paysim.control(
            "alipay",
            "apps",
            {"app_id": ALIPAY_APP_ID, "app_public_key_pem": public_pem(self.app_key), "seller_id": ALIPAY_SELLER},
        )
        self.sim_platform_serial = wechat["platform_serial"]
        (self.directory / "sim_platform_public.pem").write_text(wechat["platform_public_key_pem"])
        (self.directory / "alipay_public.pem").write_text(app["alipay_public_key_pem"])

    def env(self, paysim_url: str, own_platform: bool) -> dict[str, str]:
        """WeChat Pay and Alipay settings; `own_platform`: WeChat Pay's key is ours (notifies we sign),
        else the pay-sim's (its answers verify)."""
        platform_pem = "own_platform_public.pem" if own_platform else "sim_platform_public.pem"
        return {
            "WECHATPAY_API_BASE": paysim_url + "/wechatpay",
            "WECHATPAY_MCHID": MCHID,
            "WECHATPAY_SERIAL_NO": MERCHANT_SERIAL,
            "WECHATPAY_PRIVATE_KEY": str(self.directory / "merchant.pem"),
            "WECHATPAY_APIV3_KEY": self.apiv3_key,
            "WECHATPAY_PLATFORM_PUBLIC_KEY": str(self.directory / platform_pem),
            "WECHATPAY_PLATFORM_SERIAL": self.platform_serial if own_platform else self.sim_platform_serial,
            "ALIPAY_GATEWAY": paysim_url + "/alipay/gateway.do",
            "ALIPAY_APP_ID": ALIPAY_APP_ID,
            "ALIPAY_PRIVATE_KEY": str(self.directory / "alipay_app.pem"),
            "ALIPAY_PUBLIC_KEY": str(self.directory / "alipay_public.pem"),
            "ALIPAY_SELLER_ID": ALIPAY_SELLER,
        }

    # -- notifies, as WeChat Pay builds them ---------------------------------------------------

    def notify(self, order: SeededOrder, *, amount_fen: int | None = None) -> tuple[str, str, str, str]:
        """(timestamp, nonce, signature, body) of a TRANSACTION.SUCCESS notify of `order`."""
        now = dt.datetime.now(CHINA)
        total = order.amount_fen if amount_fen is None else amount_fen
        transaction = {
            "mchid": MCHID,
            "appid": idb.SIM_APPID,
            "out_trade_no": order.out_trade_no,
            "transaction_id": "4200002" + "".join(secrets.choice("0123456789") for _ in range(21)),
            "trade_type": "JSAPI",
            "trade_state": "SUCCESS",
            "trade_state_desc": "支付成功",
            "bank_type": "OTHERS",
            "attach": "",
            "success_time": wxp.rfc3339(now),
            "payer": {"openid": order.openid},
            "amount": {"total": total, "payer_total": total, "currency": "CNY", "payer_currency": "CNY"},
        }
        resource = wxp.encrypt_resource(
            self.apiv3_key.encode(),
            wxp.dumps(transaction).encode("utf-8"),
            associated_data="transaction",
            original_type="transaction",
        )
        body = wxp.dumps(
            {
                "id": secrets.token_hex(18),
                "create_time": wxp.rfc3339(now),
                "resource_type": "encrypt-resource",
                "event_type": wxp.TRADE_EVENT,
                "summary": "支付成功",
                "resource": resource,
            }
        )
        timestamp, nonce = str(int(time.time())), wxp.new_nonce()
        signature = wxp.rsa_sign(self.platform_key, wxp.signing_message(timestamp, nonce, body))
        return timestamp, nonce, signature, body

    def headers(self, timestamp: str, nonce: str, signature: str) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "Wechatpay-Timestamp": timestamp,
            "Wechatpay-Nonce": nonce,
            "Wechatpay-Signature": signature,
            "Wechatpay-Serial": self.platform_serial,
            "Wechatpay-Signature-Type": wxp.SIGN_SCHEME,
        }

    def write(self, path: Path, orders: list[SeededOrder]) -> tuple[int, float]:
        """One `timestamp TAB nonce TAB signature TAB body` line per order; (lines, time written)."""
        began = time.time()
        with open(path, "w", encoding="utf-8") as out:
            for order in orders:
                out.write("\t".join(self.notify(order)) + "\n")
        return len(orders), began


class PaySim(idb.Simulator):
    """`python server.py pay-sim --time-scale 0.001` on a free port, in its own session."""

    def __init__(self, workdir: Path):
        super().__init__(workdir)
        self.log_path = workdir / "pay-sim.log"
        self.workdir = workdir / "pay-sim"
        self.workdir.mkdir()

    def start(self) -> float:
        import httpx

        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and k not in idb._settings_names()}
        env.update(PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "wb")
        began = time.monotonic()
        argv = ["pay-sim", "--host", HOST, "--port", str(self.port), "--time-scale", "0.001"]
        self.proc = subprocess.Popen(
            [hb.python_bin(), str(ROOT / "server.py"), *argv],
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        while time.monotonic() < began + hb.START_TIMEOUT:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pay-sim exited with code {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/__sim__/stats", timeout=1).status_code == 200:
                    return time.monotonic() - began
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"pay-sim did not answer within {hb.START_TIMEOUT:.0f} s")

    def control(self, channel: str, path: str, payload: dict) -> dict:  # type: ignore[override]
        """`channel`'s control route `path` (channel: wechatpay or alipay)."""
        import httpx

        response = httpx.post(f"{self.url}/{channel}/__sim__/{path}", json=payload, timeout=10)
        if response.status_code != 200:
            raise RuntimeError(f"pay-sim {channel} {path}: {response.status_code} {response.text[:200]}")
        return response.json()

    def stats(self, channel: str) -> dict:
        import httpx

        try:
            return dict(httpx.get(f"{self.url}/{channel}/__sim__/stats", timeout=10).json())
        except (httpx.HTTPError, ValueError):
            return {}


# -- PostgreSQL: fees, orders, counts ----------------------------------------------------------


@dataclass
class SeededOrder:
    out_trade_no: str
    openid: str
    amount_fen: int


class Database(cb.Database):
    """callbacks.py's database (citizens and cases), plus fees due and orders `paying`."""

    def allow_case_seeding(self) -> None:
        """callbacks.py's case seeding predates `cases.fee_ref` (NOT NULL, its default '' lives in the
        model): this throw-away database gets that default in SQL too, so the seeding fills it."""

        async def work(conn):
            await conn.execute("ALTER TABLE cases ALTER COLUMN fee_ref SET DEFAULT ''")

        self.run(work)

    def make_payable(self, case_nos: list[str], user_id: int | None = None) -> None:
        """Cases `in_review` with a fee of FEE_FEN (ref FEE_REF) not yet paid; owned by `user_id` if given."""

        async def work(conn):
            await conn.execute(
                "UPDATE cases SET status = 'in_review', fee_fen = $2::int, fee_ref = $3::text, fee_paid_at = NULL, "
                "user_id = coalesce($4::bigint, user_id), updated_at = now() WHERE case_no = ANY($1::text[])",
                case_nos,
                FEE_FEN,
                FEE_REF,
                user_id,
            )

        self.run(work)

    def seed_orders(self, case_nos: list[str]) -> list[SeededOrder]:
        """One WeChat Pay order `paying` per case, as `Payments.create` leaves it after the prepay."""

        async def work(conn):
            filled = {
                "payment_id",
                "out_trade_no",
                "case_id",
                "user_id",
                "fee_ref",
                "open_slot",
                "idempotency_key",
                "channel",
                "amount_fen",
                "state",
                "pay_data",
                "refunded_fen",
                "expires_at",
                "close_reason",
                "created_at",
                "updated_at",
            }
            missing = await self._unfilled(conn, "payment_orders", filled)
            if missing:
                raise RuntimeError(
                    f"seeding: payment_orders.{', '.join(missing)} must be filled (update benchmarks/payments.py)"
                )
            rows = await conn.fetch(
                "SELECT c.id, u.id, u.openid FROM cases c JOIN users u ON u.id = c.user_id "
                "WHERE c.case_no = ANY($1::text[]) ORDER BY c.id",
                case_nos,
            )
            stamp = dt.datetime.now(CHINA).strftime("%y%m%d")
            nos = [f"ZB{stamp}{secrets.token_hex(10).upper()}" for _ in rows]  # 28 of [0-9A-Z]
            await conn.execute(
                "INSERT INTO payment_orders (payment_id, out_trade_no, case_id, user_id, fee_ref, open_slot, "
                "idempotency_key, channel, amount_fen, state, pay_data, refunded_fen, expires_at, close_reason, "
                "created_at, updated_at) "
                "SELECT 'pay_' || left(md5(n), 24), n, c, u, $4::text, c::text || ':' || $4::text, 'bench-' || n, 'wechat', "
                "$5::bigint, 'paying', "
                "jsonb_build_object('prepay_id', 'wx' || n), 0, now() + interval '2 hours', '', now(), now() "
                "FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS t(n, c, u)",
                nos,
                [int(r[0]) for r in rows],
                [int(r[1]) for r in rows],
                FEE_REF,
                FEE_FEN,
            )
            return [SeededOrder(no, r[2], FEE_FEN) for no, r in zip(nos, rows, strict=True)]

        return self.run(work)

    def paid_counts(self) -> dict[str, int]:
        row = self.fetch(
            "SELECT (SELECT count(*) FROM payment_orders WHERE state = 'paid'), "
            "(SELECT count(*) FROM payment_events WHERE to_state = 'paid'), "
            "(SELECT count(*) FROM outbox WHERE kind = 'fee_paid'), "
            "(SELECT count(*) FROM cases WHERE fee_paid_at IS NOT NULL)"
        )[0]
        return dict(
            zip(("orders paid", "payment events to paid", "fee_paid outbox rows", "cases fee paid"), row, strict=True)
        )

    def order_states(self) -> dict[str, int]:
        return {
            f"{channel} {state}": int(n)
            for channel, state, n in self.fetch(
                "SELECT channel, state, count(*) FROM payment_orders GROUP BY 1, 2 ORDER BY 1, 2"
            )
        }


class Orders:
    """Orders `paying` no wrk run has used yet, seeded (with their cases) as they are taken."""

    def __init__(self, db: Database):
        self.db, self.cases = db, cb.Pool(db)
        self.seeded = 0

    def take(self, count: int) -> list[SeededOrder]:
        case_nos = self.cases.take(count)
        self.db.make_payable(case_nos)
        self.seeded += count
        return self.db.seed_orders(case_nos)


class PgActivity:
    """Samples `pg_stat_activity` of the run's database every `every` seconds while it is entered
    (a thread with its own connection): what the server's connections are doing, on average."""

    SQL = (
        "SELECT state, coalesce(wait_event_type || ':' || wait_event, 'on CPU') FROM pg_stat_activity "
        "WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend' AND state IS NOT NULL"
    )

    def __init__(self, db: Database, every: float = 0.1):
        self.db, self.every = db, every
        self.seen: Counter = Counter()
        self.samples = 0
        self.connections = 0

    def __enter__(self) -> PgActivity:
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: self.db.run(self._poll), daemon=True)
        self._thread.start()
        return self

    async def _poll(self, conn) -> None:
        while not self._stop.is_set():
            rows = await conn.fetch(self.SQL, self.db.name)
            self.samples += 1
            self.connections = max(self.connections, len(rows))
            self.seen.update(f"{state}" + ("" if state == "idle" else f" ({wait})") for state, wait in rows)
            await asyncio.sleep(self.every)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def summary(self) -> str:
        if not self.samples:
            return "no sample"
        top = ", ".join(f"{k} {v / self.samples:.1f}" for k, v in self.seen.most_common(6))
        return (
            f"up to {self.connections} connections of the server and its helpers; on average per sample "
            f"({self.samples} samples): {top}"
        )


# -- wrk with a Lua script that sends each notify once -----------------------------------------

LUA = r"""-- written by benchmarks/payments.py: sends each signed notify of REQUESTS once, counts the answers
local requests_file, samples_file, summary_file = %(requests)s, %(samples)s, %(summary)s
local nthreads, max_bad = %(threads)d, 20
local path, serial, sign_type = %(path)s, %(serial)s, %(sign_type)s

local threads, made = {}, 0
function setup(thread)
  made = made + 1
  thread:set("tid", made)
  table.insert(threads, thread)
end

local reqs, i, out = {}, 0, nil
n, issued, reused, responses, s204, s4xx, s5xx, other, sampled = 0, 0, 0, 0, 0, 0, 0, 0, 0

function init(args)
  local line_no = 0
  for line in io.lines(requests_file) do
    if line_no %% nthreads == tid - 1 then  -- each thread its own share: no notify sent twice
      local a = line:find("\t", 1, true)
      local b = line:find("\t", a + 1, true)
      local c = line:find("\t", b + 1, true)
      n = n + 1
      reqs[n] = wrk.format("POST", path, {
        ["Content-Type"] = "application/json", ["Wechatpay-Serial"] = serial,
        ["Wechatpay-Signature-Type"] = sign_type, ["Wechatpay-Timestamp"] = line:sub(1, a - 1),
        ["Wechatpay-Nonce"] = line:sub(a + 1, b - 1), ["Wechatpay-Signature"] = line:sub(b + 1, c - 1)},
        line:sub(c + 1))
    end
    line_no = line_no + 1
  end
  out = assert(io.open(samples_file .. "." .. tid, "wb"))
end

function request()
  i = i + 1
  issued = issued + 1
  if i > n then reused = reused + 1 end
  return reqs[(i - 1) %% n + 1]
end

function response(status, headers, body)
  responses = responses + 1
  if status == 204 then
    s204 = s204 + 1
  elseif status >= 400 and status < 500 then
    s4xx = s4xx + 1
  elseif status >= 500 then
    s5xx = s5xx + 1
  else
    other = other + 1
  end
  if status ~= 204 and sampled < max_bad then
    sampled = sampled + 1
    out:write(status, " ", #body, "\n", body, "\n")
    out:flush()
  end
end

function done(summary, latency, requests)
  local f = assert(io.open(summary_file, "w"))
  for _, t in ipairs(threads) do
    for _, k in ipairs({"n", "issued", "reused", "responses", "s204", "s4xx", "s5xx", "other", "sampled"}) do
      f:write(k, " ", tostring(t:get(k)), "\n")
    end
  end
  f:close()
end
"""

COUNTERS = ("n", "issued", "reused", "responses", "s204", "s4xx", "s5xx", "other", "sampled")


class NotifyRun(bot.LuaRun):
    """bot.py's run files (requests in, Lua script, samples and counters out) with our Lua script."""

    def __init__(self, directory: Path, name: str, threads: int, merchant: Merchant):
        self.requests, self.script = directory / f"{name}.requests", directory / f"{name}.lua"
        self.samples, self.summary_path = directory / f"{name}.samples", directory / f"{name}.summary"
        self.script.write_text(
            LUA
            % {
                "requests": bot.lua_string(str(self.requests)),
                "samples": bot.lua_string(str(self.samples)),
                "summary": bot.lua_string(str(self.summary_path)),
                "threads": threads,
                "path": bot.lua_string(NOTIFY_PATH),
                "serial": bot.lua_string(merchant.platform_serial),
                "sign_type": bot.lua_string(wxp.SIGN_SCHEME),
            }
        )

    def counters(self) -> dict[str, int]:
        totals = dict.fromkeys(COUNTERS, 0)
        if not self.summary_path.exists():
            raise RuntimeError("the wrk script wrote no summary")
        for line in self.summary_path.read_text().splitlines():
            key, value = line.split()
            totals[key] += int(float(value))
        return totals


# -- rows --------------------------------------------------------------------------------------


@dataclass
class NotifyRow(idb.Row):
    counts: dict[str, int] = field(default_factory=dict)
    lines: int = 0  # notifies in the measured file
    db_delta: dict[str, int] = field(default_factory=dict)  # paid_counts() after - before
    socket_errors: str | None = None
    warm_rate: float | None = None
    shares: str = ""
    answers: dict[str, int] = field(default_factory=dict)  # non-204 samples by status and body
    pg_activity: str = ""  # PgActivity.summary() of the measured run
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per second of the measured run, by process


@dataclass
class Creation:
    channel: str
    backend: str
    concurrency: int
    seconds: float = 0.0
    created: int = 0  # 201 answers in the measured window
    statuses: dict[str, int] = field(default_factory=dict)  # every answer of the window
    p50_ms: float | None = None
    p99_ms: float | None = None
    paying: int | None = None  # orders of this channel `paying` in the database afterwards
    others_cpu: float = 0.0
    shares: str = ""
    attempts: int = 1
    failed: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float | None:
        return self.created / self.seconds if self.seconds else None


@dataclass
class Signing:
    op: str
    impl: str
    iterations: int
    median_ms: float
    p99_ms: float
    others_cpu: float


@dataclass
class PayRun(idb.BackendRun):
    workers: int = 1
    load_demo: str | None = None
    check_jobs: str | None = None
    probe: str | None = None
    seeded_orders: int = 0
    creations: list[Creation] = field(default_factory=list)
    states: dict[str, int] = field(default_factory=dict)
    helper_problems: dict[str, list[str]] = field(default_factory=dict)
    extra_notes: list[str] = field(default_factory=list)


# -- measuring: notifies -----------------------------------------------------------------------


def probe(base: str, merchant: Merchant, db: Database, orders: list[SeededOrder]) -> str:
    """A notify pays its order; the same notify again changes nothing; another amount is refused
    (409); a forged signature is refused (400). Raises RuntimeError otherwise."""
    import httpx

    first, other = orders
    before = db.paid_counts()
    ts, nonce, sig, body = merchant.notify(first)
    wrong = merchant.notify(other, amount_fen=other.amount_fen + 1)
    forged = merchant.notify(other)
    seen = []
    with httpx.Client(base_url=base, timeout=30) as client:
        for what, (t, n, s, b), want in (
            ("first", (ts, nonce, sig, body), 204),
            ("same again", (ts, nonce, sig, body), 204),
            ("other amount", wrong, 409),
            ("forged signature", (forged[0], forged[1], sig, forged[3]), 400),
        ):
            response = client.post(NOTIFY_PATH, content=b.encode(), headers=merchant.headers(t, n, s))
            if response.status_code != want:
                raise RuntimeError(f"probe notify ({what}) answered {response.status_code} {response.text[:200]}")
            seen.append(f"{what} → {response.status_code}")
    after = db.paid_counts()
    delta = {k: after[k] - before[k] for k in after}
    if any(v != 1 for v in delta.values()):
        raise RuntimeError(f"probe: the database changed by {delta}, expected 1 of each")
    return "; ".join(seen) + "; database: +1 " + ", +1 ".join(delta)


def measure_notifies(
    label: str,
    base: str,
    merchant: Merchant,
    orders: Orders,
    db: Database,
    watch_cpu: Callable[[], idb.CpuWatch],
    args: argparse.Namespace,
    workdir: Path,
) -> NotifyRow:
    """Warm-up then a measured wrk run of distinct notifies of unused orders (again, up to
    --retries, when other processes disturbed it and the budget allows)."""
    url = base + NOTIFY_PATH
    attempts: list[NotifyRow] = []
    for attempt in range(args.retries + 1):
        run_args = budgeted(args)
        if attempt > run_args.retries:
            print("  the machine was not quiet, but the time budget is spent: keeping this", flush=True)
            break
        row = NotifyRow(TARGET, label)
        attempts.append(row)
        if run_args.quiet_wait > 0:
            hb.wait_until_quiet(run_args.quiet_wait)
        slug = f"workers{label[0]}-{attempt}"
        warm, measured = NotifyRun(workdir, slug + "-warm", args.threads, merchant), None
        try:
            merchant.write(warm.requests, orders.take(max(args.threads, WARM_RATE * args.warmup)))
            output, _ = hb.run_wrk(cb.script_cmd(args, url, args.warmup, warm.script, latency=False), args.warmup)
            row.warm_rate = float(re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE).group(1))
            todo = orders.take(max(500, math.ceil(row.warm_rate * args.duration * 1.5)))
            measured = NotifyRun(workdir, slug, args.threads, merchant)
            time.sleep(SETTLE_S)  # the warm-up's cut-off requests finish before the counts below
            before = db.paid_counts()
            row.lines, generated_at = merchant.write(measured.requests, todo)
            with watch_cpu() as watch, PgActivity(db) as activity:
                output, wrk_cpu = hb.run_wrk(cb.script_cmd(args, url, args.duration, measured.script), args.duration)
            row.pg_activity = activity.summary()
            oldest_age = time.time() - generated_at
            result = hb.Result(hb.Target(TARGET, "notifies", 1))
            hb.parse_wrk(output, result)
            row.counts = measured.counters()
            samples = measured.sample_bodies()
            time.sleep(SETTLE_S)
            after = db.paid_counts()
            row.db_delta = {k: after[k] - before[k] for k in after}
        except Exception as exc:  # wrk, its output, the database: the row says what went wrong
            row.failed = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
            print(f"  {TARGET}: FAILED: {exc}", file=sys.stderr)
            break
        finally:
            warm.cleanup()
            if measured is not None:
                measured.cleanup()
        row.rps, row.p50_ms, row.p99_ms = result.rps, result.p50_ms, result.p99_ms
        row.socket_errors = result.socket_errors
        row.others_cpu = watch.others(wrk_cpu)
        row.shares = watch.shares() + f", wrk {wrk_cpu / max(1e-9, watch.seconds):.0%}"
        tick = os.sysconf("SC_CLK_TCK")
        row.cpu = {name: used / tick / max(1e-9, watch.seconds) for name, used in watch.used.items()}
        row.cpu["wrk"] = wrk_cpu / max(1e-9, watch.seconds)
        row.answers = dict(Counter(f"{status} {body[:80]}" for status, body in samples))
        c, d = row.counts, row.db_delta
        row.notes.append(
            f"{c['issued']:,} notifies sent ({row.lines:,} generated, {c['reused']} sent twice), {c['responses']:,} "
            f"answered: {c['s204']:,} 204, {c['s4xx']} 4xx, {c['s5xx']} 5xx, {c['other']} other; in the database "
            + ", ".join(f"+{v:,} {k}" for k, v in d.items())
            + f"; wrk socket errors: {result.socket_errors or 'none'}; warm-up: {row.warm_rate:,.0f}/s; "
            f"CPU used, in shares of one core: {row.shares}; PostgreSQL sessions (`pg_stat_activity`): "
            f"{row.pg_activity}"
        )
        print(
            f"  {TARGET}: {hb.fmt(row.rps, 0)} req/s, p50 {hb.fmt(row.p50_ms, 2)} ms, p99 {hb.fmt(row.p99_ms, 2)} ms"
            f" ({result.requests} requests; other processes used {row.others_cpu:.0%} of the CPU)\n"
            f"    {row.notes[-1]}",
            flush=True,
        )
        if c["reused"]:
            row.notes.append(f"{c['reused']} requests repeated an earlier notify (the file was too small)")
        if row.answers:
            row.notes.append(
                "ERRORS: non-204 answers seen: " + ", ".join(f"`{k}` ×{v}" for k, v in sorted(row.answers.items()))
            )
        if oldest_age > MAX_SKEW_S - 30:
            row.notes.append(f"the oldest timestamp was {oldest_age:.0f} s old at the end (limit {MAX_SKEW_S} s)")
        if row.others_cpu <= hb.BUSY:
            break
        if attempt < args.retries:
            print("  the machine was not quiet: measuring again", flush=True)
    chosen = min(attempts, key=lambda r: (r.failed is not None, r.others_cpu))
    chosen.attempts = len(attempts)
    return chosen


# -- measuring: order creation -----------------------------------------------------------------


async def _create_load(
    base: str, token: str, case_nos: list[str], channel: str, concurrency: int, warmup: float, duration: float
) -> tuple[list[tuple[float, float, str]], float, float, bool]:
    """Creates an order on each of `case_nos` (each once), `concurrency` in flight, for `warmup` +
    `duration` seconds. Returns ([(finished, seconds, status)], window start, window end, ran out)."""
    import httpx

    todo = iter(case_nos)
    done: list[tuple[float, float, str]] = []
    start = time.monotonic()
    measured_from, until = start + warmup, start + warmup + duration
    ran_out = False

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal ran_out
        while time.monotonic() < until:
            case_no = next(todo, None)
            if case_no is None:
                ran_out = True
                return
            began = time.monotonic()
            try:
                response = await client.post(
                    CREATE_PATH.format(case_no=case_no),
                    json={"channel": channel},
                    headers={"Idempotency-Key": "bench-" + secrets.token_hex(12)},
                )
                status = str(response.status_code)
                if response.status_code == 201 and response.json().get("status") != "paying":
                    status = f"201 {response.json().get('status')}"
                elif response.status_code != 201:
                    status += f" {response.json().get('code', '') if response.content else ''}"
            except (httpx.HTTPError, ValueError) as exc:
                status = type(exc).__name__
            now = time.monotonic()
            done.append((now, now - began, status))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits, headers=headers) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    end = min(until, max((t for t, _, _ in done), default=measured_from))
    return done, measured_from, end, ran_out


def measure_creations(
    label: str,
    server: cat.CatalogueServer,
    wsim: idb.Simulator,
    db: Database,
    pool: cb.Pool,
    watch_cpu: Callable[[], idb.CpuWatch],
    args: argparse.Namespace,
) -> list[Creation]:
    """Order creations per channel by one signed-in citizen, each on a payable case of their own."""
    import httpx

    minted = wsim.control("login-code", {"appid": idb.SIM_APPID})
    login = httpx.post(server.base + idb.LOGIN_PATH, json={"code": minted["code"]}, timeout=30)
    if login.status_code != 200:
        raise RuntimeError(f"set-up login answered {login.status_code}: {login.text[:200]}")
    citizen = idb.Citizen(server.base, login.json())
    user_id = int(db.fetch("SELECT id FROM users WHERE openid = $1", minted["openid"])[0][0])
    results = []
    per_channel = args.create_cases
    for channel in CHANNELS:
        attempts: list[Creation] = []
        for attempt in range(args.retries + 1):
            run_args = budgeted(args)
            if attempt > run_args.retries:
                print("  the machine was not quiet, but the time budget is spent: keeping this", flush=True)
                break
            row = Creation(channel, label, args.create_concurrency)
            attempts.append(row)
            try:
                case_nos = pool.take(per_channel)
                db.make_payable(case_nos, user_id=user_id)
                paying0 = db.order_states().get(f"{channel} paying", 0)
                if run_args.quiet_wait > 0:
                    hb.wait_until_quiet(run_args.quiet_wait)
                token = citizen.header(args.create_warmup + args.create_duration + 60).split()[-1]
                with watch_cpu() as watch:
                    done, t0, t1, ran_out = asyncio.run(
                        _create_load(
                            server.base,
                            token,
                            case_nos,
                            channel,
                            args.create_concurrency,
                            args.create_warmup,
                            args.create_duration,
                        )
                    )
                window = [(s, status) for t, s, status in done if t0 <= t <= t1]
                row.seconds = max(0.0, t1 - t0)
                row.statuses = dict(Counter(status for _, status in window))
                latencies = sorted(s * 1000 for s, status in window if status == "201")
                row.created = len(latencies)
                if latencies:
                    row.p50_ms, row.p99_ms = idb.percentile(latencies, 50), idb.percentile(latencies, 99)
                row.paying = db.order_states().get(f"{channel} paying", 0) - paying0
                all_201 = sum(1 for _, _, status in done if status == "201")
                row.others_cpu, row.shares = watch.others(), watch.shares()
                row.notes.append(
                    f"{len(done):,} requests in all (warm-up included), {all_201:,} answered 201 with an order "
                    f"`paying`; +{row.paying:,} {channel} orders `paying` in the database; answers in the measured "
                    "window: " + ", ".join(f"{k} ×{v:,}" for k, v in sorted(row.statuses.items()))
                )
                if ran_out:
                    row.notes.append(f"ran out of the {per_channel:,} cases seeded (window cut to {row.seconds:.1f} s)")
                if row.paying != all_201:
                    row.notes.append(f"ERRORS: {all_201:,} answers 201 but {row.paying:,} orders `paying`")
            except Exception as exc:
                row.failed = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
                print(f"  create {channel}: FAILED: {exc}", file=sys.stderr)
                break
            print(
                f"  create {channel}: {hb.fmt(row.rate, 0)}/s, p50 {hb.fmt(row.p50_ms, 1)} ms, p99 "
                f"{hb.fmt(row.p99_ms, 1)} ms (other processes used {row.others_cpu:.0%} of the CPU)\n    "
                + "; ".join(row.notes),
                flush=True,
            )
            if row.others_cpu <= hb.BUSY:
                break
            if attempt < args.retries:
                print("  the machine was not quiet: measuring again", flush=True)
        chosen = min(attempts, key=lambda r: (r.failed is not None, r.others_cpu))
        chosen.attempts = len(attempts)
        results.append(chosen)
    return results


# -- measuring: Alipay signatures --------------------------------------------------------------


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


def measure_signing(args: argparse.Namespace) -> tuple[list[Signing], str, list[str]]:
    """ms per RSA2 sign / verify, ours (cryptography) and the SDK's (pure-Python rsa), on one key."""
    from alipay.aop.api.util.SignatureUtils import sign_with_rsa2, verify_with_rsa

    key = new_rsa()
    content = precreate_content(key)
    private_text = private_pem(key, pkcs1=True).decode()  # what the SDK's examples load: PKCS#1
    public_text = public_pem(key)
    public_key = key.public_key()
    ours_sig = ali.sign_rsa2(key, content)
    sdk_sig = sign_with_rsa2(private_text, content, "utf-8")
    notes = [
        f"sign content: {len(content.encode()):,} bytes (alipay.trade.precreate with its common parameters)",
        "signatures byte-identical: " + ("yes" if ours_sig == sdk_sig else "NO"),
        "each verifies the other's: "
        + (
            "yes"
            if ali.verify_rsa2(public_key, content, sdk_sig)
            and verify_with_rsa(public_text, content.encode(), ours_sig)
            else "NO"
        ),
    ]
    run_args = budgeted(args)
    if run_args.quiet_wait > 0:
        hb.wait_until_quiet(run_args.quiet_wait)
    rows = []
    for op, impl, fn, n in (
        (
            "sign",
            "ours: payments.alipay.sign_rsa2 (cryptography)",
            lambda: ali.sign_rsa2(key, content),
            args.sign_iterations,
        ),
        (
            "sign",
            "SDK: SignatureUtils.sign_with_rsa2 (rsa)",
            lambda: sign_with_rsa2(private_text, content, "utf-8"),
            args.sdk_iterations,
        ),
        (
            "verify",
            "ours: payments.alipay.verify_rsa2 (cryptography)",
            lambda: ali.verify_rsa2(public_key, content, ours_sig),
            args.sign_iterations,
        ),
        (
            "verify",
            "SDK: SignatureUtils.verify_with_rsa (rsa)",
            lambda: verify_with_rsa(public_text, content.encode(), ours_sig),
            args.sdk_iterations,
        ),
    ):
        for _ in range(max(3, n // 10)):  # warm-up
            fn()
        samples = []
        with idb.CpuWatch({}) as watch:
            for _ in range(n):
                began = time.perf_counter_ns()
                fn()
                samples.append((time.perf_counter_ns() - began) / 1e6)
        samples.sort()
        rows.append(Signing(op, impl, n, idb.percentile(samples, 50), idb.percentile(samples, 99), watch.others()))
        print(
            f"  {op} {impl}: median {rows[-1].median_ms:.3f} ms, p99 {rows[-1].p99_ms:.3f} ms over {n} "
            f"(other processes used {rows[-1].others_cpu:.0%} of the CPU)",
            flush=True,
        )
    return rows, content, notes


# -- one row -----------------------------------------------------------------------------------


def run_row(
    workers: int,
    n: int,
    last: bool,
    tmp: Path,
    sims: dict[str, idb.Simulator],
    merchant: Merchant,
    account: bot.Account,
    platform: cb.Platform,
    args: argparse.Namespace,
    servers: list,
) -> PayRun:
    label = f"{workers} Sanic worker{'s' if workers > 1 else ''}"
    run = PayRun(label, workers=workers)
    targets = ["GET /healthz", TARGET]
    prefix = f"zbbench{secrets.token_hex(4)}:"
    db_name = f"zbbench_{secrets.token_hex(4)}"
    workdir = tmp / f"{n}-workers{workers}"
    workdir.mkdir()
    wsim, psim, paysim = sims["WeChat simulator"], sims["platform simulator"], sims["pay-sim"]
    try:
        asyncio.run(idb._pg(f'CREATE DATABASE "{db_name}"'))
    except Exception as exc:
        why = f"could not create the database: {type(exc).__name__}: {exc}".splitlines()[0][:160]
        print(f"  FAILED: {why}", file=sys.stderr)
        run.rows = [idb.Row(t, label, failed=why) for t in targets]
        return run
    extra = {
        "DATABASE_URL": idb.pg_url_for(db_name),
        "TASK_BROKER": "redis",
        "PUSH_QUIET_HOURS": "",
        "PAYMENT_QUERY_AFTER_S": "3600",  # the sweep leaves the seeded orders alone (the pay-sim never saw them)
        **account.server_env(wsim.url),
        **platform.env(psim.url),
        **merchant.env(paysim.url, own_platform=True),
    }
    server = cat.CatalogueServer(hb.Target(label, "zhangban", workers, redis=True), workdir, prefix, extra)
    server.extra_env["PUBLIC_BASE_URL"] = server.base
    servers.append(server)
    helpers: list[cb.Helper] = []
    db = Database(db_name)
    orders = Orders(db)
    print(f"- {label} on port {server.port}: database {db_name}, Redis prefix {prefix}", flush=True)
    current = server
    try:
        for command in ("migrate", "load-demo"):
            done = server.cli(command)
            if done.returncode != 0:
                raise RuntimeError(f"{command} exited {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}")
            if command == "load-demo":
                run.load_demo = ((done.stdout.strip() or done.stderr.strip()).splitlines()[-1:] or ["(no output)"])[0]
        db.allow_case_seeding()
        db.seed_users(args.users, "")
        orders.cases.seed(args.orders)
        probe_orders = orders.take(2)
        print(
            f"  load-demo: {run.load_demo}; seeded {args.users} citizens and {orders.cases.seeded} cases of "
            f"{cb.ITEM_NAME}",
            flush=True,
        )
        cmd, env = server._command_and_env()
        for name, argv in (("worker", ["worker", "--processes", "1"]), ("scheduler", ["scheduler"])):
            helper = cb.Helper(name, cmd[:2] + argv, env, workdir)
            servers.append(helper)
            helpers.append(helper)
            helper.start()
        run.start_s = server.start()
        jobs = server.cli("check-jobs", "--timeout", "30", timeout=90)
        run.check_jobs = (jobs.stdout.strip() or jobs.stderr.strip())[-200:]
        if jobs.returncode != 0:
            raise RuntimeError(f"check-jobs: {run.check_jobs}")
        run.probe = probe(server.base, merchant, db, probe_orders)
        print(f"  answering after {run.start_s:.1f} s; worker: {run.check_jobs}; probe: {run.probe}", flush=True)

        services = idb.production_services(db_name)

        def watch_cpu() -> idb.CpuWatch:
            groups = {"server": current.proc.pid, **{name: sim.proc.pid for name, sim in sims.items()}}
            groups.update({h.name: h.proc.pid for h in helpers if h in servers})
            return idb.CpuWatch(groups, services)

        healthz = idb.measure_wrk("GET /healthz", label, f"{server.base}/healthz", None, watch_cpu, budgeted(args))
        healthz.ratio = 1.0 if healthz.rps else None
        run.rows.append(healthz)
        row = measure_notifies(label, server.base, merchant, orders, db, watch_cpu, args, workdir)
        row.ratio = row.rps / healthz.rps if row.rps and healthz.rps else None
        run.rows.append(row)
        run.seeded_orders = orders.seeded

        if last and not args.no_create:
            # The pay-sim's answers are signed with its own platform key: a server that verifies them.
            run.stop_s = server.stop()
            servers.remove(server)
            run.log_problems += server.log_problems()
            server.keep_log(args.keep_logs)
            (workdir / "orders").mkdir()
            secrets_env = {k: env[k] for k in ("SECRET_KEY", "FIELD_ENCRYPTION_KEY")}
            current = cat.CatalogueServer(
                hb.Target(label, "zhangban", workers, redis=True),
                workdir / "orders",
                prefix,
                {**extra, **merchant.env(paysim.url, own_platform=False), **secrets_env},
            )
            current.extra_env["PUBLIC_BASE_URL"] = current.base
            servers.append(current)
            took = current.start()
            print(
                f"  order creation: server restarted on port {current.port} with the pay-sim's WeChat Pay key "
                f"(answering after {took:.1f} s)",
                flush=True,
            )
            run.creations = measure_creations(label, current, wsim, db, orders.cases, watch_cpu, args)
            for channel in ("wechatpay", "alipay"):
                calls = paysim.stats(channel).get("calls") or {}
                run.extra_notes.append(
                    f"the pay-sim's {channel} calls: "
                    + (", ".join(f"`{k}` ×{v:,}" for k, v in sorted(calls.items())) or "none")
                )
        run.states = db.order_states()
        print(f"  orders by channel and state now: {', '.join(f'{k} {v}' for k, v in run.states.items())}", flush=True)
    except Exception as exc:  # ours, asyncpg's, httpx's: the rows say what went wrong
        why = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        print(f"  FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        for line in (
            current.log_path.read_text(errors="replace").splitlines()[-20:] if current.log_path.exists() else []
        ):
            print(f"  | {line}", file=sys.stderr)
        done = {r.target for r in run.rows}
        run.rows += [idb.Row(t, label, failed=why) for t in targets if t not in done]
    finally:
        if current in servers:
            stop_s = current.stop()
            run.stop_s = max(run.stop_s or 0.0, stop_s or 0.0)
            servers.remove(current)
            run.log_problems += current.log_problems()
            current.keep_log(args.keep_logs)
        for helper in helpers:
            if helper in servers:
                helper.stop()
                servers.remove(helper)
            problems = helper.log_problems()
            if problems:
                run.helper_problems[helper.name] = problems
            helper.keep_log(args.keep_logs)
        try:
            asyncio.run(idb._pg(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
            run.cleanup.append(f"dropped PostgreSQL database {db_name}")
        except Exception as exc:
            run.cleanup.append(f"could not drop PostgreSQL database {db_name}: {type(exc).__name__}: {exc}")
        run.cleanup.append(hb.delete_redis_keys(prefix))
        for line in run.cleanup:
            print(f"  {line}", flush=True)
        for kind, count in bot.log_kinds(run.log_problems):
            print(f"  server log: {count} × {kind}")
        for name, problems in run.helper_problems.items():
            for kind, count in bot.log_kinds(problems):
                print(f"  {name} log: {count} × {kind}")
    return run


# -- report ------------------------------------------------------------------------------------


def notify_table(rows: list[idb.Row]) -> list[str]:
    lines = [
        "| target | server | requests/s | p50 ms | p99 ms | notifies sent | orders paid (database) | non-2xx | "
        "ratio to /healthz |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if r.skipped or r.failed:
            why = f"skipped: {r.skipped}" if r.skipped else f"failed: {r.failed}"
            lines.append(f"| {r.target} | {r.backend} | {why} | — | — | — | — | — | — |")
            continue
        sent = paid = bad = "—"
        if isinstance(r, NotifyRow):
            sent = f"{r.counts['issued']:,}"
            paid = f"{r.db_delta.get('orders paid', 0):,}"
            bad = f"{r.counts['s4xx'] + r.counts['s5xx'] + r.counts['other']:,}"
        lines.append(
            f"| {r.target} | {r.backend} | {hb.fmt(r.rps, 0)} | {hb.fmt(r.p50_ms, 2)} | {hb.fmt(r.p99_ms, 2)} | "
            f"{sent} | {paid} | {bad} | {hb.fmt(r.ratio, 3)} |"
        )
    return lines


def creation_table(creations: list[Creation]) -> list[str]:
    lines = [
        "| channel | server | in flight | creations/s | p50 ms | p99 ms | created (201) | orders `paying` "
        "(database) | other answers |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in creations:
        if c.failed:
            lines.append(f"| {c.channel} | {c.backend} | {c.concurrency} | failed: {c.failed} | — | — | — | — | — |")
            continue
        others = sum(v for k, v in c.statuses.items() if k != "201")
        lines.append(
            f"| {c.channel} | {c.backend} | {c.concurrency} | {hb.fmt(c.rate, 0)} | {hb.fmt(c.p50_ms, 1)} | "
            f"{hb.fmt(c.p99_ms, 1)} | {c.created:,} | {'—' if c.paying is None else f'{c.paying:,}'} | {others:,} |"
        )
    return lines


def signing_table(signing: list[Signing]) -> list[str]:
    lines = [
        "| operation | implementation | iterations | median ms | p99 ms | SDK / ours |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    ours = {s.op: s.median_ms for s in signing if s.impl.startswith("ours")}
    for s in signing:
        ratio = "1" if s.impl.startswith("ours") else f"{s.median_ms / ours[s.op]:,.0f}×" if ours.get(s.op) else "—"
        lines.append(f"| {s.op} | {s.impl} | {s.iterations:,} | {s.median_ms:,.3f} | {s.p99_ms:,.3f} | {ratio} |")
    return lines


def verdict(runs: list[PayRun]) -> str:
    two = [r for run in runs if run.workers == 2 for r in run.rows if isinstance(r, NotifyRow) and r.rps]
    if not two:
        return f"Target ≥ {TARGET_RPS:,} notifies/s with 2 workers: not measured."
    r = two[0]
    heavy = sorted(((k, v) for k, v in r.cpu.items() if v >= 0.02), key=lambda kv: -kv[1])
    per_notify = sum(r.cpu.values()) / r.rps
    if r.rps >= TARGET_RPS:
        return f"Target ≥ {TARGET_RPS:,} notifies/s with 2 workers: **met** ({r.rps:,.0f}/s)."
    return (
        f"Target ≥ {TARGET_RPS:,} notifies/s with 2 workers: **missed** ({r.rps:,.0f}/s, "
        f"{r.rps / TARGET_RPS:.0%} of it). Where the CPU went during that run, in shares of one core "
        f"(2 cores = 200%): {r.shares}. Per notify that is "
        + ", ".join(f"{name} {share / r.rps * 1000:.1f} ms" for name, share in heavy)
        + f" of CPU, {per_notify * 1000:.1f} ms in all of our processes: at most about {2 / per_notify:,.0f} "
        f"notifies/s on these 2 cores if nothing else ran (the run reached {r.rps * per_notify / 2:.0%} of that), so "
        "what limits it is the CPU each notify costs (the server's ORM round trips, the worker's push and relay jobs, "
        f"PostgreSQL's commits), not a lock or a pool. What PostgreSQL's sessions of the run's database were doing, sampled every "
        f"0.1 s from `pg_stat_activity` (average sessions in each state): {r.pg_activity}."
    )


def section(
    runs: list[PayRun],
    signing: list[Signing],
    signing_notes: list[str],
    sim_problems: dict[str, list[str]],
    args: argparse.Namespace,
    machine: str,
    when: str,
) -> str:
    rows = [r for run in runs for r in run.rows]
    creations = [c for run in runs for c in run.creations]
    url = f"http://{HOST}:PORT"
    healthz_cmd = " ".join(shlex.quote(p) for p in hb.wrk_command(args, f"{url}/healthz", args.duration))
    notify_cmd = " ".join(shlex.quote(p) for p in cb.script_cmd(args, url + NOTIFY_PATH, args.duration, "notifies.lua"))
    warmup = " ".join(hb.wrk_command(args, f"{url}/...", args.warmup, latency=False))
    body = [
        SECTION,
        "",
        f"Measured {when} by `.venv/bin/python benchmarks/payments.py`"
        + (f" ({' '.join(sys.argv[1:])})" if sys.argv[1:] else "")
        + ".",
        "",
        "WeChat Pay notifies (each a distinct notify of its own order, a real `paying → paid` transition):",
        "",
        *notify_table(rows),
        "",
        verdict(runs),
        "",
    ]
    if creations:
        body += [
            "Order creation (`POST /api/v1/cases/{case_no}/payments`, each on a case of its own), against the pay-sim:",
            "",
            *creation_table(creations),
            "",
        ]
    if signing:
        body += [
            "Alipay RSA2 on one 2048-bit key, in this script's process (ms per operation):",
            "",
            *signing_table(signing),
            "",
        ]
    body += [
        "- What each notify is: `POST /pay/notify/wechat` as WeChat Pay sends it, a `TRANSACTION.SUCCESS` body whose "
        "`resource` (the transaction: mchid, the mini-program appid, out_trade_no, amount, payer) is encrypted with "
        "AEAD_AES_256_GCM under the APIv3 key, signed (RSA-SHA256 over `timestamp\\nnonce\\nbody\\n`) with a WeChat "
        "Pay platform key generated for the run, which the server is configured with "
        "(`WECHATPAY_PLATFORM_PUBLIC_KEY`, `WECHATPAY_PLATFORM_SERIAL`), built with `payments.wechatpay`'s helpers. "
        "Per request the server checks the serial, the timestamp and the signature, decrypts, and applies the trade "
        "(`handlers.payments.settle.apply_trade`): the order `paying → paid` by a conditional update under a row "
        "lock with its payment event, the case's `fee_paid_at`, a case event, a notification and a `fee_paid` outbox "
        "row, then the push and relay kicks; 204 when done. The notifies are generated right before each wrk run "
        "(1.5 × the warm-up rate × the duration of them, one order each) into a file a wrk Lua script sends once "
        "each; it counts 204, 4xx and 5xx answers and keeps the non-204 ones. *orders paid* is counted in "
        f"PostgreSQL before the run and {SETTLE_S:.0f} s after it. Before measuring, a probe by hand: "
        + "; ".join(f"{run.backend}: {run.probe}" for run in runs if run.probe)
        + ".",
        f"- Seeded in PostgreSQL after load-demo (asyncpg, with callbacks.py's seeding): {args.users} citizens, cases "
        f"of {cb.ITEM_NAME} set to `in_review` with a fee of {FEE_FEN} fen (`fee_ref={FEE_REF}`), and one WeChat Pay "
        "order `paying` per case (as an order stands after its JSAPI prepay), seeded as the runs took them"
        + (
            ": " + ", ".join(f"{run.backend} {run.seeded_orders:,} orders" for run in runs if run.seeded_orders)
            if any(run.seeded_orders for run in runs)
            else ""
        )
        + ". `PAYMENT_QUERY_AFTER_S=3600`, so the payments sweep never asks the pay-sim about them.",
        f"- Servers, one row each, everything fresh: a new PostgreSQL database on `{idb.PG_ADMIN_URL}` (dropped "
        f"afterwards), `REDIS_URL={hb.REDIS_URL}` with a throw-away `REDIS_KEY_PREFIX` (keys deleted afterwards), "
        "`TASK_BROKER=redis`, random `SECRET_KEY` and `FIELD_ENCRYPTION_KEY`; `server.py migrate` and `server.py "
        "load-demo` with the server's environment, then `server.py serve` with `WORKERS=N` and `LOG_LEVEL=WARNING`, "
        "beside one `server.py worker --processes 1` and one `server.py scheduler` (checked with `server.py "
        "check-jobs`). Every production channel is configured: WeChat mini-program and official account "
        "(`WECHAT_API_BASE` = the WeChat simulator, `python -m wechat.simulator`), the core platform (the platform "
        "simulator, `python -m bridge.simulator`), WeChat Pay and Alipay (the payment simulators, `python server.py "
        "pay-sim --time-scale 0.001`, with the merchant's WeChat Pay key, APIv3 key and Alipay app key generated "
        "for the run and registered there), each simulator its own process.",
    ]
    if creations:
        body.append(
            "- Order creation, on the last row's database with as many workers: the server restarted with the pay-sim's "
            "WeChat Pay platform key (its answers must verify), one citizen signed in through the WeChat simulator, "
            "and per channel asyncio + httpx in this script with "
            f"{args.create_concurrency} requests in flight for {args.create_warmup:g} s (not counted) + "
            f"{args.create_duration:g} s, each on a payable case of its own (one open order per fee) with a fresh "
            "`Idempotency-Key`. *wechat*: a JSAPI prepay at the pay-sim (signed request, verified answer); "
            "*alipay_qr*: alipay.trade.precreate at the pay-sim (signed, verified); *alipay_wap*: a signed URL, no "
            "call. Each creation commits the order `created`, asks the channel, then moves it to `paying`. p50/p99 "
            "of the 201 answers; *orders `paying`*: counted in PostgreSQL, all requests included."
        )
    if signing:
        body.append(
            "- Alipay: `payments.alipay.sign_rsa2`/`verify_rsa2` (cryptography) and the SDK's "
            '`alipay.aop.api.util.SignatureUtils.sign_with_rsa2(private_key_text, content, "utf-8")`/'
            "`verify_with_rsa(public_key_text, content_bytes, sign)` (pure-Python `rsa`, the key parsed from PEM on "
            f"each call as the SDK does) on one 2048-bit key, after a warm-up; {'; '.join(signing_notes)}."
        )
    body += [
        f"- Commands: `{healthz_cmd}`; `{notify_cmd}`; each after a warm-up `{warmup}` (with the same `-s` script and "
        "its own notifies for the POSTs). The ratio column is requests/s divided by `/healthz` requests/s of the same "
        "server.",
        f"- Machine: {machine}.",
        "- wrk (and its Lua script), the simulators, the worker, the scheduler, PostgreSQL, Redis and, for order "
        "creation, the httpx client share the cores with the server, so these are ceilings of this machine, not of "
        "production hardware; compare rows within one run.",
    ]
    noise = [r.others_cpu for r in rows if r.rps is not None] + [c.others_cpu for c in creations if not c.failed]
    if noise:
        body.append(
            f"- Noise: other processes used at most {max(noise):.0%} of the CPU during the measured runs (rows above "
            f"{hb.BUSY:.0%} are flagged below; a disturbed row is measured again, up to {args.retries} times, keeping "
            f"the least disturbed attempt, until {args.budget:g} s (`--budget`) have passed). Counted as ours: the "
            "server, worker and scheduler (their process groups), the three simulators, wrk, this script, the "
            "PostgreSQL backends of the run's database and the whole redis-server process."
        )
    starts = ", ".join(f"{run.backend}: {run.start_s:.1f} s" for run in runs if run.start_s is not None)
    if starts:
        body.append(f"- Time from start to the first answer (after migrate, load-demo and seeding): {starts}.")
    notes = []
    for run in runs:
        if run.check_jobs:
            notes.append(f"{run.backend}: `check-jobs`: {run.check_jobs}")
        for r in run.rows:
            name = f"{r.target}, {r.backend}"
            if r.attempts > 1:
                notes.append(f"{name}: measured {r.attempts} times because other processes disturbed it")
            if r.others_cpu > hb.BUSY:
                notes.append(
                    f"{name}: other processes used {r.others_cpu:.0%} of the CPU while it was measured: "
                    "its numbers are low"
                )
            notes += [f"{name}: {n}" for n in r.notes]
        for c in run.creations:
            name = f"create {c.channel}, {c.backend}"
            if c.attempts > 1:
                notes.append(f"{name}: measured {c.attempts} times because other processes disturbed it")
            if c.others_cpu > hb.BUSY:
                notes.append(f"{name}: other processes used {c.others_cpu:.0%} of the CPU: its numbers are low")
            notes += [f"{name}: {n}" for n in c.notes]
            if c.shares:
                notes.append(f"{name}: CPU used, in shares of one core: {c.shares}")
        if run.states:
            notes.append(
                f"{run.backend}: orders by channel and state at the end: "
                + ", ".join(f"{k} {v:,}" for k, v in run.states.items())
            )
        if run.log_problems:
            notes.append(
                f"{run.backend}: {len(run.log_problems)} warning/error line(s) in the server's log: "
                + "; ".join(f"{n} × `{kind}`" for kind, n in bot.log_kinds(run.log_problems))
            )
        elif run.start_s is not None:
            notes.append(f"{run.backend}: no warning or error in the server's log")
        for name, problems in run.helper_problems.items():
            notes.append(
                f"{run.backend}: {len(problems)} warning/error line(s) in the {name}'s log: "
                + "; ".join(f"{n} × `{kind}`" for kind, n in bot.log_kinds(problems))
            )
        if run.stop_s is not None and run.stop_s > 5:
            notes.append(f"{run.backend}: the server took {run.stop_s:.1f} s to stop")
        notes += [f"{run.backend}: {n}" for n in run.cleanup + run.extra_notes]
    for s in signing:
        if s.others_cpu > hb.BUSY:
            notes.append(f"{s.op}, {s.impl}: other processes used {s.others_cpu:.0%} of the CPU while it was timed")
    for name, problems in sim_problems.items():
        if problems:
            notes.append(f"{name}: {len(problems)} error line(s) in its log, first: `{problems[0][:240]}`")
    if notes:
        body += ["- Notes and problems seen:", *[f"  - {n}" for n in notes]]
    return "\n".join(body) + "\n"


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Payments: WeChat Pay notifies vs /healthz on PostgreSQL, order creation per channel, Alipay "
        "signing ours vs the SDK's (see benchmarks/README.md)."
    )
    parser.add_argument(
        "--duration", type=hb.positive, default=10, help="seconds of each measured wrk run (default 10)"
    )
    parser.add_argument("--warmup", type=hb.positive, default=2, help="seconds of each wrk warm-up run (default 2)")
    parser.add_argument("--connections", type=hb.positive, default=32, help="wrk connections (default 32)")
    parser.add_argument("--threads", type=hb.positive, default=1, help="wrk threads (default 1)")
    parser.add_argument(
        "--workers", type=cb.number_list, default=[1, 2], metavar="N,N", help="Sanic workers of each row (default 1,2)"
    )
    parser.add_argument("--users", type=hb.positive, default=2000, help="citizens seeded per row (default 2000)")
    parser.add_argument(
        "--orders",
        type=hb.positive,
        default=10000,
        help="cases seeded per row before the server starts (default 10000; more as the runs need them)",
    )
    parser.add_argument("--no-create", action="store_true", help="skip order creation")
    parser.add_argument(
        "--create-concurrency", type=hb.positive, default=8, help="order creations in flight (default 8)"
    )
    parser.add_argument(
        "--create-duration", type=float, default=5, metavar="S", help="measured seconds per channel (default 5)"
    )
    parser.add_argument(
        "--create-warmup", type=float, default=1, metavar="S", help="unmeasured seconds first (default 1)"
    )
    parser.add_argument(
        "--create-cases", type=hb.positive, default=3000, help="cases seeded per channel (default 3000)"
    )
    parser.add_argument(
        "--sign-iterations", type=hb.positive, default=200, help="timed calls of ours per op (default 200)"
    )
    parser.add_argument(
        "--sdk-iterations", type=hb.positive, default=20, help="timed calls of the SDK per op (default 20)"
    )
    parser.add_argument("--no-signing", action="store_true", help="skip the Alipay signing comparison")
    parser.add_argument(
        "--no-write", "--dry-run", action="store_true", dest="no_write", help="print only; leave RESULTS.md alone"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60,
        metavar="S",
        help="before each measurement, wait up to S seconds for other processes to go idle (default 60)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=1,
        metavar="N",
        help="measure a row again, up to N times, when other processes disturbed it (default 1)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=360,
        metavar="S",
        help="after S seconds no more quiet waits nor repeated measurements (default 360)",
    )
    parser.add_argument(
        "--keep-logs", type=Path, metavar="DIR", help="copy the servers', workers' and simulators' output into DIR"
    )
    args = parser.parse_args(argv)
    if args.retries < 0:
        parser.error("--retries cannot be negative")
    if args.threads > args.connections:
        parser.error("--threads cannot exceed --connections")
    if args.duration + 30 > MAX_SKEW_S - 30:
        parser.error(f"--duration: at most {MAX_SKEW_S - 60} s (the notifies' timestamps must stay within 300 s)")
    if args.create_duration <= 0 or args.create_warmup < 0:
        parser.error("--create-duration must be positive and --create-warmup not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    global BUDGET
    args = parse_args(argv)
    BUDGET = materials.Budget(args.budget)
    if shutil.which("wrk") is None:
        print(
            "wrk is not installed: this benchmark uses it as the load generator.\n"
            "Install it from Debian's packages:  apt-get install -y wrk",
            file=sys.stderr,
        )
        return 2
    missing = None if hb.redis_answers() else f"no Redis on {HOST}:{hb.REDIS_PORT}"
    missing = missing or idb.pg_answers()
    if missing:
        print(f"{missing}: this benchmark measures the production backend (PostgreSQL + Redis) only.", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, hb._raise_interrupt)

    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = hb.machine_line()
    print(f"Payments benchmark, {when}\n{machine}\n")

    runs: list[PayRun] = []
    servers: list = []
    sim_problems: dict[str, list[str]] = {}
    signing: list[Signing] = []
    signing_notes: list[str] = []
    interrupted = False
    failed = False
    platform, account = cb.Platform(), bot.Account()
    tmp = tempfile.TemporaryDirectory(prefix="zb-bench-payments-")
    sims: dict[str, idb.Simulator] = {
        "WeChat simulator": idb.Simulator(Path(tmp.name)),
        "platform simulator": cb.PlatformSim(Path(tmp.name), platform),
        "pay-sim": PaySim(Path(tmp.name)),
    }
    try:
        for name, sim in sims.items():
            print(f"{name} on port {sim.port}: answering after {sim.start():.1f} s", flush=True)
        merchant = Merchant(Path(tmp.name))
        merchant.register(sims["pay-sim"])
        print(
            f"merchant {MCHID} and Alipay app {ALIPAY_APP_ID} registered at the pay-sim; WeChat Pay platform key of "
            f"the notifies: {merchant.platform_serial}",
            flush=True,
        )
        for n, workers in enumerate(args.workers):
            runs.append(
                run_row(
                    workers,
                    n,
                    n == len(args.workers) - 1,
                    Path(tmp.name),
                    sims,
                    merchant,
                    account,
                    platform,
                    args,
                    servers,
                )
            )
        if not args.no_signing:
            print("- Alipay RSA2, in this process", flush=True)
            try:
                signing, _, signing_notes = measure_signing(args)
                print("  " + "; ".join(signing_notes), flush=True)
            except Exception as exc:
                failed = True
                print(f"  Alipay signing: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
                signing_notes = [f"FAILED: {type(exc).__name__}: {exc}"[:200]]
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping the servers", file=sys.stderr)
    except RuntimeError as exc:  # a simulator did not start or refused the merchant
        print(f"FAILED: {exc}", file=sys.stderr)
        runs.append(PayRun("all", rows=[idb.Row("all", "all", failed=str(exc)[:160])]))
    finally:
        for server in list(servers):  # interrupted mid-row: the row's own finally has run already
            server.stop()
        for name, sim in sims.items():
            sim.stop()
            sim_problems[name] = sim.log_problems()
            if args.keep_logs and sim.log_path.exists():
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                shutil.copy(sim.log_path, args.keep_logs / sim.log_path.name)
        tmp.cleanup()

    if interrupted:
        return 130
    text = section(runs, signing, signing_notes, sim_problems, args, machine, when)
    print()
    print(text)
    if not args.no_write:
        hb.write_results(text, SECTION)
        print(f"written to {hb.RESULTS.relative_to(ROOT)}")
    rows = [r for run in runs for r in run.rows]
    creations = [c for run in runs for c in run.creations]
    return 1 if failed or any(r.failed for r in rows) or any(c.failed for c in creations) else 0


if __name__ == "__main__":
    sys.exit(main())
