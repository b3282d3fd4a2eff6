"""Zhangban (掌办): the one entry point (the app itself is built in app.py).

python server.py                 serve on the embedded default (same as `serve`)
python server.py <sub-command>   see `python server.py --help`
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import secrets
import sys
from datetime import date
from functools import partial
from pathlib import Path

from sanic import Sanic
from sanic.worker.loader import AppLoader
from taskiq.cli.scheduler.cmd import SchedulerCMD
from taskiq.cli.worker.cmd import WorkerCMD
from tortoise.cli.cli import run_cli_async

from bridge import simulator as platform_simulator
from container import Services
from core.kicks import NO_KICKS
from core.logs import mask_text, setup_logging
from core.settings import ConfigError, Settings, install, load_settings
from handlers.bot import menu_definition
from handlers.cases.sweeps import mark_overdue, query_silent_cases
from handlers.catalog.publish import DEMO_CATALOGUE, export_catalogue, load_catalogue_file
from handlers.catalog.schema import CatalogueError, problem_text
from handlers.identity import rotate_keys
from handlers.officials import ROLES, OfficialExists, UnknownDepartment, create_official
from payments import paysim
from payments.base import PaymentError
from storage.crypto import FieldCipher
from storage.db import close_db, init_db, migrate
from wechat.apps import mp_appid

log = logging.getLogger("zhangban")
ROOT = Path(__file__).resolve().parent


# -- sub-commands ----------------------------------------------------------------------------


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    """Applies migrations, then serves with `WORKERS` Sanic workers until SIGINT/SIGTERM."""
    # Imported once the settings are installed: the job broker is built from them at import.
    from app import create_app

    if args.host:
        settings = settings.model_copy(update={"HOST": args.host})
    if args.port:
        settings = settings.model_copy(update={"PORT": args.port})
    asyncio.run(migrate(settings))
    loader = AppLoader(factory=partial(create_app, settings))
    app = loader.load()
    app.prepare(
        host=settings.HOST,
        port=settings.PORT,
        workers=settings.WORKERS,
        # Access lines are INFO: at WARNING and above the logger drops them, so Sanic is not asked
        # to build them (a tenth of the CPU of a cached catalogue read, measured with py-spy).
        access_log=settings.LOG_LEVEL in ("DEBUG", "INFO"),
        motd=False,
        # One worker runs in this process: no manager process, no start-up ack race
        # (a SIGTERM that lands before Sanic's worker ack otherwise stalls the stop for 30 s).
        single_process=settings.WORKERS == 1,
    )
    if settings.WORKERS == 1:
        Sanic.serve_single(primary=app)
    else:
        Sanic.serve(primary=app, app_loader=loader)
    return 0


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    """Applies pending migrations; prints each one applied."""

    def progress(event: str, app_label: str, name: str) -> None:
        if event == "apply_done":
            print(f"applied {app_label}.{name}")

    asyncio.run(migrate(settings, progress=progress))
    print("database is up to date")
    return 0


def cmd_makemigrations(settings: Settings, args: argparse.Namespace) -> int:
    """Writes a migration for model changes (developers only)."""
    argv = ["-c", "storage.db.TORTOISE_ORM", "makemigrations"]
    if args.name:
        argv += ["--name", args.name]
    return asyncio.run(run_cli_async(argv))


async def _with_db(settings: Settings, work):
    await migrate(settings)
    await init_db(settings)
    try:
        return await work()
    finally:
        await close_db()


async def _with_services(settings: Settings, work):
    """`work(services)` with the database and a service container whose kicks do nothing: a
    one-shot command settles what it made itself."""

    async def run():
        services = Services(settings, kicks=NO_KICKS)
        try:
            return await work(services)
        finally:
            await services.close()

    return await _with_db(settings, run)


def cmd_import_catalogue(settings: Settings, args: argparse.Namespace) -> int:
    """Validates a catalogue YAML file whole, then publishes every changed item."""
    path = Path(args.file) if getattr(args, "file", None) else DEMO_CATALOGUE
    if not path.is_file():
        print(f"{path}: file not found", file=sys.stderr)
        return 2

    async def publish(services: Services):
        return await load_catalogue_file(path, redis=services.redis, keys=services.keys)

    try:
        counts = asyncio.run(_with_services(settings, publish))
    except CatalogueError as exc:
        print(f"{path}: {len(exc.problems)} problem(s), nothing changed:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem_text(problem)}", file=sys.stderr)
        return 1
    print(f"{path.name}: {counts['published']} item(s) published, {counts['unchanged']} unchanged")
    return 0


def cmd_export_catalogue(settings: Settings, args: argparse.Namespace) -> int:
    """Writes the current catalogue as YAML (the import format) to FILE or stdout."""
    text = asyncio.run(_with_db(settings, export_catalogue))
    if args.file == "-":
        sys.stdout.write(text)
    else:
        Path(args.file).write_text(text, encoding="utf-8")
        print(f"catalogue written to {args.file}")
    return 0


def cmd_create_official(settings: Settings, args: argparse.Namespace) -> int:
    """Creates a console account; the password comes from stdin, a prompt, or is generated."""
    generated = False
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if password != getpass.getpass("again: "):
            print("passwords differ", file=sys.stderr)
            return 2
    else:
        password, generated = secrets.token_urlsafe(12), True
    if len(password) < 10:
        print("password: at least 10 characters", file=sys.stderr)
        return 2
    try:
        official = asyncio.run(
            _with_db(
                settings,
                lambda: create_official(
                    username=args.username,
                    display_name=args.name or args.username,
                    password=password,
                    department=args.department,
                    roles=args.role or None,
                ),
            )
        )
    except OfficialExists:
        print(f"username: '{args.username}' already exists", file=sys.stderr)
        return 1
    except UnknownDepartment as exc:
        if not exc.known:
            print("department: no catalogue is published yet; run load-demo or import-catalogue first", file=sys.stderr)
            return 2
        print(f"department: '{exc.department}' is not a department of the catalogue; known ones:", file=sys.stderr)
        for code, name in exc.known:
            print(f"  {code}  {name}", file=sys.stderr)
        return 2
    print(f"official {official.username} created (id {official.id})")
    if generated:
        print(f"generated password (shown once): {password}")
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    """Runs taskiq workers consuming the Redis stream (production)."""
    if settings.TASK_BROKER != "redis":
        print("TASK_BROKER: the worker needs 'redis' (the memory broker runs inside the server)", file=sys.stderr)
        return 2
    # taskiq's worker processes import the broker by module path (jobs.worker imports every task).
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    argv = ["jobs.worker:broker", "--workers", str(args.processes), "--log-level", settings.LOG_LEVEL]
    return WorkerCMD().exec(argv) or 0


def cmd_scheduler(settings: Settings, args: argparse.Namespace) -> int:
    """Runs the taskiq scheduler that kicks periodic jobs (production; run exactly one)."""
    if settings.TASK_BROKER != "redis":
        print(
            "TASK_BROKER: the scheduler needs 'redis' (the memory broker schedules inside the server)", file=sys.stderr
        )
        return 2
    SchedulerCMD().exec(["jobs.worker:scheduler", "--log-level", settings.LOG_LEVEL])
    return 0


def cmd_rotate_keys(settings: Settings, args: argparse.Namespace) -> int:
    """Reseals personal data under the current FIELD_ENCRYPTION_KEY (old keys in FIELD_ENCRYPTION_OLD_KEYS)."""
    cipher = FieldCipher(settings.field_encryption_key(), settings.field_encryption_old_keys())
    counts = asyncio.run(_with_db(settings, lambda: rotate_keys(cipher=cipher)))
    print(
        f"resealed {counts['users']} user(s) and {counts['addresses']} address(es) under key {cipher.current_id.hex()}"
    )
    return 0


def cmd_menu(settings: Settings, args: argparse.Namespace) -> int:
    """Sends the official account's menu definition to WeChat (`menu push`), or prints it (`menu show`)."""
    menu = menu_definition(mp_appid(settings), settings.public_base_url)
    if args.action == "show":
        print(json.dumps(menu, ensure_ascii=False, indent=2))
        return 0
    if settings.simulated("WeChat official account"):
        print("WECHAT_OA_APPID: not set; the menu can only be pushed to a real official account", file=sys.stderr)
        return 2

    async def push():
        services = Services(settings, kicks=NO_KICKS)
        try:
            await services.oa.create_menu(menu)
        finally:
            await services.close()

    asyncio.run(push())
    print(f"menu pushed to {settings.WECHAT_OA_APPID}")
    return 0


