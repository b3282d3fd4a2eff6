"""What every in-memory simulator serves its routes with: JSON answers, control routes, a standalone app, `main`.

The WeChat simulator (`wechat/simulator.py`) and the core-platform simulator (`bridge/simulator.py`)
each keep their own routes in a blueprint that server.py mounts in-process; this module gives them
the rest once:

    def main(argv=None):
        simserver.main(argv, prog="python -m wechat.simulator", description="...", port=8701,
                       build=lambda args: simserver.create_app("wechat_sim", blueprint, state=state, log=log))

Control-API and platform errors share one body, `{"code", "message", "details"}` like Zhangban's own;
Sanic's own errors (404, 405, 413, ...) are answered in that shape too, and a crash is a logged 500.
Only sanic and the standard library are imported here: the simulators sit below everything else.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
from collections.abc import Callable
from typing import Any

from sanic import Blueprint, Request, Sanic
from sanic.exceptions import SanicException
from sanic.response import HTTPResponse
from sanic.response import json as _sanic_json

INTERNAL_ERROR = {"code": "internal_error", "message": "模拟器内部错误", "details": {}}
_STATUS_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
}


class SimError(Exception):
    """An answer other than 200: `{"code", "message", "details"}` with `status`."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None):
        self.status, self.code, self.message, self.details = status, code, message, details or {}
        super().__init__(f"{status} {code}: {message}")

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


def dumps(obj: Any) -> str:
    """Compact JSON with Chinese left readable, as WeChat and the platform write it."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def json_response(body: Any, status: int = 200) -> HTTPResponse:
    """`body` as a compact JSON response."""
    return _sanic_json(body, status=status, dumps=dumps)


def internal_error() -> HTTPResponse:
    """The 500 answer of a simulator that crashed; the cause goes to the log, not the client."""
    return json_response(INTERNAL_ERROR, status=500)


def json_object(request: Request, *, empty_ok: bool = True) -> dict[str, Any]:
    """The request body as a JSON object (`{}` when empty and `empty_ok`); else SimError 400 malformed_json."""
    if not request.body:
        if empty_ok:
            return {}
        raise SimError(400, "malformed_json", "请求内容不能为空")
    try:
        data = json.loads(request.body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise SimError(400, "malformed_json", "请求内容不是有效的 JSON") from None
    if not isinstance(data, dict):
        raise SimError(400, "malformed_json", "请求内容应为 JSON 对象")
    return data


def check_fields(errors: dict[str, str]) -> None:
    """Returns if no field was bad; else SimError 422 validation_failed listing every bad field."""
    if errors:
        raise SimError(422, "validation_failed", "提交的内容有误", {"fields": errors})


def control_route(handler: Callable[[Request], Any], *, log: logging.Logger, path: str):
    """A route answering `handler`'s result (a dict, or an awaitable of one) as JSON, a SimError as its body."""

    async def route(request: Request) -> HTTPResponse:
        try:
            result = handler(request)
            if inspect.isawaitable(result):
                result = await result
        except SimError as error:
            return json_response(error.body(), status=error.status)
        except Exception:
            log.exception("simulator control error on %s", path)
            return internal_error()
        return json_response(result)

    return route


def create_app(name: str, blueprint: Blueprint, *, state: Any, log: logging.Logger) -> Sanic:
    """A standalone Sanic app serving `blueprint` at the root, `state` in `app.ctx.state`, JSON for every error."""
    try:  # a second simulator app of this name in one process replaces the first
        Sanic.unregister_app(Sanic.get_app(name))
    except SanicException:
        pass
    app = Sanic(name, dumps=dumps)
    app.config.update({"MOTD": False, "AUTO_EXTEND": False, "FALLBACK_ERROR_FORMAT": "json", "KEEP_ALIVE_TIMEOUT": 15})
    app.ctx.state = state
    app.blueprint(blueprint)

    @app.exception(Exception)
    async def _error(request: Request, exc: Exception) -> HTTPResponse:
        status = getattr(exc, "status_code", 500) if isinstance(exc, SanicException) else 500
        status = status if isinstance(status, int) and 400 <= status < 600 else 500
        if status >= 500:
            log.error("simulator error on %s %s", request.method, request.path, exc_info=exc)
            return internal_error()
        code = _STATUS_CODES.get(status, "bad_request")
        return json_response({"code": code, "message": str(exc) or code, "details": {}}, status=status)

    return app


def main(
    argv: list[str] | None,
    *,
    prog: str,
    description: str,
    port: int,
    build: Callable[[argparse.Namespace], Sanic],
    options: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    """Parses `--host`, `--port` and the simulator's own `options`, then serves `build(args)` until stopped."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    if options is not None:
        options(parser)
    args = parser.parse_args(argv)
    build(args).run(host=args.host, port=args.port, single_process=True, access_log=False, motd=False)
