"""Domain errors: what went wrong, as a stable code and a Chinese message, and nothing of HTTP.

    DomainError                 code, Chinese message, details, retry_after (seconds or None)
    ├── BadRequest              the request itself is unusable
    │   └── MalformedJSON
    ├── Unauthenticated         who is asking is not known (or no longer)
    ├── Forbidden               known, but not allowed
    ├── NotFound
    ├── MethodNotAllowed
    ├── Conflict                the object's state does not allow it now
    ├── Gone                    it existed and has expired
    ├── PayloadTooLarge
    ├── UnsupportedMediaType
    ├── Unprocessable           well-formed, but the content is refused
    │   └── ValidationFailed    every bad field at once, `details.fields = {path: message}`
    ├── TooManyRequests
    ├── Busy                    try again shortly (`retry_after` says when)
    ├── NotReady                a part of ours is down
    ├── Unavailable             a party we depend on (platform, WeChat) cannot be reached
    └── UpstreamError           a party we depend on answered, wrongly

Use cases raise these with a specific `code`; the HTTP edge (`core.http.STATUS`) is the one
table that turns a kind into a status, and `retry_after` into a `Retry-After` header.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """An error the client may see, with its stable code and Chinese message."""

    code = "bad_request"
    message = "请求有误"

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        details: dict[str, Any] | None = None,
        retry_after: int | None = None,
    ):
        self.message = message or self.message
        self.code = code or self.code
        self.details = details or {}
        self.retry_after = retry_after
        super().__init__(f"{self.code}: {self.message}")

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}

    def __reduce__(self):
        # Picklable with its message and details, so it crosses a process pool intact.
        return _rebuild, (type(self), self.message, self.code, self.details, self.retry_after)


def _rebuild(cls: type[DomainError], message: str, code: str, details: dict, retry_after: int | None) -> DomainError:
    error = cls.__new__(cls)
    DomainError.__init__(error, message, code=code, details=details, retry_after=retry_after)
    return error


class BadRequest(DomainError):
    code, message = "bad_request", "请求有误"


class MalformedJSON(BadRequest):
    code, message = "malformed_json", "请求内容不是有效的 JSON"


class Unauthenticated(DomainError):
    code, message = "unauthenticated", "请先登录"


class Forbidden(DomainError):
    code, message = "forbidden", "没有权限进行此操作"


class NotFound(DomainError):
    code, message = "not_found", "您访问的内容不存在"


class MethodNotAllowed(DomainError):
    code, message = "method_not_allowed", "不支持该请求方法"


class Conflict(DomainError):
    code, message = "conflict", "操作冲突，请刷新后重试"


class Gone(DomainError):
    code, message = "gone", "内容已过期"


class PayloadTooLarge(DomainError):
    code, message = "payload_too_large", "提交的内容过大"


class UnsupportedMediaType(DomainError):
    code, message = "unsupported_media_type", "不支持的内容类型"


class Unprocessable(DomainError):
    code, message = "unprocessable", "提交的内容无法处理"


class ValidationFailed(Unprocessable):
    """Every bad field at once, as `details.fields = {path: message}`."""

    code, message = "validation_failed", "提交的信息有误，请按提示修改"

    def __init__(self, fields: dict[str, str], message: str | None = None, *, code: str | None = None):
        super().__init__(message, code=code, details={"fields": fields})
        self.fields = fields

    def __reduce__(self):
        return _rebuild_validation, (type(self), self.fields, self.message, self.code)


def _rebuild_validation(cls, fields, message, code):
    return cls(fields, message, code=code)


class TooManyRequests(DomainError):
    code, message = "too_many_requests", "操作太频繁，请稍后再试"


class Busy(DomainError):
    code, message = "busy", "系统繁忙，请稍后再试"


class NotReady(DomainError):
    code, message = "not_ready", "服务暂不可用，请稍后再试"


class Unavailable(DomainError):
    code, message = "unavailable", "相关系统暂时无法访问，请稍后再试"


class UpstreamError(DomainError):
    code, message = "upstream_error", "相关系统返回异常，请稍后再试"
