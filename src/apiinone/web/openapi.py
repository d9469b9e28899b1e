"""``/openapi.json`` as the truth about the API: every route's parameters, body, answers and errors.

Routes read their inputs themselves (strict parsing, our own 400s), so FastAPI cannot infer most of
this; each route states its success answer and query parameters with :func:`ok` and :func:`query`,
and :func:`complete_spec` adds what every route shares, by path family:

* the error answers each route can give, with the error shape of its family (``/api/v1``: this
  contract's; ``/v1``: OpenAI's; ``/v1/messages``: Anthropic's): 400 when it takes input, 401, 403
  and 429 when it needs a key, 404 when it has path parameters or a body, 413 with a body, 503
  always (database outage, model unavailable), plus any the route declares with :func:`errors`;
* the bearer security scheme on every route that needs a key (all of ``/api/v1`` and ``/v1``
  except the public model list);
* never FastAPI's 422, which this API does not answer.

New routes are covered as soon as they are mounted under one of those prefixes.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

PUBLIC_PATHS = frozenset({"/api/v1/models", "/api/v1/models/{model_id}"})
"""Routes that need no key (a key, if sent, is fine)."""

_NULLABLE_STRING: dict[str, Any] = {"type": ["string", "null"]}
_CREDIT_AMOUNT: dict[str, Any] = {"type": "number"}
_STATUS_TEXT = {
    400: "The request is malformed: a field is missing, mistyped or out of range (`param` names it)",
    401: "No, malformed, unknown or revoked API key",
    402: "Not enough available credits",
    403: "This key or account may not do this",
    404: "Unknown model, task or resource",
    409: "Idempotency-Key reused with another body, or the task already ended",
    413: "Request body over the limit",
    429: "Rate limited (see Retry-After) or out of credits on /v1",
    502: "The upstream failed",
    503: "The model has no healthy upstream, or the database is briefly unavailable; nothing was charged",
    504: "The work did not finish in time; nothing was charged",
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {
            "type": "object", "required": ["code", "message", "param"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "param": _NULLABLE_STRING},
        }},
    },
    "OpenAIError": {
        "type": "object", "required": ["error"],
        "properties": {"error": {
            "type": "object", "required": ["message", "type", "param", "code"],
            "properties": {"message": {"type": "string"}, "type": {"type": "string"}, "param": _NULLABLE_STRING,
                           "code": _NULLABLE_STRING},
        }},
    },
    "AnthropicError": {
        "type": "object", "required": ["type", "error"],
        "properties": {"type": {"const": "error"}, "error": {
            "type": "object", "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        }},
    },
    "Task": {
        "type": "object",
        "required": ["task_id", "object", "type", "model", "status", "input", "output", "error", "credits",
                     "callback_url", "node", "created_at", "started_at", "finished_at", "urls"],
        "properties": {
            "task_id": {"type": "string"}, "object": {"const": "task"},
            "type": {"type": "string"}, "model": {"type": "string"},
            "status": {"enum": ["queued", "running", "succeeded", "failed", "canceled"]},
            "input": {"type": "object"}, "output": {"type": ["object", "null"]},
            "error": {"type": ["object", "null"], "properties": {"code": {"type": "string"},
                                                                 "message": {"type": "string"}}},
            "credits": {"type": "object", "required": ["price", "charged"],
                        "properties": {"price": _CREDIT_AMOUNT, "charged": _CREDIT_AMOUNT}},
            "progress": {"type": ["integer", "null"], "minimum": 0, "maximum": 100},
            "callback_url": _NULLABLE_STRING, "node": _NULLABLE_STRING,
            "created_at": {"type": "string"}, "started_at": _NULLABLE_STRING, "finished_at": _NULLABLE_STRING,
            "urls": {"type": "object", "properties": {"get": {"type": "string"}, "cancel": {"type": "string"}}},
        },
    },
    "Model": {
        "type": "object", "required": ["id", "aliases", "type", "pricing", "available"],
        "properties": {
            "id": {"type": "string"}, "object": {"const": "model"}, "name": {"type": "string"},
            "aliases": {"type": "array", "items": {"type": "string"}}, "type": {"type": "string"},
            "input_modalities": {"type": "array", "items": {"type": "string"}},
            "output_modalities": {"type": "array", "items": {"type": "string"}},
            "pricing": {"type": "object"}, "available": {"type": "boolean"},
            "parameters": {"type": "object"},
        },
    },
    "Account": {
        "type": "object", "required": ["email", "credits"],
        "properties": {
            "id": {"type": "string"}, "email": {"type": "string"},
            "credits": {"type": "object", "required": ["balance", "held", "available"],
                        "properties": {"balance": _CREDIT_AMOUNT, "held": _CREDIT_AMOUNT,
                                       "available": _CREDIT_AMOUNT}},
        },
    },
    "LedgerEntry": {
        "type": "object", "required": ["id", "kind", "amount", "created_at"],
        "properties": {
            "id": {"type": ["integer", "string"]},
            "kind": {"enum": ["topup", "hold", "capture", "release", "grant", "adjustment"]},
            "amount": _CREDIT_AMOUNT, "task_id": _NULLABLE_STRING, "note": _NULLABLE_STRING,
            "created_at": _NULLABLE_STRING,
        },
    },
    "WebhookSecret": {"type": "object", "required": ["secret"], "properties": {"secret": {"type": "string"}}},
    "Delivery": {
        "type": "object", "required": ["id", "status", "attempts"],
        "properties": {"id": {"type": "string"}, "webhook_id": {"type": "string"}, "status": {"type": "string"},
                       "attempts": {"type": "array", "items": {"type": "object"}},
                       "next_attempt_at": _NULLABLE_STRING},
    },
    "Node": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
    "RequestRecord": {
        "type": "object", "required": ["id", "type", "model", "status", "credits", "created_at"],
        "properties": {"id": {"type": "string"}, "type": {"type": "string"}, "model": {"type": "string"},
                       "status": {"type": "string"}, "http_status": {"type": ["integer", "null"]},
                       "credits": _CREDIT_AMOUNT, "input_tokens": {"type": ["integer", "null"]},
                       "output_tokens": {"type": ["integer", "null"]}, "latency_ms": {"type": ["integer", "null"]},
                       "ttft_ms": {"type": ["integer", "null"]}, "key_prefix": _NULLABLE_STRING,
                       "task_id": _NULLABLE_STRING, "created_at": _NULLABLE_STRING},
    },
    "UsageRow": {
        "type": "object", "required": ["group", "requests", "succeeded", "failed", "credits"],
        "properties": {"group": _NULLABLE_STRING, "requests": {"type": "integer"}, "succeeded": {"type": "integer"},
                       "failed": {"type": "integer"}, "credits": _CREDIT_AMOUNT,
                       "input_tokens": {"type": ["integer", "null"]}, "output_tokens": {"type": ["integer", "null"]}},
    },
    "UpstreamRoute": {
        "type": "object", "required": ["model", "name", "provider", "configured", "state"],
        "properties": {"model": {"type": "string"}, "name": {"type": "string"}, "provider": {"type": "string"},
                       "configured": {"type": "boolean"}, "state": {"enum": ["closed", "open", "half_open"]}},
    },
    "OpenAIImages": {
        "type": "object", "required": ["created", "data"],
        "properties": {"created": {"type": "integer"}, "data": {"type": "array", "items": {
            "type": "object", "properties": {"b64_json": {"type": "string"}, "url": {"type": "string"}}}}},
    },
    "OpenAIModel": {
        "type": "object", "required": ["id", "object", "created", "owned_by"],
        "properties": {"id": {"type": "string"}, "object": {"const": "model"}, "created": {"type": "integer"},
                       "owned_by": {"type": "string"}},
    },
}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def page_of(item: str) -> dict[str, Any]:
    """A list route's answer: ``{"data": [...], "next_cursor": "..." | null}``."""
    return {"type": "object", "required": ["data", "next_cursor"],
            "properties": {"data": {"type": "array", "items": ref(item)}, "next_cursor": _NULLABLE_STRING}}


