"""Form definitions, the rule language, and pre-review (一次性告知: every problem at once)."""

from __future__ import annotations

import logging
from datetime import date, timedelta

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from core.cn_ids import id_check_char, uscc_check_char
from handlers.catalog.publish import DEMO_CATALOGUE
from handlers.forms.definitions import FormDef
from handlers.forms.expressions import ExpressionError, compile_expression
from handlers.forms.review import PROBLEM_CODES, Problem, evaluate, prefill_sources, review_form, visible_paths

TODAY = date.today()
PREFILL_SOURCES = {
    "identity.name",
    "identity.id_number",
    "identity.sex",
    "identity.birth_date",
    "profile.phone",
    "profile.address",
    "history",
}


def years_before(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February
        return day.replace(year=day.year - years, day=28)


def id_number(born: date, *, region: str = "510502", sequence: str = "123") -> str:
    first17 = f"{region}{born:%Y%m%d}{sequence}"
    return first17 + id_check_char(first17)


def uscc(body: str = "92510502MA6") -> str:
    first17 = (body + "0" * 17)[:17]
    return first17 + uscc_check_char(first17)


ADULT = id_number(years_before(TODAY, 35))
CHILD = id_number(years_before(TODAY, 8), sequence="224")


@pytest.fixture(scope="module")
def catalogue() -> dict:
    return yaml.safe_load(DEMO_CATALOGUE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def items(catalogue) -> dict[str, dict]:
    return {item["name"]: item for item in catalogue["items"]}


def form_of(items: dict, name: str) -> FormDef:
    return FormDef.model_validate(items[name]["form"])


MOVE = {
    "steps": [
        {
            "key": "applicant",
            "title": "申请人信息",
            "fields": [
                {
                    "key": "name",
                    "label": "姓名",
                    "type": "text",
                    "required": True,
                    "prefill": "identity.name",
                    "min_length": 2,
                    "max_length": 30,
                },
                {"key": "id_number", "label": "身份证号码", "type": "id_number", "required": True},
                {"key": "phone", "label": "联系电话", "type": "phone", "required": True},
                {
                    "key": "reason",
                    "label": "迁移原因",
                    "type": "select",
                    "required": True,
                    "options": [{"value": "own", "label": "本人购房"}, {"value": "marriage", "label": "夫妻投靠"}],
                },
                {
                    "key": "spouse_name",
                    "label": "配偶姓名",
                    "type": "text",
                    "visible_if": "applicant.reason == 'marriage'",
                    "required_if": "applicant.reason == 'marriage'",
                },
                {
                    "key": "spouse_id_number",
                    "label": "配偶身份证号码",
                    "type": "id_number",
                    "visible_if": "applicant.reason == 'marriage'",
                    "required_if": "applicant.reason == 'marriage'",
                },
                {"key": "start_date", "label": "开始日期", "type": "date"},
                {"key": "end_date", "label": "结束日期", "type": "date"},
                {"key": "birth_date", "label": "出生日期", "type": "date", "max": "today"},
                {"key": "rooms", "label": "房间数", "type": "number", "min": 1, "max": 20},
                {"key": "address", "label": "迁入地址", "type": "address", "min_length": 5},
                {"key": "region", "label": "迁入地区县", "type": "region"},
            ],
        },
        {
            "key": "children",
            "title": "随迁人员",
            "repeat": {"min": 0, "max": 3},
            "fields": [
                {"key": "name", "label": "姓名", "type": "text", "required": True},
                {"key": "id_number", "label": "身份证号码", "type": "id_number", "required": True},
                {
                    "key": "consent",
                    "label": "本人意愿",
                    "type": "select",
                    "options": [{"value": "agreed", "label": "同意"}],
                    "visible_if": "age(item.id_number) >= 18",
                    "required_if": "age(item.id_number) >= 18",
                },
            ],
        },
        {
            "key": "attachments",
            "title": "申请材料",
            "fields": [
                {
                    "key": "marriage_cert",
                    "label": "结婚证",
                    "type": "material",
                    "material": "marriage_cert",
                    "visible_if": "applicant.reason == 'marriage'",
                },
            ],
        },
    ],
    "checks": [
        {
            "rule": "date_le(applicant.start_date, applicant.end_date)",
            "path": "applicant.end_date",
            "message": "结束日期不能早于开始日期",
        },
    ],
}


def good_applicant(**changes) -> dict:
    return {"name": "张三", "id_number": ADULT, "phone": "13800138000", "reason": "own", **changes}


@pytest.fixture(scope="module")
def move() -> FormDef:
    return FormDef.model_validate(MOVE)


# -- rules: hidden, then required ------------------------------------------------------------------


def test_hidden_field_is_not_required_and_its_value_is_ignored(move):
    data = {"applicant": good_applicant(spouse_id_number="not an ID number")}
    assert review_form(move, data) == []
    shown = visible_paths(move, data)
    assert "applicant.spouse_name" not in shown and "applicant.spouse_id_number" not in shown
    assert "attachments.marriage_cert" not in shown


def test_answer_makes_a_hidden_field_visible_and_required(move):
    data = {"applicant": good_applicant(reason="marriage")}
    problems = review_form(move, data)
    assert problems == [
        Problem("applicant.spouse_name", "required", "请填写“配偶姓名”"),
        Problem("applicant.spouse_id_number", "required", "请填写“配偶身份证号码”"),
    ]
    assert {"applicant.spouse_name", "attachments.marriage_cert"} <= visible_paths(move, data)


def test_demo_hukou_move_marriage_makes_spouse_fields_required(items):
    form = form_of(items, "户口迁移")
    hidden = {p.path for p in review_form(form, {"applicant": {"reason": "own"}})}
    shown = {p.path: p for p in review_form(form, {"applicant": {"reason": "marriage"}})}
    for path in ("applicant.spouse_name", "applicant.spouse_id_number", "applicant.marriage_date"):
        assert path not in hidden
        assert shown[path].code == "required"


def test_hidden_values_read_as_none_in_rules(items):
    form = form_of(items, "出生医学证明")
    applicant = {
        "relation": "father",
        "name": "张三",
        "id_number": ADULT,
        "phone": "13800138000",
        "pickup_by": "parent",
    }
    shown = {"father_info": "provided", "father_name": "张三", "father_id_number": ADULT}
    stale = {**shown, "father_info": "absent"}  # answered, then switched off: the old number stays in the draft
    check = Problem(
        "parents.father_info", "check_failed", "申请人为新生儿父亲的，请填写父亲信息，且父亲身份证号码应与申请人一致"
    )
    assert check not in review_form(form, {"applicant": applicant, "parents": shown})
    assert check in review_form(form, {"applicant": applicant, "parents": stale})
    assert evaluate("parents.father_id_number == applicant.id_number", {"applicant": applicant, "parents": stale})


def test_hidden_step_is_skipped_whole(items):
    form = form_of(items, "个体工商户登记")
    data = {"business": {"organisation": "personal"}, "family": [{"name": 1}] * 20}
    assert not any(p.path.startswith("family") for p in review_form(form, data))
    assert not any(p.startswith("family") for p in visible_paths(form, data))


# -- every problem at once -------------------------------------------------------------------------


def test_five_mistakes_give_five_problems_in_form_order(move):
    data = {
        "applicant": {
            "name": "张",  # too short
            "id_number": ADULT[:17] + ("0" if ADULT[17] != "0" else "1"),  # wrong check digit
            "phone": "1380013800",  # 10 digits
            "reason": "divorce",  # not an option
            "birth_date": (TODAY + timedelta(days=1)).isoformat(),  # in the future
        },
    }
    problems = review_form(move, data)
    assert [(p.path, p.code) for p in problems] == [
        ("applicant.name", "too_short"),
        ("applicant.id_number", "invalid_id_number"),
        ("applicant.phone", "invalid_phone"),
        ("applicant.reason", "not_an_option"),
        ("applicant.birth_date", "out_of_range"),
    ]
    messages = [p.message for p in problems]
    assert messages[0] == "“姓名”至少需要填写2个字"
    assert messages[1] == "身份证号码校验位错误，请核对最后一位"
    assert messages[2] == "“联系电话”应为11位手机号码，您输入了10位"
    assert messages[4] == "“出生日期”不能晚于今天"


@pytest.mark.parametrize(
    ("field", "value", "code", "message"),
    [
        ("phone", "23800138000", "invalid_phone", "“联系电话”不是有效的手机号码，请核对"),
        ("phone", "138-0013-800", "invalid_phone", "“联系电话”只能填写数字"),
        ("phone", 13800138000, "invalid_type", "“联系电话”的填写格式不正确，请重新填写"),
        ("phone", "１３８００１３８０００", "invalid_phone", "“联系电话”请使用半角数字（0-9），不要使用全角数字"),
        ("phone", "١٣٨٠٠١٣٨٠٠٠", "invalid_phone", "“联系电话”只能填写数字"),
        ("reason", ["own"], "not_an_option", "“迁移原因”的选项无效，请重新选择"),  # found by the fuzz test below
        ("rooms", 0, "out_of_range", "“房间数”不能小于1"),
        ("rooms", 21.5, "out_of_range", "“房间数”不能大于20"),
        ("rooms", "三", "invalid_number", "“房间数”请填写数字"),
        ("rooms", True, "invalid_number", "“房间数”请填写数字"),
        ("start_date", "2024-02-30", "invalid_date", "“开始日期”不是有效的日期，请按“年-月-日”选择"),
        ("start_date", "20240201", "invalid_date", "“开始日期”不是有效的日期，请按“年-月-日”选择"),
        ("region", "990100", "invalid_region", "“迁入地区县”不存在，请重新选择"),
        ("region", "51050", "invalid_region", "“迁入地区县”应为6位行政区划代码，请重新选择"),
        ("address", {"region_code": "510502"}, "invalid_address", "请填写“迁入地址”的详细地址（街道、门牌号）"),
        ("address", {"detail": "江阳区大山坪1号"}, "invalid_address", "请选择“迁入地址”的所在地区"),
        (
            "address",
            {"region_code": "000000", "detail": "江阳区大山坪1号"},
            "invalid_region",
            "“迁入地址”的所在地区不存在，请重新选择",
        ),
        ("address", {"region_code": "510502", "detail": "1号"}, "too_short", "“迁入地址”的详细地址至少需要填写5个字"),
        ("address", "江阳区大山坪1号", "invalid_type", "“迁入地址”的填写格式不正确，请重新填写"),
        (
            "address",
            {"region_code": 510502, "detail": "江阳区大山坪1号"},
            "invalid_type",
            "“迁入地址”的填写格式不正确，请重新填写",
        ),
        (
            "address",
            {"region_code": "510502", "detail": ["江阳区"]},
            "invalid_type",
            "“迁入地址”的填写格式不正确，请重新填写",
        ),
        ("name", "张" * 31, "too_long", "“姓名”最多30个字，您填写了31个字"),
        ("spouse_id_number", "1234", "invalid_id_number", "“配偶身份证号码”：身份证号码应为18位，您输入了4位"),
        ("id_number", "1101051949123100٢X", "invalid_id_number", "身份证号码前17位应为数字，最后一位为数字或X"),
    ],
)
def test_field_problems(move, field, value, code, message):
    applicant = good_applicant(reason="marriage", spouse_name="李四", spouse_id_number=ADULT)
    data = {"applicant": {**applicant, field: value}}
    assert review_form(move, data) == [Problem(f"applicant.{field}", code, message)]


@pytest.mark.parametrize(
    "optional",
    [
        {"start_date": "2024-01-01", "end_date": "2024-01-02"},
        {"address": {"region_code": "510502", "detail": "江阳区大山坪1号"}, "region": "510502", "rooms": 2.5},
        {"start_date": "", "address": {"region_code": "", "detail": " "}, "rooms": None, "region": "  "},
    ],
)
def test_valid_or_empty_optional_values_pass(move, optional):
    assert review_form(move, {"applicant": good_applicant(**optional)}) == []


def test_numbers_may_arrive_as_strings(move):
    assert review_form(move, {"applicant": good_applicant(rooms="3")}) == []
    assert review_form(move, {"applicant": good_applicant(rooms="30")})[0].code == "out_of_range"


BUSINESS = {
    "steps": [
        {
            "key": "business",
            "title": "经营信息",
            "fields": [
                {"key": "scope", "label": "经营范围", "type": "textarea"},
                {
                    "key": "kinds",
                    "label": "经营类别",
                    "type": "multiselect",
                    "options": [{"value": "food", "label": "餐饮"}, {"value": "retail", "label": "零售"}],
                },
                {"key": "uscc", "label": "统一社会信用代码", "type": "uscc"},
                {"key": "capital", "label": "资金数额", "type": "number", "min": 0.5, "max": 100.0},
            ],
        }
    ],
}


@pytest.mark.parametrize(
    ("field", "value", "code", "message"),
    [
        ("scope", "经" * 2001, "too_long", "“经营范围”最多2000个字，您填写了2001个字"),  # textarea's default limit
        ("scope", 5, "invalid_type", "“经营范围”的填写格式不正确，请重新填写"),
        ("kinds", ["food", "other"], "not_an_option", "“经营类别”中有无效的选项，请重新选择"),
        ("kinds", "food", "invalid_type", "“经营类别”的填写格式不正确，请重新填写"),
        ("uscc", uscc()[:17] + "0", "invalid_uscc", "统一社会信用代码校验位错误，请核对最后一位"),
        ("uscc", 92510502, "invalid_type", "“统一社会信用代码”的填写格式不正确，请重新填写"),
        ("capital", 100.5, "out_of_range", "“资金数额”不能大于100"),
    ],
)
def test_more_field_problems(field, value, code, message):
    form = FormDef.model_validate(BUSINESS)
    assert review_form(form, {"business": {field: value}}) == [Problem(f"business.{field}", code, message)]
    valid = {"scope": "经" * 2000, "kinds": ["food", "retail"], "uscc": uscc(), "capital": 100}
    assert review_form(form, {"business": valid}) == []


def test_wrong_shapes_are_invalid_type_not_crashes(move):
    problems = review_form(move, {"applicant": "张三", "children": {"0": {}}})
    assert [(p.path, p.code) for p in problems] == [("applicant", "invalid_type"), ("children", "invalid_type")]
    assert [p.code for p in review_form(move, {"applicant": good_applicant(), "children": ["x"]})] == ["invalid_type"]
    assert review_form(move, None)[0] == Problem("applicant.name", "required", "请填写“姓名”")  # type: ignore[arg-type]


# -- repeated steps --------------------------------------------------------------------------------


def test_repeat_step_paths_and_messages(move):
    data = {
        "applicant": good_applicant(),
        "children": [{"name": "张小一", "id_number": CHILD}, {"id_number": "123"}],
    }
    assert review_form(move, data) == [
        Problem("children.1.name", "required", "请填写随迁人员第2项的“姓名”"),
        Problem(
            "children.1.id_number", "invalid_id_number", "随迁人员第2项的“身份证号码”：身份证号码应为18位，您输入了3位"
        ),
    ]
    assert {"children.0.name", "children.1.name", "children.1.id_number"} <= visible_paths(move, data)


def test_item_rules_apply_to_their_own_entry(move):
    data = {
        "applicant": good_applicant(),
        "children": [{"name": "张小一", "id_number": CHILD}, {"name": "张大二", "id_number": ADULT}],
    }
    assert review_form(move, data) == [Problem("children.1.consent", "required", "请选择随迁人员第2项的“本人意愿”")]
    shown = visible_paths(move, data)
    assert "children.1.consent" in shown and "children.0.consent" not in shown


def test_too_many_entries(move):
    children = [{"name": f"张小{i}", "id_number": CHILD} for i in range(4)]
    problems = review_form(move, {"applicant": good_applicant(), "children": children})
    assert problems == [Problem("children", "too_many_entries", "“随迁人员”最多填写3项，您填写了4项")]


def test_too_few_entries_in_the_demo_family_business(items):
    form = form_of(items, "个体工商户登记")
    problems = review_form(form, {"business": {"organisation": "family"}})
    assert Problem("family", "too_few_entries", "“参加经营的家庭成员”至少需要填写1项，当前0项") in problems
    assert "family" not in {p.path for p in review_form(form, {"business": {"organisation": "personal"}})}


# -- checks ----------------------------------------------------------------------------------------


def test_cross_field_date_check(move):
    base = good_applicant(start_date="2024-05-01")
    assert review_form(move, {"applicant": {**base, "end_date": "2024-05-01"}}) == []
    assert review_form(move, {"applicant": {**base, "end_date": "2024-04-30"}}) == [
        Problem("applicant.end_date", "check_failed", "结束日期不能早于开始日期"),
    ]
    # A check is not run on a value that has its own problem: the citizen sees that one only.
    assert [p.code for p in review_form(move, {"applicant": {**base, "end_date": "2024-13-01"}})] == ["invalid_date"]


def test_age_check_of_the_elderly_card(items):
    form = form_of(items, "老年人优待证")
    turns_60_tomorrow = id_number(years_before(TODAY + timedelta(days=1), 60))
    turned_60_today = id_number(years_before(TODAY, 60))
    data = {
        "applicant": {
            "name": "王大爷",
            "sex": "male",
            "phone": "13900139000",
            "hukou_type": "local",
            "address": {"region_code": "510502", "detail": "江阳区大山坪街道1号"},
        },
        "card": {
            "card_type": "electronic",
            "contact_name": "王小明",
            "contact_phone": "13700137000",
            "contact_relation": "child",
        },
        "attachments": {"declaration": "agreed"},
    }
    young = review_form(form, {**data, "applicant": {**data["applicant"], "id_number": turns_60_tomorrow}}, today=TODAY)
    assert young == [Problem("applicant.id_number", "check_failed", "老年人优待证的办理对象为年满60周岁的老年人")]
    old = {**data, "applicant": {**data["applicant"], "id_number": turned_60_today}}
    assert review_form(form, old, today=TODAY) == []


@pytest.mark.parametrize(
    ("rule", "data", "expected"),
    [
        ("age(a.id) >= 60", {"a": {"id": id_number(years_before(TODAY, 61))}}, True),
        ("age(a.id) >= 60", {"a": {"id": "not an id"}}, False),
        ("age(a.born) == 2", {"a": {"born": years_before(TODAY, 2).isoformat()}}, True),
        ("age(a.born) is None", {"a": {"born": (TODAY + timedelta(days=1)).isoformat()}}, True),
        ("today() == '" + TODAY.isoformat() + "'", {}, True),
        ("days_between(a.x, a.y) == 31", {"a": {"x": "2024-01-01", "y": "2024-02-01"}}, True),
        ("days_between(a.x, a.y) is None", {"a": {"x": "2024-01-01"}}, True),
        ("date_le(a.x, a.y)", {"a": {"x": "2024-02-01", "y": "2024-01-01"}}, False),
        ("date_le(a.x, a.y)", {"a": {"x": "2024-02-01"}}, True),
        ("len(a.kids) == 2 and len(a.none) == 0", {"a": {"kids": [1, 2]}}, True),
        (
            "empty(a.x) and empty(a.addr) and not empty(a.y)",
            {"a": {"x": " ", "addr": {"region_code": ""}, "y": 0}},
            True,
        ),
        ("a.missing.deeper == None", {}, True),
        ("a.n > 3", {}, False),  # ordering with a missing value is false, not an error
        ("'x' in a.list", {}, False),
        ("a.x in ('p', 'q')", {"a": {"x": "q"}}, True),
        ("a.x if a.flag else False", {"a": {"x": True, "flag": True}}, True),
    ],
)
def test_expression_functions(rule, data, expected):
    assert evaluate(rule, data, today=TODAY) is expected


def test_failing_rule_counts_as_false_and_is_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="zhangban.forms"):
        assert evaluate("a.x + 1 > 0", {"a": {"x": "text"}}) is False
        assert evaluate("a.x * 1000000 == ''", {"a": {"x": "ab"}}) is False  # simpleeval caps string size
        assert evaluate("a.x % 1 == ''", {"a": {"x": "%999999999d"}}) is False  # no printf formatting
    assert len([r for r in caplog.records if "form rule failed" in r.getMessage()]) == 3
    assert "text" not in caplog.text  # the rule is logged, never the citizen's data


# -- the language refuses everything else ----------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os')",
        "().__class__",
        "().__class__.__bases__[0].__subclasses__()",
        "a.__class__",
        "9**9**9",
        "2 ** 10",
        "unknown(1)",
        "eval('1')",
        "open('/etc/passwd')",
        "'abc'.upper()",
        "applicant.name.upper()",
        "a[0]",
        "[x for x in a]",
        "lambda: 1",
        "f'{a}'",
        "(x := 1)",
        "{'a': 1}",
        "a is 1",
        "len(a, b)",
        "age(x=1)",
        "10 ** 100 > 1",
        "1" * 20 + " > 1",
        "1 +",
        "",
        "a and " * 100 + "a",
    ],
)
def test_unsafe_or_invalid_expressions_are_refused_at_compile_time(text):
    with pytest.raises(ExpressionError):
        compile_expression(text)


