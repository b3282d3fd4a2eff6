"""The core-platform simulator over real HTTP, and the signing scheme both directions use.

`python -m bridge.simulator` runs in a subprocess (module fixture); its callbacks go to a small
receiver, an `http.server` running in a thread of the test process, which verifies every callback
with `bridge.signing.Verifier`, refuses replayed nonces and can answer 500 on purpose.
Every test starts from `POST /__sim__/reset` and an empty receiver; callbacks are 0.05 s apart.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from bridge import signing
from bridge.signing import SignatureRejected, Verifier, dumps_body, nonce_of, sign
from tests.conftest import ROOT, free_port

APP_KEY = "zb_test_platform_app"
SECRET = secrets.token_hex(24)
STEP_DELAY_S = 0.05
CALLBACK_PATH = "/platform/callback?tenant=zb"
HAPPY = ["accepted", "in_review", "approved", "result_issued", "closed"]
_counter = itertools.count(1)


def new_case_no() -> str:
    """Shaped like Zhangban's case numbers: ZB + 14 digits."""
    return f"ZB{time.strftime('%Y%m%d')}{next(_counter) + secrets.randbelow(9000) * 100:06d}"


def wait_for(predicate: Callable[[], Any], *, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# -- the callback receiver -----------------------------------------------------------------


class Receiver:
    """Records every callback attempt; verifies signatures and nonces like Zhangban must."""

    def __init__(self, app_key: str, secret: str):
        self.verifier = Verifier(app_key, secret)
        self.lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        with getattr(self, "lock", threading.Lock()):
            self.records: list[dict[str, Any]] = []
            self.nonces: set[str] = set()
            self.failures: dict[tuple[str, int | None], int] = {}
            self.hold_s = 0.0
            self.inflight = 0
            self.max_inflight = 0

    def fail(self, case_no: str, times: int, seq: int | None = None) -> None:
        """The next `times` callbacks of the case (of one seq, if given) are answered 500."""
        with self.lock:
            self.failures[(case_no, seq)] = times

    def handle(self, method: str, target: str, headers: Any, raw: bytes) -> tuple[int, dict]:
        with self.lock:
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            if self.hold_s:
                time.sleep(self.hold_s)
            return self._handle(method, target, headers, raw)
        finally:
            with self.lock:
                self.inflight -= 1

    def _handle(self, method: str, target: str, headers: Any, raw: bytes) -> tuple[int, dict]:
        record: dict[str, Any] = {
            "t": time.monotonic(),
            "target": target,
            "raw": raw,
            "app_key": headers.get("X-App-Key"),
            "content_type": headers.get("Content-Type"),
            "nonce": nonce_of(headers),
        }
        try:
            self.verifier.verify(method, target, headers, raw)
            record["signature"] = "ok"
        except SignatureRejected as rejected:
            record["signature"] = rejected.reason
        body = json.loads(raw) if raw else {}
        record["body"] = body
        with self.lock:
            if record["signature"] != "ok":
                status = 401
            elif record["nonce"] in self.nonces:
                record["signature"] = "nonce_replayed"
                status = 401
            else:
                self.nonces.add(record["nonce"])
                status = 200
                for key in ((body.get("case_no"), body.get("seq")), (body.get("case_no"), None)):
                    if self.failures.get(key, 0) > 0:
                        self.failures[key] -= 1
                        status = 500
                        break
            record["status"] = status
            self.records.append(record)
        return status, {"ok": True} if status == 200 else {"code": "refused"}

    def attempts(self, case_no: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.records if r["body"].get("case_no") == case_no]

    def delivered(self, case_no: str) -> list[dict[str, Any]]:
        return [r for r in self.attempts(case_no) if r["status"] == 200]

    def wait_delivered(self, case_no: str, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        return wait_for(
            lambda: len(self.delivered(case_no)) >= n and self.delivered(case_no),
            timeout=timeout,
            what=f"{n} callbacks of {case_no}",
        )


def _handler_class(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, body = receiver.handle("POST", self.path, self.headers, raw)
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, str]]:
    rec = Receiver(APP_KEY, SECRET)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(rec))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec, f"http://127.0.0.1:{server.server_address[1]}{CALLBACK_PATH}"
    server.shutdown()
    server.server_close()


