"""Zhangban (掌办): app factory and the one entry point.

python server.py                 serve on the embedded default (same as `serve`)
python server.py <sub-command>   see `python server.py --help`
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import secrets
import sys
from functools import partial
from pathlib import Path

from core.settings import ConfigError, Settings, install, load_settings

log = logging.getLogger("zhangban")


# -- the app -------------------------------------------------------------------------------


def create_app(settings: Settings):
    """The Sanic app for `settings`, with every blueprint, listener and convention installed."""
    import httpx
    import ujson
    from sanic import Sanic
    from sanic_ext import Extend, openapi

    from bridge.signing import Verifier
    from core import http, ops
    from core.logs import logging_config
    from core.ratelimit import Limiter
    from handlers.auth import TokenStore
    from handlers.bot import FAQ, Bot, load_halls
    from handlers.catalog import CatalogueReader
    from handlers.drafts import Drafts
    from handlers.materials import Materials, Pipeline
    from storage.crypto import FieldCipher
    from storage.files import FileSealer, create_file_store
    from storage.redis import Keys, create_redis
    from wechat.client import OfficialAccountAPI

    install(settings)
    from core import jobs  # builds the broker from the installed settings

    app = Sanic(
        "zhangban",
        log_config=logging_config(settings.LOG_LEVEL),
        dumps=partial(ujson.dumps, ensure_ascii=False, escape_forward_slashes=False),
    )
    app.config.update(
        {
            "MOTD": False,
            "REQUEST_MAX_SIZE": settings.REQUEST_MAX_SIZE,
            "REQUEST_TIMEOUT": settings.REQUEST_TIMEOUT,
            "RESPONSE_TIMEOUT": settings.RESPONSE_TIMEOUT,
            "GRACEFUL_SHUTDOWN_TIMEOUT": settings.GRACEFUL_SHUTDOWN_TIMEOUT,
            "KEEP_ALIVE_TIMEOUT": 15,
            "FALLBACK_ERROR_FORMAT": "json",
            "OAS_UI_DEFAULT": "redoc",
            "OAS_URL_PREFIX": "/docs",
            "OAS_URI_TO_JSON": "/openapi.json",
            "CORS": False,
            "HEALTH": False,
        }
    )
    app.config.API_TITLE = "掌办 Zhangban API"
    app.config.API_VERSION = "1.0"
    app.config.API_DESCRIPTION = (
        "Backend of the city's palm-handling government service. Errors are "
        '`{"code", "message", "details"}`; every response carries `X-Request-ID`.'
    )
    Extend(app)
    app.ctx.settings = settings
    app.ctx.keys = Keys(settings.REDIS_KEY_PREFIX)

    from bot import callback as oa_callback
    from bridge import callback as platform_callback
    from console import auth as console_auth
    from console import cases as console_cases
    from console import citizens as console_citizens
    from miniprogram_api import auth as mp_auth
    from miniprogram_api import cases as mp_cases
    from miniprogram_api import drafts as mp_drafts
    from miniprogram_api import identity as mp_identity
    from miniprogram_api import inbox as mp_inbox
    from miniprogram_api import materials as mp_materials
    from miniprogram_api import services as mp_services

    http.install(app)
    app.blueprint(ops.bp)
    app.blueprint(console_auth.bp)
    app.blueprint(console_citizens.bp)
    app.blueprint(console_cases.bp)
    app.blueprint(mp_auth.bp)
    app.blueprint(mp_identity.bp)
    app.blueprint(mp_services.bp)
    app.blueprint(mp_drafts.bp)
    app.blueprint(mp_cases.bp)
    app.blueprint(mp_inbox.bp)
    app.blueprint(oa_callback.bp)
    app.blueprint(platform_callback.bp)
    app.blueprint(mp_materials.bp)
    app.blueprint(mp_materials.files_bp)
    if settings.simulated("WeChat mini-program") or settings.simulated("WeChat official account"):
        from wechat.simulator import SimState, simulator_blueprint

        app.ctx.wechat_sim = SimState()
        sim_bp = simulator_blueprint(app.ctx.wechat_sim, url_prefix=WECHAT_SIM_PREFIX)
        openapi.exclude(bp=sim_bp)  # a stand-in for WeChat, not part of our API
        app.blueprint(sim_bp)
    if settings.simulated("core platform"):
        from bridge.simulator import PlatformState, platform_blueprint

        # Callbacks every few seconds, so a citizen's case visibly progresses within a minute.
        app.ctx.platform_sim = PlatformState(
            jobs.SIM_PLATFORM_KEY,
            jobs.SIM_PLATFORM_SECRET,
            callback_url=settings.local_base_url + "/bridge/callback",
            default_script="happy",
            step_delay_s=8.0,
        )
        platform_bp = platform_blueprint(app.ctx.platform_sim, url_prefix=jobs.SIM_PLATFORM_PREFIX)
        openapi.exclude(bp=platform_bp)
        app.blueprint(platform_bp)

    @app.before_server_start
    async def _open(app) -> None:
        from storage.db import init_db

        await init_db(settings)
        app.ctx.redis = create_redis(settings)
        app.ctx.http = httpx.AsyncClient(
            timeout=httpx.Timeout(8.0, connect=3.0), limits=httpx.Limits(max_connections=100)
        )
        app.ctx.cipher = FieldCipher(settings.field_encryption_key(), settings.field_encryption_old_keys())
        app.ctx.tokens = TokenStore(redis=app.ctx.redis, keys=app.ctx.keys, access_ttl_s=settings.ACCESS_TOKEN_TTL)
        app.ctx.limiter = Limiter(settings)
        app.ctx.wechat_mp = wechat_client(settings, "mp", redis=app.ctx.redis, http=app.ctx.http)
        app.ctx.catalogue = CatalogueReader(redis=app.ctx.redis, keys=app.ctx.keys)
        app.ctx.oa = OfficialAccountAPI(wechat_client(settings, "oa", redis=app.ctx.redis, http=app.ctx.http))
        app.ctx.oa_crypto = oa_crypto(settings)
        _, platform_key, platform_secret = jobs.platform_endpoint(settings)
        app.ctx.platform_verifier = Verifier(platform_key, platform_secret)
        app.ctx.platform = jobs.create_platform_client(settings, http=app.ctx.http)
        app.ctx.bot = Bot(
            catalogue=app.ctx.catalogue,
            cipher=app.ctx.cipher,
            halls=load_halls(),
            mp_appid=mp_appid(settings),
            faq=FAQ.load(),
        )
        app.ctx.bot_tasks = set()
        app.ctx.drafts = Drafts(cipher=app.ctx.cipher, ttl_days=settings.DRAFT_TTL_DAYS)
        app.ctx.media_pipeline = Pipeline()
        app.ctx.file_store = create_file_store(settings)
        if hasattr(app.ctx.file_store, "ensure_bucket"):
            await app.ctx.file_store.ensure_bucket()
        app.ctx.materials = Materials(
            store=app.ctx.file_store,
            sealer=FileSealer(settings.field_encryption_key(), settings.field_encryption_old_keys()),
            pipeline=app.ctx.media_pipeline,
            signing_key=settings.secret_key().encode(),
            base_url=settings.public_base_url,
        )
        app.ctx.broker = jobs.broker
        try:
            await jobs.broker.startup()
        except Exception:  # Redis down: serve anyway, /readyz says so, workers declare the group
            log.exception("task broker could not start")

    @app.after_server_start
    async def _start_background(app) -> None:
        app.ctx.scheduler_task = None
        if settings.TASK_BROKER == "memory":
            app.ctx.scheduler_task = asyncio.get_running_loop().create_task(jobs.run_embedded_scheduler())
        log.info("serving", extra={"url": f"http://{settings.HOST}:{settings.PORT}", "embedded": settings.embedded})

    @app.before_server_stop
    async def _stop_background(app) -> None:
        task = app.ctx.scheduler_task
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        # Bot answers still being worked out or on their way to WeChat (a finished answer may
        # start its late delivery, so look again until none is left or 5 s have passed).
        deadline = asyncio.get_running_loop().time() + 5
        while app.ctx.bot_tasks and (left := deadline - asyncio.get_running_loop().time()) > 0:
            await asyncio.wait(list(app.ctx.bot_tasks), timeout=left)

    @app.after_server_stop
    async def _close(app) -> None:
        from storage.db import close_db

        try:
            await jobs.broker.shutdown()
        finally:
            await app.ctx.http.aclose()
            app.ctx.media_pipeline.shutdown()
            if hasattr(app.ctx.file_store, "close"):
                await app.ctx.file_store.close()
            await app.ctx.redis.aclose()
            await close_db()

    return app


from wechat.apps import SIM_APPS, WECHAT_SIM_PREFIX, mp_appid, wechat_client  # noqa: E402

# The simulated official account's callback credentials (embedded default only).
SIM_OA_TOKEN = "zhangban_sim_oa_token"
SIM_OA_AES_KEY = "emhhbmdiYW4tc2ltdWxhdGVkLW9hLWFlcy1rZXkhISE"


def oa_crypto(settings: Settings):
    """The official-account callback crypto: configured, or the simulated account's."""
    from bot.crypto import OACrypto

    if settings.simulated("WeChat official account"):
        return OACrypto(SIM_OA_TOKEN, SIM_OA_AES_KEY, SIM_APPS["oa"][0])
    return OACrypto(settings.WECHAT_OA_TOKEN, settings.WECHAT_OA_AES_KEY, settings.WECHAT_OA_APPID)