def test_bad_expression_is_a_catalogue_error_with_its_path():
    bad = {
        "steps": [
            {
                **MOVE["steps"][0],
                "fields": [
                    MOVE["steps"][0]["fields"][0],
                    {**MOVE["steps"][0]["fields"][4], "visible_if": "__import__('os').system('id')"},
                ],
            }
        ]
    }
    with pytest.raises(ValidationError) as error:
        FormDef.model_validate(bad)
    [problem] = error.value.errors()
    assert problem["loc"] == ("steps", 0, "fields", 1, "visible_if")
    assert "__import__" in problem["msg"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda f: f["steps"][0]["fields"].append(dict(f["steps"][0]["fields"][0])), "duplicate field key 'name'"),
        (lambda f: f["steps"].append(dict(f["steps"][1])), "duplicate step key 'children'"),
        (lambda f: f["steps"][0]["fields"][3].pop("options"), "needs options"),
        (lambda f: f["steps"][2]["fields"][0].pop("material"), "names its material"),
        (lambda f: f["steps"][0]["fields"][4].update(visible_if="applicant.reasn == 'x'"), "has no field 'reasn'"),
        (lambda f: f["steps"][0]["fields"][4].update(visible_if="nobody.x == 1"), "unknown name 'nobody.x'"),
        (
            lambda f: f["steps"][0]["fields"][4].update(visible_if="item.name == 1"),
            "only available in the fields of a repeated step",
        ),
        (lambda f: f["steps"][0]["fields"][4].update(visible_if="children.name == 1"), "is repeated"),
        (lambda f: f["steps"][0]["fields"][0].update(prefill="identity.id_number"), "does not fit a text field"),
        (lambda f: f["steps"][1]["fields"][0].update(prefill="identity.name"), "not prefilled"),
        (lambda f: f["steps"][0]["fields"][2].update(min=1), "only for number and date"),
        (lambda f: f["steps"][0]["fields"][8].update(max="tomorrow"), "'today' or a date"),
        (lambda f: f["steps"][0].update(key="from"), "reserved word"),
        (lambda f: f["steps"][0].update(key="materials"), "reserved"),
        (lambda f: f["checks"][0].update(path="children.name"), "not a step, nor a field"),
        (lambda f: f["steps"][0]["fields"][0].update(colour="red"), "Extra inputs are not permitted"),
        (lambda f: f["steps"][0]["fields"][0].update(required="yes"), "valid boolean"),
        (lambda f: f["steps"][1].update(repeat={"min": 4, "max": 3}), "repeat.min cannot exceed repeat.max"),
    ],
)
def test_definition_mistakes_are_refused(change, expected):
    import copy

    broken = copy.deepcopy(MOVE)
    change(broken)
    with pytest.raises(ValidationError, match=expected):
        FormDef.model_validate(broken)


