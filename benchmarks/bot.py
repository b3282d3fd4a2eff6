"""Official-account bot: encrypted `POST /wechat/oa` answered from the catalogue, against
`GET /healthz` of the same server and against WeRoBot 1.13.1 answering the same envelope.

    .venv/bin/python benchmarks/bot.py [--quick] [--duration 10] [--workers 1,2] [--no-werobot]

What it measures:

- Zhangban, per backend (embedded: 1 worker; production: each of `--workers`), after `server.py
  load-demo`: `GET /healthz` (the ceiling) and safe-mode (`encrypt_type=aes`) text messages asking
  "身份证过期了怎么办", which the bot answers with the guide of 居民身份证换领. Every POST is a
  distinct message built as WeChat builds it (tests/oa_pusher.py: AES-256-CBC envelope, `signature`
  and `msg_signature`, a current timestamp, a MsgId never used before in the run) from one of
  `--followers` followers registered at the WeChat simulator: the callback de-duplicates on MsgId and
  would answer a repeat from its cache, which would not measure the work. The messages are written
  just before each wrk run into a file that a wrk Lua script sends once each; sampled replies are
  decrypted and checked (MsgSignature, AppID, MsgType, the guide's name in the content).
- WeRoBot 1.13.1 (benchmarks/werobot_app.py: same token, EncodingAESKey and AppID, one `@robot.text`
  handler returning the reply our server gave) in its default configuration (SQLite sessions) and
  with `enable_session=False` (its fastest), on gunicorn with 1 sync worker and, in full runs, on
  `robot.run()` with the default server "auto" (Waitress), one process each: its signed
  URL-verification GET (its cheapest request) and the same kind of messages. WeRoBot is not a
  Zhangban dependency: it lives in a virtual environment of its own under ~/.cache/zhangban-bench
  (made with `python -m venv` and `pip install werobot==1.13.1 cryptography gunicorn waitress` on
  first use, which needs the package index; `--fresh-werobot` makes it again).

The WeRoBot rows' ratio is to the `/healthz` of the Zhangban server measured just before them
(production, 1 worker); the comparison table divides Zhangban's bot rows by each WeRoBot row.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode
from xml.etree import ElementTree

import harness as h

SECTION = "## Official-account bot (POST /wechat/oa, encrypted)"
OA_PATH, QUESTION, MARKER = "/wechat/oa", "身份证过期了怎么办", "居民身份证换领"
WEROBOT_VERSION = "1.13.1"
WEROBOT_PACKAGES = [f"werobot=={WEROBOT_VERSION}", "cryptography", "gunicorn", "waitress"]
WEROBOT_VENV = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "zhangban-bench" / "werobot-1.13.1"
MAX_SKEW_S = 300  # bot/crypto.py refuses timestamps further than this from its clock


def extra(p) -> None:
    p.add_argument("--followers", type=int, default=200, help="senders registered at the simulator (200)")
    p.add_argument("--no-werobot", action="store_true", help="Zhangban rows only")
    p.add_argument("--fresh-werobot", action="store_true", help="make WeRoBot's virtual environment again")


class Messages:
    """Safe-mode callback requests as WeChat sends them; no MsgId is used twice in one run."""

    def __init__(self, channels: h.Channels):
        from tests.oa_pusher import OAPusher, _sha1, text_message

        self.token, self.appid = channels.oa_token, channels.oa_appid
        self.pusher = OAPusher("", token=channels.oa_token, aes_key=channels.oa_aes_key, appid=channels.oa_appid)
        self._sha1, self._text = _sha1, text_message
        self._ids = itertools.count(10**17 + secrets.randbelow(8 * 10**8) * 10**9)  # 18 digits, like WeChat's

    def request(self, openid: str) -> tuple[str, str, dict[str, str], str]:
        timestamp, nonce = str(int(time.time())), f"{secrets.randbelow(10**9):09d}"
        cipher = self.pusher.encrypt(
            self._text(openid, QUESTION, msg_id=str(next(self._ids)), create_time=int(timestamp))
        )
        query = urlencode(
            {
                "signature": self._sha1(self.token, timestamp, nonce),
                "timestamp": timestamp,
                "nonce": nonce,
                "openid": openid,
                "encrypt_type": "aes",
                "msg_signature": self._sha1(self.token, timestamp, nonce, cipher),
            }
        )
        body = f"<xml><ToUserName><![CDATA[gh_sim]]></ToUserName><Encrypt><![CDATA[{cipher}]]></Encrypt></xml>"
        return "POST", f"{OA_PATH}?{query}", {"Content-Type": "text/xml"}, body

    def verify_query(self) -> str:
        """WeChat's signed URL-verification GET (`echostr` echoed back)."""
        timestamp, nonce = str(int(time.time())), f"{secrets.randbelow(10**9):09d}"
        signature = self._sha1(self.token, timestamp, nonce)
        return urlencode({"signature": signature, "timestamp": timestamp, "nonce": nonce, "echostr": "zb" + nonce})

    def read_reply(self, body: str) -> str:
        """The Content of an encrypted passive text reply, after checking its MsgSignature, the
        AppID inside the ciphertext and the MsgType; ValueError says what is wrong."""
        try:
            root = ElementTree.fromstring(body)
        except ElementTree.ParseError:
            raise ValueError(f"not XML: {body[:60]!r}") from None
        cipher, signature = root.findtext("Encrypt"), root.findtext("MsgSignature")
        timestamp, nonce = root.findtext("TimeStamp"), root.findtext("Nonce")
        if not (cipher and signature and timestamp and nonce):
            raise ValueError("not an encrypted reply")
        if signature != self._sha1(self.token, timestamp, nonce, cipher):
            raise ValueError("MsgSignature does not match")
        try:
            inner = ElementTree.fromstring(self.pusher.decrypt(cipher))
        except Exception as exc:
            raise ValueError(f"cannot decrypt: {type(exc).__name__}") from None
        if inner.findtext("MsgType") != "text":
            raise ValueError(f"MsgType {inner.findtext('MsgType')!r}")
        return inner.findtext("Content") or ""

    def ask(self, base: str, openid: str) -> str:
        import httpx

        _, target, headers, body = self.request(openid)
        response = httpx.post(base + target, content=body.encode(), headers=headers, timeout=30)
        if response.status_code != 200:
            raise RuntimeError(f"set-up message answered {response.status_code}: {response.text[:200]}")
        return self.read_reply(response.text)