def ok(schema: dict[str, Any], status: int = 200, description: str = "OK",
       content_type: str = "application/json") -> dict[int | str, dict[str, Any]]:
    """The success answer of a route, for its ``responses=``."""
    return {status: {"description": description, "content": {content_type: {"schema": schema}}}}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Error answers a route gives beyond the shared ones; the shape is filled in by path family."""
    return {status: {"description": _STATUS_TEXT.get(status, "Error")} for status in statuses}


def query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def header(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "schema": schema, "description": description}


LIMIT = query("limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}, "Page size")
CURSOR = query("cursor", {"type": "string"}, "The `next_cursor` of the previous page")


def install(app: FastAPI) -> None:
    """Serve the completed spec at ``/openapi.json`` (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, description=app.description,
                               routes=app.routes)
            app.openapi_schema = complete_spec(spec)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _family(path: str) -> str:
    if path.startswith("/v1/messages"):
        return "AnthropicError"
    if path.startswith("/v1/"):
        return "OpenAIError"
    return "Error"


def complete_spec(spec: dict[str, Any]) -> dict[str, Any]:
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas.update(SCHEMAS)
    components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "An `aio_` API key"},
    }
    for path, operations in spec.get("paths", {}).items():
        for operation in operations.values():
            _complete_operation(path, operation)
    _link_tasks(spec)
    return spec


