"""HTTP conventions shared by every transport layer.

- errors leave as `{"code", "message", "details"}` JSON with the right status, never a trace;
- every response carries `X-Request-ID` (the client's, if sane, else a new one);
- request bodies are parsed by `json_body()` against a pydantic model, and every bad field is
  reported at once in `details.fields` as `{path: Chinese message}`;
- no input reaches a handler that the storage could not hold: JSON nested deeper than
  `MAX_JSON_DEPTH`, strings with U+0000, path ids longer or of another shape than ours, integers
  beyond 64 bits in a path;
- responses are serialised by `dumps()` (orjson, UTF-8); public answers rendered once are served
  with a strong `ETag`, and `If-None-Match` gets them a `304` (`rendered`, `cached_json`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import quote

import orjson
from pydantic import BaseModel, ValidationError
from sanic import Request, Sanic
from sanic import exceptions as sanic_exc
from sanic.response import HTTPResponse
from sanic.response import json as json_response

from core import errors
from core.logs import request_id_var
from core.outages import OUTAGE_RETRY_AFTER_S, outage_of

log = logging.getLogger("zhangban.http")
ModelT = TypeVar("ModelT", bound=BaseModel)

REQUEST_ID_HEADER = "X-Request-ID"
BEARER_PREFIX = "/api/v1/"  # where a 401 asks for a bearer token (RFC 6750)
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

# The one table from an error's kind to its HTTP status (looked up along the class's MRO).
STATUS: dict[type[errors.DomainError], int] = {
    errors.BadRequest: 400,
    errors.Unauthenticated: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.MethodNotAllowed: 405,
    errors.Conflict: 409,
    errors.Gone: 410,
    errors.PayloadTooLarge: 413,
    errors.UnsupportedMediaType: 415,
    errors.Unprocessable: 422,
    errors.TooManyRequests: 429,
    errors.Busy: 503,
    errors.NotReady: 503,
    errors.Unavailable: 503,
    errors.UpstreamError: 502,
    errors.DomainError: 400,
}
_KIND_OF_STATUS: dict[int, type[errors.DomainError]] = {
    400: errors.BadRequest,
    401: errors.Unauthenticated,
    403: errors.Forbidden,
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    413: errors.PayloadTooLarge,
    415: errors.UnsupportedMediaType,
    429: errors.TooManyRequests,
}


class _Unexpected(errors.DomainError):
    code, message = "internal_error", "系统繁忙，请稍后再试"


class _RequestTimeout(errors.DomainError):
    code, message = "request_timeout", "请求超时，请重试"


class _ResponseTimeout(errors.DomainError):
    code, message = "response_timeout", "处理超时，请稍后再试"


STATUS.update({_Unexpected: 500, _RequestTimeout: 408, _ResponseTimeout: 503})

# Deep enough for any form we define (steps, repeated entries, addresses); far below the
# parser's recursion limit, which would otherwise surface as a RecursionError (a 500).
MAX_JSON_DEPTH = 32
# The largest id a BIGINT column holds, and the largest INTEGER (versions, counters): a larger
# number names nothing, and PostgreSQL's driver fails on it (a 500) instead of finding nothing.
INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1
# PostgreSQL text cannot hold U+0000: refused everywhere, so both backends answer alike.
NUL_MESSAGE = "不能包含空字符（U+0000）"
# Every id and code we issue is short ASCII; a path parameter of another shape names nothing.
_PATH_PARAM = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Parameters whose column is narrower than the default 64 characters.
_PATH_PARAM_MAX = {"draft_id": 32, "material_id": 32, "case_no": 32}
# Parameters of another shape than an id: a static asset's file name may hold dots.
_PATH_PARAM_SHAPES = {"asset_name": re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")}


def status_of(error: errors.DomainError | type[errors.DomainError]) -> int:
    """The HTTP status of `error` (or of its class): its nearest kind in `STATUS`."""
    for cls in (error if isinstance(error, type) else type(error)).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


def headers_of(error: errors.DomainError) -> dict[str, str]:
    """The headers an error's kind asks for: `Retry-After`, `Allow`, `WWW-Authenticate`."""
    headers: dict[str, str] = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    allowed = getattr(error, "allowed_methods", None)
    if isinstance(error, errors.MethodNotAllowed) and allowed:
        headers["Allow"] = ", ".join(sorted(allowed))
    return headers


