"""The console's dashboard and alerts: how the service is doing over a range of China days, and
what needs an official now. Every figure is an aggregate the database computes (GROUP BY and
COUNT over indexed ranges); no case row is loaded, so the cost stays a handful of queries
whatever the number of cases.

Dashboard, for the cases of one department (the item's department) or of all:

    cases per day           cases submitted each China day, and how many were of a fully online
                            item version (全程网办: the catalogue's `flags.fully_online`)
    handling                cases decided (approved or rejected) in the range: the average working
                            days from submission to decision, against the average promised days
                            of their items, and how many were decided after the overdue sweep had
                            marked them (`overdue_at`)
    overdue                 open cases (submitted to resubmitted, as the overdue sweep counts them)
                            whose promised date is already past, now
    evaluations             好评率, 主动评价好评率, 未评价率, rectification on time: handlers.stats
    pushes                  progress-push attempts per channel (delivered, failed) and what became
                            of the notifications (reached WeChat, inbox only, failed, pending)

Working days are China's (core.china_time, public holidays and 调休). The average uses a
working-day number per date (W(d) counts the working days up to d), so the mean of
W(decided) - W(submitted) is the mean of each side, each grouped by day in SQL.

Alerts are department-scoped where the data has a department (rectifications, tickets, case
pushes); payment alerts are for `finance` and `admin`, the outbox backlog for `admin`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from pypika_tortoise.terms import Function as SqlFunction
from tortoise.expressions import Case as SqlCase
from tortoise.expressions import Function, Q, RawSQL, When
from tortoise.functions import Count, Min

from core.china_time import CALENDAR, CHINA, add_working_days
from core.errors import Forbidden, ValidationFailed
from handlers.scoping import ADMIN, OFFICER, SUPERVISOR, in_scope, is_admin, require_role, roles_of
from handlers.stats import FIRST_DAY, LAST_DAY, day_bounds, evaluation_stats
from storage.models import (
    Case,
    CaseEvent,
    CaseStatus,
    Notification,
    Official,
    Outbox,
    PaymentAlert,
    PushAttempt,
    Rectification,
    ServiceItem,
    Ticket,
)

S = CaseStatus
DEFAULT_DAYS = 30
# Open against the promised date, as the overdue sweep (handlers.cases.sweeps.OPEN) counts them.
OPEN = (S.SUBMITTED, S.DELIVERED, S.ACCEPTED, S.IN_REVIEW, S.RESUBMITTED)
DECISIONS = (S.APPROVED.value, S.REJECTED.value)
# What a push attempt's result means for its channel.
DELIVERED = frozenset({"ok"})
FAILED = frozenset({"refused", "transient", "no_grant", "not_following", "outside_window", "interrupted"})
CHANNELS = ("subscribe", "template", "inbox")
FINANCE = frozenset({"finance", ADMIN})
LIST_LIMIT = 20


# -- SQL helpers ---------------------------------------------------------------------------


class _ChinaDate(SqlFunction):
    """The China calendar day of a UTC timestamp (China has no daylight saving: +8 hours)."""

    def __init__(self, term, **kwargs):
        super().__init__("DATE", term, **kwargs)

    def get_function_sql(self, ctx) -> str:
        arg = self.get_arg_sql(self.args[0], ctx)
        if ctx.dialect.value == "postgresql":
            return f"CAST(({arg} AT TIME ZONE 'Asia/Shanghai') AS DATE)"
        return f"DATE({arg},'+8 hours')"  # SQLite keeps timestamps as ISO text with their offset


class ChinaDate(Function):
    database_func = _ChinaDate


def _day(value: date | str) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def china_today(now: datetime | None = None) -> date:
    return (now or datetime.now(UTC)).astimezone(CHINA).date()


def working_day_numbers(days: set[date]) -> dict[date, int]:
    """W(d) for each of `days`: the working days after the earliest of them up to d (W is only
    meaningful as a difference)."""
    if not days:
        return {}
    first, last = min(days), max(days)
    numbers, count, current = {}, 0, first
    while current <= last:
        if current != first and CALENDAR.is_working_day(current):
            count += 1
        if current in days:
            numbers[current] = count
        current += timedelta(days=1)
    return numbers


def scope_department(official: Official, department: str | None) -> str | None:
    """The department the figures are for: an admin's choice (None: all), anyone else's own
    department; another department is `404`, the same as one that does not exist."""
    if department is None and not is_admin(official):
        department = official.department
    if department is not None:
        in_scope(official, department, what="部门")
    return department


@dataclass(frozen=True)
class ItemFacts:
    department: str
    fully_online: bool
    promised_days: int


# Item versions never change once published: their facts are kept per (id, content digest), so
# a dashboard reads only the ids and digests of the catalogue, and the content of new versions.
_ITEM_FACTS: dict[tuple[int, str], ItemFacts] = {}


async def item_facts() -> dict[int, ItemFacts]:
    """Every item version's department, fully online flag and promised working days, by id."""
    rows = await ServiceItem.all().values_list("id", "content_sha256")
    missing = [item_id for item_id, sha in rows if (item_id, sha) not in _ITEM_FACTS]
    if missing:
        for item_id, sha, department, content in await ServiceItem.filter(id__in=missing).values_list(
            "id", "content_sha256", "department", "content"
        ):
            flags = (content or {}).get("flags") or {}
            _ITEM_FACTS[(item_id, sha)] = ItemFacts(
                department=department,
                fully_online=bool(flags.get("fully_online")),
                promised_days=int((content or {}).get("promised_days") or 0),
            )
    return {item_id: _ITEM_FACTS[(item_id, sha)] for item_id, sha in rows}


