"""Property tests of core.cn_ids against an independent implementation of both check characters.

The reference code below is written from the standards, not copied from core.cn_ids: the
weights are derived (GB 11643: 2^(17-i) mod 11; GB 32100: 3^i mod 31), and so is the USCC
alphabet (digits and capitals without I, O, S, V, Z).
"""

from __future__ import annotations

import re
import string
import unicodedata
from datetime import date, timedelta

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from core.cn_ids import InvalidIdentifier, check_uscc, parse_id_number

CHINESE = re.compile(r"[\u4e00-\u9fff]")
TODAY = date.today()

# -- reference implementation ---------------------------------------------------------------------

ID_WEIGHTS = [pow(2, 17 - i, 11) for i in range(17)]


def ref_id_check(first17: str) -> str:
    value = (12 - sum(int(d) * w for d, w in zip(first17, ID_WEIGHTS, strict=False)) % 11) % 11
    return "X" if value == 10 else str(value)


USCC_ALPHABET = [c for c in string.digits + string.ascii_uppercase if c not in "IOSVZ"]
USCC_WEIGHTS = [pow(3, i, 31) for i in range(17)]


def ref_uscc_check(first17: str) -> str:
    return USCC_ALPHABET[
        (31 - sum(USCC_ALPHABET.index(c) * w for c, w in zip(first17, USCC_WEIGHTS, strict=False)) % 31) % 31
    ]


# GB/T 2260 province-level codes, typed in here rather than imported.
REAL_PROVINCES = "11 12 13 14 15 21 22 23 31 32 33 34 35 36 37 41 42 43 44 45 46 50 51 52 53 54 61 62 63 64 65".split()


def ref_id_valid(value: str) -> bool:
    value = value.strip().upper()
    if not re.fullmatch(r"[0-9]{17}[0-9X]", value) or value[:2] not in REAL_PROVINCES + ["71", "81", "82", "83"]:
        return False
    try:
        born = date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        return False
    return 1900 <= born.year and born <= TODAY and ref_id_check(value[:17]) == value[17]


def ref_uscc_valid(value: str) -> bool:
    value = value.strip().upper()
    return (
        len(value) == 18
        and all(c in USCC_ALPHABET for c in value)
        and value[2:8].isascii()
        and value[2:8].isdigit()
        and ref_uscc_check(value[:17]) == value[17]
    )


# -- strategies --------------------------------------------------------------------------------------


@st.composite
def id_numbers(draw) -> tuple[str, date]:
    province = draw(st.sampled_from(REAL_PROVINCES))
    rest = draw(st.text(alphabet=string.digits, min_size=4, max_size=4))
    born = draw(st.dates(min_value=date(1900, 1, 1), max_value=TODAY))
    sequence = draw(st.text(alphabet=string.digits, min_size=3, max_size=3))
    first17 = f"{province}{rest}{born:%Y%m%d}{sequence}"
    return first17 + ref_id_check(first17), born


@st.composite
def usccs(draw) -> str:
    department = draw(st.sampled_from("123456789ANY"))  # 登记管理部门代码
    category = draw(st.sampled_from("12359"))  # 机构类别代码
    region = draw(st.text(alphabet=string.digits, min_size=6, max_size=6))
    organisation = draw(st.text(alphabet=USCC_ALPHABET, min_size=9, max_size=9))
    first17 = department + category + region + organisation
    return first17 + ref_uscc_check(first17)


def _not_a_foreign_digit(c: str) -> bool:
    # Other scripts' digits are refused and full-width ones read as ASCII (see the tests below).
    return c.isascii() or unicodedata.decimal(c, None) is None


# -- resident ID numbers -------------------------------------------------------------------------


@settings(max_examples=300)
@given(id_numbers())
def test_generated_id_numbers_are_accepted(case):
    number, born = case
    parsed = parse_id_number(number)
    assert parsed.value == number
    assert parsed.birth_date == born
    assert parsed.region == number[:6]
    assert parsed.sex == ("male" if int(number[16]) % 2 else "female")
    assert parse_id_number(f"  {number.lower()}  ").value == number  # x → X, spaces trimmed


@settings(max_examples=500)
@given(id_numbers(), st.integers(min_value=0, max_value=17), st.characters(codec="utf-8").filter(_not_a_foreign_digit))
def test_any_single_character_change_of_an_id_number_is_rejected(case, position, replacement):
    number, _ = case
    assume(replacement.upper() != number[position])
    changed = number[:position] + replacement + number[position + 1 :]
    with pytest.raises(InvalidIdentifier) as error:
        parse_id_number(changed)
    assert CHINESE.search(str(error.value))


