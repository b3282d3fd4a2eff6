"""Catalogue and pre-review benchmark: the service guide, search and list against `GET /healthz`,
and the pre-review (一次性告知) of the largest demo form, over HTTP and in process.

    .venv/bin/python benchmarks/catalogue.py [--duration 10] [--review-connections 8] [--iterations 5000]

One run, two backends, each a fresh `server.py serve` with 1 worker and `LOG_LEVEL=WARNING` on a
free 127.0.0.1 port, after `server.py load-demo` with exactly the same environment (the demo
catalogue, data/catalogue.yaml), both pointed at one WeChat simulator running as its own process:

- *embedded*: the default (SQLite in the server's temporary directory, fakeredis, memory broker);
- *production*: a fresh PostgreSQL database created (and dropped) on
  postgresql://postgres@127.0.0.1:5432/test, REDIS_URL=redis://127.0.0.1:6379/0 with a throw-away
  REDIS_KEY_PREFIX, random SECRET_KEY and FIELD_ENCRYPTION_KEY, TASK_BROKER=memory.

`RATE_LIMITS` raises the login, declare and face limits per IP so the set-up sign-ins are not
limited. On each server an L3 citizen (signed in, real name declared, face check passed) and an
L1 citizen (signed in only) are made. wrk, with the L3 citizen's bearer token, measures
`GET /healthz` (the ceiling), the guide of 户口迁移 (`GET /api/v1/services/{code}`, the code looked
up by name in the catalogue file), a search (`GET /api/v1/services/search?q=身份证过期了怎么办`) and
the list (`GET /api/v1/services?limit=20`), all with the same command. Then pre-review of 户口迁移
(39 fields, the largest demo form): the L3 citizen's draft holds a complete, valid data set built
from the form definition (3 members in the repeated step), the L1 citizen's draft is empty (every
problem); `POST /api/v1/drafts/{id}/review` of each is measured with wrk (`-s` a Lua script making
it a POST, `--review-connections` connections), next to `/healthz` with the same connections.
Finally `handlers.forms.review_form(FormDef, data)` is timed in this process for the same two data
sets (and `FormDef.model_validate`, which each review request runs too), so the HTTP overhead and
the pure review cost are both visible.

Results are printed and written to the `## Catalogue and pre-review (...)` section of
benchmarks/RESULTS.md; other sections are kept. The server, simulator, wrk, CPU-noise and report
plumbing is shared with benchmarks/http_baseline.py and benchmarks/identity.py. Exit codes: 0 done,
1 a measurement failed, 2 wrk missing or bad arguments, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))
import http_baseline as hb  # noqa: E402  (the shared benchmark plumbing)
import identity as idb  # noqa: E402  (server with extra settings, simulator, citizen, wrk rows, CPU watch)

ROOT = hb.ROOT
HOST = hb.HOST
SECTION = "## Catalogue and pre-review (GET /api/v1/services/{code}, /search, POST /drafts/{id}/review)"
CATALOGUE_FILE = ROOT / "data" / "catalogue.yaml"
ITEM_NAME = "户口迁移"
SEARCH_TEXT = "身份证过期了怎么办"
LIST_PATH = "/api/v1/services?limit=20"
RATE_LIMITS = "login.ip=100000/minute,declare.ip=100000/hour,face.ip=100000/hour"
EMBEDDED, PRODUCTION = idb.EMBEDDED, idb.PRODUCTION
BACKENDS = [EMBEDDED, PRODUCTION]

# The people in the complete 户口迁移 data set (names only; ID numbers are made per run).
APPLICANT, SPOUSE, CHILD, PARENT = "张三丰", "李秀英", "张小禾", "张建国"


def _import_app() -> None:
    """Makes the project importable here (forms, catalogue parsing) for the in-process part."""
    if str(ROOT) not in sys.path:
        sys.path.append(str(ROOT))


# -- processes ---------------------------------------------------------------------------------


class CatalogueServer(idb.IdentityServer):
    """identity.py's server; its environment is made once, so `cli("load-demo")` and `serve` share
    the same random SECRET_KEY / FIELD_ENCRYPTION_KEY, database and Redis prefix."""

    _made: tuple[list[str], dict[str, str]] | None = None

    def _command_and_env(self) -> tuple[list[str], dict[str, str]]:
        if self._made is None:
            self._made = super()._command_and_env()
        return self._made

    def cli(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """`python server.py <argv>` in the server's directory, with the server's environment."""
        cmd, env = self._command_and_env()
        return subprocess.run(
            cmd[:2] + list(argv),
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@contextlib.contextmanager
def wrk_script(path: Path):
    """identity.measure_wrk with `-s path` added to each of its wrk commands (warm-up and measured).

    measure_wrk builds its commands through identity.wrk_cmd; wrapping that for the duration keeps
    its whole warm-up / CPU-watch / retry logic instead of a copy of it."""
    original = idb.wrk_cmd

    def with_script(*a, **k) -> list[str]:
        cmd = original(*a, **k)
        return cmd[:-1] + ["-s", str(path)] + cmd[-1:]

    idb.wrk_cmd = with_script
    try:
        yield
    finally:
        idb.wrk_cmd = original


def with_connections(args: argparse.Namespace, connections: int) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "connections": connections})


# -- the catalogue -----------------------------------------------------------------------------


def item_code(name: str = ITEM_NAME) -> str:
    """The code of the item called `name` in data/catalogue.yaml."""
    import yaml

    raw = yaml.safe_load(CATALOGUE_FILE.read_text(encoding="utf-8"))
    codes = [item["code"] for item in raw["items"] if item["name"] == name]
    if len(codes) != 1:
        raise RuntimeError(f"{CATALOGUE_FILE.name}: {len(codes)} items named {name}")
    return codes[0]


def item_content(code: str) -> dict:
    """The item as the server stores it (`content` of its row): what load-demo publishes."""
    _import_app()
    from handlers.catalog.schema import item_content as _item_content
    from handlers.catalog.schema import parse_catalogue

    catalogue = parse_catalogue(CATALOGUE_FILE.read_text(encoding="utf-8"))
    item = next(i for i in catalogue.items if i.code == code)
    return _item_content(catalogue, item)


# -- the complete data set ---------------------------------------------------------------------


def id_with_sex(birth: str, region: str, sex: str) -> str:
    """A valid ID number (identity.id_number) whose 17th digit gives `sex`."""
    while True:
        number = idb.id_number(birth=birth, region=region)
        if (int(number[16]) % 2 == 1) == (sex == "male"):
            return number


@dataclass
class People:
    """The applicant (the L3 citizen) and the people the data set names, with their ID numbers."""

    applicant_id: str = field(default_factory=lambda: id_with_sex("19900307", "510502", "male"))
    spouse_id: str = field(default_factory=lambda: id_with_sex("19920611", "510521", "female"))
    child_id: str = field(default_factory=lambda: id_with_sex("20160901", "510502", "female"))
    parent_id: str = field(default_factory=lambda: id_with_sex("19620115", "510521", "male"))


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
        return idb.id_number()
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


def upload_scan(c, key: str) -> str:
    """A real uploaded material (a generated A4-like JPEG scan), since pre-review checks attachments exist."""
    import io

    from PIL import Image, ImageDraw

    image = Image.new("RGB", (1240, 1754), (250, 250, 245))
    draw = ImageDraw.Draw(image)
    for y in range(120, 1700, 48):
        draw.line((100, y, 1140, y), fill=(20, 20, 20), width=3)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=88)
    response = c.post(
        "/api/v1/materials", data={"kind": key}, files={"file": (f"{key}.jpg", out.getvalue(), "image/jpeg")}
    )
    if response.status_code not in (200, 201):
        raise RuntimeError(f"upload of {key} failed: {response.status_code} {response.text}")
    return response.json()["id"]


# -- citizens ----------------------------------------------------------------------------------


def sign_in(server: CatalogueServer, sim: idb.Simulator) -> idb.Citizen:
    import httpx

    minted = sim.control("login-code", {"appid": idb.SIM_APPID})
    login = httpx.post(server.base + idb.LOGIN_PATH, json={"code": minted["code"]}, timeout=30)
    if login.status_code != 200:
        raise RuntimeError(f"set-up login answered {login.status_code}: {login.text[:200]}")
    return idb.Citizen(server.base, login.json())


def make_l3(server: CatalogueServer, sim: idb.Simulator, people: People) -> idb.Citizen:
    """Signs a citizen in, declares the applicant's name and ID number, passes the face check."""
    import httpx

    citizen = sign_in(server, sim)
    with httpx.Client(base_url=server.base, timeout=30, headers={"Authorization": f"Bearer {citizen.access}"}) as c:
        declared = c.post("/api/v1/identity/declare", json={"name": APPLICANT, "id_number": people.applicant_id})
        if declared.status_code != 200:
            raise RuntimeError(f"set-up declare answered {declared.status_code}: {declared.text[:200]}")
        start = c.post("/api/v1/identity/face/start")
        if start.status_code != 200:
            raise RuntimeError(f"set-up face/start answered {start.status_code}: {start.text[:200]}")
        verify_id = start.json()["verify_id"]
        sim.control("face/complete", {"verify_id": verify_id, "verify_ret": 10000})
        finished = c.post("/api/v1/identity/face/finish", json={"verify_id": verify_id})
        if finished.status_code != 200 or c.get(idb.ME_PATH).json().get("identity_level") != "L3":
            raise RuntimeError(f"set-up face/finish answered {finished.status_code}: {finished.text[:200]}")
    return citizen


