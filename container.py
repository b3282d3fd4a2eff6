"""The one place that wires services: built once from settings, shared by the app, the job
workers and the CLI.

    services = Services(settings, kicks=kicks)
    ... services.drafts.submit(...), services.relay.run_due(), services.pusher.run_one(id) ...
    await services.close()

Connections (Redis, HTTP) open at construction; every use case object is built on first use
(`cached_property`), so a job worker never starts the upload pipeline nor loads the FAQ, and
the API server never builds a pusher it does not need. `Services` knows no transport and no
job broker: the caller hands it the `Kicks` that reach its workers.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from functools import cached_property

import httpx
from redis.asyncio import Redis

from bridge.client import PlatformClient
from bridge.signing import Verifier
from core.china_time import QuietHours
from core.kicks import Kicks
from core.ratelimit import Limiter
from core.settings import Settings
from handlers.auth import TokenStore
from handlers.bot import FAQ, Bot, load_halls
from handlers.cases.outbox import Relay
from handlers.catalog.reader import CatalogueReader
from handlers.drafts import Drafts
from handlers.evaluation.loop import LoopPolicy, Rectifications
from handlers.evaluation.rating import Evaluations
from handlers.materials.links import platform_links
from handlers.materials.service import Materials, Pipeline
from handlers.notices.notices import Notices
from handlers.notices.sender import Sender
from handlers.payments.channels import Channels
from handlers.payments.notifies import Notifies
from handlers.payments.orders import Payments
from handlers.payments.platform import FeeRelay
from handlers.payments.reconcile import Reconciler
from handlers.payments.recovery import Sweeper
from handlers.payments.refunds import Refunder
from handlers.push import Pusher
from handlers.tickets import ANSWERED, TicketPolicy, Tickets
from payments.alipay import Alipay
from payments.setup import alipay_config, wechatpay_config
from payments.wechatpay import WeChatPay
from storage.crypto import FieldCipher
from storage.files import FileSealer, FileStore, create_file_store
from storage.redis import Keys, create_redis
from wechat.apps import mp_appid, progress_template, wechat_client
from wechat.client import AiohttpSender, OfficialAccountAPI, WeChatClient

log = logging.getLogger("zhangban.services")

# The in-process core-platform simulator (its secret is derived from the secret key).
SIM_PLATFORM_KEY = "zhangban-sim"
SIM_PLATFORM_PREFIX = "/_sim/platform"
# Where our own clients put the deployment's SIMULATOR_SECRET for the simulators of a staging deployment.
SIMULATOR_SECRET_HEADER = "X-Simulator-Secret"


def sim_platform_secret(settings: Settings) -> str:
    return settings.simulator_credential("platform").hex()


def platform_endpoint(settings: Settings) -> tuple[str, str, str]:
    """(base URL, app key, secret) of the core platform, or of the in-process simulator."""
    if settings.simulated("core platform"):
        return settings.local_base_url + SIM_PLATFORM_PREFIX, SIM_PLATFORM_KEY, sim_platform_secret(settings)
    return settings.PLATFORM_BASE_URL, settings.PLATFORM_APP_KEY, settings.PLATFORM_SECRET


class Services:
    """Every service of one process, built from its settings."""

    def __init__(self, settings: Settings, *, kicks: Kicks):
        self.settings = settings
        self.kicks = kicks
        self.keys = Keys(settings.REDIS_KEY_PREFIX)
        self.redis: Redis = create_redis(settings)
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(10.0, connect=3.0), limits=httpx.Limits(max_connections=100)
        )
        # Our clients of the in-process simulators: with the deployment's simulator secret if it has one.
        self.sim_http = self.http
        if settings.simulator_secret:
            self.sim_http = httpx.AsyncClient(
                timeout=httpx.Timeout(10.0, connect=3.0),
                headers={SIMULATOR_SECRET_HEADER: settings.simulator_secret},
            )
        # WeChat calls (one per push, per notice message) go through aiohttp directly.
        self.wechat_http = AiohttpSender()
        self.wechat_sim_http = self.wechat_http
        if settings.simulator_secret:
            self.wechat_sim_http = AiohttpSender(headers={SIMULATOR_SECRET_HEADER: settings.simulator_secret})
        self.cipher = FieldCipher(settings.field_encryption_key(), settings.field_encryption_old_keys())

    async def watch(self) -> list[asyncio.Task]:
        """For a serving process: follows the catalogue revision and the token revocations in
        background tasks (the caller cancels them), so requests look neither up."""
        tasks = [await self.catalogue.start_watching()]
        if not self.settings.embedded:  # fakeredis: every revocation is made in this process
            tasks.append(asyncio.get_running_loop().create_task(self.tokens.listen()))
        return tasks

    @staticmethod
    def of(request) -> Services:
        """The services of the app serving `request` (a Sanic request)."""
        return request.app.ctx.services

    async def start(self) -> None:
        """Prepares what needs a round trip before the first request (the S3 bucket)."""
        ensure_bucket = getattr(self.file_store, "ensure_bucket", None)
        if ensure_bucket is not None:
            await ensure_bucket()

    async def close(self) -> None:
        """Closes every connection and pool this process opened."""
        await self.http.aclose()
        if self.sim_http is not self.http:
            await self.sim_http.aclose()
        await self.wechat_http.aclose()
        if self.wechat_sim_http is not self.wechat_http:
            await self.wechat_sim_http.aclose()
        if "pipeline" in self.__dict__:
            self.pipeline.shutdown()
        if "file_store" in self.__dict__ and hasattr(self.file_store, "close"):
            await self.file_store.close()
        await self.redis.aclose()

    # -- citizens and officials ------------------------------------------------------------

    @cached_property
    def tokens(self) -> TokenStore:
        return TokenStore(redis=self.redis, keys=self.keys, access_ttl_s=self.settings.ACCESS_TOKEN_TTL)

    @cached_property
    def limiter(self) -> Limiter:
        s = self.settings
        return Limiter(redis_url=s.REDIS_URL, key_prefix=s.REDIS_KEY_PREFIX, overrides=s.RATE_LIMITS)

    @cached_property
    def catalogue(self) -> CatalogueReader:
        # On the embedded default the CLI publishes to the database only (its fakeredis is its own).
        return CatalogueReader(redis=self.redis, keys=self.keys, shared_redis=not self.settings.embedded)

    @cached_property
    def drafts(self) -> Drafts:
        return Drafts(cipher=self.cipher, ttl_days=self.settings.DRAFT_TTL_DAYS, kicks=self.kicks)

    @cached_property
    def bot(self) -> Bot:
        return Bot(
            catalogue=self.catalogue,
            cipher=self.cipher,
            halls=load_halls(),
            mp_appid=mp_appid(self.settings),
            faq=FAQ.load(),
            evaluations=self.evaluations,
            ticket_policy=self.ticket_policy,
            notices=self.notices,
        )

    @cached_property
    def ticket_policy(self) -> TicketPolicy:
        s = self.settings
        return TicketPolicy(
            consultation_days=s.TICKET_CONSULTATION_DAYS,
            complaint_days=s.TICKET_COMPLAINT_DAYS,
            duty_department=s.TICKET_DUTY_DEPARTMENT,
            remind_before=timedelta(hours=s.TICKET_REMIND_HOURS),
        )

    @cached_property
    def tickets(self) -> Tickets:
        return Tickets(catalogue=self.catalogue, cipher=self.cipher, policy=self.ticket_policy, kicks=self.kicks)

    # -- materials ---------------------------------------------------------------------------

    @cached_property
    def pipeline(self) -> Pipeline:
        return Pipeline(workers=self.settings.UPLOAD_WORKERS, queue=self.settings.UPLOAD_QUEUE)

    @cached_property
    def file_store(self) -> FileStore:
        return create_file_store(self.settings)

    @cached_property
    def materials(self) -> Materials:
        s = self.settings
        return Materials(
            store=self.file_store,
            sealer=FileSealer(s.field_encryption_key(), s.field_encryption_old_keys()),
            pipeline=self.pipeline,
            signing_key=s.secret_key().encode(),
            base_url=s.public_base_url,
        )

    # -- WeChat ------------------------------------------------------------------------------

    def _http_for(self, channel: str) -> httpx.AsyncClient:
        return self.sim_http if self.settings.simulated(channel) else self.http

    def _wechat_http_for(self, channel: str) -> AiohttpSender:
        return self.wechat_sim_http if self.settings.simulated(channel) else self.wechat_http

    @cached_property
    def wechat_mp(self) -> WeChatClient:
        http = self._wechat_http_for("WeChat mini-program")
        return wechat_client(self.settings, "mp", redis=self.redis, http=http)

    @cached_property
    def oa(self) -> OfficialAccountAPI:
        http = self._wechat_http_for("WeChat official account")
        return OfficialAccountAPI(wechat_client(self.settings, "oa", redis=self.redis, http=http))

    @cached_property
    def pusher(self) -> Pusher:
        s = self.settings
        return Pusher(
            mp=self.wechat_mp,
            oa=self.oa,
            mp_appid=mp_appid(s),
            mp_template_id=progress_template(s, "mp"),
            oa_template_id=progress_template(s, "oa"),
            quiet=QuietHours.parse(s.PUSH_QUIET_HOURS),
            lease_s=s.PUSH_LEASE_S,
            max_attempts=s.PUSH_MAX_ATTEMPTS,
            batch=s.PUSH_BATCH,
            concurrency=s.PUSH_CONCURRENCY,
            lanes=s.PUSH_LANES,
            miniprogram_state="developer" if s.embedded else "formal",
            routes={ANSWERED: self.tickets.route_of},
        )

    # -- service notices ---------------------------------------------------------------------

    @cached_property
    def notices(self) -> Notices:
        return Notices(catalogue=self.catalogue)

    @cached_property
    def notice_sender(self) -> Sender:
        s = self.settings
        return Sender(
            mp=self.wechat_mp,
            oa=self.oa,
            mp_appid=mp_appid(s),
            # A notice fills the progress template's keywords; a deployment with a template of its own sets these.
            mp_template_id=s.NOTICE_MP_TEMPLATE_ID or progress_template(s, "mp"),
            oa_template_id=s.NOTICE_OA_TEMPLATE_ID or progress_template(s, "oa"),
            redis=self.redis,
            keys=self.keys,
            rate=s.NOTICE_SEND_RATE,
            batch=s.NOTICE_BATCH,
            miniprogram_state="developer" if s.embedded else "formal",
        )

    # -- the core platform -----------------------------------------------------------------

    @cached_property
    def platform(self) -> PlatformClient:
        base_url, app_key, secret = platform_endpoint(self.settings)
        return PlatformClient(base_url=base_url, app_key=app_key, secret=secret, http=self._http_for("core platform"))

    @cached_property
    def platform_verifier(self) -> Verifier:
        _, app_key, secret = platform_endpoint(self.settings)
        return Verifier(app_key, secret)

    @cached_property
    def relay(self) -> Relay:
        s = self.settings
        return Relay(
            platform=self.platform,
            cipher=self.cipher,
            material_links=platform_links(signing_key=s.secret_key().encode(), base_url=s.public_base_url),
            kicks=self.kicks,
            lease=timedelta(seconds=s.OUTBOX_STUCK_S),
            deliveries={kind: self.fee_relay.deliver for kind in FeeRelay.kinds}
            | {kind: self.evaluations.deliver for kind in Evaluations.kinds},
        )

    @cached_property
    def fee_relay(self) -> FeeRelay:
        return FeeRelay(platform=self.platform, kicks=self.kicks)

    # -- 好差评 and the rectification loop ---------------------------------------------------

    @cached_property
    def loop_policy(self) -> LoopPolicy:
        s = self.settings
        return LoopPolicy(
            verify_days=s.RECTIFY_VERIFY_DAYS,
            rectify_days=s.RECTIFY_DAYS,
            remind_before=timedelta(hours=s.RECTIFY_REMIND_HOURS),
        )

    @cached_property
    def rectifications(self) -> Rectifications:
        return Rectifications(cipher=self.cipher, kicks=self.kicks, policy=self.loop_policy)

    @cached_property
    def evaluations(self) -> Evaluations:
        return Evaluations(
            cipher=self.cipher,
            kicks=self.kicks,
            platform=self.platform,
            loop=self.rectifications,
            policy=self.loop_policy,
            default_after=timedelta(days=self.settings.EVALUATION_DEFAULT_DAYS),
        )

    # -- payments ----------------------------------------------------------------------------

    @cached_property
    def channels(self) -> Channels:
        s = self.settings
        wechat = WeChatPay(wechatpay_config(s, appid=mp_appid(s)), http=self._http_for("WeChat Pay"))
        alipay = Alipay(alipay_config(s), http=self._http_for("Alipay"))
        return Channels(
            wechat=wechat,
            alipay=alipay,
            wechat_mchid=wechat.config.mchid,
            wechat_appid=wechat.config.appid,
            alipay_app_id=alipay.config.app_id,
            alipay_seller_id=alipay.config.seller_id,
        )

    @cached_property
    def payments(self) -> Payments:
        return Payments(channels=self.channels, expire_minutes=self.settings.PAYMENT_EXPIRE_MINUTES, kicks=self.kicks)

    @cached_property
    def notifies(self) -> Notifies:
        channels = self.channels
        return Notifies(
            channels=channels,
            kicks=self.kicks,
            parse_wechat=channels.wechat.parse_notify,
            parse_alipay=channels.alipay.parse_notify,
        )

    @cached_property
    def refunder(self) -> Refunder:
        return Refunder(channels=self.channels)

    @cached_property
    def payments_sweeper(self) -> Sweeper:
        return Sweeper(channels=self.channels, query_after=timedelta(seconds=self.settings.PAYMENT_QUERY_AFTER_S))

    @cached_property
    def reconciler(self) -> Reconciler:
        return Reconciler(channels=self.channels)

    @property
    def platform_silence(self) -> timedelta:
        return timedelta(seconds=self.settings.PLATFORM_SILENCE_S)