# -- the dashboard -------------------------------------------------------------------------


def resolve_range(start: date | None, end: date | None, now: datetime | None = None) -> tuple[date, date]:
    """The range asked for; by default the last 30 China days up to today (or up to `end`, or from `start`)."""
    for name, value in (("from", start), ("to", end)):
        if value is not None and not FIRST_DAY <= value <= LAST_DAY:
            raise ValidationFailed({name: f"日期须在{FIRST_DAY.year}年至{LAST_DAY.year}年之间"})
    if start is None and end is None:
        end = china_today(now)
    if start is None:
        start = end - timedelta(days=DEFAULT_DAYS - 1)
    if end is None:
        end = max(start, min(start + timedelta(days=DEFAULT_DAYS - 1), china_today(now)))
    return start, end


async def dashboard(
    *,
    official: Official,
    start: date | None = None,
    end: date | None = None,
    department: str | None = None,
    now: datetime | None = None,
) -> dict:
    """The dashboard's figures (module docstring) for the official's scope over `start`..`end`."""
    require_role(official, OFFICER, SUPERVISOR, ADMIN)
    department = scope_department(official, department)
    start, end = resolve_range(start, end, now)
    low, high = day_bounds(start, end)
    now = now or datetime.now(UTC)
    facts = await item_facts()
    scope = _items_of(department, facts)
    return {
        "from": start.isoformat(),
        "to": end.isoformat(),
        "department": department,
        "cases": await _cases_per_day(start, end, low, high, scope, facts),
        "handling": await _handling(low, high, scope, facts),
        "overdue": await _overdue(department, facts, now),
        **{
            k: v
            for k, v in (await evaluation_stats(start=start, end=end, department=department)).items()
            if k in ("evaluations", "bad_reviews", "tickets")
        },
        "pushes": await _pushes(low, high, scope),
    }


def _items_of(department: str | None, facts: dict[int, ItemFacts]) -> dict:
    """The filter of a department's cases: by their item versions (no join to the catalogue)."""
    if department is None:
        return {}
    return {"service_item_id__in": [i for i, f in facts.items() if f.department == department] or [0]}


def _prefixed(scope: dict, prefix: str) -> dict:
    return {prefix + key: value for key, value in scope.items()}


async def _cases_per_day(
    start: date, end: date, low: datetime, high: datetime, scope: dict, facts: dict[int, ItemFacts]
) -> dict:
    online = [item_id for item_id, f in facts.items() if f.fully_online] or [0]
    rows = (
        await Case.filter(submitted_at__gte=low, submitted_at__lt=high, **scope)
        .annotate(
            day=ChinaDate("submitted_at"), n=Count("id"), online=Count("id", _filter=Q(service_item_id__in=online))
        )
        .group_by("day")
        .values("day", "n", "online")
    )
    by_day = {_day(r["day"]): (r["n"], r["online"]) for r in rows}
    days, total, total_online = [], 0, 0
    current = start
    while current <= end:
        n, n_online = by_day.get(current, (0, 0))
        days.append({"day": current.isoformat(), "submitted": n, "fully_online": n_online})
        total, total_online = total + n, total_online + n_online
        current += timedelta(days=1)
    return {
        "submitted": total,
        "fully_online": total_online,
        "fully_online_share": _rate(total_online, total),
        "per_day": days,
    }


