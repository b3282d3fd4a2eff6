"""What a citizen is told when WeChat refuses or cannot be reached: WeChat's errcodes as domain errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from core.errors import BadRequest, DomainError, Forbidden, Unavailable, UpstreamError
from wechat.client import WeChatError, WeChatUnavailable

# errcode -> (kind, our code, Chinese message), for the calls a citizen waits on (sign-in, face
# check, phone); pushes and the bot read WeChat's errcodes themselves.
WECHAT_ERRORS: dict[int, tuple[type[DomainError], str, str]] = {
    40029: (BadRequest, "wechat_code_invalid", "微信登录凭证无效，请重新进入小程序"),
    40163: (BadRequest, "wechat_code_used", "微信登录凭证已被使用，请重新进入小程序"),
    40226: (Forbidden, "wechat_user_blocked", "该微信账号存在风险，暂不能登录"),
    45009: (Unavailable, "wechat_quota_exceeded", "微信接口调用次数已达上限，请稍后再试"),
    40013: (UpstreamError, "wechat_misconfigured", "微信服务配置有误，请联系管理员"),
    40125: (UpstreamError, "wechat_misconfigured", "微信服务配置有误，请联系管理员"),
}
_OTHER = (UpstreamError, "wechat_error", "微信服务暂时不可用，请稍后再试")


def wechat_error(exc: WeChatError) -> DomainError:
    """The domain error a citizen sees for WeChat's errcode."""
    kind, code, message = WECHAT_ERRORS.get(exc.errcode, _OTHER)
    return kind(message, code=code, details={"errcode": exc.errcode})


@contextmanager
def wechat_errors() -> Iterator[None]:
    """Turns WeChat's refusals and outages inside the block into domain errors."""
    try:
        yield
    except WeChatError as exc:
        raise wechat_error(exc) from None
    except WeChatUnavailable:
        raise Unavailable("微信服务暂时不可用，请稍后再试", code="wechat_unavailable") from None