# -- sub-commands ----------------------------------------------------------------------------


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    """Applies migrations, then serves with `WORKERS` Sanic workers until SIGINT/SIGTERM."""
    from sanic import Sanic
    from sanic.worker.loader import AppLoader

    from storage.db import migrate

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
        access_log=True,
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
    from storage.db import migrate

    def progress(event: str, app_label: str, name: str) -> None:
        if event == "apply_done":
            print(f"applied {app_label}.{name}")

    asyncio.run(migrate(settings, progress=progress))
    print("database is up to date")
    return 0


def cmd_makemigrations(settings: Settings, args: argparse.Namespace) -> int:
    """Writes a migration for model changes (developers only)."""
    from tortoise.cli.cli import run_cli_async

    argv = ["-c", "storage.db.TORTOISE_ORM", "makemigrations"]
    if args.name:
        argv += ["--name", args.name]
    return asyncio.run(run_cli_async(argv))


async def _with_db(settings: Settings, work):
    from storage.db import close_db, init_db, migrate

    await migrate(settings)
    await init_db(settings)
    try:
        return await work()
    finally:
        await close_db()


def cmd_import_catalogue(settings: Settings, args: argparse.Namespace) -> int:
    """Validates a catalogue YAML file whole, then publishes every changed item."""
    from handlers.catalog import DEMO_CATALOGUE, CatalogueError, load_catalogue_file
    from storage.redis import Keys, create_redis

    path = Path(args.file) if getattr(args, "file", None) else DEMO_CATALOGUE
    if not path.is_file():
        print(f"{path}: file not found", file=sys.stderr)
        return 2

    async def publish():
        redis = create_redis(settings)
        try:
            return await load_catalogue_file(path, redis=redis, keys=Keys(settings.REDIS_KEY_PREFIX))
        finally:
            await redis.aclose()

    try:
        counts = asyncio.run(_with_db(settings, publish))
    except CatalogueError as exc:
        print(f"{path}: {len(exc.problems)} problem(s), nothing changed:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(f"{path.name}: {counts['published']} item(s) published, {counts['unchanged']} unchanged")
    return 0


def cmd_export_catalogue(settings: Settings, args: argparse.Namespace) -> int:
    """Writes the current catalogue as YAML (the import format) to FILE or stdout."""
    from handlers.catalog import export_catalogue

    text = asyncio.run(_with_db(settings, export_catalogue))
    if args.file == "-":
        sys.stdout.write(text)
    else:
        Path(args.file).write_text(text, encoding="utf-8")
        print(f"catalogue written to {args.file}")
    return 0


def cmd_create_official(settings: Settings, args: argparse.Namespace) -> int:
    """Creates a console account; the password comes from stdin, a prompt, or is generated."""
    from handlers.officials import OfficialExists, create_official

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
    print(f"official {official.username} created (id {official.id})")
    if generated:
        print(f"generated password (shown once): {password}")
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    """Runs taskiq workers consuming the Redis stream (production)."""
    if settings.TASK_BROKER != "redis":
        print("TASK_BROKER: the worker needs 'redis' (the memory broker runs inside the server)", file=sys.stderr)
        return 2
    from taskiq.cli.worker.cmd import WorkerCMD

    from core.jobs import TASK_MODULES

    # taskiq's worker processes import the broker by module path.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH")])
    )
    argv = ["core.jobs:broker", *TASK_MODULES, "--workers", str(args.processes), "--log-level", settings.LOG_LEVEL]
    return WorkerCMD().exec(argv) or 0


