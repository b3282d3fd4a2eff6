"""The five levels of 好差评 and the tags offered for each (the provincial system's wording)."""

from __future__ import annotations

LEVELS: dict[int, str] = {5: "非常满意", 4: "满意", 3: "基本满意", 2: "不满意", 1: "非常不满意"}
BAD_LEVELS = frozenset({1, 2})  # 差评: followed up by a rectification
DEFAULT_LEVEL = 3  # given when the citizen does not rate within the window

_GOOD = ["办事便捷", "一次办好", "材料精简", "服务热情", "办理高效", "指引清晰"]
_FAIR = ["基本顺利", "等待较久", "指引一般", "材料较多"]
_BAD = ["多次跑腿", "材料繁琐", "办理超时", "态度不佳", "指引不清", "系统故障", "结果不满意"]

TAGS: dict[int, list[str]] = {5: _GOOD, 4: _GOOD, 3: _FAIR, 2: _BAD, 1: _BAD}


def label(level: int) -> str:
    return LEVELS.get(level, "")


def catalogue() -> dict:
    """`GET /api/v1/evaluation/tags`: every level with its label, whether it is 差评, and its tags."""
    return {
        "levels": [
            {"level": level, "label": name, "bad": level in BAD_LEVELS, "tags": list(TAGS[level])}
            for level, name in LEVELS.items()
        ]
    }


def unknown_tags(level: int, tags: list[str]) -> list[str]:
    offered = set(TAGS.get(level, []))
    return [t for t in tags if t not in offered]