# -- the simulator process -----------------------------------------------------------------


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def sim_url(receiver, tmp_path_factory) -> Iterator[str]:
    _, callback_url = receiver
    log_path = tmp_path_factory.mktemp("platform_sim") / "simulator.log"
    port = free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    args = [
        sys.executable,
        "-m",
        "bridge.simulator",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--app-key",
        APP_KEY,
        "--secret",
        SECRET,
        "--callback-url",
        callback_url,
        "--script",
        "happy",
        "--step-delay",
        str(STEP_DELAY_S),
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"simulator exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            httpx.get(url + "/__sim__/stats", timeout=0.5)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                _stop(proc)
                raise AssertionError(f"simulator did not start:\n{log_path.read_text()[-3000:]}") from None
            time.sleep(0.1)
    yield url
    _stop(proc)
    assert proc.returncode == 0, log_path.read_text()[-3000:]


@pytest.fixture
def c(sim_url, receiver) -> Iterator[httpx.Client]:
    rec, _ = receiver
    with httpx.Client(base_url=sim_url, timeout=10) as client:
        assert client.post("/__sim__/reset").json() == {"ok": True}
        rec.clear()
        yield client


@pytest.fixture
def rec(receiver) -> Iterator[Receiver]:
    r = receiver[0]
    r.max_inflight = 0
    yield r
    r.hold_s = 0.0


# -- helpers -------------------------------------------------------------------------------


def signed(
    c: httpx.Client,
    method: str,
    path: str,
    payload: Any = None,
    *,
    app_key: str = APP_KEY,
    secret: str = SECRET,
    sign_path: str | None = None,
    body: bytes | None = None,
    **sign_args: Any,
) -> httpx.Response:
    """A request signed the way Zhangban's adapter signs it."""
    raw = body if body is not None else (b"" if payload is None else dumps_body(payload))
    headers = sign(method, sign_path or path, raw, app_key=app_key, secret=secret, **sign_args)
    headers["Content-Type"] = "application/json; charset=utf-8"
    return c.request(method, path, content=raw, headers=headers)


def case_payload(case_no: str, **overrides: Any) -> dict[str, Any]:
    payload = {
        "case_no": case_no,
        "service_code": "hukou_birth_registration",
        "item_version": 3,
        "applicant": {"name": "张三", "id_number": "51050219900307001X", "phone": "13800138000"},
        "form": {"child": {"name": "张小宝"}, "delivery": {"method": "pickup"}},
        "materials": [
            {
                "slot": "photo",
                "url": "https://zb.example/files/m1/file?sig=x",
                "sha256": hashlib.sha256(b"photo").hexdigest(),
            }
        ],
        "submitted_at": "2026-11-22T10:00:00+08:00",
    }
    payload.update(overrides)
    return payload


def submit(c: httpx.Client, case_no: str, **overrides: Any) -> httpx.Response:
    return signed(c, "POST", "/api/cases", case_payload(case_no, **overrides))


def control(c: httpx.Client, path: str, payload: dict | None = None) -> dict:
    response = c.post("/__sim__/" + path, json=payload or {})
    assert response.status_code == 200, response.text
    return response.json()


def sim_case(c: httpx.Client, case_no: str) -> dict:
    cases = c.get("/__sim__/cases", params={"case_no": case_no}).json()["cases"]
    assert len(cases) == 1, cases
    return cases[0]


def wait_idle(c: httpx.Client, case_no: str, timeout: float = 10.0) -> dict:
    """The simulator's record of the case once its script has stopped playing."""
    return wait_for(
        lambda: (case := sim_case(c, case_no)) and not case["playing"] and case,
        timeout=timeout,
        what=f"script of {case_no} to finish",
    )


def assert_all_valid(records: list[dict]) -> None:
    for r in records:
        assert r["signature"] == "ok", r
        assert r["app_key"] == APP_KEY
        assert r["target"] == CALLBACK_PATH
        assert r["content_type"].startswith("application/json")


# -- signing -------------------------------------------------------------------------------

BODY = dumps_body({"case_no": "ZB20261122000001", "note": "中文"})
TS = 1_790_000_000
NONCE = "n0nce_0123456789-abcdef"


def fixed_verifier(now: float = TS, **kwargs: Any) -> Verifier:
    return Verifier(APP_KEY, SECRET, now=lambda: now, **kwargs)


def test_sign_matches_the_documented_string_to_sign():
    headers = sign("post", "/api/cases?x=1", BODY, app_key=APP_KEY, secret=SECRET, timestamp=TS, nonce=NONCE)
    text = "\n".join(["POST", "/api/cases?x=1", str(TS), NONCE, hashlib.sha256(BODY).hexdigest()])
    expected = hmac.new(SECRET.encode(), text.encode(), hashlib.sha256).hexdigest()
    assert headers == {"X-App-Key": APP_KEY, "X-Timestamp": str(TS), "X-Nonce": NONCE, "X-Signature": expected}


def test_sign_defaults_to_now_and_a_fresh_nonce():
    a = sign("GET", "/api/cases/ZB1", b"", app_key=APP_KEY, secret=SECRET)
    b = sign("GET", "/api/cases/ZB1", b"", app_key=APP_KEY, secret=SECRET)
    assert abs(int(a["X-Timestamp"]) - time.time()) <= 2
    assert a["X-Nonce"] != b["X-Nonce"]
    assert signing.NONCE_RE.match(a["X-Nonce"])
    Verifier(APP_KEY, SECRET).verify("GET", "/api/cases/ZB1", a, b"")
    Verifier(APP_KEY, SECRET).verify("GET", "/api/cases/ZB1", b, None)


@pytest.mark.parametrize("nonce", ["short", "x" * 65, "has space 0123456789", "中文中文中文中文中文中文中文中文"])
def test_sign_refuses_a_malformed_nonce(nonce):
    with pytest.raises(ValueError):
        sign("POST", "/api/cases", BODY, app_key=APP_KEY, secret=SECRET, nonce=nonce)


def test_verify_accepts_a_good_request_whatever_the_header_case():
    headers = sign("POST", "/api/cases", BODY, app_key=APP_KEY, secret=SECRET, timestamp=TS, nonce=NONCE)
    fixed_verifier().verify("POST", "/api/cases", headers, BODY)
    fixed_verifier().verify("POST", "/api/cases", {k.lower(): v for k, v in headers.items()}, BODY)
    fixed_verifier().verify("POST", "/api/cases", {k.upper(): v for k, v in headers.items()}, BODY)


@pytest.mark.parametrize(
    "method, path, body, header, value",
    [
        ("POST", "/api/cases", BODY + b" ", None, None),  # body
        ("POST", "/api/cases", BODY.replace("中文".encode(), "英文".encode()), None, None),
        ("POST", "/api/cases/ZB1/withdraw", BODY, None, None),  # path
        ("POST", "/api/cases?x=2", BODY, None, None),  # query
        ("PUT", "/api/cases", BODY, None, None),  # method
        ("POST", "/api/cases", BODY, "X-Timestamp", str(TS + 1)),  # timestamp, still within the window
        ("POST", "/api/cases", BODY, "X-Nonce", NONCE + "x"),  # nonce
    ],
)
def test_verify_refuses_anything_tampered(method, path, body, header, value):
    headers = sign("POST", "/api/cases", BODY, app_key=APP_KEY, secret=SECRET, timestamp=TS, nonce=NONCE)
    if header:
        headers[header] = value
    with pytest.raises(SignatureRejected) as info:
        fixed_verifier().verify(method, path, headers, body)
    assert info.value.reason == signing.SIGNATURE_MISMATCH


def test_verify_refuses_another_secret_and_another_app_key():
    forged = sign("POST", "/api/cases", BODY, app_key=APP_KEY, secret="guessed-secret", timestamp=TS, nonce=NONCE)
    with pytest.raises(SignatureRejected, match="signature_mismatch"):
        fixed_verifier().verify("POST", "/api/cases", forged, BODY)
    other = sign("POST", "/api/cases", BODY, app_key="someone_else", secret=SECRET, timestamp=TS, nonce=NONCE)
    with pytest.raises(SignatureRejected) as info:
        fixed_verifier().verify("POST", "/api/cases", other, BODY)
    assert info.value.reason == signing.UNKNOWN_APP_KEY


def test_verify_refuses_stale_and_future_timestamps():
    headers = sign("POST", "/api/cases", BODY, app_key=APP_KEY, secret=SECRET, timestamp=TS, nonce=NONCE)
    fixed_verifier(now=TS + 300).verify("POST", "/api/cases", headers, BODY)  # the edges are inside
    fixed_verifier(now=TS - 300).verify("POST", "/api/cases", headers, BODY)
    with pytest.raises(SignatureRejected) as stale:
        fixed_verifier(now=TS + 301).verify("POST", "/api/cases", headers, BODY)
    assert stale.value.reason == signing.TIMESTAMP_STALE
    with pytest.raises(SignatureRejected) as future:
        fixed_verifier(now=TS - 301).verify("POST", "/api/cases", headers, BODY)
    assert future.value.reason == signing.TIMESTAMP_FUTURE
    with pytest.raises(SignatureRejected) as narrow:
        fixed_verifier(now=TS + 61, max_skew_s=60).verify("POST", "/api/cases", headers, BODY)
    assert narrow.value.reason == signing.TIMESTAMP_STALE


@pytest.mark.parametrize("header", ["X-App-Key", "X-Timestamp", "X-Nonce", "X-Signature"])
def test_verify_names_a_missing_header(header):
    headers = sign("POST", "/api/cases", BODY, app_key=APP_KEY, secret=SECRET, timestamp=TS, nonce=NONCE)
    del headers[header]
    with pytest.raises(SignatureRejected) as info:
        fixed_verifier().verify("POST", "/api/cases", headers, BODY)
    assert info.value.reason == signing.MISSING_HEADER
    assert header in info.value.detail
    with pytest.raises(SignatureRejected, match="missing_header"):
        fixed_verifier().verify("POST", "/api/cases", {}, BODY)


@pytest.mark.parametrize(
    "header, value, reason",
    [
        ("X-Timestamp", "17900000.5", signing.TIMESTAMP_INVALID),
        ("X-Timestamp", "-1", signing.TIMESTAMP_INVALID),
        ("X-Nonce", "tooshort", signing.NONCE_INVALID),
        ("X-Nonce", "n" * 65, signing.NONCE_INVALID),
        ("X-Nonce", "bad/nonce/0123456789", signing.NONCE_INVALID),
        ("X-Signature", "ABCDEF" * 10 + "ABCD", signing.SIGNATURE_MALFORMED),
        ("X-Signature", "abc", signing.SIGNATURE_MALFORMED),
    ],
)
def test_verify_refuses_malformed_headers(header, value, reason):
    headers = sign("POST", "/api/cases", BODY, app_key=APP_KEY, secret=SECRET, timestamp=TS, nonce=NONCE)
    headers[header] = value
    with pytest.raises(SignatureRejected) as info:
        fixed_verifier().verify("POST", "/api/cases", headers, BODY)
    assert info.value.reason == reason


def test_verify_compares_in_constant_time(monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(signing.hmac, "compare_digest", spy)
    headers = sign("POST", "/api/cases", BODY, app_key=APP_KEY, secret=SECRET, timestamp=TS, nonce=NONCE)
    fixed_verifier().verify("POST", "/api/cases", headers, BODY)
    assert (headers["X-Signature"].encode(), headers["X-Signature"].encode()) in calls


def test_replayed_nonce_is_caught_by_the_callers_store():
    """Verifier checks signatures; the replay check is the caller's, over nonce_of (Redis SET NX)."""
    seen: set[str] = set()

    def accept(headers: dict) -> bool:
        fixed_verifier().verify("POST", "/api/cases", headers, BODY)
        nonce = nonce_of(headers)
        if nonce in seen:
            return False
        seen.add(nonce)
        return True

    headers = sign("POST", "/api/cases", BODY, app_key=APP_KEY, secret=SECRET, timestamp=TS, nonce=NONCE)
    assert nonce_of(headers) == NONCE == Verifier.nonce_of({"x-nonce": NONCE})
    assert accept(headers) is True
    assert accept(dict(headers)) is False  # the same request again: a replay
    fresh = sign("POST", "/api/cases", BODY, app_key=APP_KEY, secret=SECRET, timestamp=TS)
    assert accept(fresh) is True


def test_target_of_url_keeps_the_query():
    assert signing.target_of_url("http://h:1/platform/callback?tenant=zb") == "/platform/callback?tenant=zb"
    assert signing.target_of_url("https://h") == "/"


# -- the platform API: signatures ----------------------------------------------------------


def test_unsigned_and_forged_submissions_are_401(c):
    case_no = new_case_no()
    raw = dumps_body(case_payload(case_no))
    attempts = {
        "missing_header": c.post("/api/cases", content=raw, headers={"Content-Type": "application/json"}),
        "signature_mismatch": signed(c, "POST", "/api/cases", case_payload(case_no), secret="not-the-secret"),
        "unknown_app_key": signed(c, "POST", "/api/cases", case_payload(case_no), app_key="intruder"),
        "timestamp_stale": signed(c, "POST", "/api/cases", case_payload(case_no), timestamp=int(time.time()) - 400),
        "timestamp_future": signed(c, "POST", "/api/cases", case_payload(case_no), timestamp=int(time.time()) + 400),
    }
    # signed over one body, sent with another
    headers = sign("POST", "/api/cases", raw, app_key=APP_KEY, secret=SECRET)
    tampered = dumps_body(case_payload(case_no, service_code="something_else"))
    attempts["tampered body"] = c.post("/api/cases", content=tampered, headers=headers)
    # signed for another path
    attempts["other path"] = signed(c, "POST", "/api/cases", case_payload(case_no), sign_path="/api/cases?x=1")
    for name, response in attempts.items():
        assert response.status_code == 401, (name, response.text)
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        assert body["code"] == "signature_invalid", (name, body)
        if not name.startswith(("tampered", "other")):
            assert body["details"]["reason"] == name
        else:
            assert body["details"]["reason"] == "signature_mismatch"
    assert c.get("/__sim__/cases").json() == {"cases": []}
    assert c.get("/__sim__/stats").json()["calls"]["/api/cases"] == len(attempts)
    time.sleep(5 * STEP_DELAY_S)
    assert rec_count(c) == 0


def rec_count(c: httpx.Client) -> int:
    return sum(len(case["callbacks"]) for case in c.get("/__sim__/cases").json()["cases"])


def test_a_replayed_request_is_401(c):
    case_no = new_case_no()
    raw = dumps_body(case_payload(case_no))
    headers = sign("POST", "/api/cases", raw, app_key=APP_KEY, secret=SECRET)
    first = c.post("/api/cases", content=raw, headers=headers)
    assert first.status_code == 200, first.text
    again = c.post("/api/cases", content=raw, headers=headers)
    assert again.status_code == 401
    assert again.json()["code"] == "signature_invalid"
    assert again.json()["details"]["reason"] == "nonce_replayed"
    assert sim_case(c, case_no)["received"] == 1


def test_signed_reads_check_the_query_too(c):
    case_no = new_case_no()
    assert submit(c, case_no).status_code == 200
    good = signed(c, "GET", f"/api/cases/{case_no}?view=full")
    assert good.status_code == 200, good.text
    assert good.json()["case_no"] == case_no
    bad = signed(c, "GET", f"/api/cases/{case_no}?view=full", sign_path=f"/api/cases/{case_no}")
    assert bad.status_code == 401 and bad.json()["code"] == "signature_invalid"


# -- the platform API: cases and scripts ---------------------------------------------------


def test_happy_script_calls_back_in_seq_order_with_valid_signatures(c, rec):
    case_no = new_case_no()
    started = time.monotonic()
    response = submit(c, case_no)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["received"] is True and body["platform_case_id"].startswith("PT")
    assert time.monotonic() - started < 1.0  # the callbacks do not hold the answer up

    records = rec.wait_delivered(case_no, 5)
    wait_idle(c, case_no)
    time.sleep(4 * STEP_DELAY_S)
    records = rec.attempts(case_no)
    assert_all_valid(records)
    assert [r["body"]["seq"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["body"]["event"] for r in records] == HAPPY
    assert len({r["nonce"] for r in records}) == 5
    for r in records:
        cb = r["body"]
        assert set(cb) == {"case_no", "platform_case_id", "seq", "event", "at", "data"}
        assert cb["case_no"] == case_no and cb["platform_case_id"] == body["platform_case_id"]
        assert datetime.fromisoformat(cb["at"]).utcoffset() is not None
    result = records[3]["body"]["data"]
    assert result["kind"] == "electronic" and result["licence_no"]
    assert all(r["body"]["data"] == {} for i, r in enumerate(records) if i != 3)
    gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(records)]
    assert min(gaps) >= STEP_DELAY_S * 0.8

    view = signed(c, "GET", f"/api/cases/{case_no}")
    assert view.json() == {
        "case_no": case_no,
        "platform_case_id": body["platform_case_id"],
        "status": "closed",
        "seq": 5,
    }
    case = sim_case(c, case_no)
    assert case["status"] == "closed" and case["seq"] == 5 and case["received"] == 1 and case["script"] == "happy"
    assert case["submission"]["materials"] == case_payload(case_no)["materials"]
    assert [(cb["seq"], cb["event"], cb["sends"], cb["delivered"], cb["attempts"]) for cb in case["callbacks"]] == [
        (i + 1, e, 1, 1, 1) for i, e in enumerate(HAPPY)
    ]


def test_the_same_case_no_is_received_once(c, rec):
    case_no = new_case_no()
    first = submit(c, case_no)
    second = submit(c, case_no)  # a retry after a lost answer: signed afresh
    third = submit(c, case_no, form={"changed": True})
    assert first.status_code == second.status_code == third.status_code == 200
    assert first.json() == second.json() == third.json()
    rec.wait_delivered(case_no, 5)
    wait_idle(c, case_no)
    time.sleep(6 * STEP_DELAY_S)
    assert [r["body"]["seq"] for r in rec.attempts(case_no)] == [1, 2, 3, 4, 5]
    case = sim_case(c, case_no)
    assert case["received"] == 3 and len(case["callbacks"]) == 5
    assert case["submission"]["form"] == case_payload(case_no)["form"]  # the first one counts


def test_correction_script_waits_for_the_resubmission(c, rec):
    case_no = new_case_no()
    assert control(c, "script", {"case_no": case_no, "script": "correction"})["script"] == "correction"
    assert submit(c, case_no).status_code == 200
    rec.wait_delivered(case_no, 3)
    time.sleep(10 * STEP_DELAY_S)  # nothing more comes until the citizen corrects
    records = rec.attempts(case_no)
    assert [(r["body"]["seq"], r["body"]["event"]) for r in records] == [
        (1, "accepted"),
        (2, "in_review"),
        (3, "correction_requested"),
    ]
    assert records[2]["body"]["data"] == {"fields": ["applicant.phone"], "materials": ["photo"], "reason": "照片不清晰"}
    assert signed(c, "GET", f"/api/cases/{case_no}").json()["status"] == "correction_requested"
    assert sim_case(c, case_no)["playing"] is False

    bad = signed(c, "POST", f"/api/cases/{case_no}/resubmit", {"fields": [], "materials": [{"slot": "photo"}]})
    assert bad.status_code == 422
    assert set(bad.json()["details"]["fields"]) == {"fields", "materials.0.url", "materials.0.sha256"}

    correction = {
        "fields": {"applicant.phone": "13900139000"},
        "materials": [
            {
                "slot": "photo",
                "url": "https://zb.example/files/m2/file",
                "sha256": hashlib.sha256(b"photo2").hexdigest(),
            }
        ],
    }
    ok = signed(c, "POST", f"/api/cases/{case_no}/resubmit", correction)
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"case_no": case_no, "status": "resubmitted"}
    repeat = signed(c, "POST", f"/api/cases/{case_no}/resubmit", correction)  # a retry of the same
    assert repeat.status_code == 200 and repeat.json() == ok.json()

    rec.wait_delivered(case_no, 7)
    wait_idle(c, case_no)
    time.sleep(4 * STEP_DELAY_S)
    records = rec.attempts(case_no)
    assert_all_valid(records)
    assert [(r["body"]["seq"], r["body"]["event"]) for r in records[3:]] == [
        (4, "in_review"),
        (5, "approved"),
        (6, "result_issued"),
        (7, "closed"),
    ]
    case = sim_case(c, case_no)
    assert case["status"] == "closed" and case["seq"] == 7 and case["resubmissions"] == [correction]

    other = signed(c, "POST", f"/api/cases/{case_no}/resubmit", {"fields": {"x": 1}})
    assert other.status_code == 409 and other.json()["code"] == "not_in_correction"


def test_resubmit_outside_correction_is_409(c, rec):
    case_no = new_case_no()
    assert submit(c, case_no).status_code == 200
    rec.wait_delivered(case_no, 5)
    response = signed(c, "POST", f"/api/cases/{case_no}/resubmit", {"fields": {}, "materials": []})
    assert response.status_code == 409
    assert response.json()["code"] == "not_in_correction"
    missing = signed(c, "POST", "/api/cases/ZB00000000000000/resubmit", {"fields": {}})
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


def test_duplicates_script_sends_every_callback_twice_and_one_burst(c, rec):
    rec.hold_s = 0.4  # keep each request open long enough that the burst overlaps on a loaded machine
    control(c, "script", {"script": "duplicates"})  # the default for new cases
    case_no = new_case_no()
    assert submit(c, case_no).status_code == 200
    wait_for(lambda: len(rec.delivered(case_no)) >= 15, timeout=15, what="15 deliveries")
    wait_idle(c, case_no)
    time.sleep(4 * STEP_DELAY_S)
    records = rec.attempts(case_no)
    assert_all_valid(records)  # every copy is signed afresh: no nonce is ever reused
    assert len({r["nonce"] for r in records}) == len(records) == 15
    counts = {seq: sum(r["body"]["seq"] == seq for r in records) for seq in range(1, 6)}
    assert counts == {1: 2, 2: 2, 3: 7, 4: 2, 5: 2}
    first_seen = list(dict.fromkeys(r["body"]["seq"] for r in records))
    assert first_seen == [1, 2, 3, 4, 5]
    for seq in range(1, 6):
        assert len({r["raw"] for r in records if r["body"]["seq"] == seq}) == 1  # copies are identical
    assert rec.max_inflight == 5  # the burst: 5 deliveries at once
    case = sim_case(c, case_no)
    assert [(cb["event"], cb["sends"], cb["delivered"], cb["attempts"]) for cb in case["callbacks"]] == [
        ("accepted", 2, 2, 2),
        ("in_review", 2, 2, 2),
        ("approved", 7, 7, 7),
        ("result_issued", 2, 2, 2),
        ("closed", 2, 2, 2),
    ]


def test_out_of_order_script_sends_seq_2_before_seq_1(c, rec):
    case_no = new_case_no()
    control(c, "script", {"case_no": case_no, "script": "out_of_order"})
    assert submit(c, case_no).status_code == 200
    rec.wait_delivered(case_no, 5)
    wait_idle(c, case_no)
    time.sleep(4 * STEP_DELAY_S)
    records = rec.attempts(case_no)
    assert_all_valid(records)
    assert [(r["body"]["seq"], r["body"]["event"]) for r in records] == [
        (2, "in_review"),
        (1, "accepted"),
        (3, "approved"),
        (4, "result_issued"),
        (5, "closed"),
    ]
    assert signed(c, "GET", f"/api/cases/{case_no}").json()["status"] == "closed"


def fee_paid_body(amount_fen: int) -> dict:
    return {
        "out_trade_no": "ZB20261130000000PAY0000001",
        "channel": "wechat",
        "transaction_id": "4200002026113000000000001",
        "amount_fen": amount_fen,
        "paid_at": "2026-11-30T10:00:00+08:00",
    }


def test_rejection_and_fee_scripts_and_mail_results(c, rec):
    rejected, fee = new_case_no(), new_case_no()
    control(c, "script", {"case_no": rejected, "script": "rejection"})
    control(c, "script", {"case_no": fee, "script": "fee", "data": {"fee_assessed": {"amount_fen": 3500}}})
    assert submit(c, rejected).status_code == 200
    assert submit(c, fee, form={"delivery": {"method": "mail"}}).status_code == 200
    rec.wait_delivered(rejected, 4)
    rec.wait_delivered(fee, 3)
    # The fee script waits for the payment before the decision.
    time.sleep(4 * STEP_DELAY_S)
    assert len(rec.delivered(fee)) == 3 and signed(c, "GET", f"/api/cases/{fee}").json()["status"] == "in_review"
    early = signed(c, "POST", f"/api/cases/{fee}/receipt", {"out_trade_no": "ZB20261130000000PAY0000001"})
    assert early.status_code == 409 and early.json()["code"] == "fee_not_paid"
    wrong = signed(c, "POST", f"/api/cases/{fee}/fee-paid", fee_paid_body(3400))
    assert wrong.status_code == 422 and wrong.json()["code"] == "amount_mismatch"
    for _ in range(2):  # idempotent by out_trade_no
        paid = signed(c, "POST", f"/api/cases/{fee}/fee-paid", fee_paid_body(3500))
        assert paid.status_code == 200 and paid.json() == {"case_no": fee, "fee_status": "paid"}
    receipts = [
        signed(c, "POST", f"/api/cases/{fee}/receipt", {"out_trade_no": "ZB20261130000000PAY0000001"}).json()
        for _ in range(2)
    ]
    assert receipts[0] == receipts[1] and receipts[0]["receipt_no"] and receipts[0]["verify_url"].startswith("https://")
    rec.wait_delivered(fee, 6)
    wait_idle(c, rejected), wait_idle(c, fee)
    events = [(r["body"]["event"], r["body"]["data"]) for r in rec.attempts(rejected)]
    assert [e for e, _ in events] == ["accepted", "in_review", "rejected", "closed"]
    assert events[2][1]["reason"]
    events = [(r["body"]["event"], r["body"]["data"]) for r in rec.attempts(fee)]
    assert [e for e, _ in events] == ["accepted", "in_review", "fee_assessed", "approved", "result_issued", "closed"]
    assert events[2][1]["amount_fen"] == 3500
    assert events[4][1]["kind"] == "mail" and events[4][1]["tracking_no"]
    assert signed(c, "GET", f"/api/cases/{rejected}").json()["status"] == "closed"


def test_callbacks_are_retried_with_backoff_and_attempts_counted(c, rec):
    case_no = new_case_no()
    rec.fail(case_no, 2, seq=1)  # the first 2 attempts of seq 1 get 500
    assert submit(c, case_no).status_code == 200
    rec.wait_delivered(case_no, 5)
    case = wait_idle(c, case_no)
    attempts = rec.attempts(case_no)
    assert [(r["body"]["seq"], r["status"]) for r in attempts[:4]] == [(1, 500), (1, 500), (1, 200), (2, 200)]
    assert_all_valid(attempts)
    assert len({r["nonce"] for r in attempts}) == len(attempts)  # each retry is signed afresh
    assert len({r["raw"] for r in attempts[:3]}) == 1  # with the same body
    assert attempts[1]["t"] - attempts[0]["t"] >= 0.18  # backoff 0.2 s, then 0.4 s
    assert attempts[2]["t"] - attempts[1]["t"] >= 0.38
    first = case["callbacks"][0]
    assert (first["attempts"], first["sends"], first["delivered"], first["gave_up"]) == (3, 1, 1, 0)
    assert [a["status"] for a in first["attempt_log"]] == [500, 500, 200]
    assert [cb["attempts"] for cb in case["callbacks"][1:]] == [1, 1, 1, 1]


def test_a_callback_is_given_up_after_the_retry_window(c, rec):
    control(c, "config", {"retry_budget_s": 1.0})
    case_no = new_case_no()
    rec.fail(case_no, 1000, seq=1)
    assert submit(c, case_no).status_code == 200
    rec.wait_delivered(case_no, 4)
    case = wait_idle(c, case_no)
    first = case["callbacks"][0]
    # 0.2 + 0.4 s of pauses fit in 1 s, the next 0.8 s would not
    assert (first["attempts"], first["delivered"], first["gave_up"], first["last_status"]) == (3, 0, 1, 500)
    assert [r["body"]["seq"] for r in rec.delivered(case_no)] == [2, 3, 4, 5]  # the script goes on
    assert case["status"] == "closed"


def test_unreachable_receiver_counts_connection_errors(c, rec):
    control(c, "config", {"callback_url": f"http://127.0.0.1:{free_port()}/cb", "retry_budget_s": 0.5})
    case_no = new_case_no()
    control(c, "script", {"case_no": case_no, "script": "rejection"})
    assert submit(c, case_no).status_code == 200
    case = wait_idle(c, case_no, timeout=15)
    assert [cb["delivered"] for cb in case["callbacks"]] == [0, 0, 0, 0]
    assert all(cb["attempts"] == 2 and cb["gave_up"] == 1 for cb in case["callbacks"])  # 0.2 s fits, 0.6 s not
    assert all("ConnectError" in cb["last_error"] for cb in case["callbacks"])
    assert rec.attempts(case_no) == []
    control(c, "reset")
    assert c.get("/__sim__/cases").json() == {"cases": []}


def test_down_refuses_submissions_then_up_accepts_them(c, rec):
    assert control(c, "fail", {"down": True})["down"] is True
    case_no = new_case_no()
    response = submit(c, case_no)
    assert response.status_code == 503
    assert response.json()["code"] == "platform_unavailable"
    assert signed(c, "GET", f"/api/cases/{case_no}").status_code == 503
    assert signed(c, "POST", f"/api/cases/{case_no}/withdraw", {}).status_code == 503
    assert c.get("/__sim__/cases").json() == {"cases": []}
    assert control(c, "fail", {"down": False})["down"] is False
    response = submit(c, case_no)
    assert response.status_code == 200, response.text
    assert [r["body"]["event"] for r in rec.wait_delivered(case_no, 5)] == HAPPY


def test_injected_failures_and_slow_answers(c):
    case_no = new_case_no()
    assert control(c, "fail", {"path": "/api/cases", "http_status": 503, "times": 2})["pending"] == {"/api/cases": 2}
    assert submit(c, case_no).status_code == 503
    assert submit(c, case_no).status_code == 503
    assert submit(c, case_no).status_code == 200
    assert sim_case(c, case_no)["received"] == 1

    control(c, "fail", {"path": "/api/cases/{case_no}", "http_status": 500})  # a template: any case
    assert signed(c, "GET", f"/api/cases/{case_no}").status_code == 500
    assert signed(c, "GET", f"/api/cases/{case_no}").status_code == 200

    control(c, "fail", {"path": f"/api/cases/{case_no}", "delay_s": 0.3})  # a concrete path, delayed only
    started = time.monotonic()
    assert signed(c, "GET", f"/api/cases/{case_no}").status_code == 200
    assert time.monotonic() - started >= 0.3

    assert control(c, "fail", {"delay_s": 0.3})["delay_s"] == 0.3  # every call slow
    started = time.monotonic()
    assert signed(c, "GET", f"/api/cases/{case_no}").status_code == 200
    assert time.monotonic() - started >= 0.3
    control(c, "fail", {"delay_s": 0})
    started = time.monotonic()
    assert signed(c, "GET", f"/api/cases/{case_no}").status_code == 200
    assert time.monotonic() - started < 0.3

    bad = c.post("/__sim__/fail", json={"path": "/api/nothing", "http_status": 99, "times": 0})
    assert bad.status_code == 422
    assert set(bad.json()["details"]["fields"]) == {"path", "http_status", "times"}


def test_withdraw_before_acceptance_stops_the_script(c, rec):
    control(c, "config", {"step_delay_s": 0.5})
    case_no = new_case_no()
    assert submit(c, case_no).status_code == 200
    response = signed(c, "POST", f"/api/cases/{case_no}/withdraw", {"reason": "填错了"})
    assert response.status_code == 200, response.text
    assert response.json() == {"case_no": case_no, "status": "withdrawn"}
    assert signed(c, "POST", f"/api/cases/{case_no}/withdraw", {}).status_code == 200  # again: the same
    time.sleep(0.8)
    assert rec.attempts(case_no) == []
    case = sim_case(c, case_no)
    assert case["status"] == "withdrawn" and case["callbacks"] == [] and case["playing"] is False

    control(c, "config", {"step_delay_s": STEP_DELAY_S})
    accepted = new_case_no()
    assert submit(c, accepted).status_code == 200
    rec.wait_delivered(accepted, 1)
    late = signed(c, "POST", f"/api/cases/{accepted}/withdraw", {})
    assert late.status_code == 409 and late.json()["code"] == "already_accepted"
    assert signed(c, "POST", "/api/cases/ZB00000000000000/withdraw", {}).status_code == 404


def test_submission_is_validated_field_by_field(c):
    payload = {
        "case_no": "bad case no!",
        "item_version": "3",
        "applicant": [],
        "materials": [{"slot": "photo", "url": "https://x", "sha256": "ABC"}],
        "submitted_at": "yesterday",
    }
    response = signed(c, "POST", "/api/cases", payload)
    assert response.status_code == 422
    assert response.json()["code"] == "validation_failed"
    assert set(response.json()["details"]["fields"]) == {
        "case_no",
        "service_code",
        "item_version",
        "applicant",
        "form",
        "materials.0.sha256",
        "submitted_at",
    }
    not_json = signed(c, "POST", "/api/cases", body=b"{not json")
    assert not_json.status_code == 400 and not_json.json()["code"] == "malformed_json"
    assert c.get("/__sim__/cases").json() == {"cases": []}
    unknown = signed(c, "GET", "/api/cases/ZB00000000000000")
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"
    for response in (c.get("/nowhere"), c.get("/api/cases")):
        assert response.status_code in (404, 405)
        assert response.headers["content-type"].startswith("application/json")
        assert response.json()["code"] in ("not_found", "method_not_allowed")


def test_control_api_validation(c):
    bad = c.post("/__sim__/script", json={"script": "chaos"})
    assert bad.status_code == 422 and "script" in bad.json()["details"]["fields"]
    bad = c.post("/__sim__/config", json={"step_delay_s": -1, "callback_url": "ftp://x", "colour": "red"})
    assert bad.status_code == 422
    assert set(bad.json()["details"]["fields"]) == {"step_delay_s", "callback_url", "colour"}
    config = control(c, "config", {"step_delay_s": 0.1})
    assert config["step_delay_s"] == 0.1 and config["callback_url"].endswith(CALLBACK_PATH)
    assert "callback_secret" not in config
    case_no = new_case_no()
    assert submit(c, case_no).status_code == 200
    late = c.post("/__sim__/script", json={"case_no": case_no, "script": "correction"})
    assert late.status_code == 409 and late.json()["code"] == "case_already_received"
    control(c, "reset")  # back to the command line's configuration
    assert c.get("/__sim__/stats").json() == {"calls": {}, "down": False, "delay_s": 0.0, "pending_failures": {}}
    assert control(c, "config")["step_delay_s"] == STEP_DELAY_S


def test_statuses_and_events_are_zhangbans():
    from bridge import simulator
    from storage.models import CaseStatus

    values = {s.value for s in CaseStatus}
    assert set(simulator.STATUSES) <= values
    assert {s for s in simulator.EVENT_STATUS.values() if s} <= values
    for script in simulator.SCRIPTS.values():
        assert set(script.events) | set(script.after_resubmit) <= set(simulator.EVENTS)
