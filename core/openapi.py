"""The OpenAPI 3.1 document, generated from the routes and the pydantic models they validate with.

Every route carries `@document(...)`: its summary, tag, JSON or multipart body, query model,
headers, success response and error statuses. A blueprint declares once how its routes are
authenticated (`secure`); a blueprint of stand-ins (the simulators) is left out (`exclude`).
`build(app)` walks Sanic's route table, so a route nobody documented still appears, with no
success response, and the contract test (tests/test_contract.py) names it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel
from sanic import Blueprint, Sanic

OPENAPI_VERSION = "3.1.0"

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["code", "message", "details"],
    "properties": {
        "code": {"type": "string", "description": "stable snake_case error code"},
        "message": {"type": "string", "description": "message for the citizen, in Chinese"},
        "details": {"type": "object", "description": "e.g. fields: {path: message} for validation errors"},
    },
}

# The citizen's access token (mini-program), as `Authorization: Bearer <token>`.
BEARER: dict[str, dict] = {
    "citizenBearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "the access token from `POST /api/v1/auth/login` or `/refresh`",
    }
}

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_PARAM = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)(?::([^>]*))?>")


def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema (2020-12, as OpenAPI 3.1 takes it) of `model`, nested definitions inlined."""
    schema = model.model_json_schema(ref_template="#/$defs/{model}")
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node and node["$ref"].startswith("#/$defs/"):
                return inline(defs[node["$ref"].rsplit("/", 1)[1]])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return inline(schema)


def document(
    *,
    summary: str,
    tag: str,
    body: type[BaseModel] | None = None,
    body_required: bool = True,
    form: type[BaseModel] | None = None,
    raw_body: str | None = None,
    query: type[BaseModel] | None = None,
    headers: Mapping[str, Mapping[str, Any]] | None = None,
    response: type[BaseModel] | None = None,
    content_type: str | tuple[str, ...] = "application/json",
    status: int = 200,
    also: Iterable[int] = (),
    errors: Iterable[int] = (),
    error_content: Mapping[str, dict] | None = None,
    public: bool = False,
) -> Callable:
    """Documents a route for `build()`.

    `body` is the JSON body's model (`body_required=False` when an empty body is allowed), `form`
    a multipart body's, `raw_body` the media type of a body read as text (e.g. XML); `query` the
    query string's model (the one `query_args` validates with), `headers` the request headers
    `{name: {"required", "description", "schema"}}`; `response` the success body's model (`None`
    for a body described only by its `content_type`(s), none at all with status 204), given with
    `status` and any other success status in `also`; `errors` the error statuses, answered with
    our error body unless `error_content` (`{media type: {"schema": ...}}`) says otherwise (a
    payment channel's own answer format); `public` routes need no credentials though their
    blueprint does.
    """
    spec = {
        "summary": summary,
        "tag": tag,
        "body": body,
        "body_required": body_required,
        "form": form,
        "raw_body": raw_body,
        "query": query,
        "headers": dict(headers or {}),
        "response": response,
        "content_type": content_type,
        "status": status,
        "also": tuple(also),
        "errors": tuple(errors),
        "error_content": dict(error_content) if error_content else None,
        "public": public,
    }

    def mark(handler: Callable) -> Callable:
        handler.__openapi__ = spec
        return handler

    return mark


def secure(bp: Blueprint, schemes: Mapping[str, dict], *, unsafe: Mapping[str, dict] | None = None) -> None:
    """Declares the credentials every route of `bp` needs (all of `schemes`; for a method that
    changes something, all of `unsafe` if given)."""
    bp.ctx.openapi_security = (dict(schemes), dict(unsafe) if unsafe is not None else dict(schemes))


def exclude(target: Blueprint | Callable) -> Any:
    """Leaves a blueprint (or one route's handler) out of the document."""
    if isinstance(target, Blueprint):
        target.ctx.openapi_excluded = True
    else:
        target.__openapi_excluded__ = True
    return target


def _parameter_schema(kind: str | None) -> dict[str, Any]:
    if kind == "int":
        return {"type": "integer"}
    if kind and "|" in kind and re.fullmatch(r"[A-Za-z0-9_|]+", kind):
        return {"type": "string", "enum": kind.split("|")}
    return {"type": "string", "minLength": 1}


