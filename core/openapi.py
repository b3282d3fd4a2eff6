"""Route documentation from pydantic models, for the generated OpenAPI 3 document."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel
from sanic_ext import openapi
from sanic_ext.extensions.openapi.definitions import Response

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["code", "message", "details"],
    "properties": {
        "code": {"type": "string", "description": "stable snake_case error code"},
        "message": {"type": "string", "description": "message for the citizen, in Chinese"},
        "details": {"type": "object", "description": "e.g. fields: {path: message} for validation errors"},
    },
}


def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema of `model`, with nested definitions inlined for sanic-ext."""
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
    response: type[BaseModel] | None = None,
    status: int = 200,
    errors: Iterable[int] = (),
) -> Callable:
    """Documents a route: summary, tag, JSON request body, success and error responses."""
    responses = []
    if response is not None:
        responses.append(Response({"application/json": schema_of(response)}, status=status))
    for code in errors:
        responses.append(Response({"application/json": ERROR_SCHEMA}, status=code))
    kwargs: dict[str, Any] = {"summary": summary, "tag": tag, "response": responses or None}
    if body is not None:
        kwargs["body"] = {"application/json": schema_of(body)}
    return openapi.definition(**{k: v for k, v in kwargs.items() if v is not None})
