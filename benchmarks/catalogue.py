"""Catalogue reads and pre-review: the guide, search and list of services, and
`POST /api/v1/drafts/{id}/review` of the largest demo form (户口迁移, 39 fields).

    .venv/bin/python benchmarks/catalogue.py [--quick] [--duration 10] [--review-connections 8] [--iterations 5000]

What it measures, per backend (embedded, production), on one server (1 worker) after
`server.py load-demo` with the server's environment:

- Catalogue reads with wrk next to `GET /healthz` of the same server (the ratio column): the guide
  of 户口迁移 (`GET /api/v1/services/{code}`, code looked up by name in data/catalogue.yaml), a
  search (`/api/v1/services/search?q=身份证过期了怎么办`) and the list (`/api/v1/services?limit=20`).
  Sent without a token when the catalogue answers without one (the rows say "no token"), else
  with an L3 citizen's bearer token ("token").
- Pre-review: a draft of 户口迁移 holding a complete, valid data set built from the form definition
  (3 members in the repeated step, every field visible at least once, the applicant's material
  uploaded; `POST /review` must answer `ok: true` before and after) and an L1 citizen's empty draft
  (every problem), each `POST /review` with wrk at `--review-connections`, next to `/healthz` at
  the same connections.
- In this process: `handlers.forms.review_form(FormDef, data)` on the same two data sets and
  `FormDef.model_validate` of the stored form (each review request runs it), `--iterations` timed
  calls each (median and p99 µs).
"""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import quote

import harness as h

SECTION = "## Catalogue and pre-review (GET /api/v1/services/{code}, /search, POST /drafts/{id}/review)"
CATALOGUE_FILE = h.ROOT / "data" / "catalogue.yaml"
ITEM_NAME, SEARCH_TEXT, LIST_PATH = "户口迁移", "身份证过期了怎么办", "/api/v1/services?limit=20"
RATE_LIMITS = "login.ip=100000/minute,declare.ip=100000/hour,face.ip=100000/hour"
# The people in the complete 户口迁移 data set (names only; ID numbers are made per run).
APPLICANT, SPOUSE, CHILD, PARENT = "张三丰", "李秀英", "张小禾", "张建国"


def extra(p) -> None:
    p.add_argument("--review-connections", type=int, default=8, help="wrk connections of the review rows (8)")
    p.add_argument("--iterations", type=int, default=5000, help="timed in-process calls (5000)")


def item_code(name: str = ITEM_NAME) -> str:
    import yaml

    raw = yaml.safe_load(CATALOGUE_FILE.read_text(encoding="utf-8"))
    codes = [item["code"] for item in raw["items"] if item["name"] == name]
    if len(codes) != 1:
        raise RuntimeError(f"{CATALOGUE_FILE.name}: {len(codes)} items named {name}")
    return codes[0]


def item_content(code: str) -> dict:
    """The item as the server stores it (`content` of its row): what load-demo publishes."""
    from handlers.catalog.schema import item_content as _item_content
    from handlers.catalog.schema import parse_catalogue

    catalogue = parse_catalogue(CATALOGUE_FILE.read_text(encoding="utf-8"))
    return _item_content(catalogue, next(i for i in catalogue.items if i.code == code))


class People:
    """The applicant (the L3 citizen) and the people the data set names, with their ID numbers."""

    def __init__(self):
        self.applicant_id = h.id_number("19900307", "510502", "male")
        self.spouse_id = h.id_number("19920611", "510521", "female")
        self.child_id = h.id_number("20160901", "510502", "female")
        self.parent_id = h.id_number("19620115", "510521", "male")