def client_ip(request: Request) -> str:
    """The caller's address: the proxy-forwarded one when Sanic trusts the proxy, else the peer's."""
    return request.remote_addr or request.ip


class _RequestIds:
    """Request ids of this process: a random prefix drawn when the process starts (and again in
    a forked child) and a counter, 32 hex digits like a UUID's. Unique, not secret: a uuid4 per
    request asked the kernel for randomness every time, a tenth of the CPU of `GET /healthz`."""

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.prefix, self.counter = os.urandom(8).hex(), itertools.count()

    def __call__(self) -> str:
        return f"{self.prefix}{next(self.counter) & 0xFFFF_FFFF_FFFF_FFFF:016x}"


new_request_id = _RequestIds()


def request_id(request: Request) -> str:
    """The id of this request: the client's `X-Request-ID` if it is sane, else a new one."""
    rid = getattr(request.ctx, "request_id", None)
    if rid is None:
        sent = request.headers.get(REQUEST_ID_HEADER, "")
        rid = sent if _SANE_REQUEST_ID.match(sent) else new_request_id()
        request.ctx.request_id = rid
    return rid


def error_response(request: Request | None, error: errors.DomainError) -> HTTPResponse:
    """The JSON response for `error`, with its status, its headers and the request id."""
    headers = headers_of(error)
    if request is not None:
        headers[REQUEST_ID_HEADER] = request_id(request)
        if isinstance(error, errors.Unauthenticated) and request.path.startswith(BEARER_PREFIX):
            # RFC 6750 §3: the scheme, and why a token that was sent is refused.
            challenge = 'Bearer realm="zhangban"'
            if request.headers.get("authorization"):
                challenge += f', error="invalid_token", error_description="{error.code}"'
            headers["WWW-Authenticate"] = challenge
    return json_response(error.body(), status=status_of(error), headers=headers)


def _as_domain_error(exc: BaseException) -> errors.DomainError:
    if isinstance(exc, errors.DomainError):
        return exc
    if isinstance(exc, sanic_exc.RequestTimeout):
        return _RequestTimeout()
    if isinstance(exc, sanic_exc.ServiceUnavailable):  # response timeout
        return _ResponseTimeout()
    if isinstance(exc, sanic_exc.SanicException):
        status = getattr(exc, "status_code", 500) or 500
        if status in _KIND_OF_STATUS:
            error = _KIND_OF_STATUS[status]()
            if status == 405:
                error.allowed_methods = getattr(exc, "allowed_methods", None) or []
            return error
        if 400 <= status < 500:
            return errors.BadRequest()
    return _Unexpected()


def allowed_methods(request: Request) -> list[str]:
    """The methods the router has for the request's path (Sanic names none for a path with parameters)."""
    allowed = []
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        try:
            request.app.router.get(request.path, method, request.headers.get("host"))
        except sanic_exc.SanicException:
            continue
        allowed.append(method)
    return allowed


PRIVATE_PREFIXES = ("/api/", "/console/")


def install(app: Sanic) -> None:
    """Installs the error format, request ids and their logging context on `app`."""

    @app.on_request(priority=1000)
    async def _bind_request_id(request: Request) -> None:
        request_id_var.set(request_id(request))

    @app.on_response(priority=1000)
    async def _stamp_request_id(request: Request, response: HTTPResponse) -> None:
        response.headers[REQUEST_ID_HEADER] = request_id(request)
        # Answers of the citizen and console APIs, and every error (a 409 carries the draft it
        # conflicts with), hold personal data: no shared or browser cache keeps them, unless a
        # route chose its own caching (catalogue pages, stored files).
        if "cache-control" not in response.headers and (
            response.status >= 400 or request.path.startswith(PRIVATE_PREFIXES)
        ):
            response.headers["Cache-Control"] = "no-store"

    @app.on_request(priority=999)
    async def _refuse_impossible_inputs(request: Request) -> None:
        check_path_params(request.match_info)
        check_query_strings(request)

    @app.exception(Exception)
    async def _handle(request: Request, exc: Exception) -> HTTPResponse:
        part = None if isinstance(exc, errors.DomainError) else outage_of(exc)
        if part is not None:
            # A part of ours is down: the client may retry, the operator needs one line, not a trace.
            error: errors.DomainError = errors.NotReady(retry_after=OUTAGE_RETRY_AFTER_S)
            log.warning("%s unavailable on %s %s: %s", part, request.method, request.path, type(exc).__name__)
        else:
            error = _as_domain_error(exc)
            if isinstance(error, errors.MethodNotAllowed) and not getattr(error, "allowed_methods", None):
                error.allowed_methods = allowed_methods(request)
            if not isinstance(exc, errors.DomainError) and status_of(error) >= 500:
                log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
            elif status_of(error) >= 500:
                log.warning("%s on %s %s", error.code, request.method, request.path)
        _close_if_body_unread(request)
        return error_response(request, error)