async def _handling(low: datetime, high: datetime, scope: dict, facts: dict[int, ItemFacts]) -> dict:
    decided = CaseEvent.filter(to_status__in=DECISIONS, at__gte=low, at__lt=high, **_prefixed(scope, "case__"))
    by_decision_day = await decided.annotate(day=ChinaDate("at"), n=Count("id")).group_by("day").values("day", "n")
    # Grouped by submission day and promised length at once (a CASE over the item versions: a
    # few distinct lengths), with those decided after the overdue sweep had marked them.
    lengths: dict[int, list[int]] = defaultdict(list)
    for item_id, f in facts.items():
        lengths[f.promised_days].append(item_id)
    promised = SqlCase(
        *(
            When(case__service_item_id__in=ids, then=RawSQL(str(int(days))))
            for days, ids in sorted(lengths.items())
            if days
        ),
        default=RawSQL("0"),  # literals: a parameter in THEN would be typed text by PostgreSQL
    )
    by_submission = (
        await decided.annotate(
            day=ChinaDate("case__submitted_at"),
            promised=promised,
            n=Count("id"),
            late=Count("id", _filter=Q(case__overdue_at__isnull=False)),
        )
        .group_by("day", "promised")
        .values("day", "promised", "n", "late")
    )
    count = sum(r["n"] for r in by_decision_day)
    late = sum(r["late"] for r in by_submission)
    decisions = [(_day(r["day"]), r["n"]) for r in by_decision_day]
    submissions = [(_day(r["day"]), r["n"]) for r in by_submission]
    numbers = working_day_numbers({d for d, _ in decisions} | {d for d, _ in submissions})
    spent = sum(numbers[d] * n for d, n in decisions) - sum(numbers[d] * n for d, n in submissions)
    promised_total = sum(int(r["promised"] or 0) * r["n"] for r in by_submission)
    return {
        "decided": count,
        "average_working_days": round(spent / count, 2) if count else None,
        "average_promised_days": round(promised_total / count, 2) if count else None,
        "decided_late": late,
        "on_time_rate": _rate(count - late, count),
    }


def _overdue_condition(facts: dict[int, ItemFacts], department: str | None, today: date) -> Q | None:
    """Open cases past their promised date: for each promised length p, those submitted on or
    before the last day whose promised date (submission + p working days) is before today."""
    by_days: dict[int, list[int]] = defaultdict(list)
    for item_id, f in facts.items():
        if department is None or f.department == department:
            by_days[f.promised_days].append(item_id)
    parts = []
    for days, ids in sorted(by_days.items()):
        last = today - timedelta(days=1)
        while add_working_days(last, days) >= today:
            last -= timedelta(days=1)
        bound = datetime.combine(last + timedelta(days=1), datetime.min.time(), tzinfo=CHINA).astimezone(UTC)
        parts.append(Q(service_item_id__in=ids, submitted_at__lt=bound))
    if not parts:
        return None
    return Q(*parts, join_type="OR")


async def _overdue(department: str | None, facts: dict[int, ItemFacts], now: datetime) -> dict:
    condition = _overdue_condition(facts, department, china_today(now))
    if condition is None:
        return {"open_overdue": 0, "oldest": []}
    query = Case.filter(condition, status__in=OPEN)
    count = await query.count()
    oldest = (
        await query.order_by("submitted_at", "id")
        .limit(LIST_LIMIT)
        .values("case_no", "service_code", "service_name", "status", "submitted_at", "service_item_id")
    )
    return {
        "open_overdue": count,
        "oldest": [
            {
                "case_no": r["case_no"],
                "service_code": r["service_code"],
                "service_name": r["service_name"],
                "status": r["status"].value if hasattr(r["status"], "value") else r["status"],
                "submitted_at": _iso(r["submitted_at"]),
                "promised_date": add_working_days(
                    r["submitted_at"].astimezone(CHINA).date(),
                    facts[r["service_item_id"]].promised_days if r["service_item_id"] in facts else 0,
                ).isoformat(),
            }
            for r in oldest
        ],
    }


