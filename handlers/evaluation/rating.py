"""Rating a case (好差评): from the mini-program or the official account, once per case, once it
has a decision or a result; the default 基本满意 when the citizen does not rate within the window;
each evaluation relayed to the provincial 好差评 system (the core platform) through the outbox.

The evaluation, its outbox row and (for levels 1-2) its rectification are written in one
transaction, so the platform hears of every evaluation and every 差评 is followed up.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from tortoise.exceptions import IntegrityError
from tortoise.expressions import Subquery
from tortoise.transactions import in_transaction

from bridge.client import PlatformClient
from core.china_time import CHINA
from core.errors import Conflict, NotFound, ValidationFailed
from core.kicks import Kicks
from handlers.cases.access import my_case
from handlers.evaluation.loop import COMMENT_COLUMN, TEXT_COLUMN, LoopPolicy, Rectifications, open_rectification
from handlers.evaluation.tags import BAD_LEVELS, DEFAULT_LEVEL, LEVELS, label, unknown_tags
from storage.crypto import FieldCipher
from storage.models import (
    Case,
    CaseEvent,
    CaseStatus,
    Evaluation,
    Follower,
    Outbox,
    Rectification,
    User,
)

log = logging.getLogger("zhangban.evaluation")

S = CaseStatus
# A case may be rated once it has a decision or a result.
RATEABLE = (S.APPROVED, S.REJECTED, S.RESULT_ISSUED, S.CLOSED)
RATEABLE_VALUES = tuple(s.value for s in RATEABLE)
COMMENT_MAX = 500
OUTBOX_COMMENT = "outbox.payload"


def is_invited(case: Case, evaluation: Evaluation | None) -> bool:
    return case.status in RATEABLE and evaluation is None


class Evaluations:
    """The citizen's side of 好差评 and its relay to the platform."""

    def __init__(
        self,
        *,
        cipher: FieldCipher,
        kicks: Kicks,
        platform: PlatformClient,
        loop: Rectifications,
        policy: LoopPolicy,
        default_after: timedelta = timedelta(days=7),
    ):
        self.cipher, self.kicks, self.platform = cipher, kicks, platform
        self.loop, self.policy, self.default_after = loop, policy, default_after

    # -- rating ------------------------------------------------------------------------------

    async def rate(
        self,
        *,
        user: User,
        case_no: str,
        level: int,
        tags: list[str],
        comment: str | None,
        channel: str,
        now: datetime | None = None,
    ) -> dict:
        """Rates one of the citizen's cases; 409 before a decision or when already rated."""
        case = await my_case(user=user, case_no=case_no)
        problems: dict[str, str] = {}
        if level not in LEVELS:
            problems["level"] = "评价等级应为 1-5"
        elif unknown := unknown_tags(level, tags):
            problems["tags"] = f"该评价等级没有这些标签：{'、'.join(unknown[:5])}"
        if comment is not None and len(comment) > COMMENT_MAX:
            problems["comment"] = f"评价内容最多 {COMMENT_MAX} 字"
        if problems:
            raise ValidationFailed(problems)
        if case.status not in RATEABLE:
            details = {"status": case.status.value}
            raise Conflict("办件有审批结果后才能评价", code="evaluation_not_open", details=details)
        evaluation, rectification = await self._record(
            case,
            user=user,
            level=level,
            tags=list(dict.fromkeys(tags)),
            comment=(comment or "").strip() or None,
            channel=channel,
            active=True,
            identity_level=user.identity_level.value,
            now=now or datetime.now(UTC),
        )
        if evaluation is None:
            raise Conflict("该办件已评价，每个办件只能评价一次", code="already_evaluated")
        return self.citizen_view(evaluation, rectification)

    async def _record(
        self,
        case: Case,
        *,
        user: User | None,
        level: int,
        tags: list[str],
        comment: str | None,
        channel: str,
        active: bool,
        identity_level: str,
        now: datetime,
    ) -> tuple[Evaluation | None, Rectification | None]:
        """The evaluation, its outbox row and its rectification (差评), or (None, None) when the
        case is rated already."""
        if await Evaluation.exists(case_id=case.id):
            return None, None
        department = case.service_item.department
        try:
            async with in_transaction():
                evaluation = await Evaluation.create(
                    case=case,
                    user_id=case.user_id,
                    department=department,
                    service_code=case.service_code,
                    level=level,
                    tags=tags,
                    comment_enc=self.cipher.encrypt(comment, column=COMMENT_COLUMN) if comment else None,
                    active=active,
                    channel=channel,
                    identity_level=identity_level,
                    created_at=now,
                )
                payload: dict = {
                    "level": level,
                    "level_label": label(level),
                    "tags": tags,
                    "active": active,
                    "channel": channel,
                    "identity_level": identity_level,
                    "department": department,
                    "service_code": case.service_code,
                    "evaluated_at": now.astimezone(CHINA).isoformat(timespec="seconds"),
                }
                if comment:  # the outbox keeps it sealed too
                    payload["comment_enc"] = self.cipher.encrypt(comment, column=OUTBOX_COMMENT).hex()
                await Outbox.create(kind="evaluation", case=case, payload=payload, next_attempt_at=now)
                rectification = None
                if level in BAD_LEVELS:
                    rectification = await open_rectification(evaluation, case, self.policy, now)
        except IntegrityError:  # rated concurrently: the first one stands
            return None, None
        await self.kicks.relay()
        log.info(
            "case evaluated",
            extra={"case_no": case.case_no, "level": level, "channel": channel, "active": active},
        )
        return evaluation, rectification

    # -- the default after the window ------------------------------------------------------

    async def record_defaults(self, *, now: datetime | None = None, limit: int = 500) -> int:
        """Cases decided more than `default_after` ago and still unrated get the default 基本满意,
        marked as not given actively (channel "default"). Returns how many."""
        now = now or datetime.now(UTC)
        cutoff = now - self.default_after
        rows = (
            await Case.filter(status__in=RATEABLE)
            .exclude(id__in=Subquery(Evaluation.all().values("case_id")))
            .order_by("id")
            .limit(limit)
            .prefetch_related("service_item")
        )
        made = 0
        for case in rows:
            decided = await CaseEvent.filter(case_id=case.id, to_status__in=RATEABLE_VALUES).order_by("id").first()
            if decided is None or decided.at > cutoff:
                continue
            evaluation, _ = await self._record(
                case,
                user=None,
                level=DEFAULT_LEVEL,
                tags=[],
                comment=None,
                channel="default",
                active=False,
                identity_level="",
                now=now,
            )
            made += evaluation is not None
        return made

    # -- the relay to the platform ---------------------------------------------------------------

    kinds = ("evaluation",)

    async def deliver(self, row: Outbox) -> list[int]:
        """Sends one evaluation to the provincial 好差评 system (idempotent there by case)."""
        payload = {k: v for k, v in row.payload.items() if k != "comment_enc"}
        if row.payload.get("comment_enc"):
            payload["comment"] = self.cipher.decrypt(bytes.fromhex(row.payload["comment_enc"]), column=OUTBOX_COMMENT)
        await self.platform.evaluation(row.case.case_no, payload)
        return []

    # -- the citizen's reading and answer ----------------------------------------------------------

    def citizen_view(self, evaluation: Evaluation, rectification: Rectification | None) -> dict:
        view = {
            "level": evaluation.level,
            "level_label": label(evaluation.level),
            "tags": list(evaluation.tags or []),
            "comment": self.cipher.decrypt_opt(evaluation.comment_enc, column=COMMENT_COLUMN),
            "active": evaluation.active,
            "channel": evaluation.channel,
            "created_at": evaluation.created_at.isoformat(),
            "rectification": None,
        }
        if rectification is not None:
            view["rectification"] = {
                "status": rectification.status,
                "round": rectification.round,
                "verified_at": rectification.verified_at.isoformat() if rectification.verified_at else None,
                "rectify_text": self.cipher.decrypt_opt(rectification.rectify_text_enc, column=TEXT_COLUMN),
                "rectified_at": rectification.rectified_at.isoformat() if rectification.rectified_at else None,
                "awaiting_answer": rectification.status == "awaiting_citizen",
                "excluded": rectification.status == "excluded",
            }
        return view

    async def mine(self, *, user: User, case_no: str) -> dict:
        """The citizen's evaluation of a case (with the department's reply to a 差评)."""
        case = await my_case(user=user, case_no=case_no)
        evaluation = await Evaluation.get_or_none(case_id=case.id)
        if evaluation is None:
            return {"case_no": case.case_no, "evaluation": None, "evaluation_invited": is_invited(case, None)}
        rectification = await Rectification.get_or_none(evaluation_id=evaluation.id)
        return {
            "case_no": case.case_no,
            "evaluation": self.citizen_view(evaluation, rectification),
            "evaluation_invited": False,
        }

    async def answer(self, *, user: User, case_no: str, satisfied: bool, now: datetime | None = None) -> dict:
        """The citizen's answer to the department's rectification: satisfied, or not (a new round)."""
        case = await my_case(user=user, case_no=case_no)
        rectification = await Rectification.get_or_none(case_id=case.id).prefetch_related("case")
        if rectification is None:
            raise NotFound("该办件没有待反馈的整改", code="rectification_not_found")
        result = await self.loop.citizen_answer(rectification=rectification, satisfied=satisfied, now=now)
        return {"case_no": case.case_no, **result}

    # -- the official account --------------------------------------------------------------------

    async def rate_by_message(self, follower: Follower, case_no: str, level: int, comment: str | None) -> str:
        """`评价 ZB… 5 [comment]` from a follower linked to the case's owner: the reply text."""
        if follower.user_id is None:
            return "评价办件需要先登录掌办小程序完成实名认证。"
        user = await User.get(id=follower.user_id)
        try:
            view = await self.rate(
                user=user, case_no=case_no, level=level, tags=[], comment=comment, channel="official_account"
            )
        except NotFound:
            return f"未找到办件 {case_no}，请核对编号，或在小程序“我的办件”中查看。"
        except ValidationFailed as exc:
            return "评价未提交：" + "；".join(exc.fields.values())
        except Conflict as exc:
            if exc.code == "already_evaluated":
                return f"办件 {case_no} 已评价过，感谢您的支持。"
            return f"办件 {case_no} 还没有审批结果，有结果后欢迎评价。"
        text = f"感谢您的评价！办件 {case_no}：{view['level_label']}。"
        if view["rectification"] is not None:
            text += "我们已转交承办部门核实整改，整改情况将通知您。"
        return text

    async def menu_hint(self, follower: Follower) -> str:
        """The menu's 评价 button: how to rate the latest case awaiting a rating."""
        if follower.user_id is None:
            return "评价办件需要先登录掌办小程序完成实名认证。"
        rated = Subquery(Evaluation.filter(user_id=follower.user_id).values("case_id"))
        case = (
            await Case.filter(user_id=follower.user_id, status__in=RATEABLE)
            .exclude(id__in=rated)
            .order_by("-id")
            .first()
        )
        if case is None:
            return "您暂时没有待评价的办件。"
        return (
            f"办件 {case.case_no}（{case.service_name}）待评价。\n"
            f"请回复“评价 {case.case_no} 分数”，分数 5 非常满意、4 满意、3 基本满意、2 不满意、1 非常不满意，"
            f"可在分数后写上意见，例如：评价 {case.case_no} 5 办事很方便"
        )
