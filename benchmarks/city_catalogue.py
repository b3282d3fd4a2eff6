"""A city-scale synthetic catalogue (issue 16, item 6), and the search engine measured on it.

A real city lists thousands of items. `generate(n)` makes `n` items drawn from the shapes of the
demo catalogue's twelve (`data/catalogue.yaml`): each synthetic item copies a demo item's structure
(steps, materials, form, fee, flags) and gets a name built from a city's vocabulary of subjects,
objects and actions ("退役军人 优待证 补办", "食品经营许可 变更"), with aliases, keywords, a summary
and a department of its own. The output validates against the catalogue schema and can be
published with `server.py import-catalogue`.

    .venv/bin/python benchmarks/city_catalogue.py --items 5000 --write var/city-5000.yaml
    .venv/bin/python benchmarks/city_catalogue.py --items 5000            # measure search in-process

Measured in-process (no HTTP): the index build time, the index's memory (tracemalloc: what the
build allocated and kept), and the time per query over a mixed query set (the demo questions, the
generated items' names, aliases and everyday phrasings), p50 / p95 / p99 / max.
"""

from __future__ import annotations

import argparse
import copy
import gc
import random
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from handlers.catalog.schema import item_content, parse_catalogue  # noqa: E402
from handlers.catalog.search import SearchIndex  # noqa: E402

DEMO = ROOT / "data" / "catalogue.yaml"

SUBJECTS = [
    "个人",
    "企业",
    "个体工商户",
    "农民专业合作社",
    "退役军人",
    "残疾人",
    "老年人",
    "学生",
    "职工",
    "灵活就业人员",
    "外来务工人员",
    "港澳台居民",
    "外国人",
    "社会组织",
    "民办学校",
    "医疗机构",
    "养老机构",
    "建筑企业",
    "物业企业",
    "律师事务所",
    "出租车驾驶员",
    "网约车平台",
    "渔船",
    "农机",
    "种子企业",
    "药品零售企业",
    "旅行社",
    "娱乐场所",
]
OBJECTS = [
    ("养老保险", "hrss", "social_security"),
    ("失业保险金", "hrss", "social_security"),
    ("就业创业补贴", "hrss", "social_security"),
    ("职业技能等级证书", "hrss", "social_security"),
    ("医疗保险", "nhsa", "social_security"),
    ("异地就医备案", "nhsa", "social_security"),
    ("门诊慢特病待遇", "nhsa", "social_security"),
    ("住房公积金", "hpf", "housing"),
    ("公租房", "hpf", "housing"),
    ("不动产权证书", "rec", "property"),
    ("抵押登记", "rec", "property"),
    ("食品经营许可", "amr", "business"),
    ("营业执照", "amr", "business"),
    ("特种设备使用登记", "amr", "business"),
    ("出生医学证明", "hwc", "birth"),
    ("母婴保健技术服务许可", "hwc", "birth"),
    ("预防接种证", "hwc", "birth"),
    ("居住证", "psb", "identity"),
    ("户口迁移", "psb", "household"),
    ("机动车驾驶证", "psb", "transport"),
    ("机动车登记", "psb", "transport"),
    ("老年人优待证", "hrss", "elderly"),
    ("高龄津贴", "hrss", "elderly"),
    ("道路运输经营许可", "amr", "transport"),
    ("排污许可", "amr", "business"),
    ("建设工程规划许可", "rec", "property"),
    ("消防安全检查", "psb", "business"),
    ("卫生许可证", "hwc", "business"),
    ("取水许可", "rec", "business"),
    ("林木采伐许可", "rec", "property"),
]
ACTIONS = [
    ("申领", "首次申请"),
    ("补办", "遗失或损坏后补领"),
    ("变更", "登记事项发生变化"),
    ("注销", "不再需要时注销"),
    ("延续", "有效期届满前延续"),
    ("查询", "查询办理记录"),
    ("认定", "资格认定"),
    ("备案", "事后备案"),
    ("转移接续", "跨地区转移"),
    ("核准", "审核批准"),
    ("年度审验", "年度审验"),
    ("待遇申领", "申领待遇"),
]
DISTRICTS = ["江阳区", "纳溪区", "龙马潭区", "泸县", "合江县", "叙永县", "古蔺县"]
EVERYDAY = {
    "补办": ["{obj}丢了怎么办", "{obj}丢失了去哪补"],
    "申领": ["怎么办{obj}", "第一次办{obj}要带什么"],
    "变更": ["{obj}信息写错了怎么改"],
    "注销": ["{obj}不用了怎么注销"],
    "延续": ["{obj}快到期了"],
    "查询": ["查一下我的{obj}"],
    "转移接续": ["换城市了{obj}怎么转"],
    "待遇申领": ["{obj}怎么领钱"],
}