def cmd_scheduler(settings: Settings, args: argparse.Namespace) -> int:
    """Runs the taskiq scheduler that kicks periodic jobs (production; run exactly one)."""
    if settings.TASK_BROKER != "redis":
        print(
            "TASK_BROKER: the scheduler needs 'redis' (the memory broker schedules inside the server)", file=sys.stderr
        )
        return 2
    from taskiq.cli.scheduler.cmd import SchedulerCMD

    SchedulerCMD().exec(["core.jobs:scheduler", "--log-level", settings.LOG_LEVEL])
    return 0


def cmd_rotate_keys(settings: Settings, args: argparse.Namespace) -> int:
    """Reseals personal data under the current FIELD_ENCRYPTION_KEY (old keys in FIELD_ENCRYPTION_OLD_KEYS)."""
    from handlers.identity import rotate_keys
    from storage.crypto import FieldCipher

    cipher = FieldCipher(settings.field_encryption_key(), settings.field_encryption_old_keys())
    counts = asyncio.run(_with_db(settings, lambda: rotate_keys(cipher=cipher)))
    print(
        f"resealed {counts['users']} user(s) and {counts['addresses']} address(es) under key {cipher.current_id.hex()}"
    )
    return 0


def cmd_menu(settings: Settings, args: argparse.Namespace) -> int:
    """Sends the official account's menu definition to WeChat (`menu push`), or prints it (`menu show`)."""
    import json

    import httpx

    from handlers.bot import menu_definition
    from storage.redis import create_redis
    from wechat.client import OfficialAccountAPI

    menu = menu_definition(mp_appid(settings), settings.public_base_url)
    if args.action == "show":
        print(json.dumps(menu, ensure_ascii=False, indent=2))
        return 0
    if settings.simulated("WeChat official account"):
        print("WECHAT_OA_APPID: not set; the menu can only be pushed to a real official account", file=sys.stderr)
        return 2

    async def push():
        redis = create_redis(settings)
        async with httpx.AsyncClient(timeout=10) as http:
            try:
                await OfficialAccountAPI(wechat_client(settings, "oa", redis=redis, http=http)).create_menu(menu)
            finally:
                await redis.aclose()

    asyncio.run(push())
    print(f"menu pushed to {settings.WECHAT_OA_APPID}")
    return 0


