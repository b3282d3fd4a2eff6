"""Which WeChat apps this deployment talks to: configured ones, or the simulator's on the embedded default.

Used by the server process and by the job workers (progress pushes), so both build their
clients the same way.
"""

from __future__ import annotations

from core.settings import Settings
from storage.redis import Keys
from wechat.client import WeChatClient

WECHAT_SIM_PREFIX = "/_sim/wechat"
# The simulator's own apps, used when a WeChat channel is left unset (embedded default).
SIM_APPS = {
    "mp": ("wx_sim_miniprogram", "sim_mp_secret_0123456789abcdef"),
    "oa": ("wx_sim_officialacct", "sim_oa_secret_0123456789abcdef"),
}
# Progress templates of the simulated apps (the real ones come from PUSH_*_TEMPLATE_ID).
SIM_TEMPLATES = {"mp": "zb_sim_progress_subscribe", "oa": "zb_sim_progress_template"}
_CHANNELS = {"mp": "WeChat mini-program", "oa": "WeChat official account"}


def mp_appid(settings: Settings) -> str:
    return SIM_APPS["mp"][0] if settings.simulated("WeChat mini-program") else settings.WECHAT_MP_APPID


def progress_template(settings: Settings, which: str) -> str | None:
    """The progress template of the mini-program ("mp") or official account ("oa"), if any."""
    if settings.simulated(_CHANNELS[which]):
        return SIM_TEMPLATES[which]
    return settings.PUSH_MP_TEMPLATE_ID if which == "mp" else settings.PUSH_OA_TEMPLATE_ID


def wechat_client(settings: Settings, which: str, *, redis, http) -> WeChatClient:
    """The WeChat client for the mini-program ("mp") or official account ("oa")."""
    if settings.simulated(_CHANNELS[which]):
        appid, secret = SIM_APPS[which]
        base_url = settings.local_base_url + WECHAT_SIM_PREFIX
    else:
        appid = settings.WECHAT_MP_APPID if which == "mp" else settings.WECHAT_OA_APPID
        secret = settings.WECHAT_MP_SECRET if which == "mp" else settings.WECHAT_OA_SECRET
        base_url = settings.WECHAT_API_BASE
    keys = Keys(settings.REDIS_KEY_PREFIX)
    return WeChatClient(
        appid=appid, secret=secret, base_url=base_url, redis=redis, token_key=keys("wechat", "token", appid), http=http
    )
