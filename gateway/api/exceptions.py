"""The carrier exception queue (operator): list, read, resolve."""

from typing import Literal

from aiohttp import web
from pydantic import BaseModel, Field

from gateway import carrier_exceptions
from gateway.api.errors import GATEWAY, ApiError, not_found
from gateway.api.inputs import Input, Query, body, query
from gateway.api.routes import Route
from gateway.carrier_exceptions import AlreadyResolvedError, ExceptionNotFoundError, Resolution


class ExceptionQuery(Query):
    """``GET /v1/exceptions``."""

    status: Literal["open", "resolved", "all"] = "open"
    limit: int = Field(default=100, ge=1, le=500)


class ResolveRequest(Input):
    """``resume`` puts the held returns back on their journey; ``close`` ends the exception
    and leaves them in ``exception``."""

    action: Literal["resume", "close"]
    by: str = Field(min_length=1, max_length=64)
    note: str = Field(default="", max_length=500)


class CarrierException(BaseModel):
    """A shipment or tote that needs a person, with the returns it holds."""

    id: str
    subject: str
    reason: carrier_exceptions.Reason
    detail: str
    carrier: str | None
    waybill: str | None
    tote_id: str | None
    return_id: str | None
    carrier_state: str | None
    opened_at: float
    updated_at: float
    resolved_at: float | None
    resolution: str | None
    resolved_by: str | None
    note: str | None
    status: Literal["open", "resolved"]
    returns: list[str]


class ExceptionList(BaseModel):
    """Exceptions, newest first."""

    exceptions: list[CarrierException]
    count: int


async def list_exceptions(request: web.Request) -> web.Response:
    """``GET /v1/exceptions?status=open|resolved|all&limit=``."""
    q = query(request, ExceptionQuery)
    items = await carrier_exceptions.listing(
        request.app[GATEWAY].db, status=q.status, limit=q.limit
    )
    return web.json_response({"exceptions": items, "count": len(items)})


async def get_exception(request: web.Request) -> web.Response:
    """``GET /v1/exceptions/{id}``."""
    item = await carrier_exceptions.view(request.app[GATEWAY].db, request.match_info["id"])
    if item is None:
        raise not_found("exception")
    return web.json_response(item)


async def resolve_exception(request: web.Request) -> web.Response:
    """``POST /v1/exceptions/{id}/resolve`` with ``{"action", "by", "note"}``."""
    req = await body(request, ResolveRequest)
    gateway = request.app[GATEWAY]
    try:
        item = await gateway.tracking.resolve(
            request.match_info["id"], Resolution(req.action), by=req.by, note=req.note
        )
    except ExceptionNotFoundError:
        raise not_found("exception") from None
    except AlreadyResolvedError:
        raise ApiError(409, "already_resolved", "the exception is resolved already") from None
    gateway.wake()
    return web.json_response(item)


ROUTES: list[Route] = [
    Route("GET", "/v1/exceptions", list_exceptions, "operator", "The carrier exception queue",
          query=ExceptionQuery, response=ExceptionList, errors=(422,)),
    Route("GET", "/v1/exceptions/{id}", get_exception, "operator", "One exception",
          response=CarrierException, errors=(404,)),
    Route("POST", "/v1/exceptions/{id}/resolve", resolve_exception, "operator",
          "Resolve an exception", body=ResolveRequest, response=CarrierException,
          errors=(404, 409, 422)),
]  # fmt: skip