async def _payments_sweep(services: Services) -> int:
    """Asks about late and expired orders, then sends what that made: refunds, platform rows."""
    result = await services.payments_sweeper.run()
    await services.refunder.run_due()
    await services.relay.run_due()
    return result.asked


async def _refunds(services: Services) -> int:
    settled, _ = await services.refunder.run_due()
    return settled


SWEEPS = {
    "platform": lambda s: query_silent_cases(platform=s.platform, silence=s.platform_silence, kicks=s.kicks),
    "overdue": lambda s: mark_overdue(kicks=s.kicks),
    "outbox": lambda s: s.relay.run_due(),
    "payments": _payments_sweep,
    "refunds": _refunds,
    "pushes": None,  # the pushes are settled after every sweep anyway
}


def cmd_sweep(settings: Settings, args: argparse.Namespace) -> int:
    """Runs one sweep now, as the scheduler would: silent cases, overdue cases, due pushes or the outbox."""

    async def run(services: Services) -> int:
        sweep = SWEEPS[args.what]
        count = await sweep(services) if sweep else 0
        # This process pushes what it made itself, right after the sweep.
        pushed = await services.pusher.run_due()
        print(f"{args.what}: {count}" + (f"; pushes settled: {pushed}" if pushed else ""))
        return 0

    return asyncio.run(_with_services(settings, run))