def _close_if_body_unread(request: Request) -> None:
    """Asks Sanic to close the connection when an error cuts a streamed body short (a 413
    mid-upload): the unread rest would otherwise be read as the next request on it."""
    stream = getattr(request, "stream", None)
    if stream is not None and getattr(stream, "request_body", None) and hasattr(stream, "keep_alive"):
        stream.keep_alive = False


# -- response bodies -----------------------------------------------------------------------


def _encode_other(value: Any) -> Any:
    if isinstance(value, Decimal):  # a PostgreSQL sum or average: a number, as before
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: Any, **_ignored: Any) -> bytes:
    """`value` as compact JSON in UTF-8 (never \\u-escaped), the way every response is written.

    orjson also writes datetimes (RFC 3339), enums, dataclasses and non-string dict keys (as
    strings); Decimals become numbers. An integer beyond 64 bits, which orjson refuses, is
    written by the standard library instead. Sanic passes its keyword arguments, not used here.
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS, default=_encode_other)
    except orjson.JSONEncodeError as exc:
        if "64-bit" not in str(exc):
            raise
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_encode_other).encode()


def rendered(value: Any) -> tuple[bytes, str]:
    """(`value` as a JSON body, its strong ETag): computed once, served as often as asked."""
    body = dumps(value)
    return body, '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an `If-None-Match` header names `etag` (weak comparison, as RFC 9110 asks there)."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in if_none_match.split(","))


def cached_json(request: Request, body: bytes, etag: str, cache_control: str) -> HTTPResponse:
    """A rendered JSON body with its ETag and caching, or `304 Not Modified` when the client
    already holds it."""
    headers = {"ETag": etag, "Cache-Control": cache_control}
    if etag_matches(request.headers.get("if-none-match"), etag):
        return HTTPResponse(status=304, headers=headers)
    return HTTPResponse(body, headers=headers, content_type="application/json")


# -- request bodies ----------------------------------------------------------------------

_MESSAGES = {
    "missing": "此项为必填项",
    "string_type": "应为文本",
    "string_too_short": "至少需要 {min_length} 个字符",
    "string_too_long": "不能超过 {max_length} 个字符",
    "string_pattern_mismatch": "格式不正确",
    "int_type": "应为整数",
    "int_parsing": "应为整数",
    "int_from_float": "应为整数",
    "float_type": "应为数字",
    "float_parsing": "应为数字",
    "bool_type": "应为是或否",
    "bool_parsing": "应为是或否",
    "greater_than": "应大于 {gt}",
    "greater_than_equal": "不能小于 {ge}",
    "less_than": "应小于 {lt}",
    "less_than_equal": "不能大于 {le}",
    "literal_error": "不是允许的取值",
    "enum": "不是允许的取值",
    "extra_forbidden": "不允许提交此字段",
    "model_type": "应为对象",
    "model_attributes_type": "应为对象",
    "dict_type": "应为对象",
    "list_type": "应为列表",
    "too_short": "至少需要 {min_length} 项",
    "too_long": "不能超过 {max_length} 项",
    "date_parsing": "日期格式应为 YYYY-MM-DD",
    "date_from_datetime_parsing": "日期格式应为 YYYY-MM-DD",
    "datetime_parsing": "时间格式不正确",
    "url_parsing": "网址格式不正确",
}


def field_errors(exc: ValidationError) -> dict[str, str]:
    """`{dotted.path: Chinese message}` for every error in `exc`, first message per path."""
    fields: dict[str, str] = {}
    for err in exc.errors(include_url=False):
        path = ".".join(str(p) for p in err["loc"]) or "body"
        kind = err["type"]
        if kind == "value_error":  # our validators raise ValueError with a Chinese message
            message = str(err.get("ctx", {}).get("error", err["msg"])).removeprefix("Value error, ")
        else:
            template = _MESSAGES.get(kind, "格式不正确")
            try:
                message = template.format(**err.get("ctx", {}))
            except (KeyError, IndexError):
                message = "格式不正确"
        fields.setdefault(path, message)
    return fields


def validate(model: type[ModelT], data: Any) -> ModelT:
    """`data` validated as `model`; raises ValidationFailed listing every bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise errors.ValidationFailed(field_errors(exc)) from None


