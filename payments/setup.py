"""Which payment merchants this deployment uses: configured ones, or the in-process simulators'.

The simulated merchants' keys are made once per node and kept under `var/` (`Settings.
simulator_rsa_key`), so the server that mounts the simulators and the workers that call them
sign and verify with the same keys; nothing secret lives in the code.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from core.settings import Settings
from payments.alipay import AlipayConfig, load_public_key
from payments.alipay import load_private_key as load_alipay_private_key
from payments.wechatpay import WeChatPayConfig, load_platform_key, load_private_key

WECHATPAY_SIM_PREFIX = "/_sim/wechatpay"
ALIPAY_SIM_PREFIX = "/_sim/alipay"
SIM_MCHID = "1900000109"
SIM_MERCHANT_SERIAL = "5A1B2C3D4E5F60718293A4B5C6D7E8F901234567"
SIM_ALIPAY_APP_ID = "2021000000000001"
SIM_SELLER_ID = "2088000000000001"


def _pem(path: str) -> bytes:
    return Path(path).read_bytes()


def public_pem(private_pem: str) -> str:
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def sim_platform_serial(settings: Settings) -> str:
    """The simulated WeChat Pay public key's id (PUB_KEY_ID_…), derived from the key itself."""
    digest = hashlib.sha256(public_pem(settings.simulator_rsa_key("wechatpay_platform")).encode()).hexdigest()
    return "PUB_KEY_ID_0114" + str(int(digest[:20], 16)).zfill(26)[:26]


def sim_apiv3_key(settings: Settings) -> str:
    return settings.simulator_credential("wechatpay:apiv3").hex()[:32]


def wechatpay_config(settings: Settings, *, appid: str) -> WeChatPayConfig:
    """The merchant's WeChat Pay v3 settings (`appid`: the mini-program's)."""
    notify_url = settings.public_base_url + "/pay/notify/wechat"
    if settings.simulated("WeChat Pay"):
        return WeChatPayConfig(
            api_base=settings.local_base_url + WECHATPAY_SIM_PREFIX,
            mchid=SIM_MCHID,
            appid=appid,
            serial_no=SIM_MERCHANT_SERIAL,
            private_key=load_private_key(settings.simulator_rsa_key("wechatpay_merchant").encode()),
            apiv3_key=sim_apiv3_key(settings).encode(),
            platform_keys={
                sim_platform_serial(settings): load_platform_key(
                    public_pem(settings.simulator_rsa_key("wechatpay_platform")).encode()
                )
            },
            notify_url=settings.local_base_url + "/pay/notify/wechat",
        )
    return WeChatPayConfig(
        api_base=settings.WECHATPAY_API_BASE,
        mchid=settings.WECHATPAY_MCHID,
        appid=appid,
        serial_no=settings.WECHATPAY_SERIAL_NO,
        private_key=load_private_key(_pem(settings.WECHATPAY_PRIVATE_KEY)),
        apiv3_key=settings.WECHATPAY_APIV3_KEY.encode(),
        platform_keys={
            settings.WECHATPAY_PLATFORM_SERIAL: load_platform_key(_pem(settings.WECHATPAY_PLATFORM_PUBLIC_KEY))
        },
        notify_url=notify_url,
    )


def alipay_config(settings: Settings) -> AlipayConfig:
    if settings.simulated("Alipay"):
        return AlipayConfig(
            gateway=settings.local_base_url + ALIPAY_SIM_PREFIX + "/gateway.do",
            app_id=SIM_ALIPAY_APP_ID,
            private_key=load_alipay_private_key(settings.simulator_rsa_key("alipay_app").encode()),
            alipay_public_key=load_public_key(public_pem(settings.simulator_rsa_key("alipay_platform")).encode()),
            notify_url=settings.local_base_url + "/pay/notify/alipay",
            seller_id=SIM_SELLER_ID,
        )
    return AlipayConfig(
        gateway=settings.ALIPAY_GATEWAY,
        app_id=settings.ALIPAY_APP_ID,
        private_key=load_alipay_private_key(_pem(settings.ALIPAY_PRIVATE_KEY)),
        alipay_public_key=load_public_key(_pem(settings.ALIPAY_PUBLIC_KEY)),
        notify_url=settings.public_base_url + "/pay/notify/alipay",
        seller_id=settings.ALIPAY_SELLER_ID,
    )