def _channel_rows(rows: list[dict]) -> list[dict]:
    per: dict[str, dict] = {}
    for r in rows:
        channel = r["channel"] or "-"
        entry = per.setdefault(channel, {"channel": channel, "attempts": 0, "delivered": 0, "failed": 0, "results": {}})
        entry["attempts"] += r["n"]
        entry["results"][r["result"]] = entry["results"].get(r["result"], 0) + r["n"]
        if r["result"] in DELIVERED:
            entry["delivered"] += r["n"]
        elif r["result"] in FAILED:
            entry["failed"] += r["n"]
    order = {c: i for i, c in enumerate(CHANNELS)}
    out = sorted(per.values(), key=lambda e: (order.get(e["channel"], len(order)), e["channel"]))
    for entry in out:
        entry["delivery_rate"] = _rate(entry["delivered"], entry["delivered"] + entry["failed"])
    return out


async def _pushes(low: datetime, high: datetime, scope: dict) -> dict:
    attempts = (
        await PushAttempt.filter(started_at__gte=low, started_at__lt=high, **_prefixed(scope, "notification__case__"))
        .exclude(channel="-")
        .annotate(n=Count("id"))
        .group_by("channel", "result")
        .values("channel", "result", "n")
    )
    outcomes = (
        await Notification.filter(created_at__gte=low, created_at__lt=high, **_prefixed(scope, "case__"))
        .annotate(n=Count("id"))
        .group_by("push_status", "channel")
        .values("push_status", "channel", "n")
    )
    notifications = {"total": 0, "wechat": 0, "inbox_only": 0, "failed": 0, "pending": 0, "by_channel": {}}
    for r in outcomes:
        n, status = r["n"], r["push_status"]
        notifications["total"] += n
        if status == "sent":
            notifications["wechat"] += n
            notifications["by_channel"][r["channel"]] = notifications["by_channel"].get(r["channel"], 0) + n
        elif status in ("inbox_only", "failed"):
            notifications[status] += n
        else:
            notifications["pending"] += n
    notifications["reach_rate"] = _rate(notifications["wechat"], notifications["total"] - notifications["pending"])
    return {"channels": _channel_rows(attempts), "notifications": notifications}


# -- alerts ----------------------------------------------------------------------------------


async def alerts(
    *,
    official: Official,
    department: str | None = None,
    ticket_remind: timedelta,
    rectify_remind: timedelta,
    now: datetime | None = None,
) -> dict:
    """What needs an official now, each section for the roles it concerns (None for others)."""
    roles = roles_of(official)
    admin = is_admin(official)
    works = admin or bool(roles & {OFFICER, SUPERVISOR})
    finance = bool(roles & FINANCE)
    if not (works or finance):
        raise Forbidden("您没有查看待办提醒的权限", code="role_required", details={"roles": [OFFICER, "finance"]})
    department = scope_department(official, department) if works or department is not None else None
    now = now or datetime.now(UTC)
    out = {
        "now": now.isoformat(),
        "department": department,
        "rectifications": await _rectification_alerts(department, now, rectify_remind) if works else None,
        "tickets": await _ticket_alerts(department, now, ticket_remind) if works else None,
        "pushes": await _push_alerts(department, now) if works else None,
        "payments": await _payment_alerts() if finance else None,
        "outbox": await _outbox_backlog(now) if admin else None,
    }
    out["attention"] = (
        sum((out["rectifications"] or {}).get(k, 0) + (out["tickets"] or {}).get(k, 0) for k in ("overdue", "due_soon"))
        + (out["payments"] or {}).get("open", 0)
        + (out["outbox"] or {}).get("dead", 0)
    )
    return out


def _scoped(department: str | None) -> dict:
    return {"department": department} if department else {}


