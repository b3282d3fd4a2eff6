"""Which WeChat apps this deployment talks to: configured ones, or the simulator's on the embedded default.

Used by the server process and by the job workers (progress pushes), so both build their
clients the same way.
"""

from __future__ import annotations

import base64

from core.settings import Settings
from storage.redis import Keys
from wechat.client import WeChatClient

WECHAT_SIM_PREFIX = "/_sim/wechat"
# The simulated apps, (appid, kind), used when a WeChat channel is left unset; their secrets
# come from `sim_app_secret`, never from the code.
SIM_APPS = {
    "mp": ("wx_sim_miniprogram", "miniprogram"),
    "oa": ("wx_sim_officialacct", "official_account"),
}
# Progress templates of the simulated apps (the real ones come from PUSH_*_TEMPLATE_ID).
SIM_TEMPLATES = {"mp": "zb_sim_progress_subscribe", "oa": "zb_sim_progress_template"}
_CHANNELS = {"mp": "WeChat mini-program", "oa": "WeChat official account"}


def sim_app_secret(settings: Settings, which: str) -> str:
    """The AppSecret of the simulated mini-program ("mp") or official account ("oa")."""
    return settings.simulator_credential(f"wechat:{which}").hex()


def sim_apps(settings: Settings) -> dict[str, tuple[str, str]]:
    """{appid: (secret, kind)} of the simulated apps, for the in-process simulator's start state."""
    return {appid: (sim_app_secret(settings, which), kind) for which, (appid, kind) in SIM_APPS.items()}


def sim_oa_callback_keys(settings: Settings) -> tuple[str, str]:
    """(token, EncodingAESKey) of the simulated official account's callback."""
    token = settings.simulator_credential("oa:token").hex()[:32]  # WeChat's rule: 3-32 letters or digits
    aes_key = base64.b64encode(settings.simulator_credential("oa:aes")).decode().rstrip("=")
    return token, aes_key


def mp_appid(settings: Settings) -> str:
    return SIM_APPS["mp"][0] if settings.simulated("WeChat mini-program") else settings.WECHAT_MP_APPID


def progress_template(settings: Settings, which: str) -> str | None:
    """The progress template of the mini-program ("mp") or official account ("oa"), if any."""
    if settings.simulated(_CHANNELS[which]):
        return SIM_TEMPLATES[which]
    return settings.PUSH_MP_TEMPLATE_ID if which == "mp" else settings.PUSH_OA_TEMPLATE_ID


def wechat_client(settings: Settings, which: str, *, redis, http) -> WeChatClient:
    """The WeChat client for the mini-program ("mp") or official account ("oa"); `http` must send
    the simulator secret when the channel is simulated behind one."""
    if settings.simulated(_CHANNELS[which]):
        appid, secret = SIM_APPS[which][0], sim_app_secret(settings, which)
        base_url = settings.local_base_url + WECHAT_SIM_PREFIX
    else:
        appid = settings.WECHAT_MP_APPID if which == "mp" else settings.WECHAT_OA_APPID
        secret = settings.WECHAT_MP_SECRET if which == "mp" else settings.WECHAT_OA_SECRET
        base_url = settings.WECHAT_API_BASE
    keys = Keys(settings.REDIS_KEY_PREFIX)
    return WeChatClient(
        appid=appid, secret=secret, base_url=base_url, redis=redis, token_key=keys("wechat", "token", appid), http=http
    )
