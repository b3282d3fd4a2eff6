"""The error hierarchy every transport layer answers with.

An `ApiError` carries a stable snake_case `code`, a Chinese `message` for the citizen, an
HTTP status and optional `details`; `core.http` turns it into the JSON error body
`{"code", "message", "details"}`. Handlers raise these; they never build responses.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error the client may see, with its stable code and Chinese message."""

    status = 400
    code = "bad_request"
    message = "请求有误"

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        status: int | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ):
        self.message = message or self.message
        self.code = code or self.code
        self.status = status or self.status
        self.details = details or {}
        self.headers = headers or {}
        super().__init__(f"{self.code}: {self.message}")

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class BadRequest(ApiError):
    status, code, message = 400, "bad_request", "请求有误"


class MalformedJSON(ApiError):
    status, code, message = 400, "malformed_json", "请求内容不是有效的 JSON"


class Unauthenticated(ApiError):
    status, code, message = 401, "unauthenticated", "请先登录"


class Forbidden(ApiError):
    status, code, message = 403, "forbidden", "没有权限进行此操作"


class NotFound(ApiError):
    status, code, message = 404, "not_found", "您访问的内容不存在"


class MethodNotAllowed(ApiError):
    status, code, message = 405, "method_not_allowed", "不支持该请求方法"


class Conflict(ApiError):
    status, code, message = 409, "conflict", "操作冲突，请刷新后重试"


class PayloadTooLarge(ApiError):
    status, code, message = 413, "payload_too_large", "提交的内容过大"


class UnsupportedMediaType(ApiError):
    status, code, message = 415, "unsupported_media_type", "不支持的内容类型"


class ValidationFailed(ApiError):
    """Every bad field at once, as `details.fields = {path: message}`."""

    status, code, message = 422, "validation_failed", "提交的信息有误，请按提示修改"

    def __init__(self, fields: dict[str, str], message: str | None = None):
        super().__init__(message, details={"fields": fields})
        self.fields = fields


class TooManyRequests(ApiError):
    status, code, message = 429, "too_many_requests", "操作太频繁，请稍后再试"


class Busy(ApiError):
    status, code, message = 503, "busy", "系统繁忙，请稍后再试"


class NotReady(ApiError):
    status, code, message = 503, "not_ready", "服务暂不可用，请稍后再试"
