"""The fuzzing gate (issue 12): Schemathesis over every operation of the served OpenAPI document.

    .venv/bin/python tests/fuzz/run_schemathesis.py [--examples N] [--seed S]

Starts a server on this run's backends (the embedded default; PostgreSQL and Redis when
TEST_DATABASE_URL and TEST_REDIS_URL are set, as in `.ci/run`), with the WeChat and platform
simulators as their own processes, signs a citizen in up to L3 (real name, face check, phone and
address), then:

1. validates the served `/openapi.json` with openapi-spec-validator (OpenAPI 3.1);
2. runs Schemathesis (pinned in requirements.lock) with every check, a fixed seed and a bounded
   number of examples per operation, as that citizen wherever the document asks for its bearer
   token (tests/fuzz/schemathesis.toml);
3. fails on any failed check, and on any ERROR line in the server's log (a 500's traceback).

Reports go to `var/ci/fuzz-<backend>/` (git-ignored; CI keeps them as artifacts): Schemathesis's
JUnit XML and NDJSON events, the document, the server's log, and `summary.txt`.
Exit status: 0 when clean, 1 on findings, 2 when the run could not be set up.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.conftest import (  # noqa: E402  (the repository root must be importable first)
    OA_AES_KEY,
    OA_TOKEN,
    PLATFORM_KEY,
    PLATFORM_SECRET,
    SIM_MP_APPID,
    SIM_MP_SECRET,
    TEST_DATABASE_URL,
    TEST_REDIS_URL,
    DatabaseFactory,
    _drop_redis_prefix,
    base_env,
    free_port,
    production_env,
    start_pay_sim,
    start_server,
)
from tests.oa_pusher import OA_APPID, OA_SECRET  # noqa: E402

SEED = 20261129
EXAMPLES = 25
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


def _start(args: list[str], log: Path, url: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=base_env(PYTHONPATH=str(ROOT)),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(url + "/__sim__/stats", timeout=1)
            return proc
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"fuzz: {args[1]} did not start; see {log}") from None
            time.sleep(0.2)


def _citizen(url: str, sim: str) -> str:
    """An L3 citizen with a phone and an address: their access token."""
    openid = httpx.post(sim + "/__sim__/users", json={"appid": SIM_MP_APPID}).json()["openid"]
    code = httpx.post(sim + "/__sim__/login-code", json={"appid": SIM_MP_APPID, "openid": openid}).json()["code"]
    tokens = httpx.post(url + "/api/v1/auth/login", json={"code": code}).raise_for_status().json()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tokens['access_token']}"}, timeout=30) as c:
        body = "510502" + "19900215" + f"{random.randint(0, 999):03d}"
        weights = [2 ** (17 - i) % 11 for i in range(17)]
        number = body + "10X98765432"[sum(int(d) * w for d, w in zip(body, weights, strict=True)) % 11]
        c.post("/api/v1/identity/declare", json={"name": "符测试", "id_number": number}).raise_for_status()
        verify_id = c.post("/api/v1/identity/face/start").raise_for_status().json()["verify_id"]
        httpx.post(sim + "/__sim__/face/complete", json={"verify_id": verify_id, "verify_ret": 10000})
        c.post("/api/v1/identity/face/finish", json={"verify_id": verify_id}).raise_for_status()
        phone = f"158{random.randint(10000000, 99999999)}"
        phone_code = httpx.post(
            sim + "/__sim__/phone-code", json={"appid": SIM_MP_APPID, "openid": openid, "phone": phone}
        ).json()["code"]
        c.post("/api/v1/me/phone", json={"code": phone_code}).raise_for_status()
        address = {"recipient": "符测试", "phone": phone, "region_code": "510502", "detail": "江阳区酒城大道一段8号"}
        c.post("/api/v1/me/addresses", json=address).raise_for_status()
    return tokens["access_token"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=EXAMPLES, help="examples per operation and phase")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--max-time", type=int, default=0, help="a time budget in seconds (0: none)")
    args = parser.parse_args()

    backend = "postgres" if TEST_DATABASE_URL and TEST_REDIS_URL else "embedded"
    out = ROOT / "var" / "ci" / f"fuzz-{backend}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    work = out / "server"
    databases = DatabaseFactory(out)
    helpers: list[subprocess.Popen] = []
    server = None
    prefix = f"zbfuzz{os.getpid()}:"
    try:
        wechat_url, platform_url = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
        helpers.append(
            _start(
                ["-m", "wechat.simulator", "--host", "127.0.0.1", "--port", wechat_url.rsplit(":", 1)[1]],
                out / "wechat-sim.log",
                wechat_url,
            )
        )
        helpers.append(
            _start(
                ["-m", "bridge.simulator", "--host", "127.0.0.1", "--port", platform_url.rsplit(":", 1)[1]]
                + ["--app-key", PLATFORM_KEY, "--secret", PLATFORM_SECRET, "--script", "happy"]
                + ["--step-delay", "3600"],
                out / "platform-sim.log",
                platform_url,
            )
        )
        settings = {
            "LOG_LEVEL": "INFO",
            "RATE_LIMITS": "login.ip=100000/minute,declare.ip=100000/hour,face.ip=100000/hour",
            "PUSH_QUIET_HOURS": "",
            "WECHAT_API_BASE": wechat_url,
            "WECHAT_MP_APPID": SIM_MP_APPID,
            "WECHAT_MP_SECRET": SIM_MP_SECRET,
            "WECHAT_OA_APPID": OA_APPID,
            "WECHAT_OA_SECRET": OA_SECRET,
            "WECHAT_OA_TOKEN": OA_TOKEN,
            "WECHAT_OA_AES_KEY": OA_AES_KEY,
            "PLATFORM_BASE_URL": platform_url,
            "PLATFORM_APP_KEY": PLATFORM_KEY,
            "PLATFORM_SECRET": PLATFORM_SECRET,
            # WeChat Pay and Alipay: the payment simulators as their own server, stopped at exit.
            **start_pay_sim(out / "pay-sim").env,
        }
        if backend == "postgres":
            database = databases.new("postgres")
            env = production_env(database, prefix, **settings)
        else:
            database = databases.new("sqlite")
            env = base_env(DATABASE_URL=database.url, **settings)
        server = start_server(env, work, database=database)
        if server.cli("load-demo").returncode != 0:
            print("fuzz: load-demo failed", file=sys.stderr)
            return 2
        token = _citizen(server.url, wechat_url)

        document = httpx.get(server.url + "/openapi.json", timeout=30).json()
        (out / "openapi.json").write_text(json.dumps(document, ensure_ascii=False, indent=2), encoding="utf-8")
        validate(document, cls=OpenAPIV31SpecValidator)
        print(f"fuzz: /openapi.json is valid OpenAPI {document['openapi']} ({len(document['paths'])} paths)")

        command = [
            str(SCHEMATHESIS),
            "--no-color",
            "--config-file",
            str(Path(__file__).with_name("schemathesis.toml")),
            "run",
            server.url + "/openapi.json",
            "--checks",
            "all",
            "--seed",
            str(args.seed),
            "--max-examples",
            str(args.examples),
            # One worker: hypothesis describing its filters from two threads at once trips a
            # CPython 3.11 AST error ("recursion depth mismatch"), a runtime error of the tool.
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--report",
            "junit,ndjson",
            "--report-dir",
            str(out),
        ]
        if args.max_time:
            command += ["--max-time", str(args.max_time)]
        started = time.monotonic()
        # The token reaches Schemathesis through the environment (schemathesis.toml names it),
        # so it is applied per the document's security, and appears in no command line.
        result = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", "ZB_FUZZ_TOKEN": token})
        elapsed = time.monotonic() - started
    finally:
        if server is not None:
            server.stop()
        for helper in helpers:
            helper.terminate()
            helper.wait(10)
        databases.drop_all()
        if backend == "postgres":
            _drop_redis_prefix(prefix)

    errors = [line for line in server.log().splitlines() if '"level": "ERROR"' in line or "Traceback" in line]
    (out / "server-errors.log").write_text("\n".join(errors) + "\n", encoding="utf-8")
    summary = (
        f"backend={backend} seed={args.seed} examples={args.examples} schemathesis_exit={result.returncode} "
        f"server_error_lines={len(errors)} seconds={elapsed:.0f}\n"
    )
    (out / "summary.txt").write_text(summary, encoding="utf-8")
    print("fuzz: " + summary.strip() + f"; reports in {out.relative_to(ROOT)}/")
    return 0 if result.returncode == 0 and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
