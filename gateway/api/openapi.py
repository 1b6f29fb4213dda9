"""The OpenAPI 3.1 document, made from the route table and the pydantic models of each
route's query, body and answer, so it cannot drift from what the gateway serves (a test
also checks every route and validates real answers against it)."""

import re
from collections.abc import Sequence
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from gateway.api.errors import ErrorResponse
from gateway.api.routes import Route

REF = "#/components/schemas/{model}"
PARAM = re.compile(r"\{(\w+)(?::([^}]+))?\}")
CHOICES = re.compile(r"^[\w-]+(\|[\w-]+)+$")
OPENAPI_DOCUMENT: web.AppKey[dict[str, Any]] = web.AppKey("openapi-document")

SECURITY_SCHEMES = {
    "tenantKey": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "dl_{key id}_{secret}",
        "description": "A tenant's API key (POST /v1/tenants/{tenant}/keys): its own data only.",
    },
    "operatorKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "The operator key, [api] admin_key in the gateway's configuration.",
    },
}
SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "open": [],
    "signed": [],
    "operator": [{"operatorKey": []}],
    "merchant": [{"tenantKey": []}, {"operatorKey": []}],
}
AUTH_ERRORS: dict[str, tuple[int, ...]] = {
    "open": (),
    "signed": (),
    "operator": (401, 403),
    "merchant": (401,),
}
DESCRIPTIONS = {
    400: "Not valid JSON (or, for carrier pushes, refused in the carrier's reply format)",
    401: "Missing or bad API key (or signature)",
    403: "The key's role may not call this route",
    404: "Not found, or another tenant's",
    409: "Not allowed in the current state",
    422: "Invalid fields: error.fields lists {field, reason}",
}


def openapi_path(path: str) -> str:
    """aiohttp's ``{name:regex}`` as OpenAPI's ``{name}``."""
    return PARAM.sub(lambda m: "{" + m.group(1) + "}", path)


def _models(routes: Sequence[Route]) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    pairs: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {
        (ErrorResponse, "serialization"): None
    }
    for r in routes:
        for model, mode in ((r.body, "validation"), (r.query, "validation"),
                            (r.response, "serialization")):  # fmt: skip
            if model is not None:
                pairs[(model, mode)] = None  # type: ignore[index]
    return list(pairs)


class _Schemas:
    """Component schemas and the reference of each (model, mode)."""

    def __init__(self, routes: Sequence[Route]) -> None:
        refs, defs = models_json_schema(_models(routes), ref_template=REF)
        self.refs: dict[tuple[type[BaseModel], str], dict[str, Any]] = dict(refs)  # type: ignore[arg-type]
        self.components: dict[str, Any] = defs.get("$defs", {})

    def ref(self, model: type[BaseModel], mode: Literal["validation", "serialization"]) -> Any:
        return self.refs[(model, mode)]

    def resolve(self, ref: dict[str, Any]) -> dict[str, Any]:
        name = ref["$ref"].rsplit("/", 1)[1]
        found: dict[str, Any] = self.components[name]
        return found


def _parameters(route: Route, schemas: _Schemas) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    for match in PARAM.finditer(route.path):
        name, regex = match.group(1), match.group(2)
        schema: dict[str, Any] = {"type": "string"}
        values = route.path_values.get(name)
        if values is None and regex and CHOICES.match(regex):
            values = tuple(regex.split("|"))
        if values:
            schema["enum"] = list(values)
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    if route.query is not None:
        model = schemas.resolve(schemas.ref(route.query, "validation"))
        required = set(model.get("required", []))
        for name, prop in model.get("properties", {}).items():
            param = {"name": name, "in": "query", "required": name in required, "schema": prop}
            if "description" in prop:
                param["description"] = prop["description"]
            params.append(param)
    return params


def _success(route: Route, schemas: _Schemas) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": route.summary}
    content: dict[str, Any] = {}
    for media in route.content:
        if media == "application/json":
            content[media] = {
                "schema": schemas.ref(route.response, "serialization")
                if route.response is not None
                else {"type": "object"}
            }
        else:
            content[media] = {"schema": {"type": "string", "contentMediaType": media}}
    if content:
        answer["content"] = content
    return answer


def _operation(route: Route, schemas: _Schemas) -> dict[str, Any]:
    error_ref = schemas.ref(ErrorResponse, "serialization")
    op: dict[str, Any] = {
        "operationId": f"{route.tag}.{route.handler.__name__}",
        "summary": route.summary,
        "tags": [route.tag],
        "security": SECURITY[route.access],
        "responses": {str(route.status): _success(route, schemas)},
    }
    if route.handler.__doc__:
        op["description"] = route.handler.__doc__.strip()
    params = _parameters(route, schemas)
    if params:
        op["parameters"] = params
    statuses = set(AUTH_ERRORS[route.access]) | set(route.errors)
    if route.body is not None:
        op["requestBody"] = {
            "required": not route.body_optional,
            "content": {"application/json": {"schema": schemas.ref(route.body, "validation")}},
        }
        statuses |= {400, 422}
    if route.form:
        op["requestBody"] = {"required": True, "content": {"application/x-www-form-urlencoded": {
            "schema": {"type": "object", "additionalProperties": {"type": "string"}}}}}  # fmt: skip
    for status in sorted(statuses):
        generic = status == 400 and route.form
        schema = {"type": "object"} if generic else error_ref
        op["responses"][str(status)] = {
            "description": DESCRIPTIONS.get(status, "Error"),
            "content": {"application/json": {"schema": schema}},
        }
    return op


def document(routes: Sequence[Route]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes``."""
    schemas = _Schemas(routes)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(openapi_path(route.path), {})[route.method.lower()] = _operation(
            route, schemas
        )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Dropline gateway API",
            "version": "1",
            "description": "Returns, reviews, reports and webhooks for merchants (tenant keys); "
            "tenants, keys, stores, kiosks and exceptions for operators. "
            "Send keys as `Authorization: Bearer <key>`.",
        },
        "paths": paths,
        "components": {"schemas": schemas.components, "securitySchemes": SECURITY_SCHEMES},
    }


async def serve(request: web.Request) -> web.Response:
    """``GET /v1/openapi.json``: this document."""
    return web.json_response(request.app[OPENAPI_DOCUMENT])


ROUTES: list[Route] = [
    Route("GET", "/v1/openapi.json", serve, "open", "This API's OpenAPI 3.1 document"),
]