def test_yaml_dates_and_json_round_trip():
    form = FormDef.model_validate(
        yaml.safe_load("""
steps:
  - key: a
    title: 测试
    fields:
      - {key: d, label: 日期, type: date, min: 2020-01-01, max: today}
""")
    )
    assert form.steps[0].fields[0].min == "2020-01-01"
    assert review_form(form, {"a": {"d": "2019-12-31"}}) == [
        Problem("a.d", "out_of_range", "“日期”不能早于2020年1月1日")
    ]
    assert FormDef.model_validate(form.model_dump(mode="json")) == form


# -- the demo catalogue ------------------------------------------------------------------------------


def test_every_demo_form_is_valid_and_names_its_materials(catalogue):
    assert len(catalogue["items"]) == 12
    for item in catalogue["items"]:
        form = FormDef.model_validate(item["form"])
        assert 2 <= len(form.steps) <= 4, item["name"]
        assert all(4 <= len(s.fields) <= 15 for s in form.steps), item["name"]
        assert set(form.material_keys()) == {m["key"] for m in item["materials"]}, item["name"]
        assert FormDef.model_validate(form.model_dump(mode="json")) == form  # as stored in the database


def test_demo_catalogue_covers_every_feature(catalogue):
    forms = [FormDef.model_validate(item["form"]) for item in catalogue["items"]]
    fields = [f for form in forms for s in form.steps for f in s.fields]
    assert {f.type for f in fields} == {
        "text",
        "textarea",
        "number",
        "date",
        "select",
        "multiselect",
        "id_number",
        "phone",
        "uscc",
        "region",
        "address",
        "material",
    }
    assert any(s.repeat for form in forms for s in form.steps)
    assert any(s.visible_if for form in forms for s in form.steps)
    assert any("age(" in c.rule for form in forms for c in form.checks)
    assert any("date_le(" in c.rule for form in forms for c in form.checks)
    sizes = {item["name"]: FormDef.model_validate(item["form"]).field_count() for item in catalogue["items"]}
    assert max(sizes, key=sizes.get) == "户口迁移"


