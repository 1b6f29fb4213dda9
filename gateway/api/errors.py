"""The API's error shape and the middleware that guarantees it.

Every error is ``{"error": {"code", "message", "fields"?}}``; ``fields`` lists
``{"field", "reason"}`` for validation errors (422). Handlers raise :class:`ApiError`; the
middleware turns it, aiohttp's own HTTP errors (unknown path, wrong method, body too large)
and anything unexpected (a 500, logged; the fuzz test keeps requests from getting there)
into that shape, and counts each by status in the gateway's metrics.
"""

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

if TYPE_CHECKING:
    from gateway.service import Gateway

log = logging.getLogger(__name__)

GATEWAY: web.AppKey["Gateway"] = web.AppKey("gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FieldError(BaseModel):
    """One invalid input: where, and why."""

    field: str
    reason: str


class ErrorBody(BaseModel):
    """What went wrong."""

    code: str
    message: str
    fields: list[FieldError] | None = None


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx answer."""

    error: ErrorBody


class ApiError(Exception):
    """An answer other than success, raised from anywhere below a handler."""

    def __init__(
        self, status: int, code: str, message: str, fields: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields

    def response(self) -> web.Response:
        """The JSON error response."""
        return error(self.status, self.code, self.message, self.fields)


def error(
    status: int, code: str, message: str, fields: list[dict[str, str]] | None = None
) -> web.Response:
    """A JSON error body: ``{"error": {"code", "message", "fields"}}``."""
    body: dict[str, Any] = {"code": code, "message": message}
    if fields:
        body["fields"] = fields
    return web.json_response({"error": body}, status=status)


def invalid(field: str, reason: str, message: str = "the request has invalid fields") -> ApiError:
    """A 422 about one field."""
    return ApiError(422, "invalid_request", message, [{"field": field, "reason": reason}])


def not_found(what: str) -> ApiError:
    """A 404; also what a tenant gets for another tenant's things."""
    return ApiError(404, "not_found", f"no such {what}")


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """pydantic's errors as ``{field, reason}``."""
    return [
        {"field": ".".join(str(p) for p in e["loc"]) or "body", "reason": e["msg"]}
        for e in exc.errors()
    ]


def validation_error(exc: ValidationError) -> ApiError:
    """The 422 for a request pydantic refused."""
    return ApiError(422, "invalid_request", "the request has invalid fields", field_errors(exc))


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a JSON error; never leak a traceback."""
    try:
        response = await handler(request)
    except ApiError as exc:
        response = exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        response = error(exc.status, code, exc.text or exc.reason)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        response = error(500, "internal", "internal error; it has been logged")
    if response.status >= 400:
        request.app[GATEWAY].metrics[f"api_errors_{response.status}"] += 1
        if response.status >= 500:
            log.error("%s %s answered %d", request.method, request.path, response.status)
        else:
            log.info("%s %s answered %d", request.method, request.path, response.status)
    return response