def _value_by_type(f) -> Any:
    """A valid value for field definition `f` (handlers.forms.FieldDef), from its type and bounds."""
    t = f.type
    if t in ("text", "textarea"):
        low = f.min_length or 1
        return ("测试填写内容" * 10)[: max(low, min(6, f.max_length or 6))]
    if t == "number":
        return f.min if f.min is not None else 1
    if t == "date":
        return "2020-01-01"
    if t == "select":
        return f.options[0].value
    if t == "multiselect":
        return [f.options[0].value]
    if t == "id_number":
        return h.id_number()
    if t == "phone":
        return "13912345678"
    if t == "region":
        return "510502"
    if t == "address":
        return {"region_code": "510502", "detail": "江阳区酒城大道三段18号"}
    raise RuntimeError(f"no value for a {t} field ({f.key})")  # uscc: not in this form


def complete_data(form, content: dict, people: People, material_ids: dict[str, list[str]] | None = None) -> dict:
    """A complete, valid data set for 户口迁移: every step filled by field type, with the choices
    below so that every field is visible at least once (marriage → spouse fields, joining a
    household → householder fields, mail delivery → mail address; members: an adult spouse and a
    parent, who must consent, the parent in another household, and a minor child) and the form's
    checks hold (from_address in Sichuan, the address in the chosen district, property owners
    naming the applicant and the spouse). Hidden fields are dropped; the applicant's materials are
    attached. Prefilled fields (name, ID number, sex, birth date) get the values the server
    prefills from the declared identity."""
    from handlers.forms.review import visible_paths

    a = people.applicant_id
    chosen: dict[str, Any] = {
        "applicant.name": APPLICANT,
        "applicant.id_number": a,
        "applicant.sex": "male" if int(a[16]) % 2 else "female",
        "applicant.birth_date": f"{a[6:10]}-{a[10:12]}-{a[12:14]}",
        "applicant.phone": "13912345678",
        "applicant.marital": "married",
        "applicant.education": "bachelor",
        "applicant.occupation": "软件工程师",
        "applicant.from_address": {"region_code": "510521", "detail": "泸县福集镇龙城大道88号"},
        "applicant.from_police": "泸县公安局福集派出所",
        "applicant.reason": "marriage",
        "applicant.spouse_name": SPOUSE,
        "applicant.spouse_id_number": people.spouse_id,
        "applicant.marriage_date": "2018-05-20",
        "destination.property_cert_no": "川（2024）泸州市不动产权第0012345号",
        "destination.property_owner": f"{APPLICANT}、{SPOUSE}",
        "destination.acquired_on": "2024-03-15",
        "destination.area": 98.5,
        "destination.region": "510502",
        "destination.address": {"region_code": "510502", "detail": "江阳区酒城大道三段18号2栋1单元301室"},
        "destination.police_station": "jiangyang_nancheng",
        "destination.household": "join",
        "destination.householder_name": SPOUSE,
        "destination.householder_id_number": people.spouse_id,
        "destination.relation_to_householder": "spouse",
        "attachments.delivery": "mail",
        "attachments.mail_address": {"region_code": "510502", "detail": "江阳区酒城大道三段18号2栋1单元301室"},
    }
    members = [
        {
            "name": SPOUSE,
            "id_number": people.spouse_id,
            "relation": "spouse",
            "sex": "female",
            "same_household": "same",
            "consent": "agreed",
        },
        {"name": CHILD, "id_number": people.child_id, "relation": "child", "sex": "female", "same_household": "same"},
        {
            "name": PARENT,
            "id_number": people.parent_id,
            "relation": "parent",
            "sex": "male",
            "same_household": "other",
            "hukou_address": {"region_code": "510521", "detail": "泸县玉蟾街道玉蟾大道16号"},
            "consent": "agreed",
        },
    ]
    data: dict[str, Any] = {}
    for step in form.steps:
        fields = [f for f in step.fields if f.type != "material"]  # materials go under data["materials"]
        if step.repeat is None:
            data[step.key] = {f.key: chosen.get(f"{step.key}.{f.key}", _value_by_type(f)) for f in fields}
        else:
            data[step.key] = [{f.key: entry.get(f.key, _value_by_type(f)) for f in fields} for entry in members]
    visible = visible_paths(form, data)
    for step in form.steps:
        entries = data[step.key] if step.repeat else [data[step.key]]
        for i, entry in enumerate(entries):
            prefix = f"{step.key}.{i}" if step.repeat else step.key
            for key in [k for k in entry if f"{prefix}.{k}" not in visible]:
                del entry[key]
    data["materials"] = {
        m["key"]: (material_ids or {}).get(m["key"], [f"mat-{m['key']}-1"])
        for m in content["materials"]
        if m["source"] == "applicant"
    }
    return data


