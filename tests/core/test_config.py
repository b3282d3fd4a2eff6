"""Bad configuration stops start-up with exit 2 and one line naming the variable."""

from __future__ import annotations

import pytest

from tests.conftest import base_env, run_cli

KEY32 = "q" * 43 + "="  # base64 of 32 bytes

CASES = [
    ({"DATABASE_URL": "bogus://x"}, "DATABASE_URL: unsupported scheme 'bogus'"),
    ({"DATABASE_URL": "postgres:///nohost"}, "DATABASE_URL: PostgreSQL URL has no host"),
    ({"PORT": "abc"}, "PORT: must be a number, got 'abc'"),
    ({"PORT": "70000"}, "PORT: must be less than or equal to 65535, got 70000"),
    ({"WORKERS": "0"}, "WORKERS: must be greater than or equal to 1, got 0"),
    ({"WORKERS": "2"}, "WORKERS: more than 1 worker needs REDIS_URL"),
    ({"TASK_BROKER": "kafka"}, "TASK_BROKER: must be 'memory' or 'redis', got 'kafka'"),
    ({"TASK_BROKER": "redis"}, "TASK_BROKER: 'redis' needs REDIS_URL"),
    ({"REDIS_URL": "http://127.0.0.1:6379"}, "REDIS_URL: unsupported scheme 'http'"),
    ({"REDIS_URL": "redis://127.0.0.1:6379/0", "FIELD_ENCRYPTION_KEY": KEY32}, "SECRET_KEY: required in production"),
    ({"SECRET_KEY": "short"}, "SECRET_KEY: must be at least 32 characters"),
    ({"FIELD_ENCRYPTION_KEY": "c2hvcnQ="}, "FIELD_ENCRYPTION_KEY: must decode to 32 bytes, got 5"),
    ({"WECHAT_API_BASE": "ftp://api.weixin.qq.com"}, "WECHAT_API_BASE: unsupported scheme 'ftp'"),
    ({"WECHAT_MP_APPID": "wx123"}, "WECHAT_MP_SECRET: missing; WeChat mini-program is half-configured"),
    (
        {"PLATFORM_BASE_URL": "https://platform.example.gov.cn"},
        "PLATFORM_APP_KEY: missing; core platform is half-configured",
    ),
    ({"WECHAT_OA_AES_KEY": "tooshort"}, "WECHAT_OA_AES_KEY: EncodingAESKey must be 43 characters"),
    ({"WECHATPAY_APIV3_KEY": "abc"}, "WECHATPAY_APIV3_KEY: APIv3 key must be 32 bytes"),
    ({"ALIPAY_PRIVATE_KEY": "/nonexistent/key.pem"}, "ALIPAY_PRIVATE_KEY: file not found: /nonexistent/key.pem"),
    ({"WECHATPAY_MCHID": "1900000109"}, "WECHATPAY_SERIAL_NO: missing; WeChat Pay is half-configured"),
    ({"ALIPAY_APP_ID": "2021000122600001"}, "ALIPAY_PRIVATE_KEY: missing; Alipay is half-configured"),
    ({"ALIPAY_SELLER_ID": "2088-not-a-pid"}, "ALIPAY_SELLER_ID"),
    ({"PAYMENT_EXPIRE_MINUTES": "1"}, "PAYMENT_EXPIRE_MINUTES"),
    ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL: must be"),
    ({"S3_BUCKET": "zhangban-media"}, "S3_ACCESS_KEY_ID: missing; S3 file store is half-configured"),
    ({"RATE_LIMITS": "login.ip=lots"}, "RATE_LIMITS: bad rule 'lots' for login.ip"),
    ({"RATE_LIMITS": "logn.ip=5/minute"}, "RATE_LIMITS: unknown limit 'logn.ip'"),
]


@pytest.mark.parametrize(
    ("env", "expected"), CASES, ids=[next(iter(c[0])) + "=" + next(iter(c[0].values()))[:20] for c in CASES]
)
def test_bad_value_exits_2_with_one_line(tmp_path, env, expected):
    result = run_cli("serve", env=base_env(**env), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(expected), lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "var").exists()  # stopped before touching anything


def test_dotenv_file_is_read(tmp_path):
    (tmp_path / ".env").write_text("DATABASE_URL=bogus://from-dotenv\n")
    result = run_cli("migrate", env=base_env(), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "DATABASE_URL: unsupported scheme 'bogus'"


def test_pem_path_must_hold_a_pem(tmp_path):
    not_pem = tmp_path / "key.pem"
    not_pem.write_text("hello")
    result = run_cli("migrate", env=base_env(WECHATPAY_PRIVATE_KEY=str(not_pem)), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"WECHATPAY_PRIVATE_KEY: not a PEM file: {not_pem}"


def test_every_contract_variable_exists():
    from core.settings import Settings

    contract = """HOST PORT WORKERS DATABASE_URL REDIS_URL TASK_BROKER MEDIA_ROOT SECRET_KEY
    FIELD_ENCRYPTION_KEY WECHAT_API_BASE WECHAT_MP_APPID WECHAT_MP_SECRET WECHAT_OA_APPID
    WECHAT_OA_SECRET WECHAT_OA_TOKEN WECHAT_OA_AES_KEY WECHATPAY_API_BASE WECHATPAY_MCHID
    WECHATPAY_SERIAL_NO WECHATPAY_PRIVATE_KEY WECHATPAY_APIV3_KEY WECHATPAY_PLATFORM_PUBLIC_KEY
    WECHATPAY_PLATFORM_SERIAL ALIPAY_GATEWAY ALIPAY_APP_ID ALIPAY_PRIVATE_KEY ALIPAY_PUBLIC_KEY
    PLATFORM_BASE_URL PLATFORM_APP_KEY PLATFORM_SECRET PUBLIC_BASE_URL""".split()
    assert set(contract) <= set(Settings.model_fields)


def test_defaults_are_the_embedded_default(monkeypatch, tmp_path):
    from core.settings import Settings, load_settings

    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.HOST == "127.0.0.1" and settings.PORT == 8000 and settings.WORKERS == 1
    assert settings.embedded and settings.TASK_BROKER == "memory"
    assert settings.WECHAT_API_BASE == "https://api.weixin.qq.com"
    assert settings.simulated("WeChat Pay") and settings.simulated("core platform")
    # The embedded secrets are generated once and kept, so restarts keep sessions and data readable.
    assert settings.field_encryption_key() == settings.field_encryption_key()
    assert len(settings.field_encryption_key()) == 32
    assert (tmp_path / "var" / "field_encryption_key").stat().st_mode & 0o777 == 0o600