# -- one backend -------------------------------------------------------------------------------


@dataclass
class Draft:
    label: str  # "complete" or "empty"
    draft_id: str
    citizen: idb.Citizen
    data: dict
    problems: list[dict]  # what POST /review answered before measuring
    problems_after: list[dict] | None = None  # ... and after


@dataclass
class CatalogueRun(idb.BackendRun):
    load_demo: str | None = None
    search_top: str | None = None
    listed: int | None = None  # items GET /api/v1/services?limit=20 answered
    drafts: list[Draft] = field(default_factory=list)


def request(c, method: str, path: str, expect: int, **kw) -> Any:
    response = c.request(method, path, **kw)
    if response.status_code != expect:
        raise RuntimeError(f"set-up {method} {path} answered {response.status_code}: {response.text[:300]}")
    return response.json()


def read_targets(code: str) -> list[tuple[str, str]]:
    """(row label, path) of the wrk rows at --connections, /healthz first."""
    return [
        ("GET /healthz", "/healthz"),
        (f"GET /api/v1/services/{{code}} ({ITEM_NAME})", f"/api/v1/services/{code}"),
        (f"GET /api/v1/services/search?q={SEARCH_TEXT}", f"/api/v1/services/search?q={quote(SEARCH_TEXT)}"),
        (f"GET {LIST_PATH}", LIST_PATH),
    ]