@settings(max_examples=300)
@given(st.text(max_size=30))
@example("")
@example("123456789012345678")
@example("11010519491231002")
def test_random_strings_are_not_id_numbers(text):
    assume(not ref_id_valid(text))
    with pytest.raises(InvalidIdentifier) as error:
        parse_id_number(text)
    assert CHINESE.search(str(error.value))


@pytest.mark.parametrize("number", ["11010519491231002X", "11010519491231002x", " 11010519491231002X\n"])
def test_published_gb11643_example(number):
    parsed = parse_id_number(number)
    assert parsed.value == "11010519491231002X"
    assert parsed.birth_date == date(1949, 12, 31) and parsed.sex == "female" and parsed.region == "110105"
    assert ref_id_check("11010519491231002") == "X"


@pytest.mark.parametrize(
    ("number", "message"),
    [
        ("110105194912310021", "身份证号码校验位错误，请核对最后一位"),
        ("1101051949123100", "身份证号码应为18位，您输入了16位"),
        ("11010519491231002Y", "身份证号码前17位应为数字，最后一位为数字或X"),
        ("99010519491231002X", "身份证号码前两位地区码不存在，请核对"),
        ("110105194902300020", "身份证号码中的出生日期无效，请核对第7至14位"),
        # GB 11643's other published example has a valid check digit, but a birth before 1900 is refused.
        ("440524188001010014", "身份证号码中的出生日期无效，请核对第7至14位"),
    ],
)
def test_id_number_messages(number, message):
    with pytest.raises(InvalidIdentifier, match=f"^{re.escape(message)}$"):
        parse_id_number(number)


def test_id_number_born_tomorrow_is_rejected():
    tomorrow = TODAY + timedelta(days=1)
    first17 = f"510502{tomorrow:%Y%m%d}123"
    with pytest.raises(InvalidIdentifier, match="出生日期无效"):
        parse_id_number(first17 + ref_id_check(first17), today=TODAY)


@pytest.mark.parametrize("changed", ["1101051949123100٢X", "1101051949123100߂X"])
def test_id_number_with_a_non_ascii_digit_is_rejected(changed):
    with pytest.raises(InvalidIdentifier):
        parse_id_number(changed)


def test_id_number_typed_with_full_width_digits_is_read_as_ascii():
    assert parse_id_number("1101051949123100２ｘ").value == "11010519491231002X"


# -- unified social credit codes ------------------------------------------------------------------


@settings(max_examples=300)
@given(usccs())
def test_generated_usccs_are_accepted(code):
    assert check_uscc(code) == code
    assert check_uscc(f" {code.lower()} ") == code


@pytest.mark.slow
@settings(max_examples=500)
@given(usccs(), st.integers(min_value=0, max_value=17), st.characters(codec="utf-8"))
def test_any_single_character_change_of_a_uscc_is_rejected(code, position, replacement):
    assume(replacement.upper() != code[position])
    changed = code[:position] + replacement + code[position + 1 :]
    with pytest.raises(InvalidIdentifier) as error:
        check_uscc(changed)
    assert CHINESE.search(str(error.value))


@settings(max_examples=300)
@given(st.text(max_size=30))
@example("")
@example("91350100M000100Y4")
@example("91350100M000100Y4I")
@example("9135AB00M000100Y43")
def test_random_strings_are_not_usccs(text):
    assume(not ref_uscc_valid(text))
    with pytest.raises(InvalidIdentifier) as error:
        check_uscc(text)
    assert CHINESE.search(str(error.value))


@pytest.mark.parametrize(
    "code",
    [
        "91350100M000100Y43",  # the example usually quoted for GB 32100
        "9144030071526726XG",  # published codes of well-known companies
        "914403001922038216",
        "91330100716105852F",
        "91110000802100433B",
        "12100000400000624D",  # a public institution (事业单位, department code 1)
    ],
)
def test_published_usccs(code):
    assert ref_uscc_check(code[:17]) == code[17]
    assert check_uscc(code) == code
    assert check_uscc(code.lower()) == code


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("91350100M000100Y44", "统一社会信用代码校验位错误，请核对最后一位"),
        ("91350100M000100Y4", "统一社会信用代码应为18位，您输入了17位"),
        ("91350100M000100O43", "统一社会信用代码含有无效字符（不使用 I、O、Z、S、V）"),
        ("9135A100M000100Y43", "统一社会信用代码第3至8位应为行政区划码"),
    ],
)
def test_uscc_messages(code, message):
    with pytest.raises(InvalidIdentifier, match=f"^{re.escape(message)}$"):
        check_uscc(code)
