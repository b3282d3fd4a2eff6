"""The Sanic app: every blueprint, listener and convention, over one service container.

Imported by `python server.py serve` once the settings are installed (the job broker is built
from them when `jobs.broker` is first imported).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os

from cryptography.hazmat.primitives import serialization
from sanic import Request, Sanic
from sanic.response import HTTPResponse
from sanic.response import json as json_response
from sanic_ext import Extend

from bot import callback as oa_callback
from bot.crypto import OACrypto
from bridge import callback as platform_callback
from bridge.simulator import PlatformState, platform_blueprint
from console import audit as console_audit
from console import auth as console_auth
from console import cases as console_cases
from console import catalogue as console_catalogue
from console import citizens as console_citizens
from console import dashboard as console_dashboard
from console import evaluations as console_evaluations
from console import notices as console_notices
from console import officials as console_officials
from console import payments as console_payments
from console import stats as console_stats
from console import tickets as console_tickets
from console.pages import PAGE_BLUEPRINTS
from container import SIM_PLATFORM_KEY, SIM_PLATFORM_PREFIX, SIMULATOR_SECRET_HEADER, Services, sim_platform_secret
from core import http, openapi
from core.logs import logging_config
from core.settings import ConfigError, Settings, install
from jobs.kicks import BrokerKicks
from jobs.worker import broker, run_embedded_scheduler
from miniprogram_api import auth as mp_auth
from miniprogram_api import cases as mp_cases
from miniprogram_api import drafts as mp_drafts
from miniprogram_api import evaluations as mp_evaluations
from miniprogram_api import identity as mp_identity
from miniprogram_api import inbox as mp_inbox
from miniprogram_api import materials as mp_materials
from miniprogram_api import notices as mp_notices
from miniprogram_api import payments as mp_payments
from miniprogram_api import services as mp_services
from miniprogram_api import tickets as mp_tickets
from ops import docs, health
from payments import notify as pay_notify
from payments.alipay_sim import AlipayState, alipay_blueprint
from payments.setup import (
    ALIPAY_SIM_PREFIX,
    SIM_MCHID,
    SIM_MERCHANT_SERIAL,
    SIM_SELLER_ID,
    WECHATPAY_SIM_PREFIX,
    public_pem,
    sim_apiv3_key,
    sim_platform_serial,
)
from payments.setup import SIM_ALIPAY_APP_ID as SIM_ALIPAY_APP
from payments.wechatpay_sim import WeChatPayState, wechatpay_blueprint
from storage.db import close_db, init_db
from wechat.apps import SIM_APPS, WECHAT_SIM_PREFIX, sim_apps, sim_oa_callback_keys
from wechat.simulator import SimState, simulator_blueprint

log = logging.getLogger("zhangban")


def create_app(settings: Settings) -> Sanic:
    """The Sanic app for `settings`, with every blueprint, listener and convention installed."""
    problems = settings.serving_problems()
    if problems:  # server.py says so before; this guards every other way of building the app
        raise ConfigError(problems)
    install(settings)
    app = Sanic(
        "zhangban",
        log_config=logging_config(settings.LOG_LEVEL),
        dumps=http.dumps,
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
            # The document is ours (core.openapi), and so is its page: both served by ops.docs.
            "OAS": False,
            "CORS": False,
            "HEALTH": False,
            # Trusted proxies: unset, every forwarding header is ignored (a client could forge one).
            "PROXIES_COUNT": settings.PROXIES_COUNT,
            "FORWARDED_SECRET": settings.FORWARDED_SECRET,
            "REAL_IP_HEADER": settings.REAL_IP_HEADER,
        }
    )
    app.config.API_TITLE = "掌办 Zhangban API"
    app.config.API_VERSION = "1.0"
    app.config.API_DESCRIPTION = (
        "Backend of the city's palm-handling government service. Errors are "
        '`{"code", "message", "details"}`; every response carries `X-Request-ID`.'
    )
    Extend(app)

    http.install(app)
    for bp in BLUEPRINTS:
        app.blueprint(bp)
    _mount_simulators(app, settings)

    @app.before_server_start
    async def _open(app) -> None:
        await init_db(settings)
        services = Services(settings, kicks=BrokerKicks())
        await services.start()
        app.ctx.services = services
        # The catalogue revision and token revocations, followed before the first request.
        app.ctx.watchers = await services.watch()
        app.ctx.oa_crypto = oa_crypto(settings)
        app.ctx.bot_tasks = set()
        # The in-memory broker runs jobs in this process, with these same services.
        broker.state.services = services
        try:
            await broker.startup()
        except Exception:  # Redis down: serve anyway, /readyz says so, workers declare the group
            log.exception("task broker could not start")

    @app.after_server_start
    async def _start_background(app) -> None:
        app.ctx.scheduler_task = None
        if settings.TASK_BROKER == "memory":
            app.ctx.scheduler_task = asyncio.get_running_loop().create_task(run_embedded_scheduler())
        # One banner per server, not per worker (Sanic names its first worker "...-0-0").
        if os.environ.get("SANIC_WORKER_NAME", "-0-0").endswith("-0-0"):
            _banner(app, settings)

    @app.before_server_stop
    async def _stop_background(app) -> None:
        tasks = [task for task in (app.ctx.scheduler_task, *app.ctx.watchers) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        app.ctx.services.catalogue.stop_watching()
        # Bot answers still being worked out or on their way to WeChat (a finished answer may
        # start its late delivery, so look again until none is left or 5 s have passed).
        deadline = asyncio.get_running_loop().time() + 5
        while app.ctx.bot_tasks and (left := deadline - asyncio.get_running_loop().time()) > 0:
            await asyncio.wait(list(app.ctx.bot_tasks), timeout=left)

    @app.after_server_stop
    async def _close(app) -> None:
        try:
            await broker.shutdown()
        finally:
            await app.ctx.services.close()
            await close_db()

    return app


def _banner(app: Sanic, settings: Settings) -> None:
    """The one start line that matters: where the service, its API docs and the simulators are."""
    url = settings.local_base_url
    simulators = {}
    if hasattr(app.ctx, "wechat_sim"):
        simulators["wechat"] = url + WECHAT_SIM_PREFIX + "/__sim__/stats"
    if hasattr(app.ctx, "platform_sim"):
        simulators["platform"] = url + SIM_PLATFORM_PREFIX + "/__sim__/cases"
    message = f"Zhangban serving at {url} - API docs {url}/docs"
    if simulators:
        message += " - simulators: " + ", ".join(f"{name} {page}" for name, page in simulators.items())
    pages = {f"{name}_simulator": page for name, page in simulators.items()}
    log.info(message, extra={"url": url, "docs": url + "/docs", **pages, "embedded": settings.embedded})


def _mount_simulators(app: Sanic, settings: Settings) -> None:
    """Mounts the WeChat and platform simulators for each channel left unset: on the embedded
    default, or on a staging deployment (ALLOW_SIMULATORS) behind its SIMULATOR_SECRET."""
    mounted = []
    if settings.simulated("WeChat mini-program") or settings.simulated("WeChat official account"):
        app.ctx.wechat_sim = SimState(apps=sim_apps(settings))
        sim_bp = simulator_blueprint(app.ctx.wechat_sim, url_prefix=WECHAT_SIM_PREFIX)
        openapi.exclude(sim_bp)  # a stand-in for WeChat, not part of our API
        mounted.append(sim_bp)
    if settings.simulated("core platform"):
        # Callbacks every few seconds, so a citizen's case visibly progresses within a minute.
        app.ctx.platform_sim = PlatformState(
            SIM_PLATFORM_KEY,
            sim_platform_secret(settings),
            callback_url=settings.local_base_url + "/bridge/callback",
            default_script="happy",
            step_delay_s=8.0,
        )
        platform_bp = platform_blueprint(app.ctx.platform_sim, url_prefix=SIM_PLATFORM_PREFIX)
        openapi.exclude(platform_bp)
        mounted.append(platform_bp)
    mounted += _payment_simulators(app, settings)
    secret = settings.simulator_secret
    for bp in mounted:
        if secret:
            # A plain function: Sanic's blueprints silently drop a functools.partial middleware.
            bp.middleware(_simulator_guard(secret.encode()), "request")
        app.blueprint(bp)
    if mounted and secret:
        log.warning(
            "simulators are serving (ALLOW_SIMULATORS=%s): %s stand in for the real channels; "
            "never in front of real citizens",
            settings.ALLOW_SIMULATORS,
            ", ".join(settings.simulated_channels),
        )


def _payment_simulators(app: Sanic, settings: Settings) -> list:
    """WeChat Pay and Alipay simulators for the payment channels left unset, with this node's
    simulated merchants registered (their keys: `payments.setup`)."""
    mounted = []
    scale = settings.PAYMENT_SIM_TIME_SCALE
    if settings.simulated("WeChat Pay"):
        state = WeChatPayState(
            time_scale=scale,
            platform_key=_private_key(settings.simulator_rsa_key("wechatpay_platform")),
            platform_serial=sim_platform_serial(settings),
        )
        state.register_merchant(
            mchid=SIM_MCHID,
            appids=[SIM_APPS["mp"][0]],
            serial_no=SIM_MERCHANT_SERIAL,
            public_key_pem=public_pem(settings.simulator_rsa_key("wechatpay_merchant")),
            apiv3_key=sim_apiv3_key(settings),
        )
        app.ctx.wechatpay_sim = state
        bp = wechatpay_blueprint(state, url_prefix=WECHATPAY_SIM_PREFIX)
        openapi.exclude(bp)
        mounted.append(bp)
    if settings.simulated("Alipay"):
        state = AlipayState(time_scale=scale, private_key=_private_key(settings.simulator_rsa_key("alipay_platform")))
        state.register_app(
            app_id=SIM_ALIPAY_APP,
            app_public_key_pem=public_pem(settings.simulator_rsa_key("alipay_app")),
            seller_id=SIM_SELLER_ID,
        )
        app.ctx.alipay_sim = state
        bp = alipay_blueprint(state, url_prefix=ALIPAY_SIM_PREFIX)
        openapi.exclude(bp)
        mounted.append(bp)
    return mounted


def _private_key(pem: str):
    return serialization.load_pem_private_key(pem.encode(), password=None)


def _simulator_guard(secret: bytes):
    """A request middleware: every simulator route of a staging deployment asks for its secret,
    compared in constant time, and each use is logged as a warning."""

    async def guard(request: Request) -> HTTPResponse | None:
        given = request.headers.get(SIMULATOR_SECRET_HEADER, "").encode()
        if not hmac.compare_digest(given, secret):
            log.warning("simulator route refused: no valid %s", SIMULATOR_SECRET_HEADER, extra={"path": request.path})
            body = {"code": "simulator_secret_invalid", "message": "模拟器密钥不正确", "details": {}}
            return json_response(body, status=403)
        log.warning("simulator used", extra={"path": request.path})
        return None

    return guard


BLUEPRINTS = [
    health.bp,
    docs.bp,
    console_auth.bp,
    console_citizens.bp,
    console_cases.bp,
    console_evaluations.bp,
    mp_auth.bp,
    mp_identity.bp,
    mp_services.bp,
    mp_drafts.bp,
    mp_cases.bp,
    mp_evaluations.bp,
    mp_inbox.bp,
    oa_callback.bp,
    platform_callback.bp,
    pay_notify.bp,
    mp_payments.bp,
    console_payments.bp,
    console_stats.bp,
    console_dashboard.bp,
    mp_materials.bp,
    mp_materials.files_bp,
    mp_tickets.bp,
    console_tickets.bp,
    console_notices.bp,
    mp_notices.bp,
    console_officials.bp,
    console_catalogue.bp,
    console_audit.bp,
    *PAGE_BLUEPRINTS,
]


def oa_crypto(settings: Settings) -> OACrypto:
    """The official-account callback crypto: configured, or the simulated account's."""
    mode = settings.WECHAT_OA_MODE
    if settings.simulated("WeChat official account"):
        token, aes_key = sim_oa_callback_keys(settings)
        return OACrypto(token, aes_key, SIM_APPS["oa"][0], mode=mode)
    return OACrypto(settings.WECHAT_OA_TOKEN, settings.WECHAT_OA_AES_KEY, settings.WECHAT_OA_APPID, mode=mode)