def measure(s: h.Session, server, messages: Messages, openids: list[str], ceiling: h.Row | None,
            expect, target: str, delay_ms: float = 0) -> h.Row:  # fmt: skip
    """wrk sending distinct messages once each; the sampled replies checked with `expect(content)`.
    `delay_ms`: each connection pauses that long before each request (a paced load)."""
    slug = secrets.token_hex(3)
    requests = h.Requests(s.tmp, f"bot-{slug}", s.args.threads, markers=["<Encrypt>"], delay_ms=delay_ms)
    senders = itertools.cycle(openids)
    written_at = []

    def refill(count: int) -> None:
        written_at.append(time.time())
        requests.write(messages.request(next(senders)) for _ in range(count))

    row = s.wrk(target, server, OA_PATH, ceiling=ceiling, requests=requests, refill=refill, rate_guess=1500, settle=1.0)
    if row.failed:
        return row
    problems: dict[str, int] = {}
    for status, body in row.samples:
        try:
            if status != 200:
                raise ValueError(f"HTTP {status}")
            if not expect(messages.read_reply(body)):
                raise ValueError("unexpected content")
        except ValueError as exc:
            problems[str(exc)[:60]] = problems.get(str(exc)[:60], 0) + 1
    unencrypted = row.sent.get("responses", 0) - row.markers.get("<Encrypt>", 0)
    s.note(
        f"{target}, {row.server}: {h.sent_note(row)}; {len(row.samples)} sampled replies checked, "
        f"{len(row.samples) - sum(problems.values())} good"
        + (f" (problems: {h.outcomes(problems)})" if problems else "")
        + (f"; ERRORS: {unencrypted} answers not an encrypted reply" if unencrypted else "")
    )
    if time.time() - written_at[-1] > MAX_SKEW_S - 30:
        s.note(f"{target}, {row.server}: the oldest timestamp neared WeChat's {MAX_SKEW_S} s limit")
    if row.sent.get("reused") or (isinstance(server, h.Zhangban) and (unencrypted or problems)):
        s.failed = True  # WeRoBot's own bad answers are what it does under this load: noted, not a failure
    return row


