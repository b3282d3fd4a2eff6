"""Chinese identifiers: resident ID numbers (GB 11643), unified social credit codes (GB 32100),
personal names, and the masks used when any of them is shown.

Every check returns a Chinese message that tells the citizen exactly what is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

# GB/T 2260 province-level prefixes (the first two digits of every resident ID number).
PROVINCES = {
    "11": "北京市",
    "12": "天津市",
    "13": "河北省",
    "14": "山西省",
    "15": "内蒙古自治区",
    "21": "辽宁省",
    "22": "吉林省",
    "23": "黑龙江省",
    "31": "上海市",
    "32": "江苏省",
    "33": "浙江省",
    "34": "安徽省",
    "35": "福建省",
    "36": "江西省",
    "37": "山东省",
    "41": "河南省",
    "42": "湖北省",
    "43": "湖南省",
    "44": "广东省",
    "45": "广西壮族自治区",
    "46": "海南省",
    "50": "重庆市",
    "51": "四川省",
    "52": "贵州省",
    "53": "云南省",
    "54": "西藏自治区",
    "61": "陕西省",
    "62": "甘肃省",
    "63": "青海省",
    "64": "宁夏回族自治区",
    "65": "新疆维吾尔自治区",
    "71": "台湾省",
    "81": "香港特别行政区",
    "82": "澳门特别行政区",
    "83": "台湾居民居住证",
}
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


class InvalidIdentifier(ValueError):
    """The identifier is malformed; the message says how, in Chinese."""


@dataclass(frozen=True)
class IdNumber:
    """A checked 18-digit resident ID number and what it encodes."""

    value: str
    region: str
    birth_date: date
    sex: str  # "male" | "female"

    def age_on(self, day: date) -> int:
        return day.year - self.birth_date.year - ((day.month, day.day) < (self.birth_date.month, self.birth_date.day))


def id_check_char(first17: str) -> str:
    """The GB 11643 check character for the first 17 digits."""
    return _ID_CHECK[sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS, strict=True)) % 11]


def parse_id_number(raw: str, *, today: date | None = None) -> IdNumber:
    """The checked ID number (a final `x` becomes `X`); raises InvalidIdentifier saying what is wrong."""
    value = ascii_digits(raw or "").strip().upper()
    if len(value) != 18:
        raise InvalidIdentifier(f"身份证号码应为18位，您输入了{len(value)}位")
    if not re.fullmatch(r"[0-9]{17}[0-9X]", value):
        raise InvalidIdentifier("身份证号码前17位应为数字，最后一位为数字或X")
    if value[:2] not in PROVINCES:
        raise InvalidIdentifier("身份证号码前两位地区码不存在，请核对")
    try:
        birth = date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        raise InvalidIdentifier("身份证号码中的出生日期无效，请核对第7至14位") from None
    today = today or date.today()
    if birth > today or birth.year < 1900:
        raise InvalidIdentifier("身份证号码中的出生日期无效，请核对第7至14位")
    if id_check_char(value[:17]) != value[17]:
        raise InvalidIdentifier("身份证号码校验位错误，请核对最后一位")
    return IdNumber(value=value, region=value[:6], birth_date=birth, sex="male" if int(value[16]) % 2 else "female")


# Full-width digits (and X) as a Chinese input method types them, read as the ASCII ones.
_FULL_WIDTH = str.maketrans("０１２３４５６７８９Ｘｘ", "0123456789Xx")


def ascii_digits(raw: str) -> str:
    """`raw` with full-width digits (０-９, Ｘ) made ASCII; other non-ASCII digits stay, to be refused."""
    return raw.translate(_FULL_WIDTH)


def has_full_width_digits(raw: str) -> bool:
    return raw != ascii_digits(raw)


# Every CJK ideograph block, so that rare characters (生僻字) in real names pass: Extension A,
# the URO, compatibility ideographs, 〇, and Extensions B-I with their compatibility supplement
# (planes 2 and 3, all CJK). ASCII letters for foreign names; the middle dot of minority names.
_NAME = re.compile(
    r"^[\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f\U00031350-\U000323af"
    r"A-Za-z\u00b7 ]{2,30}$"
)
# Look-alikes of the middle dot (·, U+00B7) that input methods produce: bullet, katakana and
# half-width katakana middle dots, hyphenation point, bullet and dot operators, Greek ano teleia.
_MIDDLE_DOTS = str.maketrans(dict.fromkeys("\u2022\u30fb\uff65\u2027\u2219\u22c5\u0387", "\u00b7"))


def check_name(raw: str) -> str:
    """The normalised personal name; raises InvalidIdentifier if it cannot be a name."""
    value = re.sub(r"\s+", " ", (raw or "").strip()).translate(_MIDDLE_DOTS)
    if len(value) < 2 or len(value) > 30:
        raise InvalidIdentifier("姓名应为2至30个字符")
    if not _NAME.fullmatch(value):
        raise InvalidIdentifier("姓名只能包含汉字、字母和间隔号“·”")
    if value.startswith("·") or value.endswith("·") or "··" in value:
        raise InvalidIdentifier("姓名中的间隔号“·”位置不正确")
    return value


# GB 32100: 18 characters over this alphabet (no I, O, Z, S, V).
_USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)


def uscc_check_char(first17: str) -> str:
    """The GB 32100 check character for the first 17 characters."""
    total = sum(_USCC_ALPHABET.index(c) * w for c, w in zip(first17, _USCC_WEIGHTS, strict=True))
    return _USCC_ALPHABET[(31 - total % 31) % 31]


def check_uscc(raw: str) -> str:
    """The checked unified social credit code; raises InvalidIdentifier saying what is wrong."""
    value = (raw or "").strip().upper()
    if len(value) != 18:
        raise InvalidIdentifier(f"统一社会信用代码应为18位，您输入了{len(value)}位")
    if any(c not in _USCC_ALPHABET for c in value):
        raise InvalidIdentifier("统一社会信用代码含有无效字符（不使用 I、O、Z、S、V）")
    if not value[2:8].isdigit():
        raise InvalidIdentifier("统一社会信用代码第3至8位应为行政区划码")
    if uscc_check_char(value[:17]) != value[17]:
        raise InvalidIdentifier("统一社会信用代码校验位错误，请核对最后一位")
    return value


def mask_name(name: str | None) -> str | None:
    """`张*`, `欧阳**`: the family-name character kept, the rest starred."""
    if not name:
        return None
    return name[0] + "*" * (len(name) - 1)


def mask_id_number(value: str | None) -> str | None:
    """`1101**********123X`: first four and last four kept."""
    if not value:
        return None
    return value[:4] + "*" * (len(value) - 8) + value[-4:]


def mask_phone(value: str | None) -> str | None:
    """`138****5678`."""
    if not value:
        return None
    return value[:3] + "****" + value[-4:] if len(value) >= 7 else "*" * len(value)