def json_body(request: Request, model: type[ModelT]) -> ModelT:
    """The request's JSON body validated as `model`."""
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type and content_type != "application/json" and not content_type.endswith("+json"):
        raise errors.UnsupportedMediaType("请以 JSON 格式提交", code="unsupported_media_type")
    if not request.body:
        raise errors.MalformedJSON("请求内容为空")
    return validate(model, parse_json(request.body))


def parse_json(raw: bytes | str) -> Any:
    """A request body's JSON; MalformedJSON if it is not JSON or nests deeper than MAX_JSON_DEPTH,
    ValidationFailed naming every string (or key) that holds U+0000."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise errors.MalformedJSON() from None
    nul_fields: dict[str, str] = {}
    # Iterative, so checking a deep document cannot itself exhaust the stack.
    stack: list[tuple[Any, int, str]] = [(data, 0, "")]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                nul_fields.setdefault(path or "body", NUL_MESSAGE)
            continue
        if not isinstance(value, dict | list):
            continue
        if depth >= MAX_JSON_DEPTH:
            raise errors.MalformedJSON(f"请求内容的嵌套层级不能超过 {MAX_JSON_DEPTH} 层")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            sub = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and "\x00" in key:
                nul_fields.setdefault(sub, NUL_MESSAGE)
            stack.append((item, depth + 1, sub))
    if nul_fields:
        raise errors.ValidationFailed(nul_fields)
    return data


def check_path_params(params: dict[str, Any]) -> None:
    """NotFound if a path parameter cannot name anything we store (too long, odd shape, > 64 bits)."""
    for name, value in params.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            fits = 0 <= value <= INT64_MAX
        elif isinstance(value, str):
            shape = _PATH_PARAM_SHAPES.get(name, _PATH_PARAM)
            fits = len(value) <= _PATH_PARAM_MAX.get(name, 64) and shape.match(value) is not None
        else:
            fits = True
        if not fits:
            raise errors.NotFound()


def check_query_strings(request: Request) -> None:
    """ValidationFailed naming every query parameter that holds U+0000."""
    if "%00" not in request.query_string:
        # Only a percent-escape decodes to U+0000 (the HTTP parser refuses a raw one): no need to
        # parse the query here, which a route parsing it its own way would do a second time.
        return
    fields = {name: NUL_MESSAGE for name, values in request.args.items() if any("\x00" in v for v in values)}
    if fields:
        raise errors.ValidationFailed(fields)


def query_args(request: Request, model: type[ModelT], *, keep_blank: bool = False) -> ModelT:
    """The query string validated as `model` (first value of each key); with `keep_blank`, a key
    given empty (`?cursor=`) is validated as the empty string instead of being dropped."""
    args = request.get_args(keep_blank_values=True) if keep_blank else request.args
    return validate(model, {k: v[0] for k, v in args.items()})


# -- stored files ----------------------------------------------------------------------------

# No script, plugin, form or fetch even if a browser renders the file as a document.
FILE_CSP = "sandbox; default-src 'none'"
_EXTENSIONS = {"image/jpeg": "jpg", "application/pdf": "pdf"}
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]+")


def file_headers(mime: str, name: str) -> dict[str, str]:
    """The headers every stored file is served with; `name` is the file name without extension."""
    ext = _EXTENSIONS.get(mime, "bin")
    ascii_name = f"{_UNSAFE_FILENAME.sub('_', name).strip('._') or 'material'}.{ext}"
    # A PDF viewer may run what the upload check missed; a picture has nothing to run.
    disposition = "attachment" if mime == "application/pdf" else "inline"
    utf8_name = quote(f"{name}.{ext}", safe="")
    return {
        "Content-Disposition": f"{disposition}; filename=\"{ascii_name}\"; filename*=UTF-8''{utf8_name}",
        "Content-Security-Policy": FILE_CSP,
        "X-Content-Type-Options": "nosniff",
    }