def paced(s: h.Session, server, messages: Messages, openids: list[str], ceiling: h.Row, peak: h.Row) -> h.Row:
    """The same messages at about half the peak rate (target: p99 < 30 ms there). wrk cannot send at
    a fixed rate, so each connection pauses before each request: c connections, a pause of
    c / (peak / 2) less the time a request took at the peak's single-worker rate."""
    connections = s.args.connections
    if peak.rps / 2 * s.args.duration < 100:
        s.note(f"{peak.server}: the paced row needs at least 100 requests at half the peak: skipped")
        return h.Row(f"POST {OA_PATH}, paced at about half the peak", peak.server, failed="too few requests")
    delay_ms = max(0.0, connections * 1000 / (peak.rps / 2) - 1000 / peak.rps)
    row = measure(s, server, messages, openids, ceiling, lambda c: MARKER in c,
                  f"POST {OA_PATH} (encrypted FAQ → guide), paced at about half the peak", delay_ms=delay_ms)  # fmt: skip
    if row.rps:
        s.note(f"{row.target}, {row.server}: each connection paused {delay_ms:.1f} ms before each request; "
               f"reached {row.rps:,.0f}/s ({row.rps / peak.rps:.0%} of the peak), p99 {row.p99_ms:.1f} ms "
               f"(target < 30 ms)")  # fmt: skip
    return row


# -- WeRoBot -----------------------------------------------------------------------------------


def werobot_venv(fresh: bool) -> dict[str, str]:
    """Makes (once) WeRoBot's virtual environment; the versions installed in it."""
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    python = WEROBOT_VENV / "bin" / "python"
    if fresh and WEROBOT_VENV.exists():
        shutil.rmtree(WEROBOT_VENV)
    if not python.exists():
        WEROBOT_VENV.parent.mkdir(parents=True, exist_ok=True)
        base = getattr(sys, "_base_executable", None) or shutil.which("python3") or "python3"
        for cmd in (
            [base, "-m", "venv", str(WEROBOT_VENV)],
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *WEROBOT_PACKAGES],
        ):
            done = subprocess.run(cmd, capture_output=True, text=True, env=clean, timeout=600)
            if done.returncode != 0:
                shutil.rmtree(WEROBOT_VENV, ignore_errors=True)
                raise RuntimeError(f"{' '.join(cmd[:3])}… failed: {done.stderr.strip()[-300:]}")
    probe = (
        "import importlib.metadata as m, json, platform\n"
        "print(json.dumps({n: m.version(n) for n in ['WeRoBot', 'bottle', 'gunicorn', 'waitress']}"
        " | {'Python': platform.python_version()}))"
    )
    return json.loads(subprocess.run([str(python), "-c", probe], capture_output=True, text=True, env=clean).stdout)


def werobot_server(s: h.Session, how: str, sessions: bool, reply: str, messages: Messages, versions: dict) -> h.Plain:
    bin_ = WEROBOT_VENV / "bin"
    if how == "gunicorn":
        name = f"WeRoBot {WEROBOT_VERSION}, gunicorn {versions.get('gunicorn', '?')} (1 sync worker)"
        argv = [str(bin_ / "gunicorn"), "--workers", "1", "--bind", "{host}:{port}", "werobot_app:application"]
    else:
        name = f"WeRoBot {WEROBOT_VERSION}, robot.run auto → Waitress {versions.get('waitress', '?')}"
        argv = [str(bin_ / "python"), "werobot_app.py", "--host", "{host}", "--port", "{port}", "--server", "auto"]
    name += ", sessions " + ("on (default, SQLite)" if sessions else "off (enable_session=False)")
    env = {"PYTHONDONTWRITEBYTECODE": "1", "WEROBOT_TOKEN": messages.token, "WEROBOT_APP_ID": messages.appid,
           "WEROBOT_AES_KEY": s.channels.oa_aes_key, "WEROBOT_REPLY": reply,
           "WEROBOT_SESSION": "on" if sessions else "off"}  # fmt: skip
    server = h.Plain(s, name, argv, env, ready_path=f"{OA_PATH}?{messages.verify_query()}")
    shutil.copy(h.BENCH_DIR / "werobot_app.py", server.cwd / "werobot_app.py")
    return server