def review_label(draft: Draft) -> str:
    return f"POST /api/v1/drafts/{{id}}/review, {draft.label} draft ({len(draft.problems)} problems)"


def prepare(
    server: CatalogueServer, sim: idb.Simulator, code: str, form, content: dict, run: CatalogueRun, people: People
) -> tuple[idb.Citizen, list[Draft]]:
    """The citizens, the checks that every target answers what it should, and the two drafts."""
    import httpx

    from handlers.forms.definitions import FormDef

    citizen = make_l3(server, sim, people)
    newcomer = sign_in(server, sim)
    with httpx.Client(base_url=server.base, timeout=30, headers={"Authorization": f"Bearer {citizen.access}"}) as c:
        guide = request(c, "GET", f"/api/v1/services/{code}", 200)
        if guide["name"] != ITEM_NAME or FormDef.model_validate(guide["form"]).field_count() != form.field_count():
            raise RuntimeError(f"the guide of {code} is not the {ITEM_NAME} of the catalogue file")
        hits = request(c, "GET", f"/api/v1/services/search?q={quote(SEARCH_TEXT)}", 200)["items"]
        if not hits:
            raise RuntimeError(f"search for {SEARCH_TEXT} found nothing")
        run.search_top = f"{len(hits)} hit(s), first {hits[0]['name']} (score {hits[0]['score']:.1f})"
        listed = request(c, "GET", LIST_PATH, 200)["items"]
        if not listed:
            raise RuntimeError("the service list is empty: was the demo catalogue loaded?")
        run.listed = len(listed)

        draft = request(c, "POST", "/api/v1/drafts", 201, json={"service_code": code})
        needed = [m["key"] for m in content["materials"] if m["source"] == "applicant"]
        data = complete_data(form, content, people, {key: [upload_scan(c, key)] for key in needed})
        saved = request(
            c, "PATCH", f"/api/v1/drafts/{draft['id']}", 200, json={"version": draft["version"], "data": data}
        )
        if saved["data"] != data:  # the prefilled values are the ones we send: nothing else is merged in
            raise RuntimeError("the saved draft differs from the data sent (prefill added or changed something)")
        review = request(c, "POST", f"/api/v1/drafts/{draft['id']}/review", 200)
        if not review["ok"]:
            raise RuntimeError(f"the complete data set has problems: {review['problems']}")
        complete = Draft("complete", draft["id"], citizen, data, review["problems"])
    with httpx.Client(base_url=server.base, timeout=30, headers={"Authorization": f"Bearer {newcomer.access}"}) as c:
        draft = request(c, "POST", "/api/v1/drafts", 201, json={"service_code": code})
        if draft["data"] != {}:
            raise RuntimeError(f"an L1 citizen's draft is prefilled: {draft['data']}")
        review = request(c, "POST", f"/api/v1/drafts/{draft['id']}/review", 200)
        empty = Draft("empty", draft["id"], newcomer, {}, review["problems"])
    return citizen, [complete, empty]


