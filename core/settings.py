"""Typed settings read once from the environment and `.env`, then passed down.

Every variable of the PRODUCT.md config contract lives here. A wrong or half-set value is a
`ConfigError` whose lines each name one variable and what is wrong with it; `server.py`
prints them and exits with code 2.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.china_time import QuietHours
from core.ratelimit import parse_overrides

PROJECT_ROOT = Path(__file__).resolve().parent.parent

DATABASE_SCHEMES = {"sqlite", "postgres", "postgresql"}
REDIS_SCHEMES = {"redis", "rediss", "unix"}

# Each external channel is either wholly configured (real endpoint) or wholly unset
# (in-process simulator). Base URLs with a public default are not part of the check.
CHANNEL_GROUPS: dict[str, tuple[str, ...]] = {
    "WeChat mini-program": ("WECHAT_MP_APPID", "WECHAT_MP_SECRET"),
    "WeChat official account": (
        "WECHAT_OA_APPID",
        "WECHAT_OA_SECRET",
        "WECHAT_OA_TOKEN",
        "WECHAT_OA_AES_KEY",
    ),
    "WeChat Pay": (
        "WECHATPAY_MCHID",
        "WECHATPAY_SERIAL_NO",
        "WECHATPAY_PRIVATE_KEY",
        "WECHATPAY_APIV3_KEY",
        "WECHATPAY_PLATFORM_PUBLIC_KEY",
        "WECHATPAY_PLATFORM_SERIAL",
    ),
    "Alipay": ("ALIPAY_APP_ID", "ALIPAY_PRIVATE_KEY", "ALIPAY_PUBLIC_KEY"),
    "core platform": ("PLATFORM_BASE_URL", "PLATFORM_APP_KEY", "PLATFORM_SECRET"),
    "S3 file store": ("S3_BUCKET", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"),
}
# The channels a production deployment must never leave to an in-process simulator: anyone could
# mint a login for any citizen, finish their face check, or sign platform callbacks.
PRODUCTION_CHANNELS = (
    "WeChat mini-program",
    "WeChat official account",
    "WeChat Pay",
    "Alipay",
    "core platform",
)
PEM_PATH_FIELDS = (
    "WECHATPAY_PRIVATE_KEY",
    "WECHATPAY_PLATFORM_PUBLIC_KEY",
    "ALIPAY_PRIVATE_KEY",
    "ALIPAY_PUBLIC_KEY",
)


class ConfigError(Exception):
    """Start-up configuration is wrong; `lines` hold one `VARIABLE: problem` each."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


def _check_url(value: str, schemes: set[str]) -> str:
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        raise ValueError(f"unsupported scheme '{parts.scheme}'" if parts.scheme else "not a URL")
    if parts.scheme in {"http", "https"} and not parts.netloc:
        raise ValueError("URL has no host")
    return value.rstrip("/")