async def _rectification_alerts(department: str | None, now: datetime, remind: timedelta) -> dict:
    soon = now + remind
    base = Rectification.filter(**_scoped(department))
    counts = await base.annotate(
        overdue=Count(
            "id",
            _filter=Q(status="verifying", verify_due_at__lte=now) | Q(status="rectifying", rectify_due_at__lte=now),
        ),
        due_soon=Count(
            "id",
            _filter=Q(status="verifying", verify_due_at__gt=now, verify_due_at__lte=soon)
            | Q(status="rectifying", rectify_due_at__gt=now, rectify_due_at__lte=soon),
        ),
    ).values("overdue", "due_soon")
    fields = ("id", "case__case_no", "case__service_name", "department", "status", "round", "escalated_at")
    items = []
    for status, column in (("verifying", "verify_due_at"), ("rectifying", "rectify_due_at")):
        rows = (
            await base.filter(status=status, **{f"{column}__lte": soon})
            .order_by(column, "id")
            .limit(LIST_LIMIT)
            .values(*fields, column)
        )
        for r in rows:
            due = r[column]
            items.append(
                {
                    "id": r["id"],
                    "case_no": r["case__case_no"],
                    "service_name": r["case__service_name"],
                    "department": r["department"],
                    "status": status,
                    "deadline": "verify" if status == "verifying" else "rectify",
                    "round": r["round"],
                    "due_at": _iso(due),
                    "seconds_left": int((due - now).total_seconds()),
                    "overdue": due <= now,
                    "escalated": r["escalated_at"] is not None,
                }
            )
    items.sort(key=lambda i: (i["seconds_left"], i["id"]))
    row = counts[0] if counts else {"overdue": 0, "due_soon": 0}
    return {"overdue": row["overdue"], "due_soon": row["due_soon"], "items": items[:LIST_LIMIT]}


async def _ticket_alerts(department: str | None, now: datetime, remind: timedelta) -> dict:
    soon = now + remind
    base = Ticket.filter(status="open", due_at__lte=soon, **_scoped(department))
    counts = await base.annotate(
        overdue=Count("id", _filter=Q(due_at__lte=now)), due_soon=Count("id", _filter=Q(due_at__gt=now))
    ).values("overdue", "due_soon")
    rows = (
        await base.order_by("due_at", "id")
        .limit(LIST_LIMIT)
        .values("ticket_no", "kind", "department", "service_code", "due_at", "escalated_at")
    )
    row = counts[0] if counts else {"overdue": 0, "due_soon": 0}
    return {
        "overdue": row["overdue"],
        "due_soon": row["due_soon"],
        "items": [
            {
                "ticket_no": r["ticket_no"],
                "kind": r["kind"],
                "department": r["department"],
                "service_code": r["service_code"],
                "due_at": _iso(r["due_at"]),
                "seconds_left": int((r["due_at"] - now).total_seconds()),
                "overdue": r["due_at"] <= now,
                "escalated": r["escalated_at"] is not None,
            }
            for r in rows
        ],
    }


async def _push_alerts(department: str | None, now: datetime) -> dict:
    scope = _items_of(department, await item_facts())
    since = now - timedelta(hours=24)
    rows = (
        await PushAttempt.filter(started_at__gte=since, **_prefixed(scope, "notification__case__"))
        .exclude(channel="-")
        .annotate(n=Count("id"))
        .group_by("channel", "result")
        .values("channel", "result", "n")
    )
    failed_notifications = await Notification.filter(
        push_status="failed", created_at__gte=since, **_prefixed(scope, "case__")
    ).count()
    channels = [c for c in _channel_rows(rows) if c["failed"]]
    return {
        "since": since.isoformat(),
        "failing_channels": channels,
        "failed": sum(c["failed"] for c in channels),
        "notifications_failed": failed_notifications,
    }


async def _payment_alerts() -> dict:
    rows = (
        await PaymentAlert.filter(resolved_at__isnull=True)
        .annotate(n=Count("id"), oldest=Min("created_at"))
        .group_by("kind")
        .values("kind", "n", "oldest")
    )
    kinds = sorted(
        ({"kind": r["kind"], "open": r["n"], "oldest_at": _iso(_aware(r["oldest"]))} for r in rows),
        key=lambda k: k["kind"],
    )
    return {"open": sum(k["open"] for k in kinds), "kinds": kinds}


async def _outbox_backlog(now: datetime) -> dict:
    rows = (
        await Outbox.filter(status__in=("pending", "sending", "dead"))
        .annotate(n=Count("id"), oldest=Min("created_at"))
        .group_by("status")
        .values("status", "n", "oldest")
    )
    by = {r["status"]: r for r in rows}
    waiting = [by[s] for s in ("pending", "sending") if s in by]
    oldest = min((_aware(r["oldest"]) for r in waiting), default=None)
    return {
        "backlog": sum(r["n"] for r in waiting),
        "oldest_at": _iso(oldest),
        "oldest_age_s": int((now - oldest).total_seconds()) if oldest else None,
        "dead": by["dead"]["n"] if "dead" in by else 0,
    }


def _aware(value: datetime | str | None) -> datetime | None:
    """An aggregate's timestamp (SQLite answers MIN() as text) as an aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)
