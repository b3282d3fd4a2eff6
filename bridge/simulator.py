"""Core-platform simulator: the city's 一体化政务服务平台 as Zhangban sees it, in memory.

The platform cannot be reached from development and test machines, so Zhangban talks to this
simulator instead. Mount it in-process (`platform_blueprint(state, url_prefix="/_sim/platform")`) or
run it standalone:

    python -m bridge.simulator --host 127.0.0.1 --port 8702 --app-key K --secret S \\
        --callback-url http://127.0.0.1:8000/platform/callback --script happy

Every platform call must be signed (`bridge.signing`: X-App-Key, X-Timestamp, X-Nonce, X-Signature,
HMAC-SHA256) with the simulator's app key and secret. Unsigned, forged, stale or replayed requests
(nonces are remembered in memory for twice the skew window) answer
`401 {"code": "signature_invalid", "message", "details": {"reason"}}`.

Platform API (JSON in and out; errors are `{"code", "message", "details"}`):

    POST /api/cases                     {"case_no", "service_code", "item_version", "applicant": {...},
                                         "form": {...}, "materials": [{"slot", "url", "sha256"}],
                                         "submitted_at"} -> {"platform_case_id", "received": true}
                                        idempotent by case_no: the same case_no again answers the same
                                        platform_case_id and is not played again; 422 validation_failed
                                        lists every bad field in details.fields
    POST /api/cases/{case_no}/withdraw  {"reason"?} -> {"case_no", "status": "withdrawn"} while the
                                        platform has not accepted it (again: the same answer); after
                                        that 409 already_accepted. The script stops.
    POST /api/cases/{case_no}/resubmit  {"fields": {...}, "materials": [...]} -> {"case_no", "status":
                                        "resubmitted"} while in correction (the same body again right
                                        after: the same answer); otherwise 409 not_in_correction
    GET  /api/cases/{case_no}           {"case_no", "platform_case_id", "status", "seq"}
    POST /api/cases/{case_no}/fee-paid  {"out_trade_no", "channel", "transaction_id", "amount_fen", "paid_at",
                                         "notice_no"?} -> {"case_no", "fee_status": "paid"}; idempotent by
                                        out_trade_no; 409 no_fee_due when no fee was assessed, 422
                                        amount_mismatch when amount_fen is not the assessed fee. A `fee` or
                                        `fee_rejection` script waits for it after `fee_assessed`.
    POST /api/cases/{case_no}/receipt   {"out_trade_no", "amount_fen", "payer"?} -> {"receipt_no", "verify_url",
                                        "issued_at"} (财政电子票据), once the fee is paid (409 fee_not_paid
                                        before); the same out_trade_no again answers the same receipt
    POST /api/cases/{case_no}/evaluation {"level": 1-5, "tags", "active", "channel", "evaluated_at", "comment"?, ...}
                                        -> {"case_no", "evaluation_no", "accepted": true} (好差评); one per
                                        case: the same case again answers the same evaluation_no and
                                        records nothing new (`evaluation_calls` counts the calls); 409
                                        not_concluded before the platform's decision
    unknown case_no: 404 not_found

Statuses are Zhangban's `CaseStatus` values: `delivered_to_platform` (received, not yet accepted),
`accepted`, `in_review`, `correction_requested`, `resubmitted`, `approved`, `rejected`,
`result_issued`, `closed`, `withdrawn`.

Callbacks. After answering a new case, the simulator plays a script as an asyncio task: every
`step_delay_s` (default 2 s) it moves the case on and POSTs a callback to `callback_url`, signed the
same way with `callback_app_key`/`callback_secret` (by default the same pair):

    {"case_no", "platform_case_id", "seq": 1, 2, 3... (per case), "event", "at": ISO 8601 (+08:00),
     "data": {...}}

Events and their data: `accepted` {}, `in_review` {}, `correction_requested` {"fields":
["applicant.phone"], "materials": ["photo"], "reason": "照片不清晰"}, `fee_assessed` {"amount_fen"},
`approved` {}, `rejected` {"reason"}, `fee_assessed` also carries the public payment platform's
"notice_no" (缴款码), `result_issued` {"kind": "electronic", "licence_no"} or
{"kind": "mail", "tracking_no"} (mail when the form chose mail delivery), `closed` {}.

Scripts (`SCRIPTS`):

    happy         accepted, in_review, approved, result_issued, closed
    correction    accepted, in_review, correction_requested; after /resubmit: in_review, approved,
                  result_issued, closed
    rejection     accepted, in_review, rejected, closed
    fee           accepted, in_review, fee_assessed, (waits for fee-paid), approved, result_issued, closed
    fee_rejection accepted, in_review, fee_assessed, (waits for fee-paid), rejected, closed
    duplicates    happy, but every callback is delivered twice, and `approved` once more as a burst
                  of 5 concurrent deliveries (7 in all)
    out_of_order  happy, but seq 2 (in_review) is delivered before seq 1 (accepted)

Callbacks of one case are delivered one after another. A delivery answered with a non-2xx status or
a connection error is retried after 0.2, 0.4, 0.8 ... s (`retry_base_s`, doubling) while the retry
window (`retry_budget_s`, 30 s) lasts, then given up; the script goes on. Every attempt is signed
afresh (new nonce and timestamp, the same body) and counted.

Control API (not the platform's; unsigned):

    POST /__sim__/script   {"script", "case_no"?, "data"?: {event: {...}}, "result_kind"?}
                           the default script, or the script of one case not received yet
    POST /__sim__/config   {"callback_url"?, "step_delay_s"?, "retry_budget_s"?, "retry_base_s"?,
                            "callback_timeout_s"?, "callback_app_key"?, "callback_secret"?}
    POST /__sim__/fail     {"path", "http_status"?, "delay_s"?, "times"?: 1}  the next `times` calls to
                           path (`/api/cases`, `/api/cases/ZB1/withdraw` or a template such as
                           `/api/cases/{case_no}/withdraw`) wait delay_s, then fail with http_status
                           {"down": true|false}  while down, every platform call answers 503
                           {"delay_s": S}        every platform call waits S seconds (0: off)
    GET  /__sim__/cases    {"cases": [...]} every received case: status, seq, received count,
                           callbacks with sends, deliveries and attempts (`?case_no=` for one)
    GET  /__sim__/stats    {"calls": {route: n}, "down", "delay_s", "pending_failures"}
    POST /__sim__/event    {"case_no", "event", "data"?}  the platform decides `event` now, outside the
                           script (its next seq), and calls back at once: {"seq", "delivered"}
    POST /__sim__/reset    forgets every case, script choice, failure and nonce; config back to start

Defaults: app key `zb_sim_platform`, secret `sim_platform_secret_0123456789abcdef`.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
from sanic import Blueprint, Request, Sanic
from sanic.response import HTTPResponse

from bridge.signing import (
    NONCE_REPLAYED,
    SignatureRejected,
    Verifier,
    dumps_body,
    nonce_of,
    path_with_query,
    sign,
    target_of_url,
)
from core import simserver
from core.simserver import SimError, json_response

log = logging.getLogger("zhangban.platform_sim")

DEFAULT_APP_KEY = "zb_sim_platform"
DEFAULT_SECRET = "sim_platform_secret_0123456789abcdef"
DEFAULT_STEP_DELAY_S = 2.0
DEFAULT_RETRY_BASE_S = 0.2
DEFAULT_RETRY_BUDGET_S = 30.0
DEFAULT_CALLBACK_TIMEOUT_S = 5.0

CHINA = timezone(timedelta(hours=8))

# Statuses: the values of storage.models.CaseStatus (the simulator does not import the ORM).
DELIVERED = "delivered_to_platform"
ACCEPTED = "accepted"
IN_REVIEW = "in_review"
CORRECTION_REQUESTED = "correction_requested"
RESUBMITTED = "resubmitted"
APPROVED = "approved"
REJECTED = "rejected"
RESULT_ISSUED = "result_issued"
CLOSED = "closed"
WITHDRAWN = "withdrawn"
STATUSES = (
    DELIVERED,
    ACCEPTED,
    IN_REVIEW,
    CORRECTION_REQUESTED,
    RESUBMITTED,
    APPROVED,
    REJECTED,
    RESULT_ISSUED,
    CLOSED,
    WITHDRAWN,
)

FEE_ASSESSED = "fee_assessed"
EVENTS = (ACCEPTED, IN_REVIEW, CORRECTION_REQUESTED, FEE_ASSESSED, APPROVED, REJECTED, RESULT_ISSUED, CLOSED)
# The status an event moves the case to; fee_assessed leaves it where it is.
EVENT_STATUS: dict[str, str | None] = {e: e for e in EVENTS} | {FEE_ASSESSED: None}

_HAPPY = (ACCEPTED, IN_REVIEW, APPROVED, RESULT_ISSUED, CLOSED)


@dataclass(frozen=True)
class Script:
    events: tuple[str, ...]
    after_resubmit: tuple[str, ...] = ()
    mode: str = "normal"  # normal | duplicates | out_of_order


SCRIPTS: dict[str, Script] = {
    "happy": Script(_HAPPY),
    "correction": Script((ACCEPTED, IN_REVIEW, CORRECTION_REQUESTED), (IN_REVIEW, APPROVED, RESULT_ISSUED, CLOSED)),
    "rejection": Script((ACCEPTED, IN_REVIEW, REJECTED, CLOSED)),
    "fee": Script((ACCEPTED, IN_REVIEW, FEE_ASSESSED, APPROVED, RESULT_ISSUED, CLOSED)),
    "fee_rejection": Script((ACCEPTED, IN_REVIEW, FEE_ASSESSED, REJECTED, CLOSED)),
    "duplicates": Script(_HAPPY, mode="duplicates"),
    "out_of_order": Script(_HAPPY, mode="out_of_order"),
}
DUPLICATE_COPIES = 2
BURST_EVENT = APPROVED
BURST_SIZE = 5

DEFAULT_CORRECTION = {"fields": ["applicant.phone"], "materials": ["photo"], "reason": "照片不清晰"}
DEFAULT_FEE_FEN = 2000
DEFAULT_REJECT_REASON = "申请材料不符合法定条件"

CASES = "/api/cases"
CASE = "/api/cases/{case_no}"
WITHDRAW = "/api/cases/{case_no}/withdraw"
RESUBMIT = "/api/cases/{case_no}/resubmit"
FEE_PAID = "/api/cases/{case_no}/fee-paid"
RECEIPT = "/api/cases/{case_no}/receipt"
EVALUATION = "/api/cases/{case_no}/evaluation"
API_ROUTES = (CASES, CASE, WITHDRAW, RESUBMIT, FEE_PAID, RECEIPT, EVALUATION)
_ROUTE_RES = {t: re.compile("^" + re.escape(t).replace(re.escape("{case_no}"), "[^/]+") + r"\Z") for t in API_ROUTES}

_CASE_NO = re.compile(r"^[A-Za-z0-9_-]{1,32}\Z")
_SHA256 = re.compile(r"^[0-9a-f]{64}\Z")
_NONCE_MEMORY_FACTOR = 2  # remember nonces for twice the skew window


# -- errors --------------------------------------------------------------------------------


class ApiFailure(SimError):
    """A platform answer other than 200: `{"code", "message", "details"}` with `status`."""


def _not_found(case_no: str) -> ApiFailure:
    return ApiFailure(404, "not_found", "办件不存在", {"case_no": case_no})


_FAILURE_CODES = {
    500: "internal_error",
    502: "bad_gateway",
    503: "platform_unavailable",
    504: "gateway_timeout",
    429: "rate_limited",
}


# -- state ---------------------------------------------------------------------------------


@dataclass
class _Failure:
    http_status: int | None
    delay_s: float
    remaining: int


@dataclass
class Callback:
    """One callback (one seq) and what happened to its deliveries."""

    seq: int
    event: str
    at: str
    data: dict[str, Any]
    body: bytes
    sends: int = 0  # deliveries started (a duplicated callback is sent more than once)
    delivered: int = 0  # deliveries answered 2xx
    gave_up: int = 0  # deliveries abandoned after the retry window
    attempts: int = 0  # HTTP attempts, retries included, over all deliveries
    last_status: int | None = None
    last_error: str | None = None
    attempt_log: list[dict[str, Any]] = field(default_factory=list)

    def view(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "event": self.event,
            "at": self.at,
            "data": self.data,
            "sends": self.sends,
            "delivered": self.delivered,
            "gave_up": self.gave_up,
            "attempts": self.attempts,
            "last_status": self.last_status,
            "last_error": self.last_error,
            "attempt_log": list(self.attempt_log),
        }


@dataclass
class SimCase:
    case_no: str
    platform_case_id: str
    submission: dict[str, Any]
    script: str
    event_data: dict[str, dict[str, Any]]
    result_kind: str
    received_at: str
    status: str = DELIVERED
    seq: int = 0
    received: int = 1
    callbacks: list[Callback] = field(default_factory=list)
    resubmissions: list[dict[str, Any]] = field(default_factory=list)
    resubmit_open: bool = False  # the last resubmission may be repeated (no correction asked since)
    withdraw_reason: str | None = None
    task: asyncio.Task | None = None
    fee_fen: int | None = None
    payments: dict[str, dict[str, Any]] = field(default_factory=dict)  # out_trade_no -> fee-paid body
    receipts: dict[str, dict[str, Any]] = field(default_factory=dict)  # out_trade_no -> receipt
    evaluation: dict[str, Any] | None = None  # the 好差评 received, once
    evaluation_calls: int = 0
    fee_paid: asyncio.Event = field(default_factory=asyncio.Event)

    def view(self) -> dict[str, Any]:
        return {
            "case_no": self.case_no,
            "platform_case_id": self.platform_case_id,
            "service_code": self.submission.get("service_code"),
            "item_version": self.submission.get("item_version"),
            "status": self.status,
            "seq": self.seq,
            "script": self.script,
            "received": self.received,
            "received_at": self.received_at,
            "playing": self.task is not None and not self.task.done(),
            "submission": self.submission,
            "resubmissions": list(self.resubmissions),
            "withdraw_reason": self.withdraw_reason,
            "fee_fen": self.fee_fen,
            "payments": list(self.payments.values()),
            "receipts": list(self.receipts.values()),
            "evaluation": self.evaluation,
            "evaluation_calls": self.evaluation_calls,
            "callbacks": [cb.view() for cb in self.callbacks],
        }


@dataclass
class _ScriptChoice:
    script: str
    data: dict[str, dict[str, Any]]
    result_kind: str | None


class PlatformState:
    """All simulator state, in memory: configuration, cases, script choices, injected failures, seen
    nonces and the running callback tasks. One instance per app (or per test run)."""

    def __init__(
        self,
        app_key: str = DEFAULT_APP_KEY,
        secret: str = DEFAULT_SECRET,
        *,
        callback_url: str | None = None,
        callback_app_key: str | None = None,
        callback_secret: str | None = None,
        default_script: str = "happy",
        step_delay_s: float = DEFAULT_STEP_DELAY_S,
        retry_base_s: float = DEFAULT_RETRY_BASE_S,
        retry_budget_s: float = DEFAULT_RETRY_BUDGET_S,
        callback_timeout_s: float = DEFAULT_CALLBACK_TIMEOUT_S,
        max_skew_s: float = 300,
    ):
        if default_script not in SCRIPTS:
            raise ValueError(f"unknown script {default_script!r}; one of {sorted(SCRIPTS)}")
        self._initial = {
            "app_key": app_key,
            "secret": secret,
            "callback_url": callback_url,
            "callback_app_key": callback_app_key or app_key,
            "callback_secret": callback_secret or secret,
            "default_script": default_script,
            "step_delay_s": float(step_delay_s),
            "retry_base_s": float(retry_base_s),
            "retry_budget_s": float(retry_budget_s),
            "callback_timeout_s": float(callback_timeout_s),
            "max_skew_s": float(max_skew_s),
        }
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self.tasks: set[asyncio.Task] = set()
        self.cases: dict[str, SimCase] = {}
        self.reset()

    def reset(self) -> None:
        """Back to the start: no cases, no script choices, failures or nonces; the start configuration."""
        for task in list(self.tasks):
            task.cancel()
        self.tasks.clear()
        for name, value in self._initial.items():
            setattr(self, name, value)
        self.cases = {}
        self.scripts: dict[str, _ScriptChoice] = {}
        self.failures: dict[str, list[_Failure]] = {}
        self.down = False
        self.delay_s = 0.0
        self.calls: dict[str, int] = {}
        self.nonces: dict[str, float] = {}

    # configuration -------------------------------------------------------------------------

    @property
    def verifier(self) -> Verifier:
        return Verifier(self.app_key, self.secret, max_skew_s=self.max_skew_s)

    def config_view(self) -> dict[str, Any]:
        return {
            "app_key": self.app_key,
            "callback_url": self.callback_url,
            "callback_app_key": self.callback_app_key,
            "default_script": self.default_script,
            "step_delay_s": self.step_delay_s,
            "retry_base_s": self.retry_base_s,
            "retry_budget_s": self.retry_budget_s,
            "callback_timeout_s": self.callback_timeout_s,
        }

    def configure(self, **values: Any) -> dict[str, Any]:
        for name, value in values.items():
            if value is None and name != "callback_url":
                continue
            if name not in self._initial or name in ("app_key", "secret", "max_skew_s", "default_script"):
                raise ValueError(f"not configurable: {name}")
            setattr(self, name, value)
        return self.config_view()

    def choose_script(
        self,
        script: str,
        case_no: str | None = None,
        *,
        data: dict[str, dict[str, Any]] | None = None,
        result_kind: str | None = None,
    ) -> None:
        """The default script, or the script (and event data) of a case that has not arrived yet."""
        if script not in SCRIPTS:
            raise ValueError(f"unknown script {script!r}")
        if case_no is None:
            self.default_script = script
            return
        if case_no in self.cases:
            raise ApiFailure(409, "case_already_received", "该办件已收到，脚本只能在提交前指定", {"case_no": case_no})
        self.scripts[case_no] = _ScriptChoice(script, dict(data or {}), result_kind)

    # failures ------------------------------------------------------------------------------

    def count_call(self, route: str) -> None:
        self.calls[route] = self.calls.get(route, 0) + 1

    def inject_failure(self, path: str, *, http_status: int | None = None, delay_s: float = 0.0, times: int = 1) -> int:
        """The next `times` calls to `path` (a concrete path or a route template) wait `delay_s`, then
        fail with `http_status` when given."""
        if http_status is None and not delay_s:
            http_status = 503
        queue = self.failures.setdefault(path, [])
        queue.append(_Failure(http_status, float(delay_s), times))
        return sum(f.remaining for f in queue)

    def take_failure(self, path: str, route: str) -> _Failure | None:
        for key in (path, route):
            queue = self.failures.get(key)
            if queue:
                failure = queue[0]
                failure.remaining -= 1
                if failure.remaining <= 0:
                    queue.pop(0)
                return failure
        return None

    def pending_failures(self) -> dict[str, int]:
        return {path: sum(f.remaining for f in queue) for path, queue in self.failures.items() if queue}

    # signatures ----------------------------------------------------------------------------

    def authenticate(self, method: str, target: str, headers: Any, body: bytes) -> None:
        """Zhangban's signature, then its nonce (remembered only once the signature is good)."""
        try:
            self.verifier.verify(method, target, headers, body)
        except SignatureRejected as rejected:
            raise ApiFailure(401, "signature_invalid", "签名校验失败", {"reason": rejected.reason}) from None
        nonce = nonce_of(headers) or ""
        now = time.time()
        if nonce in self.nonces and self.nonces[nonce] > now:
            raise ApiFailure(401, "signature_invalid", "签名校验失败", {"reason": NONCE_REPLAYED})
        if len(self.nonces) > 10_000:
            self.nonces = {n: until for n, until in self.nonces.items() if until > now}
        self.nonces[nonce] = now + _NONCE_MEMORY_FACTOR * self.max_skew_s

    # platform operations -------------------------------------------------------------------

    def case(self, case_no: str) -> SimCase:
        case = self.cases.get(case_no)
        if case is None:
            raise _not_found(case_no)
        return case

    def receive(self, body: dict[str, Any]) -> tuple[SimCase, bool]:
        """A submitted case: (the case, whether it is new). The same case_no again is the same case."""
        _check_submission(body)
        case_no = body["case_no"]
        existing = self.cases.get(case_no)
        if existing is not None:
            existing.received += 1
            return existing, False
        choice = self.scripts.pop(case_no, None) or _ScriptChoice(self.default_script, {}, None)
        now = datetime.now(CHINA)
        case = SimCase(
            case_no=case_no,
            platform_case_id=f"PT{now:%Y%m%d}{secrets.token_hex(5).upper()}",
            submission=body,
            script=choice.script,
            event_data=choice.data,
            result_kind=choice.result_kind or ("mail" if _wants_mail(body.get("form")) else "electronic"),
            received_at=now.isoformat(timespec="seconds"),
        )
        self.cases[case_no] = case
        return case, True

    def withdraw(self, case_no: str, reason: str | None) -> dict[str, Any]:
        case = self.case(case_no)
        if case.status not in (DELIVERED, WITHDRAWN):
            raise ApiFailure(409, "already_accepted", "办件已受理，不能撤回", {"status": case.status})
        if case.status == DELIVERED:
            case.status = WITHDRAWN
            case.withdraw_reason = reason or ""
            if case.task is not None:
                case.task.cancel()
        return {"case_no": case.case_no, "status": WITHDRAWN}

    def resubmit(self, case_no: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """(answer, whether the script goes on). A repeat of the last resubmission answers the same."""
        case = self.case(case_no)
        _check_resubmission(body)
        if case.status != CORRECTION_REQUESTED:
            if case.resubmit_open and case.resubmissions and case.resubmissions[-1] == body:
                return {"case_no": case.case_no, "status": RESUBMITTED}, False
            raise ApiFailure(409, "not_in_correction", "办件不在补正状态", {"status": case.status})
        case.resubmissions.append(body)
        case.resubmit_open = True
        case.status = RESUBMITTED
        return {"case_no": case.case_no, "status": RESUBMITTED}, True

    def fee_paid(self, case_no: str, body: dict[str, Any]) -> dict[str, Any]:
        """A fee payment reported by Zhangban: recorded once per out_trade_no; a waiting script goes on."""
        case = self.case(case_no)
        errors: dict[str, str] = {}
        out_trade_no = _text(body, "out_trade_no", errors, required=True, max_len=32)
        _text(body, "channel", errors, required=True, max_len=16)
        _text(body, "transaction_id", errors, required=True, max_len=64)
        _text(body, "paid_at", errors, required=True, max_len=40)
        amount = body.get("amount_fen")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 1:
            errors["amount_fen"] = "应为正整数（分）"
        simserver.check_fields(errors)
        if out_trade_no in case.payments:
            return {"case_no": case.case_no, "fee_status": "paid"}
        if case.fee_fen is None:
            raise ApiFailure(409, "no_fee_due", "该办件无待缴费用", {})
        if amount != case.fee_fen:
            raise ApiFailure(422, "amount_mismatch", "缴费金额与核定金额不符", {"assessed_fen": case.fee_fen})
        case.payments[out_trade_no] = {**body, "received_at": datetime.now(CHINA).isoformat(timespec="seconds")}
        case.fee_paid.set()
        return {"case_no": case.case_no, "fee_status": "paid"}

    def receipt(self, case_no: str, body: dict[str, Any]) -> dict[str, Any]:
        """The e-receipt of a paid fee: issued once per out_trade_no."""
        case = self.case(case_no)
        errors: dict[str, str] = {}
        out_trade_no = _text(body, "out_trade_no", errors, required=True, max_len=32)
        simserver.check_fields(errors)
        if out_trade_no in case.receipts:
            return case.receipts[out_trade_no]
        payment = case.payments.get(out_trade_no)
        if payment is None:
            raise ApiFailure(409, "fee_not_paid", "该笔费用尚未缴纳，不能开具票据", {})
        number = f"5105{datetime.now(CHINA):%Y}{secrets.randbelow(10**10):010d}"
        receipt = {
            "receipt_no": number,
            "verify_url": f"https://pjcy.sc.gov.cn/verify?no={number}&code={secrets.token_hex(3).upper()}",
            "issued_at": datetime.now(CHINA).isoformat(timespec="seconds"),
            "amount_fen": payment["amount_fen"],
        }
        case.receipts[out_trade_no] = receipt
        return receipt

    def evaluate(self, case_no: str, body: dict[str, Any]) -> dict[str, Any]:
        """A case's evaluation (好差评): recorded once per case, the same answer again after."""
        case = self.case(case_no)
        case.evaluation_calls += 1
        errors: dict[str, str] = {}
        level = body.get("level")
        if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 5:
            errors["level"] = "应为 1-5 的整数"
        if not isinstance(body.get("tags", []), list):
            errors["tags"] = "应为列表"
        if not isinstance(body.get("active"), bool):
            errors["active"] = "应为布尔值"
        _text(body, "channel", errors, required=True, max_len=16)
        _text(body, "evaluated_at", errors, required=True, max_len=40)
        _text(body, "comment", errors, max_len=500)
        simserver.check_fields(errors)
        if case.evaluation is not None:
            return {"case_no": case.case_no, "evaluation_no": case.evaluation["evaluation_no"], "accepted": True}
        if case.status not in (APPROVED, REJECTED, RESULT_ISSUED, CLOSED):
            raise ApiFailure(409, "not_concluded", "办件尚未办结，不能评价", {"status": case.status})
        number = f"HCP{datetime.now(CHINA):%Y%m%d}{secrets.randbelow(10**8):08d}"
        case.evaluation = {
            **body,
            "evaluation_no": number,
            "received_at": datetime.now(CHINA).isoformat(timespec="seconds"),
        }
        return {"case_no": case.case_no, "evaluation_no": number, "accepted": True}

    def view(self, case_no: str) -> dict[str, Any]:
        case = self.case(case_no)
        return {
            "case_no": case.case_no,
            "platform_case_id": case.platform_case_id,
            "status": case.status,
            "seq": case.seq,
        }

    # scripts -------------------------------------------------------------------------------

    def play(self, case: SimCase, *, after_resubmit: bool = False) -> asyncio.Task:
        """Starts (as an asyncio task) the script's callbacks for a new case or after a resubmission."""
        script = SCRIPTS[case.script]
        events = script.after_resubmit if after_resubmit else script.events
        task = asyncio.get_running_loop().create_task(self._play(case, events, script.mode))
        case.task = task
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _play(self, case: SimCase, events: tuple[str, ...], mode: str) -> None:
        try:
            i = 0
            while i < len(events):
                await asyncio.sleep(self.step_delay_s)
                if mode == "out_of_order" and i == 0 and len(events) > 1:
                    first, second = self._issue(case, events[0]), self._issue(case, events[1])
                    await self._deliver(case, second)
                    await asyncio.sleep(self.step_delay_s)
                    await self._deliver(case, first)
                    i = 2
                    continue
                callback = self._issue(case, events[i])
                await self._deliver(case, callback)
                if callback.event == FEE_ASSESSED:
                    await case.fee_paid.wait()  # the decision waits for the citizen's payment
                if mode == "duplicates":
                    for _ in range(DUPLICATE_COPIES - 1):
                        await self._deliver(case, callback)
                    if callback.event == BURST_EVENT:
                        await asyncio.gather(*(self._deliver(case, callback) for _ in range(BURST_SIZE)))
                i += 1
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("platform simulator: script of %s failed", case.case_no)

    async def decide_now(self, case_no: str, event: str, data: dict[str, Any] | None) -> dict[str, Any]:
        """The platform decides `event` on a case now, outside its script, and calls back at once."""
        case = self.case(case_no)
        if data is not None:
            case.event_data[event] = data
        callback = self._issue(case, event)
        delivered = await self._deliver(case, callback)
        return {"case_no": case.case_no, "seq": callback.seq, "event": event, "delivered": delivered}

    def _issue(self, case: SimCase, event: str) -> Callback:
        """The platform decides: the case moves on and gets its next seq."""
        case.seq += 1
        status = EVENT_STATUS[event]
        if status is not None:
            case.status = status
        if event == CORRECTION_REQUESTED:
            case.resubmit_open = False
        data = self._event_data(case, event)
        at = datetime.now(CHINA).isoformat(timespec="seconds")
        body = {
            "case_no": case.case_no,
            "platform_case_id": case.platform_case_id,
            "seq": case.seq,
            "event": event,
            "at": at,
            "data": data,
        }
        callback = Callback(case.seq, event, at, data, dumps_body(body))
        case.callbacks.append(callback)
        return callback

    def _event_data(self, case: SimCase, event: str) -> dict[str, Any]:
        if event in case.event_data:
            if event == FEE_ASSESSED:
                case.fee_fen = int(case.event_data[event].get("amount_fen", DEFAULT_FEE_FEN))
            return dict(case.event_data[event])
        if event == CORRECTION_REQUESTED:
            return json.loads(json.dumps(DEFAULT_CORRECTION))
        if event == FEE_ASSESSED:
            case.fee_fen = int(case.event_data.get(FEE_ASSESSED, {}).get("amount_fen", DEFAULT_FEE_FEN))
            return {"amount_fen": case.fee_fen, "notice_no": f"51050026{secrets.randbelow(10**12):012d}"}
        if event == REJECTED:
            return {"reason": DEFAULT_REJECT_REASON}
        if event == RESULT_ISSUED:
            if case.result_kind == "mail":
                return {"kind": "mail", "tracking_no": "SF" + "".join(secrets.choice("0123456789") for _ in range(12))}
            return {"kind": "electronic", "licence_no": f"DZZZ{datetime.now(CHINA):%Y}{secrets.token_hex(6).upper()}"}
        return {}

    def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop or self._client.is_closed:
            self._client = httpx.AsyncClient(trust_env=False, follow_redirects=False)
            self._client_loop = loop
        return self._client

    async def _deliver(self, case: SimCase, callback: Callback) -> bool:
        """One delivery of a callback, retried with backoff within the retry window; True when 2xx."""
        callback.sends += 1
        started = time.monotonic()
        retry = 0
        while True:
            ok = await self._attempt(callback)
            if ok:
                callback.delivered += 1
                return True
            pause = self.retry_base_s * (2**retry)
            if time.monotonic() - started + pause > self.retry_budget_s:
                callback.gave_up += 1
                log.warning(
                    "platform simulator: gave up callback %s seq %s (%s) after %s attempts",
                    case.case_no,
                    callback.seq,
                    callback.event,
                    callback.attempts,
                )
                return False
            retry += 1
            await asyncio.sleep(pause)

    async def _attempt(self, callback: Callback) -> bool:
        callback.attempts += 1
        entry: dict[str, Any] = {"at": round(time.time(), 3), "status": None, "error": None}
        if len(callback.attempt_log) < 200:
            callback.attempt_log.append(entry)
        url = self.callback_url
        if not url:
            entry["error"] = callback.last_error = "no callback_url configured"
            return False
        headers = sign(
            "POST", target_of_url(url), callback.body, app_key=self.callback_app_key, secret=self.callback_secret
        )
        headers["Content-Type"] = "application/json; charset=utf-8"
        try:
            response = await self._http().post(
                url, content=callback.body, headers=headers, timeout=self.callback_timeout_s
            )
        except httpx.HTTPError as error:
            entry["error"] = callback.last_error = f"{type(error).__name__}: {error}"[:300]
            return False
        entry["status"] = callback.last_status = response.status_code
        if 200 <= response.status_code < 300:
            callback.last_error = None
            return True
        callback.last_error = f"HTTP {response.status_code}"
        return False

    async def close(self) -> None:
        """Stops every script and closes the callback client (server shutdown)."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None and not self._client.is_closed:
            try:
                await self._client.aclose()
            except RuntimeError:
                pass
        self._client = None

    # views ---------------------------------------------------------------------------------

    def cases_view(self, case_no: str | None = None) -> dict[str, Any]:
        cases = [c for c in self.cases.values() if case_no is None or c.case_no == case_no]
        return {"cases": [c.view() for c in cases]}

    def stats(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "down": self.down,
            "delay_s": self.delay_s,
            "pending_failures": self.pending_failures(),
        }


# -- validation ----------------------------------------------------------------------------


def _check_material(item: Any, path: str, errors: dict[str, str]) -> None:
    if not isinstance(item, dict):
        errors[path] = "应为对象 {slot, url, sha256}"
        return
    for key in ("slot", "url"):
        value = item.get(key)
        if not isinstance(value, str) or not value or len(value) > 2048:
            errors[f"{path}.{key}"] = "此项为必填文本"
    sha = item.get("sha256")
    if not isinstance(sha, str) or not _SHA256.match(sha):
        errors[f"{path}.sha256"] = "应为 64 位小写十六进制 SHA-256"


def _check_submission(body: dict[str, Any]) -> None:
    errors: dict[str, str] = {}
    case_no = body.get("case_no")
    if not isinstance(case_no, str) or not _CASE_NO.match(case_no):
        errors["case_no"] = "应为 1-32 位字母、数字、_ 或 -"
    service_code = body.get("service_code")
    if not isinstance(service_code, str) or not service_code or len(service_code) > 64:
        errors["service_code"] = "此项为必填文本"
    version = body.get("item_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        errors["item_version"] = "应为正整数"
    for key in ("applicant", "form"):
        if not isinstance(body.get(key), dict):
            errors[key] = "应为对象"
    materials = body.get("materials")
    if not isinstance(materials, list):
        errors["materials"] = "应为列表"
    else:
        for i, item in enumerate(materials):
            _check_material(item, f"materials.{i}", errors)
    submitted_at = body.get("submitted_at")
    try:
        if not isinstance(submitted_at, str):
            raise ValueError
        datetime.fromisoformat(submitted_at)
    except ValueError:
        errors["submitted_at"] = "应为 ISO 8601 时间"
    if errors:
        raise ApiFailure(422, "validation_failed", "提交的内容有误", {"fields": errors})


def _check_resubmission(body: dict[str, Any]) -> None:
    errors: dict[str, str] = {}
    fields = body.get("fields", {})
    if not isinstance(fields, dict):
        errors["fields"] = "应为对象"
    materials = body.get("materials", [])
    if not isinstance(materials, list):
        errors["materials"] = "应为列表"
    else:
        for i, item in enumerate(materials):
            _check_material(item, f"materials.{i}", errors)
    if errors:
        raise ApiFailure(422, "validation_failed", "提交的内容有误", {"fields": errors})


def _wants_mail(form: Any) -> bool:
    """True when the form chose delivery by post (a `delivery` or `method` answer of "mail")."""
    if isinstance(form, dict):
        for key, value in form.items():
            if key in ("delivery", "method") and value == "mail":
                return True
            if _wants_mail(value):
                return True
    elif isinstance(form, list):
        return any(_wants_mail(v) for v in form)
    return False


# -- HTTP ----------------------------------------------------------------------------------


def _number(body: dict, name: str, errors: dict[str, str], *, low: float, high: float) -> float | None:
    if name not in body:
        return None
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        errors[name] = f"应为 {low} 到 {high} 之间的数字"
        return None
    return float(value)


def _text(body: dict, name: str, errors: dict[str, str], *, required: bool = False, max_len: int = 256) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        if required:
            errors[name] = "此项为必填项"
        return None
    if not isinstance(value, str) or len(value) > max_len:
        errors[name] = f"应为不超过 {max_len} 个字符的文本"
        return None
    return value


Handler = Callable[..., Any]


def platform_blueprint(state: PlatformState, url_prefix: str = "") -> Blueprint:
    """The simulator's routes (platform API and `/__sim__/` control API) over `state`."""
    bp = Blueprint("platform_sim", url_prefix=url_prefix or None)
    prefix = (url_prefix or "").rstrip("/")

    def api(route: str, method: str):
        """A platform endpoint: counts the call, plays delay/down/injected failures, checks the
        signature, then runs the handler. A handler may return (body, after): `after` runs once the
        answer has been sent."""

        def register(handler: Handler) -> None:
            async def endpoint(request: Request, **params: str) -> HTTPResponse | None:
                state.count_call(route)
                path = request.path[len(prefix) :] if prefix and request.path.startswith(prefix) else request.path
                try:
                    if state.delay_s > 0:
                        await asyncio.sleep(state.delay_s)
                    if state.down:
                        raise ApiFailure(503, "platform_unavailable", "平台维护中，请稍后再试", {"down": True})
                    failure = state.take_failure(path, route)
                    if failure is not None:
                        if failure.delay_s > 0:
                            await asyncio.sleep(failure.delay_s)
                        if failure.http_status is not None:
                            code = _FAILURE_CODES.get(failure.http_status, "injected_failure")
                            raise ApiFailure(failure.http_status, code, "模拟故障", {"injected": True})
                    state.authenticate(
                        request.method,
                        path_with_query(request.path, request.query_string),
                        request.headers,
                        request.body or b"",
                    )
                    result = handler(request, **params)
                    if inspect.isawaitable(result):
                        result = await result
                except SimError as failure:
                    return json_response(failure.body(), status=failure.status)
                except Exception:
                    log.exception("platform simulator error on %s", route)
                    return simserver.internal_error()
                after: Callable[[], Any] | None = None
                if isinstance(result, tuple):
                    result, after = result
                if after is None:
                    return json_response(result)
                await request.respond(json_response(result))
                after()
                return None

            sanic_path = route.replace("{case_no}", "<case_no:str>")
            name = "api" + route.replace("/", "_").replace("{", "").replace("}", "")
            bp.add_route(endpoint, sanic_path, methods=[method], name=name)

        return register

    def control(path: str, methods: tuple[str, ...] = ("POST",)):
        def register(handler: Handler) -> None:
            name = "sim" + path.removeprefix("/__sim__").replace("/", "_")
            bp.add_route(simserver.control_route(handler, log=log, path=path), path, methods=list(methods), name=name)

        return register

    # -- platform --------------------------------------------------------------------------

    @api(CASES, "POST")
    def _submit(request: Request):
        case, new = state.receive(simserver.json_object(request, empty_ok=False))
        answer = {"platform_case_id": case.platform_case_id, "received": True}
        if not new:
            return answer
        return answer, lambda: state.play(case)

    @api(WITHDRAW, "POST")
    def _withdraw(request: Request, case_no: str):
        body = simserver.json_object(request)
        reason = body.get("reason")
        return state.withdraw(case_no, reason if isinstance(reason, str) else None)

    @api(RESUBMIT, "POST")
    def _resubmit(request: Request, case_no: str):
        answer, go_on = state.resubmit(case_no, simserver.json_object(request, empty_ok=False))
        if not go_on:
            return answer
        case = state.case(case_no)
        return answer, lambda: state.play(case, after_resubmit=True)

    @api(CASE, "GET")
    def _case(request: Request, case_no: str):
        return state.view(case_no)

    @api(FEE_PAID, "POST")
    def _fee_paid(request: Request, case_no: str):
        return state.fee_paid(case_no, simserver.json_object(request, empty_ok=False))

    @api(RECEIPT, "POST")
    def _receipt(request: Request, case_no: str):
        return state.receipt(case_no, simserver.json_object(request, empty_ok=False))

    @api(EVALUATION, "POST")
    def _evaluation(request: Request, case_no: str):
        return state.evaluate(case_no, simserver.json_object(request, empty_ok=False))

    # -- control ---------------------------------------------------------------------------

    @control("/__sim__/script")
    def _script(request: Request) -> dict:
        body = simserver.json_object(request, empty_ok=False)
        errors: dict[str, str] = {}
        script = _text(body, "script", errors, required=True, max_len=32)
        if script is not None and script not in SCRIPTS:
            errors["script"] = f"应为 {', '.join(SCRIPTS)} 之一"
        case_no = _text(body, "case_no", errors, max_len=32)
        data = body.get("data")
        if data is not None and (
            not isinstance(data, dict) or not all(k in EVENTS and isinstance(v, dict) for k, v in data.items())
        ):
            errors["data"] = "应为 {事件名: 对象}"
        result_kind = _text(body, "result_kind", errors, max_len=16)
        if result_kind is not None and result_kind not in ("electronic", "mail"):
            errors["result_kind"] = "应为 electronic 或 mail"
        if case_no is None and (data is not None or result_kind is not None):
            errors["case_no"] = "指定 data 或 result_kind 时必须指定办件"
        simserver.check_fields(errors)
        state.choose_script(script, case_no, data=data, result_kind=result_kind)
        return {"case_no": case_no, "script": script, "default_script": state.default_script}

    @control("/__sim__/config")
    def _config(request: Request) -> dict:
        body = simserver.json_object(request)
        errors: dict[str, str] = {}
        values: dict[str, Any] = {}
        if "callback_url" in body:
            url = body["callback_url"]
            if url is not None and (not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url)):
                errors["callback_url"] = "应为 http(s) 地址或 null"
            values["callback_url"] = url
        for name, low, high in (
            ("step_delay_s", 0, 60),
            ("retry_base_s", 0.001, 10),
            ("retry_budget_s", 0, 600),
            ("callback_timeout_s", 0.05, 60),
        ):
            values[name] = _number(body, name, errors, low=low, high=high)
        for name in ("callback_app_key", "callback_secret"):
            values[name] = _text(body, name, errors)
        unknown = set(body) - {
            "callback_url",
            "step_delay_s",
            "retry_base_s",
            "retry_budget_s",
            "callback_timeout_s",
            "callback_app_key",
            "callback_secret",
        }
        for name in sorted(unknown):
            errors[name] = "不是可配置的项"
        simserver.check_fields(errors)
        return state.configure(**values)

    @control("/__sim__/fail")
    def _fail(request: Request) -> dict:
        body = simserver.json_object(request, empty_ok=False)
        errors: dict[str, str] = {}
        path = _text(body, "path", errors, max_len=256)
        if path is not None:
            if prefix and path.startswith(prefix + "/"):
                path = path[len(prefix) :]
            if path not in API_ROUTES and not any(r.match(path) for r in _ROUTE_RES.values()):
                errors["path"] = "不是模拟的平台接口"
        http_status = None
        if "http_status" in body:
            value = body["http_status"]
            if isinstance(value, bool) or not isinstance(value, int) or not 400 <= value <= 599:
                errors["http_status"] = "应为 400-599 的整数"
            else:
                http_status = value
        delay_s = _number(body, "delay_s", errors, low=0, high=60)
        times = body.get("times", 1)
        if isinstance(times, bool) or not isinstance(times, int) or not 1 <= times <= 10_000:
            errors["times"] = "应为 1-10000 的整数"
        down = body.get("down")
        if down is not None and not isinstance(down, bool):
            errors["down"] = "应为是或否"
        if path is None and ("http_status" in body or "times" in body):
            errors.setdefault("path", "指定 http_status 或 times 时必须指定接口")
        if path is None and down is None and delay_s is None and not errors:
            errors["path"] = "应指定 path、down 或 delay_s"
        simserver.check_fields(errors)
        if down is not None:
            state.down = down
        if path is not None:
            state.inject_failure(path, http_status=http_status, delay_s=delay_s or 0.0, times=times)
        elif delay_s is not None:
            state.delay_s = delay_s
        return {"down": state.down, "delay_s": state.delay_s, "pending": state.pending_failures()}

    @control("/__sim__/cases", ("GET",))
    def _cases(request: Request) -> dict:
        return state.cases_view(request.args.get("case_no") or None)

    @control("/__sim__/stats", ("GET",))
    def _stats(request: Request) -> dict:
        return state.stats()

    @control("/__sim__/event")
    async def _event(request: Request) -> dict:
        body = simserver.json_object(request, empty_ok=False)
        errors: dict[str, str] = {}
        case_no = _text(body, "case_no", errors, required=True, max_len=32)
        event = _text(body, "event", errors, required=True, max_len=32)
        if event is not None and event not in EVENTS:
            errors["event"] = f"应为 {', '.join(EVENTS)} 之一"
        data = body.get("data")
        if data is not None and not isinstance(data, dict):
            errors["data"] = "应为对象"
        simserver.check_fields(errors)
        return await state.decide_now(case_no, event, data)

    @control("/__sim__/reset")
    def _reset(request: Request) -> dict:
        state.reset()
        return {"ok": True}

    @bp.listener("before_server_stop")
    async def _stop(app: Sanic) -> None:
        await state.close()

    return bp