def recheck(server: CatalogueServer, draft: Draft) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {draft.citizen.access}"}
    response = httpx.post(f"{server.base}/api/v1/drafts/{draft.draft_id}/review", headers=headers, timeout=30)
    draft.problems_after = response.json().get("problems") if response.status_code == 200 else None


def run_backend(
    backend: str,
    workdir: Path,
    prefix: str,
    sim: idb.Simulator,
    code: str,
    form,
    content: dict,
    script: Path,
    args: argparse.Namespace,
    servers: list[CatalogueServer],
) -> CatalogueRun:
    run = CatalogueRun(backend)
    extra = {
        "WECHAT_API_BASE": sim.url,
        "WECHAT_MP_APPID": idb.SIM_APPID,
        "WECHAT_MP_SECRET": idb.SIM_SECRET,
        "RATE_LIMITS": RATE_LIMITS,
    }
    db_name = None
    production = backend == PRODUCTION
    labels = [label for label, _ in read_targets(code)]
    if production:
        db_name = f"zbbench_{secrets.token_hex(4)}"
        try:
            asyncio.run(idb._pg(f'CREATE DATABASE "{db_name}"'))
        except Exception as exc:
            why = f"could not create the database: {type(exc).__name__}: {exc}".splitlines()[0][:160]
            print(f"  FAILED: {why}", file=sys.stderr)
            run.rows = [idb.Row(t, backend, failed=why) for t in labels + ["POST /api/v1/drafts/{id}/review"]]
            return run
        extra.update(DATABASE_URL=idb.pg_url_for(db_name), TASK_BROKER="memory")
    server = CatalogueServer(hb.Target(backend, "zhangban", 1, redis=production), workdir, prefix, extra)
    servers.append(server)
    try:
        loaded = server.cli("load-demo")
        run.load_demo = (loaded.stdout.strip() or loaded.stderr.strip()).splitlines()[-1:] or ["(no output)"]
        run.load_demo = run.load_demo[0]
        if loaded.returncode != 0:
            raise RuntimeError(f"load-demo exited {loaded.returncode}: {loaded.stderr.strip()[-300:]}")
        print(f"- {backend}: load-demo: {run.load_demo}; starting on port {server.port}", flush=True)
        run.start_s = server.start()
        print(f"  answering after {run.start_s:.1f} s; setting up the citizens and the drafts", flush=True)
        citizen, drafts = prepare(server, sim, code, form, content, run, people=People())
        run.drafts = drafts
        print(
            f"  search: {run.search_top}; complete draft: {len(drafts[0].problems)} problems, "
            f"empty draft: {len(drafts[1].problems)} problems",
            flush=True,
        )
        groups = {"server": server.proc.pid, "simulator": sim.proc.pid}
        services = idb.production_services(db_name) if production else None

        def watch_cpu() -> idb.CpuWatch:
            return idb.CpuWatch(groups, services)

        healthz = None
        for label, path in read_targets(code):
            row = idb.measure_wrk(label, backend, server.base + path, citizen, watch_cpu, args)
            healthz = healthz or row
            row.ratio = row.rps / healthz.rps if row.rps and healthz.rps else None
            run.rows.append(row)
        narrow = with_connections(args, args.review_connections)
        ceiling = idb.measure_wrk(
            f"GET /healthz (-c{args.review_connections})", backend, f"{server.base}/healthz", citizen, watch_cpu, narrow
        )
        ceiling.ratio = 1.0 if ceiling.rps else None
        run.rows.append(ceiling)
        with wrk_script(script):
            for draft in drafts:
                url = f"{server.base}/api/v1/drafts/{draft.draft_id}/review"
                row = idb.measure_wrk(review_label(draft), backend, url, draft.citizen, watch_cpu, narrow)
                row.ratio = row.rps / ceiling.rps if row.rps and ceiling.rps else None
                run.rows.append(row)
                recheck(server, draft)
                if draft.problems_after != draft.problems:
                    row.notes.append("the review answered differently after the measurement")
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        why = str(exc).splitlines()[0][:160]
        print(f"  FAILED: {exc}", file=sys.stderr)
        for line in server.log_path.read_text(errors="replace").splitlines()[-20:] if server.log_path.exists() else []:
            print(f"  | {line}", file=sys.stderr)
        if not run.rows:
            run.rows = [idb.Row(t, backend, failed=why) for t in labels + ["POST /api/v1/drafts/{id}/review"]]
        else:
            run.rows.append(idb.Row("(the rest)", backend, failed=why))
    finally:
        run.stop_s = server.stop()
        servers.remove(server)
        run.log_problems = server.log_problems()
        server.keep_log(args.keep_logs)
        if db_name:
            try:
                asyncio.run(idb._pg(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
                run.cleanup.append(f"dropped PostgreSQL database {db_name}")
            except Exception as exc:
                run.cleanup.append(f"could not drop PostgreSQL database {db_name}: {type(exc).__name__}: {exc}")
        if production:
            run.cleanup.append(hb.delete_redis_keys(prefix))
        for line in run.cleanup:
            print(f"  {line}", flush=True)
        for line in run.log_problems[:5]:
            print(f"  log: {line[:300]}")
        if len(run.log_problems) > 5:
            print(f"  log: ... {len(run.log_problems) - 5} more problem line(s)")
    return run


# -- in process --------------------------------------------------------------------------------


@dataclass
class Timing:
    data: str  # "complete", "empty", "—"
    call: str
    problems: int | None
    iterations: int
    median_us: float
    p99_us: float
    others_cpu: float = 0.0


def time_call(fn, iterations: int) -> tuple[float, float, float]:
    """(median µs, p99 µs, share of the CPU used by other processes) of `fn()` over `iterations`
    calls, after iterations // 10 unmeasured ones (garbage collection left on, as in the server)."""
    for _ in range(max(50, iterations // 10)):
        fn()
    samples = []
    clock = time.perf_counter_ns
    with idb.CpuWatch({}) as watch:
        for _ in range(iterations):
            began = clock()
            fn()
            samples.append(clock() - began)
    samples.sort()
    return idb.percentile(samples, 50) / 1000, idb.percentile(samples, 99) / 1000, watch.others()


def measure_in_process(content: dict, data_sets: dict[str, dict], args: argparse.Namespace) -> list[Timing]:
    from handlers.forms.definitions import FormDef
    from handlers.forms.review import review_form

    raw_form = content["form"]
    form = FormDef.model_validate(raw_form)
    if args.quiet_wait > 0:
        hb.wait_until_quiet(args.quiet_wait)
    gc.collect()
    timings = []
    for name, data in data_sets.items():
        problems = len(review_form(form, data))
        median, p99, others = time_call(lambda data=data: review_form(form, data), args.iterations)
        timings.append(
            Timing(name, "handlers.forms.review_form(form, data)", problems, args.iterations, median, p99, others)
        )
    median, p99, others = time_call(lambda: FormDef.model_validate(raw_form), args.iterations)
    timings.append(
        Timing(
            "—",
            "FormDef.model_validate(form dict) (each review request runs it)",
            None,
            args.iterations,
            median,
            p99,
            others,
        )
    )
    for t in timings:
        print(
            f"  {t.call} [{t.data}]: median {t.median_us:,.1f} µs, p99 {t.p99_us:,.1f} µs"
            f"{'' if t.problems is None else f', {t.problems} problems'}; other processes used "
            f"{t.others_cpu:.0%} of the CPU",
            flush=True,
        )
    return timings


# -- report ------------------------------------------------------------------------------------


def timing_table(timings: list[Timing]) -> list[str]:
    lines = [
        "| data | call | problems | iterations | median µs | p99 µs |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for t in timings:
        lines.append(
            f"| {t.data} | `{t.call}` | {'—' if t.problems is None else t.problems} | {t.iterations:,} | "
            f"{t.median_us:,.1f} | {t.p99_us:,.1f} |"
        )
    return lines


def section(
    runs: list[CatalogueRun],
    timings: list[Timing],
    timing_failed: str | None,
    sim_problems: list[str],
    form,
    code: str,
    args: argparse.Namespace,
    machine: str,
    when: str,
) -> str:
    from handlers.forms.review import visible_paths

    url = f"http://{HOST}:PORT"
    header = "Authorization: Bearer TOKEN"
    read_cmd = " ".join(shlex.quote(p) for p in idb.wrk_cmd(args, url + "/PATH", args.duration, header))
    narrow = with_connections(args, args.review_connections)
    review_cmd = idb.wrk_cmd(narrow, url + "/api/v1/drafts/ID/review", args.duration, header)
    review_cmd = " ".join(shlex.quote(p) for p in review_cmd[:-1] + ["-s", "post.lua"] + review_cmd[-1:])
    warmup = " ".join(shlex.quote(p) for p in idb.wrk_cmd(args, url + "/PATH", args.warmup, header, latency=False))
    reads = [r for run in runs for r in run.rows if not r.target.startswith(("POST", "GET /healthz (-c"))]
    reviews = [r for run in runs for r in run.rows if r.target.startswith(("POST", "GET /healthz (-c"))]
    steps = ", ".join(f"{s.key} {len(s.fields)}" for s in form.steps)
    complete = next((d for run in runs for d in run.drafts if d.label == "complete"), None)
    visible = len({p for p in visible_paths(form, complete.data) if "." in p}) if complete else None
    empty_counts = ", ".join(
        f"{run.backend}: {len(d.problems)}" for run in runs for d in run.drafts if d.label == "empty"
    )
    body = [
        SECTION,
        "",
        f"Measured {when} by `.venv/bin/python benchmarks/catalogue.py`.",
        "",
        f"Catalogue reads (wrk `-c{args.connections}`, L3 citizen's bearer token on every row):",
        "",
        *idb.table(reads),
        "",
        f"Pre-review of {ITEM_NAME} over HTTP (wrk `-c{args.review_connections}`; the ratio is to `/healthz` at "
        f"`-c{args.review_connections}` on the same server):",
        "",
        *idb.table(reviews),
        "",
        f"Pre-review in this process (the same form and data; {args.iterations:,} timed calls each):",
        "",
        *(timing_table(timings) if timings else [f"not measured: {timing_failed}"]),
        "",
        "- Servers: `server.py serve`, 1 worker, `LOG_LEVEL=WARNING`, each started fresh on a free 127.0.0.1 port "
        "in an empty temporary directory after `server.py load-demo` with the same environment (the demo catalogue "
        "`data/catalogue.yaml`), pointed at one WeChat simulator running as its own process "
        "(`python -m wechat.simulator`), with "
        f"`RATE_LIMITS={RATE_LIMITS}` so the set-up sign-ins are not limited. *{EMBEDDED}*: the default, SQLite "
        f"under the temporary `var/`, fakeredis, memory broker. *{PRODUCTION}*: a fresh database created on "
        f"`{idb.PG_ADMIN_URL}` and dropped afterwards, `REDIS_URL={hb.REDIS_URL}` with a throw-away "
        "`REDIS_KEY_PREFIX` (its keys deleted afterwards), random `SECRET_KEY` and `FIELD_ENCRYPTION_KEY`, "
        "`TASK_BROKER=memory`.",
        f"- Reads: `{read_cmd}` for each path (`/healthz`, `/api/v1/services/{code}` = {ITEM_NAME} looked up by name "
        f"in the catalogue file, `/api/v1/services/search?q={quote(SEARCH_TEXT)}` = {SEARCH_TEXT}, "
        f"`{LIST_PATH}`), each after a warm-up `{warmup}`. The guide and the list are served from the catalogue "
        "cache in (fake)redis per catalogue revision; search goes through the in-process index (jieba + BM25). "
        "Every `/api/v1` request also looks up the bearer token and reads the user. The ratio is requests/s "
        "divided by that backend's `/healthz` requests/s. "
        + "Search answered: "
        + "; ".join(f"{run.backend}: {run.search_top}" for run in runs if run.search_top)
        + "; the list: "
        + "; ".join(f"{run.backend}: {run.listed} items" for run in runs if run.listed)
        + ".",
        f'- Pre-review: `{review_cmd}` where `post.lua` is `wrk.method = "POST"` (an empty body), after the same '
        f"warm-up with the script. The form of {ITEM_NAME} has {form.field_count()} fields "
        f"(`FormDef.field_count()`; steps: {steps}; {len(form.checks)} checks). The *complete* draft belongs to an "
        "L3 citizen and holds a valid data set built from the form definition (every field filled by type, "
        "with the choices that show the spouse, householder and mail-address fields; "
        f"{len(complete.data['members']) if complete else 3} members: an adult spouse and parent, who must consent, "
        "the parent with a different household address, and a minor child: "
        f"{visible if visible is not None else '—'} visible field paths, each member's counted and the material fields "
        "included, so every one of the fields is visible at least once; the form's checks hold; the "
        "applicant's material `application_form` attached); the script checks that `POST /review` answers "
        "`ok: true` before and after measuring. The *empty* draft belongs to an L1 citizen (signed in only, so "
        "nothing is prefilled): every required field, the missing material and the identity level are problems "
        f"({empty_counts or '—'} over HTTP). Each review request reads the token, the user, the draft and the item "
        "rows, decrypts the draft, validates the form definition (`FormDef.model_validate`) and runs "
        "`review_form` plus the material, region and identity checks.",
        "- In process: `handlers.forms.review_form(FormDef, data)` on the same data sets (the form as the "
        "server stores it; the complete data set is exactly what the draft held; the empty one is `{}`, so its "
        "problem count lacks the material and identity problems the server adds), timed one call at a time "
        "with `time.perf_counter_ns` after a tenth as many unmeasured calls; plus `FormDef.model_validate` of "
        "the stored form dict, which each review request repeats.",
        f"- Machine: {machine}.",
        "- wrk, the simulator and this script share the cores with the server, so these are the ceilings of this "
        "machine, not of production hardware; compare rows within one run.",
    ]
    measured = [r.others_cpu for r in reads + reviews if r.rps is not None] + [t.others_cpu for t in timings]
    if measured:
        body.append(
            f"- Other processes used at most {max(measured):.0%} of the CPU during the measured runs "
            f"(rows above {hb.BUSY:.0%} are flagged below; wrk rows are measured again, up to "
            f"{args.retries} times, when disturbed, keeping the least disturbed attempt). Counted as ours: "
            "the server, the simulator, wrk, this script and, in production mode, the PostgreSQL backends of "
            "the benchmark's database and the whole redis-server process."
        )
    overhead = []
    for run in runs:
        for draft in run.drafts:
            row = next((r for r in run.rows if r.target == review_label(draft) and r.rps), None)
            timing = next((t for t in timings if t.data == draft.label), None)
            if row and timing:
                overhead.append(
                    f"{draft.label} draft, {run.backend}: {1e6 / row.rps:,.0f} µs per review, "
                    f"`review_form` {timing.median_us:,.0f} µs of it "
                    f"({timing.median_us * row.rps / 1e6:.0%})"
                )
    if overhead:
        body.append(
            "- Where the time goes (1 worker, so 1 / requests/s is the server's time per request): "
            + "; ".join(overhead)
            + "."
        )
    starts = ", ".join(f"{run.backend}: {run.start_s:.1f} s" for run in runs if run.start_s is not None)
    if starts:
        body.append(
            f"- Time from start to the first 200 on /healthz (after load-demo; includes the migration check): "
            f"{starts}. load-demo said: "
            + "; ".join(f"{run.backend}: `{run.load_demo}`" for run in runs if run.load_demo)
            + "."
        )
    notes = []
    for run in runs:
        for r in run.rows:
            name = f"{r.target}, {r.backend}"
            if r.attempts > 1:
                notes.append(
                    f"{name}: measured {r.attempts} times because other processes disturbed it; "
                    "the least disturbed attempt is shown"
                )
            if r.others_cpu > hb.BUSY:
                notes.append(
                    f"{name}: other processes used {r.others_cpu:.0%} of the CPU while it was measured: "
                    "its numbers are low"
                )
            notes += [f"{name}: {n}" for n in r.notes]
        if run.log_problems:
            notes.append(
                f"{run.backend}: {len(run.log_problems)} warning/error line(s) in the server's log, first: "
                f"`{run.log_problems[0][:240]}`"
            )
        if run.stop_s is not None and run.stop_s > 5:
            notes.append(f"{run.backend}: the server took {run.stop_s:.1f} s to stop")
    for t in timings:
        if t.others_cpu > hb.BUSY:
            notes.append(f"in process, {t.call} [{t.data}]: other processes used {t.others_cpu:.0%} of the CPU")
    if sim_problems:
        notes.append(
            f"WeChat simulator: {len(sim_problems)} error line(s) in its log, first: `{sim_problems[0][:240]}`"
        )
    if notes:
        body += ["- Notes and problems seen:", *[f"  - {n}" for n in notes]]
    return "\n".join(body) + "\n"


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Catalogue reads and pre-review of the largest demo form (see benchmarks/README.md)."
    )
    parser.add_argument(
        "--duration", type=hb.positive, default=10, help="seconds of each measured wrk run (default 10)"
    )
    parser.add_argument("--warmup", type=hb.positive, default=2, help="seconds of each wrk warm-up run (default 2)")
    parser.add_argument(
        "--connections", type=hb.positive, default=32, help="wrk connections for the reads (default 32)"
    )
    parser.add_argument(
        "--review-connections",
        type=hb.positive,
        default=8,
        help="wrk connections for POST /review and its /healthz ceiling (default 8)",
    )
    parser.add_argument("--threads", type=hb.positive, default=1, help="wrk threads (default 1)")
    parser.add_argument(
        "--iterations",
        type=int,
        default=5000,
        help="timed in-process calls per measurement, at least 2000 (default 5000)",
    )
    parser.add_argument("--no-production", action="store_true", help="skip the PostgreSQL + Redis backend")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=120,
        metavar="S",
        help="before each measurement, wait up to S seconds for other processes to go idle (default 120)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        metavar="N",
        help="measure a wrk target again, up to N times, when other processes disturbed it (default 2)",
    )
    parser.add_argument(
        "--keep-logs", type=Path, metavar="DIR", help="copy the servers' and simulator's output into DIR"
    )
    args = parser.parse_args(argv)
    if args.retries < 0:
        parser.error("--retries cannot be negative")
    if args.threads > min(args.connections, args.review_connections):
        parser.error("--threads cannot exceed --connections or --review-connections")
    if args.iterations < 2000:
        parser.error("--iterations: at least 2000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print(
            "wrk is not installed: this benchmark uses it as the load generator.\n"
            "Install it from Debian's packages:  apt-get install -y wrk",
            file=sys.stderr,
        )
        return 2
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, hb._raise_interrupt)

    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = hb.machine_line()
    print(f"Catalogue and pre-review benchmark, {when}\n{machine}\n")
    code = item_code()
    content = item_content(code)
    _import_app()
    from handlers.forms.definitions import FormDef

    form = FormDef.model_validate(content["form"])
    print(
        f"{ITEM_NAME}: code {code}, {form.field_count()} fields in {len(form.steps)} steps, {len(form.checks)} checks"
    )
    if args.no_production:
        skip = "--no-production"
    elif not hb.redis_answers():
        skip = f"no Redis on {HOST}:{hb.REDIS_PORT}"
    else:
        skip = idb.pg_answers()

    runs: list[CatalogueRun] = []
    servers: list[CatalogueServer] = []
    timings: list[Timing] = []
    timing_failed = None
    sim_problems: list[str] = []
    interrupted = False
    prefix = f"zbbench{secrets.token_hex(4)}:"
    tmp = tempfile.TemporaryDirectory(prefix="zb-bench-catalogue-")
    script = Path(tmp.name) / "post.lua"
    script.write_text('wrk.method = "POST"\n')
    sim = idb.Simulator(Path(tmp.name))
    try:
        print(f"WeChat simulator on port {sim.port}: answering after {sim.start():.1f} s", flush=True)
        for n, backend in enumerate(BACKENDS):
            if backend == PRODUCTION and skip:
                print(f"- {backend}: skipped ({skip})")
                run = CatalogueRun(backend, skipped=skip)
                run.rows = [idb.Row("all rows", backend, skipped=skip)]
                runs.append(run)
                continue
            workdir = Path(tmp.name) / f"{n}-{'production' if backend == PRODUCTION else 'embedded'}"
            workdir.mkdir()
            runs.append(run_backend(backend, workdir, prefix, sim, code, form, content, script, args, servers))
        complete = next((d for run in runs for d in run.drafts if d.label == "complete"), None)
        if complete is None:
            timing_failed = "no backend produced a valid complete draft"
        else:
            print("- in process: review_form and FormDef.model_validate", flush=True)
            timings = measure_in_process(content, {"complete": complete.data, "empty": {}}, args)
            if timings[0].problems:
                timing_failed = f"review_form found {timings[0].problems} problems in the complete data set"
                timings = []
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping the servers", file=sys.stderr)
    except RuntimeError as exc:  # the simulator did not start
        print(f"FAILED: {exc}", file=sys.stderr)
        runs.append(CatalogueRun(EMBEDDED, rows=[idb.Row("all", EMBEDDED, failed=str(exc)[:160])]))
    finally:
        for server in list(servers):  # interrupted mid-backend: run_backend's own finally has run already
            server.stop()
        sim.stop()
        sim_problems = sim.log_problems()
        if args.keep_logs and sim.log_path.exists():
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            shutil.copy(sim.log_path, args.keep_logs / sim.log_path.name)
        tmp.cleanup()

    if interrupted:
        return 130
    text = section(runs, timings, timing_failed, sim_problems, form, code, args, machine, when)
    print()
    print(text)
    if not args.no_write:
        hb.write_results(text, SECTION)
        print(f"written to {hb.RESULTS.relative_to(ROOT)}")
    rows = [r for run in runs for r in run.rows]
    return 1 if any(r.failed for r in rows) or timing_failed else 0


if __name__ == "__main__":
    sys.exit(main())