def cmd_sweep(settings: Settings, args: argparse.Namespace) -> int:
    """Runs one sweep now, as the scheduler would: silent cases, overdue cases, due pushes or the outbox."""
    from datetime import timedelta

    import httpx

    from core import jobs
    from handlers import push
    from storage.db import close_db, init_db
    from storage.redis import create_redis

    async def run() -> int:
        await init_db(settings)
        redis = create_redis(settings)
        http = httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=3.0))
        # This process pushes what it makes itself, right after the sweep.
        push.KICKS_ENABLED = False
        try:
            from handlers.sweeps import mark_overdue, query_silent_cases

            platform = jobs.create_platform_client(settings, http=http)
            if args.what == "platform":
                count = await query_silent_cases(platform, silence=timedelta(seconds=settings.PLATFORM_SILENCE_S))
            elif args.what == "overdue":
                count = await mark_overdue()
            elif args.what == "outbox":
                count = await jobs.create_relay(settings, platform=platform).run_due()
            else:
                count = 0
            pushed = await jobs.create_pusher(settings, redis=redis, http=http).run_due()
            print(f"{args.what}: {count}" + (f"; pushes settled: {pushed}" if pushed else ""))
            return 0
        finally:
            await http.aclose()
            await redis.aclose()
            await close_db()

    return asyncio.run(run())


def cmd_platform_sim(settings: Settings, args: argparse.Namespace) -> int:
    """Runs the core-platform simulator as its own server (see bridge/simulator.py)."""
    from bridge import simulator

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
    simulator.main(argv)
    return 0


def cmd_check_jobs(settings: Settings, args: argparse.Namespace) -> int:
    """Sends a probe job and waits for a worker to run it: proves the job pipeline end to end."""
    from core.jobs import probe_jobs

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
    "check-jobs": (cmd_check_jobs, "send a probe job and wait for a worker to run it"),
    "sweep": (cmd_sweep, "run one sweep now: platform | overdue | pushes | outbox"),
}


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
    official.add_argument("--department", default="")
    official.add_argument("--role", action="append", help="a role; repeat for several")
    official.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    parsers["worker"].add_argument("--processes", type=int, default=2, help="worker processes (default 2)")
    parsers["check-jobs"].add_argument("--timeout", type=float, default=10.0)
    parsers["menu"].add_argument("action", choices=["push", "show"])
    parsers["sweep"].add_argument("what", choices=["platform", "overdue", "pushes", "outbox"])
    sim = parsers["platform-sim"]
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8702)
    sim.add_argument(
        "--script", default="happy", help="happy | correction | rejection | duplicates | out_of_order | fee"
    )
    sim.add_argument("--step-delay", type=float, default=5.0, help="seconds between callbacks")
    sim.add_argument("--callback-url", help="default: PUBLIC_BASE_URL/bridge/callback")
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
    from core.logs import setup_logging

    setup_logging(settings.LOG_LEVEL)
    try:
        return COMMANDS[command][0](settings, args) or 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one readable line for the operator; the details go to the log
        from core.logs import mask_text

        log.error("%s failed", command, exc_info=exc)
        print(
            f"{command}: {type(exc).__name__}: {mask_text(str(exc)).splitlines()[0] if str(exc) else ''}",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