def main(argv: list[str] | None = None) -> int:
    args = h.parse_args(__doc__, argv, extra, workers="1,2", quick={"workers": "1", "followers": 50})
    with h.Session(args, SECTION, "benchmarks/bot.py") as s:
        messages = Messages(s.channels)
        openids = [
            s.channels.wechat.control("__sim__/users", {"appid": s.channels.oa_appid, "unionid": True})["openid"]
            for _ in range(args.followers)
        ]
        rows: list[h.Row] = []
        ours: list[h.Row] = []
        reply, last_ceiling = None, None
        for backend in s.backends():
            for workers in args.worker_counts if backend == h.PRODUCTION else [1]:
                server = s.zhangban(backend, workers)
                try:
                    s.note(f"{server.label}: load-demo: {server.prepare()}")
                    server.start()
                    reply = messages.ask(server.base, openids[0])
                    if MARKER not in reply:
                        raise RuntimeError(f"the bot did not answer with the guide: {reply[:80]!r}")
                    ceiling = s.ceiling(server)
                    bot = measure(s, server, messages, openids, ceiling, lambda c: MARKER in c,
                                  f"POST {OA_PATH} (encrypted FAQ → guide)")  # fmt: skip
                    rows += [ceiling, bot]
                    ours.append(bot)
                    if bot.rps:
                        rows.append(paced(s, server, messages, openids, ceiling, bot))
                    if workers == 1:
                        last_ceiling = ceiling
                except Exception as exc:  # ours, httpx's, asyncpg's: the row says what went wrong
                    rows.append(s.failed_row("bot", server.label, exc))
                s.stop(server)
        theirs: list[h.Row] = []
        if not args.no_werobot and reply:
            try:
                versions = werobot_venv(args.fresh_werobot)
                s.note("WeRoBot's environment: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
            except Exception as exc:  # the row says what went wrong
                versions = None
                rows.append(s.failed_row("WeRoBot", "its virtual environment", exc))
            for how in ["gunicorn"] + ([] if args.quick else ["auto"]):
                for sessions in (True, False):
                    if versions is None:
                        break
                    server = werobot_server(s, how, sessions, reply, messages, versions)
                    try:
                        server.start()
                        if messages.ask(server.base, f"o{secrets.token_hex(13)}") != reply:
                            raise RuntimeError("WeRoBot did not answer the fixed reply")
                        verify = s.wrk(f"GET {OA_PATH} (signed URL verification)", server,
                                       f"{OA_PATH}?{messages.verify_query()}", ceiling=last_ceiling)  # fmt: skip
                        senders = [f"o{secrets.token_hex(13)}" for _ in range(args.followers)]
                        post = measure(s, server, messages, senders, last_ceiling, lambda c: c == reply,
                                       f"POST {OA_PATH} (encrypted, fixed text)")  # fmt: skip
                        for r in (verify, post):
                            r.ratio_of = "/healthz of Zhangban (1 worker), same run"
                        rows += [verify, post]
                        theirs.append(post)
                    except Exception as exc:  # ours, httpx's, asyncpg's: the row says what went wrong
                        rows.append(s.failed_row("WeRoBot", server.label, exc))
                    server.stop()
                    kinds = h.log_kinds(server.log_problems())
                    if kinds:
                        s.note(f"{server.label}: its log: " + "; ".join(f"{n} × `{k}`" for k, n in kinds))
        s.wrk_table("", rows)
        comparison = []
        for mine in ours:
            for other in theirs:
                if mine.rps and other.rps:
                    comparison.append(
                        {"Zhangban": mine.server, "WeRoBot": other.server, "Zhangban / WeRoBot": mine.rps / other.rps}
                    )
        if comparison:
            s.table("Zhangban's bot requests/s divided by WeRoBot's (same run):", comparison, {"Zhangban / WeRoBot": 2})
            for c in comparison:
                s.summarise_value(f"bot / {c['WeRoBot']}", c["Zhangban"], c["Zhangban / WeRoBot"], "× WeRoBot")
        return s.finish(
            [
                "Zhangban: `server.py serve` with `LOG_LEVEL=WARNING` after `server.py load-demo` with the same "
                "environment, every channel configured against the simulators; the official account is the WeChat "
                "simulator's default OA app with a token and EncodingAESKey generated for the run.",
                f"Commands: `wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency` on `/healthz`, "
                "and with `-s` a Lua script sending each pre-written message once; each after a "
                f"{args.warmup} s warm-up with its own messages.",
                "WeRoBot: benchmarks/werobot_app.py in the virtual environment named above, same account, one "
                "`@robot.text` handler returning the reply our server gave; *sessions on* is WeRoBot's default "
                "(SQLite session storage loaded and saved on every message), *off* is `enable_session=False`.",
                "wrk, its Lua script and the simulators share the cores with the server: ceilings of this machine.",
            ]
        )


if __name__ == "__main__":
    sys.exit(main())