class Settings(BaseSettings):
    """The whole configuration of one Zhangban process."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        case_sensitive=True,
        extra="ignore",
        frozen=True,
    )

    HOST: str = "127.0.0.1"
    PORT: int = Field(8000, ge=1, le=65535)
    WORKERS: int = Field(1, ge=1, le=64)
    DATABASE_URL: str = "sqlite://var/zb.sqlite3"
    REDIS_URL: str | None = None
    TASK_BROKER: Literal["memory", "redis"] = "memory"
    MEDIA_ROOT: str = "var/media"
    SECRET_KEY: str | None = None
    FIELD_ENCRYPTION_KEY: str | None = None
    # Earlier master keys, comma-separated: they still open old rows until `rotate-keys` runs.
    FIELD_ENCRYPTION_OLD_KEYS: str | None = None

    WECHAT_API_BASE: str = "https://api.weixin.qq.com"
    WECHAT_MP_APPID: str | None = None
    WECHAT_MP_SECRET: str | None = None
    WECHAT_OA_APPID: str | None = None
    WECHAT_OA_SECRET: str | None = None
    WECHAT_OA_TOKEN: str | None = None
    WECHAT_OA_AES_KEY: str | None = None
    # The callback's message mode. "safe" takes only encrypted messages; "compatible" (WeChat's
    # 兼容模式, while switching modes in its console) also takes plain ones, whose body no
    # signature covers, so it is never the default.
    WECHAT_OA_MODE: Literal["safe", "compatible"] = "safe"

    WECHATPAY_API_BASE: str = "https://api.mch.weixin.qq.com"
    WECHATPAY_MCHID: str | None = None
    WECHATPAY_SERIAL_NO: str | None = None
    WECHATPAY_PRIVATE_KEY: str | None = None
    WECHATPAY_APIV3_KEY: str | None = None
    WECHATPAY_PLATFORM_PUBLIC_KEY: str | None = None
    WECHATPAY_PLATFORM_SERIAL: str | None = None

    ALIPAY_GATEWAY: str = "https://openapi.alipay.com/gateway.do"
    ALIPAY_APP_ID: str | None = None
    ALIPAY_PRIVATE_KEY: str | None = None
    ALIPAY_PUBLIC_KEY: str | None = None
    # The merchant's Alipay PID (2088...): a notify for another seller is refused when set.
    ALIPAY_SELLER_ID: str | None = Field(None, pattern=r"^2088[0-9]{12}$")

    # Payments: how long an order may be paid, when an unanswered order is asked about, and
    # the compression of the in-process payment simulators' notify retry schedules.
    PAYMENT_EXPIRE_MINUTES: int = Field(30, ge=5, le=120)
    PAYMENT_QUERY_AFTER_S: int = Field(120, ge=5, le=3600)
    PAYMENT_SIM_TIME_SCALE: float = Field(1.0, gt=0, le=1.0)

    PLATFORM_BASE_URL: str | None = None
    PLATFORM_APP_KEY: str | None = None
    PLATFORM_SECRET: str | None = None

    PUBLIC_BASE_URL: str | None = None

    # A staging deployment may serve the simulators in production mode, behind SIMULATOR_SECRET.
    ALLOW_SIMULATORS: Literal["staging"] | None = None
    SIMULATOR_SECRET: str | None = None

    # Trusted proxies (off by default): how Sanic finds the citizen's address behind a load balancer.
    PROXIES_COUNT: int | None = Field(None, ge=0, le=16)
    FORWARDED_SECRET: str | None = None
    REAL_IP_HEADER: str | None = None

    # Material files in an S3-compatible store instead of MEDIA_ROOT (all or none, endpoint optional).
    S3_BUCKET: str | None = None
    S3_ENDPOINT_URL: str | None = None
    S3_REGION: str = "us-east-1"
    S3_ACCESS_KEY_ID: str | None = None
    S3_SECRET_ACCESS_KEY: str | None = None

    # Operational knobs beyond the contract, each with a safe default.
    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    REQUEST_MAX_SIZE: int = Field(2 * 1024 * 1024, ge=1024)
    REQUEST_TIMEOUT: float = Field(30.0, gt=0)
    RESPONSE_TIMEOUT: float = Field(30.0, gt=0)
    GRACEFUL_SHUTDOWN_TIMEOUT: float = Field(15.0, gt=0)
    REDIS_KEY_PREFIX: str = Field("zb:", min_length=1, max_length=64)
    ACCESS_TOKEN_TTL: int = Field(900, ge=1, le=86400)
    DRAFT_TTL_DAYS: int = Field(30, ge=1, le=365)
    # Uploads processed at once per server worker, and how many more may wait; beyond that `503 busy`.
    UPLOAD_WORKERS: int = Field(2, ge=1, le=32)
    UPLOAD_QUEUE: int = Field(4, ge=0, le=256)
    # How long the official-account callback may work before answering `success` (WeChat waits 5 s).
    BOT_DEADLINE_S: float = Field(4.0, gt=0, le=4.5)
    # Overrides of the abuse limits, e.g. "login.ip=120/minute,declare.user=5/hour".
    RATE_LIMITS: str | None = None

    # Progress pushes. Template ids come from the mini-program's and the official account's
    # consoles (unset: that channel is skipped, or the simulator's ids on the embedded default).
    PUSH_MP_TEMPLATE_ID: str | None = Field(None, max_length=128)
    PUSH_OA_TEMPLATE_ID: str | None = Field(None, max_length=128)
    # Non-urgent pushes wait out these China-time hours ("" turns quiet hours off).
    PUSH_QUIET_HOURS: str = "22:00-08:00"
    # A push claimed by a worker that died is taken up again after this long.
    PUSH_LEASE_S: int = Field(120, ge=1, le=3600)
    PUSH_MAX_ATTEMPTS: int = Field(8, ge=1, le=50)
    # A push drain claims this many due pushes at once and has at most PUSH_CONCURRENCY WeChat
    # calls in flight per channel and worker process.
    PUSH_BATCH: int = Field(100, ge=1, le=1000)
    PUSH_CONCURRENCY: int = Field(16, ge=1, le=100)
    # Batches under way at once per worker process (PostgreSQL; SQLite drains one at a time).
    PUSH_LANES: int = Field(2, ge=1, le=8)
    # Sweeps: outbox rows in flight longer than this are re-queued; delivered cases without a
    # platform callback for this long are looked up at the platform.
    OUTBOX_STUCK_S: int = Field(600, ge=1)
    PLATFORM_SILENCE_S: int = Field(2 * 86400, ge=1)
    # 好差评: a case unrated this many days after its decision gets the default 基本满意; a bad
    # review's call-back (回访) and rectification (整改) deadlines in working days, and how many
    # hours before a deadline the department is reminded.
    EVALUATION_DEFAULT_DAYS: int = Field(7, ge=1, le=60)
    RECTIFY_VERIFY_DAYS: int = Field(1, ge=1, le=30)
    RECTIFY_DAYS: int = Field(15, ge=1, le=90)
    RECTIFY_REMIND_HOURS: int = Field(8, ge=1, le=240)
    # Consultations and complaints: answered within these working days, routed to the duty
    # department when no service matches, the department reminded this many hours before the deadline.
    TICKET_CONSULTATION_DAYS: int = Field(2, ge=1, le=60)
    TICKET_COMPLAINT_DAYS: int = Field(5, ge=1, le=60)
    TICKET_DUTY_DEPARTMENT: str = Field("泸州市政务服务中心", min_length=1, max_length=128)
    TICKET_REMIND_HOURS: int = Field(24, ge=1, le=720)
    # Service notices: WeChat messages per second over every sender (0: no limit, benchmarks
    # only), recipients handed out per batch, and the templates a notice is sent with (unset:
    # the progress templates, whose keyword layout a notice fills).
    NOTICE_SEND_RATE: int = Field(50, ge=0, le=10_000)
    NOTICE_BATCH: int = Field(200, ge=1, le=5_000)
    NOTICE_MP_TEMPLATE_ID: str | None = Field(None, max_length=128)
    NOTICE_OA_TEMPLATE_ID: str | None = Field(None, max_length=128)

    @field_validator("PUSH_QUIET_HOURS")
    @classmethod
    def _quiet_hours(cls, value: str) -> str:
        QuietHours.parse(value)
        return value

    @field_validator("RATE_LIMITS")
    @classmethod
    def _rate_limits(cls, value: str | None) -> str | None:
        if value:
            parse_overrides(value)
        return value

    # -- per-field checks ------------------------------------------------------------

    @field_validator(
        "REDIS_URL",
        "SECRET_KEY",
        "FIELD_ENCRYPTION_KEY",
        "FIELD_ENCRYPTION_OLD_KEYS",
        "PUBLIC_BASE_URL",
        "S3_ENDPOINT_URL",
        "PUSH_MP_TEMPLATE_ID",
        "PUSH_OA_TEMPLATE_ID",
        "NOTICE_MP_TEMPLATE_ID",
        "NOTICE_OA_TEMPLATE_ID",
        "ALLOW_SIMULATORS",
        "SIMULATOR_SECRET",
        "FORWARDED_SECRET",
        "REAL_IP_HEADER",
        *[name for group in CHANNEL_GROUPS.values() for name in group],
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("DATABASE_URL")
    @classmethod
    def _database_url(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in DATABASE_SCHEMES:
            raise ValueError(f"unsupported scheme '{scheme}'" if scheme else "not a URL")
        if scheme != "sqlite" and not urlsplit(value).hostname:
            raise ValueError("PostgreSQL URL has no host")
        return value

    @field_validator("REDIS_URL")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value, REDIS_SCHEMES)

    @field_validator(
        "WECHAT_API_BASE",
        "WECHATPAY_API_BASE",
        "ALIPAY_GATEWAY",
        "PLATFORM_BASE_URL",
        "PUBLIC_BASE_URL",
        "S3_ENDPOINT_URL",
    )
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value, {"http", "https"})

    @field_validator("SECRET_KEY")
    @classmethod
    def _secret_key(cls, value: str | None) -> str | None:
        if value is not None and len(value) < 32:
            raise ValueError("must be at least 32 characters")
        return value

    @field_validator("SIMULATOR_SECRET")
    @classmethod
    def _simulator_secret(cls, value: str | None) -> str | None:
        if value is not None and len(value) < 32:
            raise ValueError("must be at least 32 characters")
        return value

    @field_validator("FIELD_ENCRYPTION_KEY")
    @classmethod
    def _field_key(cls, value: str | None) -> str | None:
        if value is not None:
            _decode_key(value)
        return value

    @field_validator("FIELD_ENCRYPTION_OLD_KEYS")
    @classmethod
    def _old_keys(cls, value: str | None) -> str | None:
        if value is not None:
            for part in value.split(","):
                _decode_key(part.strip())
        return value

    @field_validator("WECHAT_OA_AES_KEY")
    @classmethod
    def _oa_aes_key(cls, value: str | None) -> str | None:
        if value is not None and len(value) != 43:
            raise ValueError("EncodingAESKey must be 43 characters")
        return value

    @field_validator("WECHATPAY_APIV3_KEY")
    @classmethod
    def _apiv3_key(cls, value: str | None) -> str | None:
        if value is not None and len(value.encode()) != 32:
            raise ValueError("APIv3 key must be 32 bytes")
        return value

    @field_validator(*PEM_PATH_FIELDS)
    @classmethod
    def _pem_path(cls, value: str | None) -> str | None:
        if value is None:
            return None
        path = Path(value)
        if not path.is_file():
            raise ValueError(f"file not found: {value}")
        if b"-----BEGIN" not in path.read_bytes()[:4096]:
            raise ValueError(f"not a PEM file: {value}")
        return value

    # -- cross-field checks ----------------------------------------------------------

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        problems: list[str] = []
        for channel, names in CHANNEL_GROUPS.items():
            present = [n for n in names if getattr(self, n) is not None]
            if present and len(present) != len(names):
                missing = next(n for n in names if getattr(self, n) is None)
                problems.append(f"{missing}: missing; {channel} is half-configured ({present[0]} is set)")
        if self.WORKERS > 1 and self.REDIS_URL is None:
            problems.append(
                "WORKERS: more than 1 worker needs REDIS_URL "
                "(fakeredis and the in-memory broker live inside one process)"
            )
        elif self.WORKERS > 1 and self.TASK_BROKER == "memory":
            problems.append(
                "WORKERS: more than 1 worker needs TASK_BROKER=redis "
                "(with the in-memory broker every worker would run the periodic jobs)"
            )
        if self.TASK_BROKER == "redis" and self.REDIS_URL is None:
            problems.append("TASK_BROKER: 'redis' needs REDIS_URL")
        if self.REDIS_URL is not None:
            # Production: several processes must share the same keys.
            for name in ("SECRET_KEY", "FIELD_ENCRYPTION_KEY"):
                if getattr(self, name) is None:
                    problems.append(f"{name}: required in production (REDIS_URL is set)")
        if self.ALLOW_SIMULATORS and self.SIMULATOR_SECRET is None:
            problems.append("SIMULATOR_SECRET: required with ALLOW_SIMULATORS (every simulator route checks it)")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def serving_problems(self) -> list[str]:
        """Why this configuration must not serve, one `VARIABLES: problem` line each (empty: it may).

        Production (REDIS_URL set) serves no simulator unless ALLOW_SIMULATORS says this is a
        staging deployment. Only the serving processes check it: a one-shot command touches no
        channel an attacker could reach.
        """
        if self.REDIS_URL is None or self.ALLOW_SIMULATORS:
            return []
        return [
            f"{', '.join(CHANNEL_GROUPS[channel])}: required in production (REDIS_URL is set); "
            f"the {channel} would be an unauthenticated simulator "
            "(a staging deployment sets ALLOW_SIMULATORS=staging and SIMULATOR_SECRET)"
            for channel in PRODUCTION_CHANNELS
            if self.simulated(channel)
        ]

    # -- derived values ----------------------------------------------------------------

    @property
    def embedded(self) -> bool:
        """True when running on the in-process parts (fakeredis, memory broker)."""
        return self.REDIS_URL is None

    @property
    def database_scheme(self) -> str:
        return urlsplit(self.DATABASE_URL).scheme

    def simulated(self, channel: str) -> bool:
        """True when `channel` (a CHANNEL_GROUPS key) is unset and served by a simulator."""
        return getattr(self, CHANNEL_GROUPS[channel][0]) is None

    @property
    def simulated_channels(self) -> list[str]:
        return [channel for channel in PRODUCTION_CHANNELS if self.simulated(channel)]

    @property
    def simulator_secret(self) -> str | None:
        """The secret every simulator route asks for, or None where they are open (embedded default)."""
        return self.SIMULATOR_SECRET if self.ALLOW_SIMULATORS else None

    def simulator_credential(self, name: str) -> bytes:
        """32 bytes for the simulated channel's credential `name` (an app secret, a callback token).

        Derived from the secret key, so no credential lives in the code, and the server and its
        workers (one SECRET_KEY) agree without storing anything.
        """
        return hmac.new(self.secret_key().encode(), f"simulator:{name}".encode(), hashlib.sha256).digest()

    @property
    def public_base_url(self) -> str:
        return self.PUBLIC_BASE_URL or f"http://{self.HOST}:{self.PORT}"

    def simulator_rsa_key(self, name: str) -> str:
        """A 2048-bit RSA private key (PEM) for the simulated payment channel's party `name`,
        generated once and kept under `var/` like the embedded secret key, so the server and its
        workers on one node sign and verify with the same keys."""
        return _local_secret(f"sim_rsa_{name}.pem", _new_rsa_pem)

    def secret_key(self) -> str:
        """The signing secret; on the embedded default a random one kept under `var/`."""
        return self.SECRET_KEY or _local_secret("secret_key", lambda: secrets.token_urlsafe(48))

    def field_encryption_key(self) -> bytes:
        """The 32-byte master key for field and file encryption."""
        value = self.FIELD_ENCRYPTION_KEY or _local_secret(
            "field_encryption_key",
            lambda: base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        )
        return _decode_key(value)

    def field_encryption_old_keys(self) -> list[bytes]:
        """Earlier master keys that still open old rows."""
        if not self.FIELD_ENCRYPTION_OLD_KEYS:
            return []
        return [_decode_key(part.strip()) for part in self.FIELD_ENCRYPTION_OLD_KEYS.split(",") if part.strip()]

    @property
    def local_base_url(self) -> str:
        """How this process reaches itself (for the in-process simulators)."""
        host = "127.0.0.1" if self.HOST in {"0.0.0.0", "::", ""} else self.HOST
        return f"http://{host}:{self.PORT}"


def _decode_key(value: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except ValueError:
        raise ValueError("must be base64 of 32 random bytes") from None
    if len(raw) != 32:
        raise ValueError(f"must decode to 32 bytes, got {len(raw)}")
    return raw


def _new_rsa_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _local_secret(name: str, make: Callable[[], str]) -> str:
    """A secret generated once and kept (mode 0600) under `var/` for the embedded default."""
    path = Path("var") / name
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = make()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race; use its value
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
    return value


def _describe(error: dict) -> list[str]:
    field = str(error["loc"][0]) if error.get("loc") else ""
    message = error["msg"].removeprefix("Value error, ")
    if not field:
        return message.split("\n")
    kind = error.get("type", "")
    if kind in {"int_parsing", "float_parsing"}:
        message = f"must be a number, got '{error.get('input')}'"
    elif kind == "literal_error":
        message = f"{message.replace('Input should be', 'must be')}, got '{error.get('input')}'"
    elif kind.startswith(("greater_than", "less_than")):
        message = f"{message.replace('Input should be', 'must be')}, got {error.get('input')}"
    return [f"{field}: {message}"]


def load_settings(**overrides: object) -> Settings:
    """The settings from the environment and `.env`; raises ConfigError naming each bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines: list[str] = []
        for error in exc.errors(include_url=False):
            lines.extend(_describe(error))
        raise ConfigError(lines) from None


_installed: Settings | None = None


def install(settings: Settings) -> Settings:
    """Makes `settings` this process's settings (the entry point calls this once)."""
    global _installed
    _installed = settings
    return settings


def installed() -> Settings:
    """This process's settings: those installed by the entry point, else read now, once."""
    global _installed
    if _installed is None:
        _installed = load_settings()
    return _installed