def scan_jpeg() -> bytes:
    """A generated A4-like JPEG scan (pre-review checks that attachments exist)."""
    import io

    from PIL import Image, ImageDraw

    image = Image.new("RGB", (1240, 1754), (250, 250, 245))
    draw = ImageDraw.Draw(image)
    for y in range(120, 1700, 48):
        draw.line((100, y, 1140, y), fill=(20, 20, 20), width=3)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=88)
    return out.getvalue()


def drafts(s: h.Session, server: h.Zhangban, code: str, form, content: dict) -> tuple[h.Citizen, list[tuple]]:
    """The L3 citizen, and (label, citizen, draft id, problems) of the complete and the empty draft."""
    people = People()
    citizen = h.Citizen(server.base, s.channels)
    citizen.declare(APPLICANT, people.applicant_id)
    citizen.face()
    draft = citizen.call("POST", "/api/v1/drafts", json={"service_code": code})
    needed = [m["key"] for m in content["materials"] if m["source"] == "applicant"]
    uploaded = {
        key: [
            citizen.call(
                "POST",
                "/api/v1/materials",
                data={"kind": key},
                files={"file": (f"{key}.jpg", scan_jpeg(), "image/jpeg")},
            )["id"]
        ]  # fmt: skip
        for key in needed
    }
    data = complete_data(form, content, people, uploaded)
    saved = citizen.call("PATCH", f"/api/v1/drafts/{draft['id']}", json={"version": draft["version"], "data": data})
    if saved["data"] != data:
        raise RuntimeError("the saved draft differs from the data sent (prefill added or changed something)")
    review = citizen.call("POST", f"/api/v1/drafts/{draft['id']}/review")
    if not review["ok"]:
        raise RuntimeError(f"the complete data set has problems: {review['problems']}")
    newcomer = h.Citizen(server.base, s.channels)
    empty = newcomer.call("POST", "/api/v1/drafts", json={"service_code": code})
    empty_review = newcomer.call("POST", f"/api/v1/drafts/{empty['id']}/review")
    return citizen, [
        ("complete", citizen, draft["id"], review["problems"], data),
        ("empty", newcomer, empty["id"], empty_review["problems"], {}),
    ]


def read_rows(s: h.Session, server: h.Zhangban, code: str, citizen: h.Citizen) -> list[h.Row]:
    import httpx

    paths = [
        (f"GET /api/v1/services/{{code}} ({ITEM_NAME})", f"/api/v1/services/{code}"),
        (f"GET /api/v1/services/search?q={SEARCH_TEXT}", f"/api/v1/services/search?q={quote(SEARCH_TEXT)}"),
        (f"GET {LIST_PATH}", LIST_PATH),
    ]
    hits = citizen.call("GET", paths[1][1])["items"]
    if not hits or not citizen.call("GET", LIST_PATH)["items"]:
        raise RuntimeError("the search or the list answered nothing: was the demo catalogue loaded?")
    s.note(f"{server.label}: search: {len(hits)} hit(s), first {hits[0]['name']}")
    ceiling = s.ceiling(server)
    rows = [ceiling]
    for target, path in paths:
        public = httpx.get(server.base + path, timeout=30).status_code == 200
        headers = None if public else citizen.headers
        label = f"{target} ({'no token' if public else 'token'})"
        rows.append(s.wrk(label, server, path, ceiling=ceiling, headers=headers))
    return rows


