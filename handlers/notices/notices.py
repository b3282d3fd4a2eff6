"""Notices: what officials, citizens and the bot do with them.

Officials with the `publisher` role (or `admin`) compose a notice as a draft, preview its audience's
size, schedule it or send it now, and cancel a scheduled one or stop one being sent; they follow its
progress (sent / failed / skipped / remaining) and read its delivery report. A publisher sees and
manages their own department's notices only (another department's is `404`); an admin all of them.
A notice is published once its send starts: the mini-program lists it and the bot tells of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tortoise.exceptions import IntegrityError
from tortoise.expressions import Q
from tortoise.functions import Count

from core.china_time import CHINA
from core.errors import Conflict, Forbidden, NotFound, ValidationFailed
from handlers import audit
from handlers.catalog.reader import CatalogueReader
from handlers.notices import audience
from handlers.notices.sender import notice_page
from handlers.scoping import in_scope, is_admin, require_role
from storage.models import ActorType, CaseStatus, Notice, NoticeDelivery, Official, ThemeSubscription, User

INT64_MAX = 2**63 - 1  # the largest id a BIGINT column holds
PUBLISHER = "publisher"
EDITABLE = ("draft", "scheduled")
PUBLISHED = ("sending", "sent")
MAX_SCHEDULE_AHEAD = timedelta(days=90)
_PAGE = re.compile(r"^pages/[A-Za-z0-9_/-]{1,120}(\?[A-Za-z0-9_=&%.-]{0,120})?$")
_REGION = re.compile(r"^\d{2,6}$")


def link_page(link_kind: str, link_target: str) -> str | None:
    """The mini-program page a notice's link opens."""
    if link_kind == "service":
        return f"pages/service/detail?code={link_target}"
    if link_kind == "page":
        return link_target
    return None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def progress_of(notice: Notice) -> dict:
    done = notice.sent + notice.failed + notice.skipped
    return {
        "id": notice.id,
        "status": notice.status,
        "total": notice.total,
        "sent": notice.sent,
        "failed": notice.failed,
        "skipped": notice.skipped,
        "remaining": 0 if notice.status in ("sent", "cancelled", "draft") else max(notice.total - done, 0),
        "paused_until": _iso(notice.paused_until),
    }


def console_view(notice: Notice) -> dict:
    return {
        "id": notice.id,
        "title": notice.title,
        "body": notice.body,
        "link": {
            "kind": notice.link_kind,
            "target": notice.link_target,
            "page": link_page(notice.link_kind, notice.link_target),
        },
        "image_url": notice.image_url,
        "audience": notice.audience,
        "status": notice.status,
        "department": notice.department,
        "created_by": notice.created_by,
        "scheduled_at": _iso(notice.scheduled_at),
        "published_at": _iso(notice.published_at),
        "finished_at": _iso(notice.finished_at),
        "cancelled_at": _iso(notice.cancelled_at),
        "created_at": _iso(notice.created_at),
        "progress": progress_of(notice),
    }


def public_view(notice: Notice, *, full: bool) -> dict:
    view = {
        "id": notice.id,
        "title": notice.title,
        "department": notice.department,
        "published_at": _iso(notice.published_at),
        "summary": notice.body[:80],
        "image_url": notice.image_url,
        "link": {"kind": notice.link_kind, "page": link_page(notice.link_kind, notice.link_target)},
        "page": notice_page(notice.id),
    }
    if full:
        view["body"] = notice.body
    return view


def _cursor_of(notice: Notice) -> str:
    return f"{int(notice.published_at.timestamp() * 1_000_000)}-{notice.id}"


def _parse_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        micros, notice_id = cursor.split("-", 1)
        if not 0 < int(notice_id) <= INT64_MAX:
            raise ValueError("notice id out of range")
        return datetime.fromtimestamp(int(micros) / 1_000_000, UTC), int(notice_id)
    except (ValueError, OverflowError, OSError):
        raise ValidationFailed({"cursor": "分页游标无效"}) from None


