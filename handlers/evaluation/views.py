"""What a citizen's case detail shows of its evaluation (the texts come with
`GET /api/v1/cases/{case_no}/evaluation`, which opens them)."""

from __future__ import annotations

from handlers.evaluation.rating import is_invited
from handlers.evaluation.tags import label
from storage.models import Case, Evaluation, Rectification


async def case_evaluation(case: Case) -> dict:
    """{"evaluation": its summary or None, "evaluation_invited": whether the case may be rated now}."""
    evaluation = await Evaluation.get_or_none(case_id=case.id)
    if evaluation is None:
        return {"evaluation": None, "evaluation_invited": is_invited(case, None)}
    rectification = await Rectification.get_or_none(evaluation_id=evaluation.id)
    return {
        "evaluation": {
            "level": evaluation.level,
            "level_label": label(evaluation.level),
            "tags": list(evaluation.tags or []),
            "active": evaluation.active,
            "channel": evaluation.channel,
            "created_at": evaluation.created_at.isoformat(),
            "rectification_status": rectification.status if rectification else None,
            "awaiting_answer": bool(rectification and rectification.status == "awaiting_citizen"),
        },
        "evaluation_invited": False,
    }