def cmd_platform_sim(settings: Settings, args: argparse.Namespace) -> int:
    """Runs the core-platform simulator as its own server (see bridge/simulator.py)."""
    argv = [
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--script",
        args.script,
        "--step-delay",
        str(args.step_delay),
    ]
    if settings.PLATFORM_APP_KEY and settings.PLATFORM_SECRET:
        argv += ["--app-key", settings.PLATFORM_APP_KEY, "--secret", settings.PLATFORM_SECRET]
    argv += ["--callback-url", args.callback_url or settings.public_base_url + "/bridge/callback"]
    platform_simulator.main(argv)
    return 0


def cmd_pay_sim(settings: Settings, args: argparse.Namespace) -> int:
    """Runs the WeChat Pay and Alipay simulators as their own server (see payments/paysim.py)."""
    argv = ["--host", args.host, "--port", str(args.port), "--time-scale", str(args.time_scale)]
    paysim.main(argv + ["--key-mode", args.key_mode])
    return 0


def cmd_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    """Downloads a day's bills and reconciles them against our orders (对账), printing the summary."""
    try:
        day = date.fromisoformat(args.date)
    except ValueError:
        print(f"--date: not a date (YYYY-MM-DD): {args.date}", file=sys.stderr)
        return 2
    providers = [args.channel] if args.channel else ["wechat", "alipay"]

    async def run(services: Services):
        reports = []
        for provider in providers:
            reports.append(await services.reconciler.run(provider, day))
        return reports

    failed = False
    try:
        reports = asyncio.run(_with_services(settings, run))
    except PaymentError as exc:
        print(f"bill download failed: {exc.code} {exc}", file=sys.stderr)
        return 1
    for report in reports:
        summary = report.summary
        pays, refunds, totals = summary["payments"], summary["refunds"], summary["totals"]
        print(
            f"{report.channel} {report.bill_date}: {'balanced' if summary['balanced'] else 'NOT balanced'}; "
            f"payments matched {pays['matched']}, 长款 {pays['channel_only']}, 短款 {pays['ours_only']}, "
            f"mismatched {pays['amount_mismatch']}; refunds matched {refunds['matched']}, "
            f"unmatched {refunds['channel_only'] + refunds['ours_only'] + refunds['amount_mismatch']}; "
            f"channel paid {totals['channel_paid_fen']} fen, ours {totals['our_paid_fen']} fen"
        )
        failed |= not summary["balanced"]
    return 3 if failed else 0


def cmd_check_jobs(settings: Settings, args: argparse.Namespace) -> int:
    """Sends a probe job and waits for a worker to run it: proves the job pipeline end to end."""
    # Imported once the settings are installed: the job broker is built from them at import.
    from jobs.ops import probe_jobs

    ok, detail = asyncio.run(probe_jobs(settings, timeout=args.timeout))
    print(detail)
    return 0 if ok else 1


