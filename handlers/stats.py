"""Statistics of 好差评 and of consultations and complaints, for the console: anonymous, per
department or for all, over a range of China-time days, computed by the database (aggregates,
a handful of queries whatever the number of cases).

    好评率          levels 3-5 over every evaluation (active and default)
    主动评价好评率   the same over evaluations the citizen gave
    未评价率         default evaluations (no rating within 7 days of the result) over every
                     evaluation: each case with a result gets exactly one, given or default
    差评整改率       bad reviews whose rectification is closed over all bad reviews
    整改按时率       rectifications done by their deadline over rectifications done
    答复按时率       tickets answered by their deadline over tickets answered, per kind

Reviews a supervisor excluded (申诉 approved) are left out of every figure. A rate with nothing
to divide by is null, never a made-up 0 or 100%.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from tortoise.expressions import F, Q, Subquery
from tortoise.functions import Count

from core.china_time import CHINA
from core.errors import ValidationFailed
from storage.models import Evaluation, Rectification, Ticket

MAX_DAYS = 366
# Statistics cover days of this century: midnight in China of 0001-01-01 or the day after
# 9999-12-31 is outside what a datetime holds.
FIRST_DAY, LAST_DAY = date(2000, 1, 1), date(2099, 12, 31)


def day_bounds(start: date, end: date) -> tuple[datetime, datetime]:
    """The UTC instants from the start of China day `start` to the end of China day `end`."""
    for name, value in (("from", start), ("to", end)):
        if not FIRST_DAY <= value <= LAST_DAY:
            raise ValidationFailed({name: f"日期须在{FIRST_DAY.year}年至{LAST_DAY.year}年之间"})
    if end < start:
        raise ValidationFailed({"to": "结束日期不能早于开始日期"})
    if (end - start).days >= MAX_DAYS:
        raise ValidationFailed({"to": f"统计区间不能超过{MAX_DAYS}天"})
    low = datetime.combine(start, time(0, 0), tzinfo=CHINA).astimezone(UTC)
    high = datetime.combine(end + timedelta(days=1), time(0, 0), tzinfo=CHINA).astimezone(UTC)
    return low, high


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


async def evaluation_stats(*, start: date, end: date, department: str | None) -> dict:
    """The figures of the module docstring for evaluations made from `start` to `end` (China days)."""
    low, high = day_bounds(start, end)
    scope = {"department": department} if department else {}
    excluded = Rectification.filter(exclusion="approved").values("evaluation_id")
    evaluations = Evaluation.filter(created_at__gte=low, created_at__lt=high, **scope).exclude(
        id__in=Subquery(excluded)
    )
    rows = (
        await evaluations.annotate(n=Count("id"), given=Count("id", _filter=Q(active=True)))
        .group_by("level")
        .values("level", "n", "given")
    )
    levels = {str(level): {"all": 0, "active": 0} for level in range(1, 6)}
    for row in rows:
        levels[str(row["level"])] = {"all": row["n"], "active": row["given"]}
    total = sum(v["all"] for v in levels.values())
    active = sum(v["active"] for v in levels.values())
    good = sum(levels[str(level)]["all"] for level in (3, 4, 5))
    good_active = sum(levels[str(level)]["active"] for level in (3, 4, 5))
    bad = levels["1"]["all"] + levels["2"]["all"]

    rect_rows = await (
        Rectification.filter(created_at__gte=low, created_at__lt=high, **scope)
        .exclude(exclusion="approved")
        .annotate(
            n=Count("id"),
            closed=Count("id", _filter=Q(status="closed")),
            done=Count("id", _filter=Q(rectified_at__isnull=False)),
            timely=Count("id", _filter=Q(on_time=True)),
        )
        .values("n", "closed", "done", "timely")
    )
    rect = rect_rows[0] if rect_rows else {"n": 0, "closed": 0, "done": 0, "timely": 0}

    ticket_rows = await (
        Ticket.filter(created_at__gte=low, created_at__lt=high, **scope)
        .annotate(
            n=Count("id"),
            answered=Count("id", _filter=Q(answered_at__isnull=False)),
            in_time=Count("id", _filter=Q(answered_at__isnull=False, answered_at__lte=F("due_at"))),
        )
        .group_by("kind")
        .values("kind", "n", "answered", "in_time")
    )
    tickets = {
        kind: {"received": 0, "answered": 0, "answered_on_time": 0, "on_time_rate": None}
        for kind in ("consultation", "complaint")
    }
    for row in ticket_rows:
        tickets[row["kind"]] = {
            "received": row["n"],
            "answered": row["answered"],
            "answered_on_time": row["in_time"],
            "on_time_rate": _rate(row["in_time"], row["answered"]),
        }
    return {
        "from": start.isoformat(),
        "to": end.isoformat(),
        "department": department,
        "evaluations": {
            "total": total,
            "active": active,
            "default": total - active,
            "by_level": levels,
            "good_rate": _rate(good, total),
            "active_good_rate": _rate(good_active, active),
            "unrated_rate": _rate(total - active, total),
        },
        "bad_reviews": {
            "total": bad,
            "rectifications": rect["n"],
            "closed": rect["closed"],
            "rectified": rect["done"],
            "rectified_on_time": rect["timely"],
            "rectification_rate": _rate(rect["closed"], rect["n"]),
            "on_time_rate": _rate(rect["timely"], rect["done"]),
        },
        "tickets": tickets,
    }