@dataclass
class Notices:
    catalogue: CatalogueReader

    # -- officials ---------------------------------------------------------------------------

    async def _check(self, *, audience_spec: dict, link_kind: str, link_target: str) -> dict:
        """The audience spec checked against the catalogue, normalised; the link's target too."""
        spec = dict(audience_spec)
        kind = spec.get("kind")
        if kind not in audience.KINDS:
            raise ValidationFailed({"audience.kind": "受众类型应为 followers、service、theme 或 region"})
        if kind == "service":
            guide = await self.catalogue.require_guide(code=str(spec.get("service_code", "")))
            statuses = sorted(set(spec.get("statuses") or []))
            known = {s.value for s in CaseStatus}
            if any(s not in known for s in statuses):
                raise ValidationFailed({"audience.statuses": "包含未知的办件状态"})
            spec = {"kind": kind, "service_code": guide["code"], "statuses": statuses}
        elif kind == "theme":
            if spec.get("theme") not in {t["code"] for t in await self.themes()}:
                raise ValidationFailed({"audience.theme": "主题不存在"})
            spec = {"kind": kind, "theme": spec["theme"]}
        elif kind == "region":
            if not _REGION.match(str(spec.get("region_code", ""))):
                raise ValidationFailed({"audience.region_code": "地区代码应为2到6位数字，如 5105"})
            spec = {"kind": kind, "region_code": spec["region_code"]}
        else:
            spec = {"kind": kind}
        if link_kind == "service":
            await self.catalogue.require_guide(code=link_target)
        elif link_kind == "page" and not _PAGE.match(link_target):
            raise ValidationFailed({"link_target": "小程序页面路径应以 pages/ 开头"})
        return spec

    @staticmethod
    def _allowed(official: Official) -> None:
        require_role(official, PUBLISHER)
        if not official.department and not is_admin(official):
            raise Forbidden(
                "您的账号未设置所属部门，不能发布通知", code="role_required", details={"roles": [PUBLISHER]}
            )

    async def _mine(self, official: Official, notice_id: int) -> Notice:
        self._allowed(official)
        notice = await Notice.get_or_none(id=notice_id)
        if notice is None:
            raise NotFound("通知不存在", code="notice_not_found")
        try:
            in_scope(official, notice.department, what="通知")
        except NotFound:
            raise NotFound("通知不存在", code="notice_not_found") from None
        return notice

    async def create(
        self,
        *,
        official: Official,
        title: str,
        body: str,
        audience_spec: dict,
        link_kind: str = "none",
        link_target: str = "",
        image_url: str | None = None,
        department: str | None = None,
    ) -> dict:
        self._allowed(official)
        spec = await self._check(audience_spec=audience_spec, link_kind=link_kind, link_target=link_target)
        if is_admin(official) and department:
            owner = department
        else:
            owner = official.department
        if not owner:
            raise ValidationFailed({"department": "请指定发布部门"})
        notice = await Notice.create(
            title=title,
            body=body,
            link_kind=link_kind,
            link_target=link_target if link_kind != "none" else "",
            image_url=image_url,
            audience=spec,
            department=owner,
            created_by=official.id,
        )
        return console_view(notice)

    async def update(self, *, official: Official, notice_id: int, changes: dict) -> dict:
        """Changes a draft's title, body, link, image or audience."""
        notice = await self._mine(official, notice_id)
        if notice.status != "draft":
            raise Conflict("只有草稿可以修改", code="notice_not_editable", details={"status": notice.status})
        merged = {
            "title": changes.get("title", notice.title),
            "body": changes.get("body", notice.body),
            "link_kind": changes.get("link_kind", notice.link_kind),
            "link_target": changes.get("link_target", notice.link_target),
            "image_url": changes["image_url"] if "image_url" in changes else notice.image_url,
        }
        if merged["link_kind"] == "none":
            merged["link_target"] = ""
        spec = await self._check(
            audience_spec=changes.get("audience", notice.audience),
            link_kind=merged["link_kind"],
            link_target=merged["link_target"],
        )
        updated = await Notice.filter(id=notice.id, status="draft").update(audience=spec, **merged)
        if not updated:
            raise Conflict("只有草稿可以修改", code="notice_not_editable")
        return console_view(await Notice.get(id=notice.id))

    async def preview(self, *, official: Official, audience_spec: dict) -> dict:
        self._allowed(official)
        spec = await self._check(audience_spec=audience_spec, link_kind="none", link_target="")
        return {"audience": spec, "total": await audience.count(spec)}

    async def preview_of(self, *, official: Official, notice_id: int) -> dict:
        notice = await self._mine(official, notice_id)
        return {"audience": notice.audience, "total": await audience.count(notice.audience)}

    async def schedule(
        self, *, official: Official, notice_id: int, at: datetime, ip: str = "", request_id: str = "", now=None
    ) -> dict:
        now = now or datetime.now(UTC)
        notice = await self._mine(official, notice_id)
        if at.tzinfo is None:
            at = at.replace(tzinfo=CHINA)
        if not now < at <= now + MAX_SCHEDULE_AHEAD:
            raise ValidationFailed({"at": "定时发送时间应在现在之后的90天内"})
        if not await Notice.filter(id=notice.id, status__in=EDITABLE).update(status="scheduled", scheduled_at=at):
            raise Conflict("该通知已发送或已取消", code="notice_not_editable", details={"status": notice.status})
        await self._audit(official, "notice.schedule", notice, ip, request_id, at=at.isoformat())
        return console_view(await Notice.get(id=notice.id))

    async def send_now(
        self, *, official: Official, notice_id: int, ip: str = "", request_id: str = "", now=None
    ) -> dict:
        notice = await self._mine(official, notice_id)
        if not await self._start(notice, now=now):
            raise Conflict("该通知已发送或已取消", code="notice_not_editable", details={"status": notice.status})
        await self._audit(official, "notice.send", notice, ip, request_id)
        return console_view(await Notice.get(id=notice.id))

    async def cancel(self, *, official: Official, notice_id: int, ip: str = "", request_id: str = "", now=None) -> dict:
        """Cancels a draft or a scheduled notice, or stops one being sent (what went out stays out)."""
        now = now or datetime.now(UTC)
        notice = await self._mine(official, notice_id)
        if not await Notice.filter(id=notice.id, status__in=("draft", "scheduled", "sending")).update(
            status="cancelled", cancelled_at=now
        ):
            raise Conflict("该通知已发送完毕或已取消", code="notice_not_cancellable", details={"status": notice.status})
        await self._audit(official, "notice.cancel", notice, ip, request_id, was=notice.status)
        return console_view(await Notice.get(id=notice.id))

    async def list_for(
        self, *, official: Official, status: str | None, department: str | None, before: int | None, limit: int
    ) -> dict:
        self._allowed(official)
        query = Notice.all()
        if not is_admin(official):
            query = query.filter(department=official.department)
        elif department:
            query = query.filter(department=department)
        if status:
            query = query.filter(status=status)
        if before is not None:
            query = query.filter(id__lt=before)
        rows = await query.order_by("-id").limit(limit)
        return {
            "items": [console_view(n) for n in rows],
            "next_cursor": rows[-1].id if len(rows) == limit else None,
        }

    async def view_for(self, *, official: Official, notice_id: int) -> dict:
        return console_view(await self._mine(official, notice_id))

    async def progress_for(self, *, official: Official, notice_id: int) -> dict:
        return progress_of(await self._mine(official, notice_id))

    async def report_for(self, *, official: Official, notice_id: int) -> dict:
        """Per status and channel counts, and failures by WeChat errcode."""
        notice = await self._mine(official, notice_id)
        rows = (
            await NoticeDelivery.filter(notice_id=notice.id)
            .annotate(n=Count("id"))
            .group_by("status", "channel")
            .values("status", "channel", "n")
        )
        channels: dict[str, int] = {"subscribe": 0, "template": 0, "inbox": 0}
        statuses: dict[str, int] = {"sent": 0, "failed": 0, "skipped": 0, "pending": 0, "sending": 0}
        for row in rows:
            statuses[row["status"]] = statuses.get(row["status"], 0) + int(row["n"])
            if row["channel"]:
                channels[row["channel"]] = channels.get(row["channel"], 0) + int(row["n"])
        failures = (
            await NoticeDelivery.filter(notice_id=notice.id, status="failed")
            .annotate(n=Count("id"))
            .group_by("errcode")
            .values("errcode", "n")
        )
        return {
            "id": notice.id,
            "status": notice.status,
            "progress": progress_of(notice),
            "deliveries": statuses,
            "channels": channels,
            "failures": sorted(
                ({"errcode": f["errcode"], "count": int(f["n"])} for f in failures),
                key=lambda f: (-f["count"], f["errcode"] if f["errcode"] is not None else -1),
            ),
            "quota_pauses": notice.quota_hits,
            "published_at": _iso(notice.published_at),
            "finished_at": _iso(notice.finished_at),
        }

    @staticmethod
    async def _audit(official: Official, action: str, notice: Notice, ip: str, request_id: str, **detail) -> None:
        await audit.record(
            actor_type=ActorType.OFFICIAL,
            actor_id=official.id,
            action=action,
            target_type="notice",
            target_id=notice.id,
            request_id=request_id or None,
            ip=ip or None,
            detail=detail,
        )

    # -- the scheduler's side ----------------------------------------------------------------

    @staticmethod
    async def _start(notice: Notice, *, now: datetime | None = None) -> bool:
        """Draft or scheduled → sending, published now, with the audience's size as its total."""
        now = now or datetime.now(UTC)
        total = await audience.count(notice.audience)
        return bool(
            await Notice.filter(id=notice.id, status__in=EDITABLE).update(
                status="sending", published_at=now, total=total, paused_until=None
            )
        )

    async def start_due(self, *, now: datetime | None = None) -> int:
        """Starts every scheduled notice whose time has come."""
        now = now or datetime.now(UTC)
        started = 0
        for notice in await Notice.filter(status="scheduled", scheduled_at__lte=now).order_by("scheduled_at").limit(50):
            started += await self._start(notice, now=now)
        return started

    @staticmethod
    async def sending_ids(*, now: datetime | None = None) -> list[int]:
        """Notices being sent and not paused by a quota error."""
        now = now or datetime.now(UTC)
        return list(
            await Notice.filter(status="sending")
            .filter(Q(paused_until__isnull=True) | Q(paused_until__lte=now))
            .order_by("id")
            .values_list("id", flat=True)
        )

    # -- citizens and the bot ----------------------------------------------------------------

    @staticmethod
    async def published(*, cursor: str | None, limit: int) -> dict:
        """Published notices, newest first, in keyset pages of (published_at, id)."""
        query = Notice.filter(status__in=PUBLISHED, published_at__isnull=False)
        if cursor:
            at, notice_id = _parse_cursor(cursor)
            query = query.filter(Q(published_at__lt=at) | Q(published_at=at, id__lt=notice_id))
        rows = await query.order_by("-published_at", "-id").limit(limit)
        return {
            "items": [public_view(n, full=False) for n in rows],
            "next_cursor": _cursor_of(rows[-1]) if len(rows) == limit else None,
        }

    @staticmethod
    async def published_one(notice_id: int) -> dict:
        notice = await Notice.get_or_none(id=notice_id, status__in=PUBLISHED)
        if notice is None:
            raise NotFound("通知不存在", code="notice_not_found")
        return public_view(notice, full=True)

    async def latest_text(self, link) -> str:
        """The bot's answer to 通知/公告: the latest three notices, each with a mini-program link."""
        rows = await Notice.filter(status__in=PUBLISHED).order_by("-published_at", "-id").limit(3)
        if not rows:
            return "暂无通知公告。"
        lines = ["最新通知公告："]
        for i, notice in enumerate(rows, start=1):
            day = notice.published_at.astimezone(CHINA)
            lines.append(f"{i}. {notice.title}（{day.month}月{day.day}日）{link('查看', notice_page(notice.id))}")
        lines.append(link("更多通知公告", "pages/notice/index"))
        return "\n".join(lines)

    async def themes(self) -> list[dict]:
        return list((await self.catalogue.shared()).get("themes", []))

    async def my_themes(self, user: User) -> dict:
        mine = set(await ThemeSubscription.filter(user_id=user.id).values_list("theme", flat=True))
        return {
            "items": [
                {"code": t["code"], "name": t.get("name", t["code"]), "subscribed": t["code"] in mine}
                for t in await self.themes()
            ]
        }

    async def subscribe_theme(self, user: User, theme: str, *, on: bool) -> dict:
        if theme not in {t["code"] for t in await self.themes()}:
            raise NotFound("主题不存在", code="theme_not_found")
        if on:
            try:
                await ThemeSubscription.create(user_id=user.id, theme=theme)
            except IntegrityError:
                pass  # already subscribed
        else:
            await ThemeSubscription.filter(user_id=user.id, theme=theme).delete()
        return {"theme": theme, "subscribed": on}
