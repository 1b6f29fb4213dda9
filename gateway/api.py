"""The merchant-facing REST API and the carriers' webhook (aiohttp)."""

import io
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

import segno
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway import carrier_exceptions, outbound_api
from gateway.authorization import (
    ReturnRequest,
    UnknownMerchantError,
    UnknownStoreError,
    authorize,
)
from gateway.carrier_exceptions import AlreadyResolvedError, ExceptionNotFoundError, Resolution
from gateway.carriers.base import PushVerificationError
from gateway.returns import ReturnState
from protocol import shortcode
from protocol.errors import ShortCodeError
from protocol.ids import new_id

if TYPE_CHECKING:
    from gateway.service import Gateway

log = logging.getLogger(__name__)

GATEWAY: web.AppKey["Gateway"] = web.AppKey("gateway")
MAX_LIST = 500

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(
    status: int, code: str, message: str, fields: list[dict[str, str]] | None = None
) -> web.Response:
    """A JSON error body: ``{"error": {"code", "message", "fields"}}``."""
    body: dict[str, Any] = {"code": code, "message": message}
    if fields:
        body["fields"] = fields
    return web.json_response({"error": body}, status=status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a JSON error; never leak a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error(500, "internal", "internal error; it has been logged")


async def _json_body(request: web.Request) -> object:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise web.HTTPBadRequest(text="request body is not valid JSON") from None


def _field_errors(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {"field": ".".join(str(p) for p in e["loc"]) or "body", "reason": e["msg"]}
        for e in exc.errors()
    ]


async def create_return(request: web.Request) -> web.Response:
    """``POST /v1/returns``: authorize a return, answer with its voucher."""
    gateway = request.app[GATEWAY]
    try:
        req = ReturnRequest.model_validate(await _json_body(request))
    except ValidationError as exc:
        return error(422, "invalid_request", "the request has invalid fields", _field_errors(exc))
    try:
        return_id = await authorize(
            gateway.db, gateway.keys, req, default_ttl_s=gateway.config.voucher_ttl_s
        )
    except UnknownMerchantError:
        return error(
            422,
            "unknown_merchant",
            "unknown merchant",
            [{"field": "merchant", "reason": "unknown"}],
        )
    except UnknownStoreError as exc:
        return error(
            422, "unknown_store", f"unknown store {exc}", [{"field": "stores", "reason": "unknown"}]
        )
    view = await gateway.return_view(return_id, base_url=_base_url(request))
    return web.json_response(view, status=201, headers={"Location": f"/v1/returns/{return_id}"})


def _base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


async def get_return(request: web.Request) -> web.Response:
    """``GET /v1/returns/{id}``: state, history and refund."""
    view = await request.app[GATEWAY].return_view(
        request.match_info["id"], base_url=_base_url(request), history=True
    )
    if view is None:
        return error(404, "not_found", "no such return")
    return web.json_response(view)


def _limit(request: web.Request) -> int | web.Response:
    """The ``limit`` query parameter (1..MAX_LIST, default 100), or the error to answer."""
    try:
        return min(MAX_LIST, max(1, int(request.query.get("limit", "100"))))
    except ValueError:
        return error(
            422,
            "invalid_request",
            "limit must be a number",
            [{"field": "limit", "reason": "not a number"}],
        )


async def list_returns(request: web.Request) -> web.Response:
    """``GET /v1/returns?state=&merchant=&limit=``: newest first."""
    state = request.query.get("state")
    if state is not None and state not in {s.value for s in ReturnState}:
        return error(
            422, "invalid_request", "unknown state", [{"field": "state", "reason": "unknown"}]
        )
    limit = _limit(request)
    if isinstance(limit, web.Response):
        return limit
    rows = await request.app[GATEWAY].list_returns(
        state=state, merchant=request.query.get("merchant"), limit=limit
    )
    return web.json_response({"returns": rows, "count": len(rows)})


async def voucher_image(request: web.Request) -> web.Response:
    """``GET /v1/returns/{id}/voucher.png`` or ``.svg``: the voucher as a QR code."""
    row = await request.app[GATEWAY].db.fetchone(
        "SELECT voucher FROM returns WHERE id = ?", (request.match_info["id"],)
    )
    if row is None:
        return error(404, "not_found", "no such return")
    qr = segno.make_qr(str(row[0]), error="m", boost_error=False)
    out = io.BytesIO()
    if request.match_info["ext"] == "svg":
        qr.save(out, kind="svg", scale=4, border=4)
        return web.Response(body=out.getvalue(), content_type="image/svg+xml")
    qr.save(out, kind="png", scale=6, border=4)
    return web.Response(body=out.getvalue(), content_type="image/png")


async def lookup_short_code(request: web.Request) -> web.Response:
    """``GET /v1/vouchers/{code}``: the return a typed short code belongs to."""
    try:
        code = shortcode.normalize(request.match_info["code"])
    except ShortCodeError as exc:
        return error(422, "bad_short_code", str(exc), [{"field": "code", "reason": str(exc)}])
    row = await request.app[GATEWAY].db.fetchone(
        "SELECT id FROM returns WHERE short_code = ?", (code,)
    )
    if row is None:
        return error(404, "not_found", "no return has this short code")
    view = await request.app[GATEWAY].return_view(str(row[0]), base_url=_base_url(request))
    return web.json_response(view)


async def carrier_push(request: web.Request) -> web.Response:
    """``POST /v1/carriers/{carrier}/push``: a carrier's signed tracking push.

    A forged or malformed push is refused (400, in the carrier's reply format) and counted; a
    replayed one is accepted and changes nothing."""
    gateway = request.app[GATEWAY]
    carrier = gateway.carriers.get(request.match_info["carrier"])
    if carrier is None:
        return error(404, "not_found", "unknown carrier")
    form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
    try:
        updates = carrier.parse_push(form)
    except PushVerificationError as exc:
        gateway.metrics["carrier_push_rejected"] += 1
        gateway.metrics[f"carrier_push_rejected_{carrier.name}"] += 1
        log.warning("rejected %s push: %s", carrier.name, exc)
        return web.json_response(carrier.push_reply(False, exc.reason), status=400)
    applied = await gateway.tracking.apply(updates, cause_id=f"{carrier.name}-push-{new_id()}")
    gateway.wake()
    if applied.unknown:
        # Perhaps ahead of its booking's commit: the carrier sends it again later.
        gateway.metrics["carrier_push_deferred"] += 1
        reason = f"unknown waybill(s) {', '.join(sorted(set(applied.unknown)))}; send again"
        return web.json_response(carrier.push_reply(False, reason))
    gateway.metrics["carrier_push_accepted"] += 1
    return web.json_response(carrier.push_reply(True))


EXCEPTION_STATUSES = ("open", "resolved", "all")


async def list_exceptions(request: web.Request) -> web.Response:
    """``GET /v1/exceptions?status=open|resolved|all&limit=``: the carrier exception queue."""
    status = request.query.get("status", "open")
    if status not in EXCEPTION_STATUSES:
        return error(
            422, "invalid_request", "unknown status", [{"field": "status", "reason": "unknown"}]
        )
    limit = _limit(request)
    if isinstance(limit, web.Response):
        return limit
    items = await carrier_exceptions.listing(request.app[GATEWAY].db, status=status, limit=limit)
    return web.json_response({"exceptions": items, "count": len(items)})


async def get_exception(request: web.Request) -> web.Response:
    """``GET /v1/exceptions/{id}``."""
    item = await carrier_exceptions.view(request.app[GATEWAY].db, request.match_info["id"])
    if item is None:
        return error(404, "not_found", "no such exception")
    return web.json_response(item)


class ResolveRequest(BaseModel):
    """``POST /v1/exceptions/{id}/resolve``: ``resume`` puts the held returns back on their
    journey; ``close`` ends the exception and leaves them in ``exception``."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    action: Literal["resume", "close"]
    by: str = Field(min_length=1, max_length=64)
    note: str = Field(default="", max_length=500)


async def resolve_exception(request: web.Request) -> web.Response:
    """``POST /v1/exceptions/{id}/resolve`` with ``{"action", "by", "note"}``."""
    try:
        body = ResolveRequest.model_validate(await _json_body(request))
    except ValidationError as exc:
        return error(422, "invalid_request", "the request has invalid fields", _field_errors(exc))
    gateway = request.app[GATEWAY]
    try:
        item = await gateway.tracking.resolve(
            request.match_info["id"], Resolution(body.action), by=body.by, note=body.note
        )
    except ExceptionNotFoundError:
        return error(404, "not_found", "no such exception")
    except AlreadyResolvedError:
        return error(409, "already_resolved", "the exception is resolved already")
    gateway.wake()
    return web.json_response(item)


async def health(request: web.Request) -> web.Response:
    """``GET /v1/health``: is the gateway connected and serving."""
    gateway = request.app[GATEWAY]
    return web.json_response(
        {
            "ok": True,
            "broker_connected": gateway.broker_connected,
            "consuming": gateway.link.consuming.is_set(),
        }
    )


async def metrics(request: web.Request) -> web.Response:
    """``GET /v1/metrics``: counters for operators."""
    return web.json_response(await request.app[GATEWAY].metrics_view())


def make_app(gateway: "Gateway") -> web.Application:
    """The aiohttp application for ``gateway``."""
    from gateway import kiosk_api

    app = web.Application(middlewares=[errors_middleware], client_max_size=256 * 1024)
    app[GATEWAY] = gateway
    app.router.add_post("/v1/returns", create_return)
    app.router.add_get("/v1/returns", list_returns)
    app.router.add_get("/v1/returns/{id}", get_return)
    app.router.add_get(r"/v1/returns/{id}/voucher.{ext:png|svg}", voucher_image)
    app.router.add_get("/v1/vouchers/{code}", lookup_short_code)
    app.router.add_post("/v1/carriers/{carrier}/push", carrier_push)
    app.router.add_get("/v1/exceptions", list_exceptions)
    app.router.add_get("/v1/exceptions/{id}", get_exception)
    app.router.add_post("/v1/exceptions/{id}/resolve", resolve_exception)
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/metrics", metrics)
    kiosk_api.add_routes(app)
    outbound_api.add_routes(app, gateway)  # webhooks, refund review, notifications
    return app