def generate(n: int, seed: int = 20261130) -> tuple[dict, list[str]]:
    """A catalogue of `n` items (the demo's shared part, synthetic items) and queries for it."""
    rng = random.Random(seed)
    demo = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    bases = [item for item in demo["items"]]
    catalogue = {key: value for key, value in demo.items() if key not in ("items", "bundles")}
    items, queries, names = [], [], set()
    i = 0
    while len(items) < n:
        i += 1
        subject = rng.choice(SUBJECTS)
        obj, department, theme = rng.choice(OBJECTS)
        action, action_note = rng.choice(ACTIONS)
        district = rng.choice(DISTRICTS) if rng.random() < 0.5 else ""
        name = f"{district}{subject}{obj}{action}"
        if name in names:
            continue
        names.add(name)
        base = copy.deepcopy(bases[i % len(bases)])
        base.update(
            code=f"510500000000-9{len(items):05d}{rng.randrange(1000):03d}",
            name=name,
            sub_name=action_note,
            department=department,
            themes=[theme],
            aliases=[f"{obj}{action}", f"{subject}办{obj}", *(p.format(obj=obj) for p in EVERYDAY.get(action, []))][:4],
            keywords=[obj, action, subject] + ([district] if district else []),
            summary=f"{district or '泸州市'}{subject}办理{obj}{action}（{action_note}）。",
        )
        items.append(base)
        if rng.random() < 0.02:
            queries += [name, *base["aliases"][2:3], f"{subject}{obj}"]
    catalogue["items"] = items
    queries += [
        "身份证过期了怎么办",
        "公积金怎么取",
        "生孩子要办什么",
        "开个小店",
        "驾证到期",
        "医保卡丢了",
        "老人优待证",
        "无房证明",
        "迁户口",
        "营业执照变更",
        "失业金怎么领",
        "异地就医",
        "租房子提取公积金",
    ]
    return catalogue, queries


def measure(catalogue: dict, queries: list[str], rounds: int) -> dict:
    parsed = parse_catalogue(yaml.safe_dump(catalogue, allow_unicode=True), trusted=True)
    contents = [item_content(parsed, item) for item in parsed.items]
    SearchIndex.build(contents[:50], parsed.synonyms)  # jieba's dictionary loads once per process
    gc.collect()
    tracemalloc.start()
    started = time.perf_counter()
    index = SearchIndex.build(contents, parsed.synonyms)
    build_s = time.perf_counter() - started
    kept, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    times = []
    for _ in range(rounds):
        for query in queries:
            t0 = time.perf_counter()
            index.search(query, limit=10)
            times.append((time.perf_counter() - t0) * 1000)
    times.sort()

    def q(p: float) -> float:
        return times[min(len(times) - 1, int(p * len(times)))]

    return {
        "items": len(contents),
        "build_s": build_s,
        "index_mib": kept / 2**20,
        "build_peak_mib": peak / 2**20,
        "queries": len(queries),
        "searches": len(times),
        "p50": statistics.median(times),
        "p95": q(0.95),
        "p99": q(0.99),
        "max": times[-1],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--write", help="write the catalogue YAML here instead of measuring")
    parser.add_argument("--rounds", type=int, default=5, help="times each query is run")
    args = parser.parse_args()
    catalogue, queries = generate(args.items)
    if args.write:
        Path(args.write).parent.mkdir(parents=True, exist_ok=True)
        Path(args.write).write_text(yaml.safe_dump(catalogue, allow_unicode=True, sort_keys=False), encoding="utf-8")
        print(f"{args.items} items written to {args.write}")
        return 0
    r = measure(catalogue, queries, args.rounds)
    print(
        "| items | index build s | index MiB (kept) | build peak MiB | queries x rounds | p50 ms | p95 ms | p99 ms | max ms |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(
        f"| {r['items']:,} | {r['build_s']:.2f} | {r['index_mib']:.1f} | {r['build_peak_mib']:.1f} | "
        f"{r['queries']} x {args.rounds} | {r['p50']:.3f} | {r['p95']:.3f} | {r['p99']:.3f} | {r['max']:.3f} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