# -- standalone app ------------------------------------------------------------------------


def create_platform_app(state: PlatformState | None = None) -> Sanic:
    """A standalone Sanic app serving the simulator at the root, answering JSON for every error."""
    state = state or PlatformState()
    return simserver.create_app("platform_sim", platform_blueprint(state), state=state, log=log)


def _options(parser: argparse.ArgumentParser) -> None:
    """Adds the platform's own options: keys, callback target, script and timings."""
    parser.add_argument("--app-key", default=DEFAULT_APP_KEY, help="the key Zhangban signs its calls with")
    parser.add_argument("--secret", default=DEFAULT_SECRET, help="the secret Zhangban signs its calls with")
    parser.add_argument("--callback-url", default=None, help="where status callbacks are POSTed")
    parser.add_argument(
        "--callback-app-key", default=None, help="key the callbacks are signed with (default: --app-key)"
    )
    parser.add_argument(
        "--callback-secret", default=None, help="secret the callbacks are signed with (default: --secret)"
    )
    parser.add_argument("--script", default="happy", choices=sorted(SCRIPTS), help="the default script")
    parser.add_argument("--step-delay", type=float, default=DEFAULT_STEP_DELAY_S, help="seconds between callbacks")
    parser.add_argument(
        "--retry-budget", type=float, default=DEFAULT_RETRY_BUDGET_S, help="seconds a callback delivery is retried"
    )


def _app_of(args: argparse.Namespace) -> Sanic:
    """The standalone app over a fresh state configured from the command line."""
    state = PlatformState(
        args.app_key,
        args.secret,
        callback_url=args.callback_url,
        callback_app_key=args.callback_app_key,
        callback_secret=args.callback_secret,
        default_script=args.script,
        step_delay_s=args.step_delay,
        retry_budget_s=args.retry_budget,
    )
    return create_platform_app(state)


def main(argv: list[str] | None = None) -> None:
    """Serves the simulator standalone until stopped: `python -m bridge.simulator --port 8702 ...`."""
    simserver.main(
        argv,
        prog="python -m bridge.simulator",
        description=__doc__.splitlines()[0],
        port=8702,
        build=_app_of,
        options=_options,
    )


if __name__ == "__main__":
    main()