def review_rows(s: h.Session, server: h.Zhangban, made: list[tuple], connections: int) -> list[h.Row]:
    ceiling = s.ceiling(server, connections=connections)
    rows = [ceiling]
    for label, who, draft_id, problems, _ in made:
        path = f"/api/v1/drafts/{draft_id}/review"
        target = f"POST /api/v1/drafts/{{id}}/review, {label} draft ({len(problems)} problems)"
        rows.append(s.wrk(target, server, path, ceiling=ceiling, headers=who.headers, method="POST",
                          connections=connections))  # fmt: skip
        if who.call("POST", path)["problems"] != problems:
            s.note(f"{target}: the review answered differently after the measurement")
    return rows


def in_process(s: h.Session, content: dict, made: list[tuple], iterations: int) -> list[dict]:
    from handlers.forms.definitions import FormDef
    from handlers.forms.review import review_form

    form = FormDef.model_validate(content["form"])
    h.wait_until_quiet(min(s.args.quiet_wait, max(0.0, s.left())))
    out = []
    for label, *_, data in made:
        median, p99, others = h.time_call(lambda data=data: review_form(form, data), iterations)
        out.append({"data": label, "call": "`review_form(form, data)`", "problems": len(review_form(form, data)),
                    "iterations": iterations, "median µs": median, "p99 µs": p99, "_others": others})  # fmt: skip
    median, p99, others = h.time_call(lambda: FormDef.model_validate(content["form"]), iterations)
    out.append({"data": "—", "call": "`FormDef.model_validate(form dict)`", "problems": None,
                "iterations": iterations, "median µs": median, "p99 µs": p99, "_others": others})  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    args = h.parse_args(__doc__, argv, extra, quick={"iterations": 1000})
    from handlers.forms.definitions import FormDef

    code = item_code()
    content = item_content(code)
    form = FormDef.model_validate(content["form"])
    with h.Session(args, SECTION, "benchmarks/catalogue.py") as s:
        reads, reviews, timings = [], [], []
        for backend in s.backends():
            server = s.zhangban(backend, env={"RATE_LIMITS": RATE_LIMITS})
            try:
                s.note(f"{server.label}: load-demo: {server.prepare()}")
                server.start()
                citizen, made = drafts(s, server, code, form, content)
                reads += read_rows(s, server, code, citizen)
                reviews += review_rows(s, server, made, args.review_connections)
                if not timings:
                    timings = in_process(s, content, made, args.iterations)
            except Exception as exc:  # ours, httpx's, asyncpg's: the row says what went wrong
                reads.append(s.failed_row("catalogue", server.label, exc))
            s.stop(server)
        s.wrk_table(f"Catalogue reads (wrk `-c{args.connections}`):", reads)
        s.wrk_table(
            f"Pre-review of {ITEM_NAME} ({form.field_count()} fields) over HTTP (wrk `-c{args.review_connections}`; "
            f"the ratio is to `/healthz` at `-c{args.review_connections}` on the same server):",
            reviews,
        )
        s.table("Pre-review in this process (the same form and data):", timings, {"median µs": 1, "p99 µs": 1})
        return s.finish(
            [
                "Servers: `server.py serve`, 1 worker, `LOG_LEVEL=WARNING`, after `server.py load-demo` with the "
                f"same environment, `RATE_LIMITS={RATE_LIMITS}` so the set-up sign-ins are not limited, every "
                "channel configured against the simulators.",
                f"Reads: `wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency` after a "
                f"{args.warmup} s warm-up; *no token* when the route answers 200 without one, else the L3 "
                "citizen's `Authorization: Bearer` header.",
                "Pre-review: the same wrk command with a one-line Lua script making it a POST; the *complete* draft "
                "belongs to an L3 citizen (every field visible at least once, 3 members, the applicant's material "
                "uploaded, `ok: true`), the *empty* one to an L1 citizen (nothing prefilled).",
                "In process: one call at a time with `time.perf_counter_ns` after a tenth as many unmeasured calls.",
            ]
        )


if __name__ == "__main__":
    sys.exit(main())