def _link_tasks(spec: dict[str, Any]) -> None:
    """OpenAPI links from every answer that is a task to every operation on ``{task_id}``, so
    clients (and fuzzers) can follow a created task through its routes."""
    paths: dict[str, Any] = spec.get("paths", {})
    targets = {f"{name}_{method}": f"#/paths/{path.replace('~', '~0').replace('/', '~1')}/{method}"
               for path, operations in paths.items() if "{task_id}" in path
               for method in operations
               for name in [path.strip("/").replace("/", "_").replace("{", "").replace("}", "")]}
    for operations in paths.values():
        for operation in operations.values():
            for code, response in operation.get("responses", {}).items():
                schema = response.get("content", {}).get("application/json", {}).get("schema")
                if str(code).startswith("2") and schema == ref("Task"):
                    response["links"] = {name: {"operationRef": target,
                                                "parameters": {"task_id": "$response.body#/task_id"}}
                                         for name, target in targets.items()}


def _complete_operation(path: str, operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    responses.pop("422", None)
    secured = path not in PUBLIC_PATHS and (path.startswith(("/api/v1/", "/v1/")))
    operation["security"] = [{"bearer": []}] if secured else []
    parameters = operation.get("parameters", [])
    takes_input = bool(parameters) or "requestBody" in operation
    statuses = {503}
    if takes_input:
        statuses.add(400)
    if secured:
        statuses |= {401, 403, 429}
    if any(p.get("in") == "path" for p in parameters) or "requestBody" in operation:
        statuses.add(404)
    if "requestBody" in operation:
        statuses.add(413)
    for number in statuses:
        responses.setdefault(str(number), {"description": _STATUS_TEXT.get(number, "Error")})
    error_schema = ref(_family(path))
    for code, response in responses.items():
        status = str(code)
        if status[0] in "45" and "content" not in response:
            response["content"] = {"application/json": {"schema": error_schema}}
        elif status[0] == "2" and not response.get("content"):
            response.pop("content", None)
        if "content" in response:  # FastAPI's default is an empty schema; keep only real ones
            for media in response["content"].values():
                if media.get("schema") == {}:
                    media.pop("schema")