def test_review_of_every_empty_demo_form_lists_only_required(catalogue):
    for item in catalogue["items"]:
        form = FormDef.model_validate(item["form"])
        for data in ({}, {step.key: {} if step.repeat is None else [] for step in form.steps}):
            problems = review_form(form, data)
            assert problems, item["name"]
            assert {p.code for p in problems} == {"required"}, (item["name"], problems)
            shown = visible_paths(form, data)
            assert all(p.path in shown for p in problems)
            assert len({p.path for p in problems}) == len(problems)


def test_demo_prefill_sources_are_real(catalogue):
    for item in catalogue["items"]:
        form = FormDef.model_validate(item["form"])
        sources = prefill_sources(form)
        assert sources, item["name"]
        assert set(sources.values()) <= PREFILL_SOURCES
        fields = {f"{s.key}.{f.key}": f for s in form.steps if s.repeat is None for f in s.fields}
        for path, source in sources.items():
            assert path in fields and fields[path].prefill == source
        assert "identity.name" in sources.values() and "identity.id_number" in sources.values(), item["name"]


def test_a_filled_demo_form_passes(items):
    form = form_of(items, "个体工商户登记")
    data = {
        "operator": {
            "name": "张三",
            "id_number": ADULT,
            "sex": "male",
            "birth_date": years_before(TODAY, 35).isoformat(),
            "ethnicity": "han",
            "phone": "13800138000",
            "home_address": {"region_code": "510502", "detail": "江阳区大山坪街道1号"},
            "by_agent": "self",
        },
        "business": {
            "kind": "transfer",
            "original_uscc": uscc(),
            "use_name": "named",
            "trade_name": "老王",
            "industry": "catering",
            "scope": "餐饮服务（不含酒类）",
            "organisation": "family",
            "capital": 5,
            "employees": "3",
            "region": "510502",
            "premises_address": {"region_code": "510502", "detail": "江阳区滨江路88号"},
            "premises_use": "own",
        },
        "family": [
            {"name": "李四", "id_number": id_number(years_before(TODAY, 33), sequence="342"), "relation": "spouse"}
        ],
        "attachments": {},
    }
    assert review_form(form, data) == []
    wrong = {**data, "business": {**data["business"], "original_uscc": uscc()[:17] + "0"}}
    [problem] = review_form(form, wrong)
    assert problem.path == "business.original_uscc" and problem.code == "invalid_uscc"
    assert problem.message == "“原营业执照统一社会信用代码”：统一社会信用代码校验位错误，请核对最后一位"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=25)
    | st.sampled_from(["510502", "2024-02-29", "married", "marriage", "agent", "lease", "family", "mail", ADULT]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


DEMO_FORMS = [
    FormDef.model_validate(item["form"]) for item in yaml.safe_load(DEMO_CATALOGUE.read_text(encoding="utf-8"))["items"]
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_review_never_crashes_on_any_json(data):
    for form in DEMO_FORMS:
        draft = {}
        for step in form.steps:
            keys = st.sampled_from([f.key for f in step.fields])
            entry = st.dictionaries(keys, json_values, max_size=len(step.fields))
            draft[step.key] = data.draw(st.lists(entry, max_size=3) if step.repeat else entry | json_values)
        problems = review_form(form, draft)
        assert all(p.code in PROBLEM_CODES and p.message for p in problems)
        visible_paths(form, draft)


# -- the newborn bundle --------------------------------------------------------------------------


def test_newborn_bundle(catalogue):
    from handlers.drafts import merge_forms  # how a bundle's form is built for one draft

    [bundle] = catalogue["bundles"]
    assert bundle["code"] == "newborn" and bundle["name"] == "新生儿出生一件事"
    by_code = {item["code"]: item for item in catalogue["items"]}
    members = [by_code[code] for code in bundle["items"]]
    assert [m["name"] for m in members] == ["出生医学证明", "出生登记", "城乡居民基本医疗保险参保登记"]
    departments = {d["code"] for d in catalogue["departments"]}
    assert all(m["department"] in departments for m in members)

    # What two items both ask is asked the same way, so the merged form asks it once.
    fields: dict[tuple[str, str], dict] = {}
    materials: dict[str, dict] = {}
    for item in members:
        for step in item["form"]["steps"]:
            for field in step["fields"]:
                assert fields.setdefault((step["key"], field["key"]), field) == field, (item["name"], field["key"])
        for material in item["materials"]:
            assert materials.setdefault(material["key"], material) == material, (item["name"], material["key"])

    merged = FormDef.model_validate(merge_forms([m["form"] for m in members]))
    assert merged.field_count() == len(fields)
    assert set(merged.material_keys()) == set(materials)
    problems = review_form(merged, {})
    assert {p.code for p in problems} == {"required"}
    assert len([p for p in problems if p.path == "baby.name"]) == 1