COMMANDS = {
    "serve": (cmd_serve, "serve HTTP (applies migrations first); the default"),
    "worker": (cmd_worker, "run background job workers (TASK_BROKER=redis)"),
    "scheduler": (cmd_scheduler, "run the periodic job scheduler (TASK_BROKER=redis; one per deployment)"),
    "migrate": (cmd_migrate, "apply pending database migrations"),
    "makemigrations": (cmd_makemigrations, "write a migration for model changes (developers)"),
    "load-demo": (cmd_import_catalogue, "load the demo catalogue (data/catalogue.yaml)"),
    "import-catalogue": (cmd_import_catalogue, "validate and publish a catalogue YAML file"),
    "export-catalogue": (cmd_export_catalogue, "write the current catalogue as YAML (FILE, or - for stdout)"),
    "create-official": (cmd_create_official, "create an official's console account"),
    "rotate-keys": (cmd_rotate_keys, "reseal personal data under the current FIELD_ENCRYPTION_KEY"),
    "menu": (cmd_menu, "official-account menu: `menu push` sends it to WeChat, `menu show` prints it"),
    "platform-sim": (cmd_platform_sim, "run the core-platform simulator as its own server"),
    "pay-sim": (cmd_pay_sim, "run the WeChat Pay and Alipay simulators as their own server"),
    "reconcile": (cmd_reconcile, "download a day's bills and reconcile them: --date YYYY-MM-DD [--channel]"),
    "check-jobs": (cmd_check_jobs, "send a probe job and wait for a worker to run it"),
    "sweep": (cmd_sweep, "run one sweep now: platform | overdue | pushes | outbox | payments | refunds"),
}


# The long-running processes, which must not start on a production configuration that would
# serve (or talk to) an unauthenticated simulator.
SERVING_COMMANDS = {"serve", "worker", "scheduler"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python server.py",
        description="掌办 Zhangban: the palm-handling government service backend.",
        epilog="Configuration comes from the environment and .env; see README.md.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<sub-command>")
    parsers = {name: sub.add_parser(name, help=help_, description=help_) for name, (_, help_) in COMMANDS.items()}
    parsers["serve"].add_argument("--host", help="override HOST")
    parsers["serve"].add_argument("--port", type=int, help="override PORT")
    parsers["makemigrations"].add_argument("--name", help="a name for the migration")
    parsers["import-catalogue"].add_argument("file", help="catalogue YAML file")
    parsers["export-catalogue"].add_argument("file", help="where to write the YAML, or - for stdout")
    official = parsers["create-official"]
    official.add_argument("--username", required=True)
    official.add_argument("--name", help="display name (defaults to the username)")
    official.add_argument(
        "--department", default="", help="a catalogue department, by code or name (e.g. psb or 泸州市公安局)"
    )
    official.add_argument(
        "--role", action="append", choices=ROLES, help="a role; repeat for several (default: officer)"
    )
    official.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    parsers["worker"].add_argument("--processes", type=int, default=2, help="worker processes (default 2)")
    parsers["check-jobs"].add_argument("--timeout", type=float, default=10.0)
    parsers["menu"].add_argument("action", choices=["push", "show"])
    parsers["sweep"].add_argument("what", choices=list(SWEEPS))
    sim = parsers["platform-sim"]
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8702)
    sim.add_argument(
        "--script",
        default="happy",
        help="happy | correction | rejection | duplicates | out_of_order | fee | fee_rejection",
    )
    sim.add_argument("--step-delay", type=float, default=5.0, help="seconds between callbacks")
    sim.add_argument("--callback-url", help="default: PUBLIC_BASE_URL/bridge/callback")
    pay = parsers["pay-sim"]
    pay.add_argument("--host", default="127.0.0.1")
    pay.add_argument("--port", type=int, default=8703)
    pay.add_argument("--time-scale", type=float, default=1.0, help="multiplies the notify retry delays (tests: 0.001)")
    pay.add_argument("--key-mode", choices=["public_key", "certificate"], default="public_key")
    reconcile = parsers["reconcile"]
    reconcile.add_argument("--date", required=True, help="the bill's day, China time (YYYY-MM-DD)")
    reconcile.add_argument("--channel", choices=["wechat", "alipay"], help="one channel (default: both)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command or "serve"
    if command == "serve" and not hasattr(args, "port"):
        args = build_parser().parse_args(["serve"])
    try:
        settings = install(load_settings())
    except ConfigError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        return 2
    if command in SERVING_COMMANDS and (problems := settings.serving_problems()):
        for line in problems:
            print(line, file=sys.stderr)
        return 2
    setup_logging(settings.LOG_LEVEL)
    try:
        return COMMANDS[command][0](settings, args) or 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one readable line for the operator; the details go to the log
        log.error("%s failed", command, exc_info=exc)
        print(
            f"{command}: {type(exc).__name__}: {mask_text(str(exc)).splitlines()[0] if str(exc) else ''}",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
