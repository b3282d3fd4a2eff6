"""Catalogue search (handlers/catalog/search.py) against the real demo catalogue, data/catalogue.yaml.

Item codes are never hard-coded: expected items are named, and their codes looked up by name.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
import textwrap

import pytest

from handlers.catalog.publish import DEMO_CATALOGUE
from handlers.catalog.reader import build_from_catalogue_file
from handlers.catalog.schema import parse_catalogue
from handlers.catalog.search import Hit, SearchIndex
from tests.conftest import ROOT

# Birth questions: the demo has 出生医学证明; a birth-related item added later (新生儿入户,
# 生育津贴 ...) is an acceptable answer too.
BIRTH = "<birth>"
BIRTH_MARKERS = ("出生", "新生儿", "生育", "生孩子", "婴", "宝宝")

# (what a citizen types, the item expected on top)
PHRASINGS = [
    ("身份证过期了怎么办", "居民身份证换领"),
    ("身份证过期了", "居民身份证换领"),
    ("身份证到期换证", "居民身份证换领"),
    ("我的身份证快到期了需要带什么材料", "居民身份证换领"),
    ("二代证到期", "居民身份证换领"),
    ("有效期满换身份证", "居民身份证换领"),
    ("暂住证", "居住证办理"),
    ("居住证怎么办理", "居住证办理"),
    ("在外地工作想办居住证", "居住证办理"),
    ("社保卡丢了", "社保卡补办"),
    ("医保卡补办", "社保卡补办"),
    ("社会保障卡遗失", "社保卡补办"),
    ("社保卡不见了", "社保卡补办"),
    ("公积金怎么取", "公积金提取"),
    ("租房提取公积金", "公积金提取"),
    ("租房子", "公积金提取"),
    ("支取公积金", "公积金提取"),
    ("开个小店要什么手续", "个体工商户登记"),
    ("个体户营业执照", "个体工商户登记"),
    ("做生意要办什么执照", "个体工商户登记"),
    ("我想注册个体户", "个体工商户登记"),
    ("生孩子要办什么", BIRTH),
    ("我家宝宝刚出生要办什么证", BIRTH),
    ("新生儿出生证明", "出生医学证明"),
    ("出生证怎么办", "出生医学证明"),
    ("老人优待证怎么办", "老年人优待证"),
    ("老年证", "老年人优待证"),
    ("退休老人乘车卡", "老年人优待证"),
    ("驾照到期", "机动车驾驶证换证"),
    ("驾驶证换证要带什么", "机动车驾驶证换证"),
    ("驾驶证过期怎么换", "机动车驾驶证换证"),
    ("换驾照", "机动车驾驶证换证"),
    ("驾证到期", "机动车驾驶证换证"),
    ("查一下名下有没有房", "不动产登记信息查询"),
    ("无房证明", "不动产登记信息查询"),
    ("帮我查查我名下的房子", "不动产登记信息查询"),
    ("迁户口", "户口迁移"),
    ("买房落户", "户口迁移"),
    ("想把户口迁到泸州", "户口迁移"),
]

GIBBERISH = ["asdfgh", "今天天气怎么样", "你好", "好的谢谢", "怎么交电费", "123456", "？？？", "办理", "怎么办"]

# A word found only in the synonym groups, never in the item's own text -> the item it must find.
SYNONYM_ONLY = [
    ("二代证", "居民身份证换领"),
    ("长者", "老年人优待证"),
    ("驾驶执照", "机动车驾驶证换证"),
    ("工商执照", "个体工商户登记"),
    ("生小孩", "出生医学证明"),
]


@pytest.fixture(scope="module")
def catalogue():
    return parse_catalogue(DEMO_CATALOGUE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def items(catalogue) -> list[dict]:
    departments = {d.code: d.name for d in catalogue.departments}
    return [
        {**item.model_dump(mode="json"), "department_name": departments[item.department]} for item in catalogue.items
    ]


@pytest.fixture(scope="module")
def codes(items) -> dict[str, str]:
    return {item["name"]: item["code"] for item in items}


@pytest.fixture(scope="module")
def index() -> SearchIndex:
    return build_from_catalogue_file(DEMO_CATALOGUE)


def _acceptable(expected: str, hit: Hit, codes: dict[str, str]) -> bool:
    if expected == BIRTH:
        return hit.code == codes["出生医学证明"] or any(m in hit.name for m in BIRTH_MARKERS)
    return hit.code == codes[expected]


@pytest.mark.parametrize("query, expected", PHRASINGS, ids=[q for q, _ in PHRASINGS])
def test_everyday_phrasing_finds_the_item(index, codes, query, expected):
    hits = index.search(query)
    assert hits, f"{query!r}: no hit"
    top = hits[0]
    assert _acceptable(expected, top, codes), f"{query!r}: got {[(h.name, h.score, h.reason) for h in hits[:3]]}"
    assert top.score >= SearchIndex.MIN_SCORE, f"{query!r}: {top}"
    assert top.reason, f"{query!r}: empty reason"


def test_there_are_enough_phrasings():
    assert len(PHRASINGS) >= 25


@pytest.mark.parametrize("query", GIBBERISH)
def test_gibberish_stays_below_min_score(index, query):
    assert all(h.score < SearchIndex.MIN_SCORE for h in index.search(query)), index.search(query)


def test_no_hit_at_all_for_nonsense_and_empty_queries(index):
    for query in ["asdfgh", "今天天气怎么样", "", "   ", "？！。", "的了吗"]:
        assert index.search(query) == [], query


def test_min_score_is_a_documented_positive_threshold():
    assert 0 < SearchIndex.MIN_SCORE < 10
    assert "MIN_SCORE" in (SearchIndex.__doc__ or "") + (sys.modules[SearchIndex.__module__].__doc__ or "")


def test_results_are_sorted_positive_rounded_and_limited(index, codes):
    for query, _ in PHRASINGS:
        hits = index.search(query)
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True), query
        assert all(s > 0 and round(s, 3) == s for s in scores), query
        assert len({h.code for h in hits}) == len(hits), query
        assert {h.code for h in hits} <= set(codes.values())
    many = index.search("身份证")
    assert len(many) > 2
    assert index.search("身份证", limit=2) == many[:2]
    assert index.search("身份证", limit=0) == []


def test_hit_is_a_frozen_dataclass(index):
    hit = index.search("暂住证")[0]
    assert dataclasses.is_dataclass(hit) and isinstance(hit, Hit)
    assert [f.name for f in dataclasses.fields(Hit)] == ["code", "name", "score", "reason"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        hit.score = 0.0  # type: ignore[misc]


def test_reason_names_the_matched_words(index):
    reason = index.search("身份证过期了怎么办")[0].reason
    assert reason.startswith("匹配："), reason
    assert "身份证" in reason and "过期" in reason, reason
    assert "有效期满" in reason, reason  # 过期 reached the item's 有效期满 through the synonym group
    for filler in ("怎么办", "怎么", "了"):
        assert filler not in reason.removeprefix("匹配：").replace("有效期满", ""), reason

    reason = index.search("开个小店要什么手续")[0].reason
    assert "开店" in reason, reason  # found through the character-pair fallback


def test_reason_says_which_synonym_matched(index):
    reason = index.search("二代证到期")[0].reason
    assert "二代证（同义：" in reason and "身份证" in reason, reason


@pytest.mark.parametrize("word, expected", SYNONYM_ONLY, ids=[w for w, _ in SYNONYM_ONLY])
def test_a_synonym_alone_finds_the_item(catalogue, items, codes, index, word, expected):
    item = next(i for i in items if i["name"] == expected)
    assert word not in json.dumps(item, ensure_ascii=False), "pick a word the item never mentions"
    assert any(word in group for group in catalogue.synonyms)

    hits = index.search(word)
    assert hits and hits[0].code == codes[expected], hits
    assert hits[0].score >= SearchIndex.MIN_SCORE
    assert "同义" in hits[0].reason, hits[0].reason


@pytest.mark.parametrize("word", ["二代证", "长者", "支取"])
def test_without_synonym_groups_a_synonym_word_finds_nothing(items, index, word):
    assert index.search(word)[0].score >= SearchIndex.MIN_SCORE
    bare = SearchIndex.build(items, [])
    assert all(h.score < SearchIndex.MIN_SCORE for h in bare.search(word)), bare.search(word)


def test_expanded_terms_weigh_less_than_literal_ones():
    def item(code: str, keyword: str) -> dict:
        return {"code": code, "name": f"事项{code}", "keywords": [keyword], "steps": [{"name": "申请"}]}

    index = SearchIndex.build([item("A", "老人"), item("B", "长者")], [["老人", "长者"]])
    literal, expanded = index.search("长者")
    assert (literal.code, expanded.code) == ("B", "A")
    assert expanded.score == pytest.approx(0.8 * literal.score, rel=0.01)
    assert expanded.reason == "匹配：长者（同义：老人）" and literal.reason == "匹配：长者"


def test_building_twice_gives_the_same_results(items, catalogue, index):
    again = build_from_catalogue_file(DEMO_CATALOGUE)
    direct = SearchIndex.build(items, catalogue.synonyms)
    queries = [q for q, _ in PHRASINGS] + GIBBERISH + [w for w, _ in SYNONYM_ONLY]
    for query in queries:
        first = index.search(query)
        assert again.search(query) == first, query
        assert direct.search(query) == first, query
    assert len(again) == len(items)


def test_the_engine_imports_only_the_standard_library_jieba_and_numpy():
    """It is built from items handed to it, so it never reaches back into the catalogue's use cases."""
    tree = ast.parse((ROOT / "handlers" / "catalog" / "search.py").read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    # A relative import has no module name; "." keeps it, and it is not allowed either.
    imported |= {node.module or "." for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert {name.split(".")[0] for name in imported} <= set(sys.stdlib_module_names) | {"__future__", "jieba", "numpy"}


def test_building_in_a_fresh_process_is_quiet():
    """jieba's "Building prefix dict ..." must not reach stdout (the bot's and server's output)."""
    script = textwrap.dedent(
        """
        from handlers.catalog.publish import DEMO_CATALOGUE
        from handlers.catalog.reader import build_from_catalogue_file
        index = build_from_catalogue_file(DEMO_CATALOGUE)
        build_from_catalogue_file(DEMO_CATALOGUE)
        print(index.search("暂住证")[0].name)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "居住证办理\n"
    assert "prefix dict" not in done.stderr and "Loading model" not in done.stderr, done.stderr


def test_items_without_optional_fields(items):
    """Stored content of older versions may lack fields; building must not fail on them."""
    minimal = [{"code": "X-1", "name": "测试事项", "department_name": ""}, {**items[0], "sub_name": None}]
    index = SearchIndex.build(minimal, [])
    assert index.search("测试事项")[0].code == "X-1"