def _clean(schema: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k != "title"}


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = schema_of(model)
    required = set(schema.get("required", ()))
    params = []
    for name, prop in schema.get("properties", {}).items():
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": _clean(prop)}
        if "description" in prop:
            param["description"] = prop["description"]
        params.append(param)
    return params


def _responses(spec: dict[str, Any] | None) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    if spec is not None:
        for status in (spec["status"], *spec["also"]):
            ok: dict[str, Any] = {"description": HTTPStatus(status).phrase}
            if status not in (204, 304):  # no body
                types = spec["content_type"]
                ok["content"] = {}
                for media in (types,) if isinstance(types, str) else types:
                    if spec["response"] is not None:
                        schema = schema_of(spec["response"])
                    else:
                        schema = {"type": "object"} if media == "application/json" else {"type": "string"}
                    ok["content"][media] = {"schema": schema}
            responses[str(status)] = ok
        for code in spec["errors"]:
            responses[str(code)] = {
                "description": HTTPStatus(code).phrase,
                "content": spec["error_content"] or {"application/json": {"schema": ERROR_SCHEMA}},
            }
    # Any other failure (malformed JSON, a body too large, ...) has the same error body.
    responses["default"] = {"description": "error", "content": {"application/json": {"schema": ERROR_SCHEMA}}}
    return responses


def _security(bp: Blueprint | None, method: str, spec: dict[str, Any] | None) -> tuple[list, dict]:
    """(the operation's security requirement, the schemes it uses)."""
    declared = getattr(bp.ctx, "openapi_security", None) if bp is not None else None
    if declared is None or (spec is not None and spec["public"]):
        return [], {}
    schemes = declared[0] if method in _SAFE_METHODS else declared[1]
    return [{name: [] for name in schemes}], schemes


def build(app: Sanic, *, title: str, version: str, description: str = "") -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route of `app` not excluded."""
    paths: dict[str, dict[str, Any]] = {}
    schemes: dict[str, dict] = {}
    tags: set[str] = set()
    for route in sorted(app.router.routes, key=lambda r: r.path):
        handler = route.handler
        parts = route.name.split(".")
        bp = app.blueprints.get(parts[1]) if len(parts) > 2 else None
        hidden_bp = bp is not None and getattr(bp.ctx, "openapi_excluded", False)
        if hidden_bp or getattr(handler, "__openapi_excluded__", False):
            continue
        spec = getattr(handler, "__openapi__", None)
        path_params = [
            {"name": name, "in": "path", "required": True, "schema": _parameter_schema(kind)}
            for name, kind in _PARAM.findall(route.path)
        ]
        path = "/" + _PARAM.sub(lambda m: "{" + m.group(1) + "}", route.path).strip("/")
        for method in sorted(route.methods):
            if method in ("HEAD", "OPTIONS"):
                continue
            op: dict[str, Any] = {"operationId": f"{route.name.removeprefix(app.name + '.')}.{method.lower()}"}
            params = list(path_params)
            if spec is not None:
                op["summary"] = spec["summary"]
                op["tags"] = [spec["tag"]]
                tags.add(spec["tag"])
                if spec["query"] is not None:
                    params += _query_parameters(spec["query"])
                for name, header in spec["headers"].items():
                    params.append({"name": name, "in": "header", **header})
                if spec["body"] is not None:
                    op["requestBody"] = {
                        "required": spec["body_required"],
                        "content": {"application/json": {"schema": schema_of(spec["body"])}},
                    }
                elif spec["raw_body"] is not None:
                    text_body = {spec["raw_body"]: {"schema": {"type": "string"}}}
                    op["requestBody"] = {"required": True, "content": text_body}
                elif spec["form"] is not None:
                    op["requestBody"] = {
                        "required": True,
                        "content": {"multipart/form-data": {"schema": schema_of(spec["form"])}},
                    }
            if params:
                op["parameters"] = params
            op["responses"] = _responses(spec)
            requirement, used = _security(bp, method, spec)
            if requirement:
                op["security"] = requirement
                schemes.update(used)
            paths.setdefault(path, {})[method.lower()] = op
    doc: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "tags": [{"name": t} for t in sorted(tags)],
        "components": {"securitySchemes": schemes},
    }
    return doc
