"""REST routes for outbound integrations: merchants' webhook endpoints and deliveries,
refund review and risk flags, the merchant refund system's callback, and customer
notifications. ``add_routes(app, gateway)`` mounts them on the gateway's application.

| route | what |
|---|---|
| ``POST /v1/merchants/{m}/webhook-endpoints`` | register ``{url, events?}``; secret shown once |
| ``GET /v1/merchants/{m}/webhook-endpoints`` | list (no secrets) |
| ``POST .../webhook-endpoints/{id}/rotate-secret`` | new secret; old one valid ``grace_s`` more |
| ``DELETE .../webhook-endpoints/{id}`` | disable; its pending deliveries are cancelled |
| ``GET /v1/merchants/{m}/webhook-deliveries`` | ``?status=&event_id=&limit=``, newest first |
| ``GET .../webhook-deliveries/{id}`` | one delivery, its event and every attempt |
| ``POST .../webhook-deliveries/{id}/redeliver`` | send again now |
| ``POST /v1/returns/{id}/refund`` | ``{decision: approve or reject, operator, note}`` |
| ``POST /v1/returns/{id}/flags`` | ``{flag, note}``: a risk flag; an unsent refund goes to review |
| ``GET /v1/returns/{id}/notifications`` | the customer messages of a return |
| ``POST /v1/payments/merchant-system/{m}/callback`` | the merchant system's signed refund outcome |

Authentication is what the rest of the API has today (none yet); the merchant routes must
go behind tenant authentication, scoped to ``{m}``, when the API gets it.
"""

import json
import logging
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway import notifications, refunds, signatures, webhooks
from gateway.payments.base import PaymentMalformedReply
from gateway.payments.merchant_system import MerchantSystemRefunds, refund_result

if TYPE_CHECKING:
    from gateway.service import Gateway

log = logging.getLogger(__name__)

OUTBOUND: web.AppKey["Gateway"] = web.AppKey("outbound-gateway")
MAX_LIST = 500

M = TypeVar("M", bound=BaseModel)


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class EndpointRequest(_Input):
    """Register a webhook endpoint."""

    url: str = Field(pattern=r"^https?://[^\s]+$", max_length=2000)
    events: list[webhooks.EventType] = Field(default_factory=list)


class RotateRequest(_Input):
    """Rotate an endpoint's secret."""

    grace_s: float | None = Field(default=None, ge=0, le=30 * 86_400)


class RefundDecision(_Input):
    """A person's decision on a refund."""

    decision: Literal["approve", "reject"]
    operator: str = Field(min_length=1, max_length=100)
    note: str = Field(default="", max_length=500)


class FlagRequest(_Input):
    """A risk flag on a return."""

    flag: str = Field(pattern=r"^[a-z0-9_]{1,40}$")
    note: str = Field(default="", max_length=500)
    source: str = Field(default="api", max_length=100)


def _error(status: int, code: str, message: str, field: str | None = None) -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["fields"] = [{"field": field, "reason": message}]
    return web.json_response({"error": body}, status=status)


async def _body(
    request: web.Request, model: type[M], *, optional: bool = False
) -> M | web.Response:
    """The validated body, or the 422 response to send instead."""
    if optional and not request.can_read_body:
        return model()
    try:
        return model.model_validate_json(await request.read())
    except ValidationError as exc:
        fields = [
            {"field": ".".join(str(p) for p in e["loc"]) or "body", "reason": e["msg"]}
            for e in exc.errors()
        ]
        body = {"code": "invalid_request", "message": "the request has invalid fields"}
        return web.json_response({"error": {**body, "fields": fields}}, status=422)


async def _merchant(request: web.Request) -> str:
    merchant = request.match_info["merchant"]
    gateway = request.app[OUTBOUND]
    if await gateway.db.fetchone("SELECT 1 FROM merchants WHERE id = ?", (merchant,)) is None:
        raise web.HTTPNotFound(text="no such merchant")
    return merchant


def _limit(request: web.Request) -> int | None:
    try:
        return max(1, min(MAX_LIST, int(request.query.get("limit", "100"))))
    except ValueError:
        return None


# ---- webhook endpoints and deliveries -----------------------------------------------------


async def register_endpoint(request: web.Request) -> web.Response:
    """``POST /v1/merchants/{merchant}/webhook-endpoints``."""
    merchant = await _merchant(request)
    req = await _body(request, EndpointRequest)
    if isinstance(req, web.Response):
        return req
    endpoint = await webhooks.register_endpoint(
        request.app[OUTBOUND].db, merchant, req.url, req.events
    )
    return web.json_response(endpoint.public(), status=201)


async def list_endpoints(request: web.Request) -> web.Response:
    """``GET /v1/merchants/{merchant}/webhook-endpoints``."""
    merchant = await _merchant(request)
    found = await webhooks.list_endpoints(request.app[OUTBOUND].db, merchant)
    return web.json_response({"endpoints": [e.public() for e in found]})


async def rotate_secret(request: web.Request) -> web.Response:
    """``POST .../webhook-endpoints/{endpoint}/rotate-secret``."""
    merchant = await _merchant(request)
    req = await _body(request, RotateRequest, optional=True)
    if isinstance(req, web.Response):
        return req
    gateway = request.app[OUTBOUND]
    grace = gateway.config.webhooks.rotation_grace_s if req.grace_s is None else req.grace_s
    try:
        endpoint = await webhooks.rotate_secret(
            gateway.db, merchant, request.match_info["endpoint"], grace_s=grace
        )
    except webhooks.UnknownEndpointError:
        return _error(404, "not_found", "no such endpoint")
    return web.json_response(endpoint.public())


async def disable_endpoint(request: web.Request) -> web.Response:
    """``DELETE .../webhook-endpoints/{endpoint}``."""
    merchant = await _merchant(request)
    try:
        await webhooks.disable_endpoint(
            request.app[OUTBOUND].db, merchant, request.match_info["endpoint"]
        )
    except webhooks.UnknownEndpointError:
        return _error(404, "not_found", "no such endpoint")
    return web.json_response({"disabled": True})


async def list_deliveries(request: web.Request) -> web.Response:
    """``GET /v1/merchants/{merchant}/webhook-deliveries?status=&event_id=&limit=``."""
    merchant = await _merchant(request)
    status = request.query.get("status")
    if status is not None and status not in {s.value for s in webhooks.DeliveryStatus}:
        return _error(422, "invalid_request", "unknown status", "status")
    limit = _limit(request)
    if limit is None:
        return _error(422, "invalid_request", "limit must be a number", "limit")
    rows = await webhooks.list_deliveries(
        request.app[OUTBOUND].db,
        merchant,
        status=status,
        event_id=request.query.get("event_id"),
        limit=limit,
    )
    return web.json_response({"deliveries": rows, "count": len(rows)})


async def delivery_detail(request: web.Request) -> web.Response:
    """``GET .../webhook-deliveries/{delivery}``: with its event and attempts."""
    merchant = await _merchant(request)
    try:
        view = await webhooks.delivery_detail(
            request.app[OUTBOUND].db, merchant, request.match_info["delivery"]
        )
    except webhooks.UnknownDeliveryError:
        return _error(404, "not_found", "no such delivery")
    return web.json_response(view)


async def redeliver(request: web.Request) -> web.Response:
    """``POST .../webhook-deliveries/{delivery}/redeliver``."""
    merchant = await _merchant(request)
    gateway = request.app[OUTBOUND]
    try:
        await webhooks.redeliver(gateway.db, merchant, request.match_info["delivery"])
    except webhooks.UnknownDeliveryError:
        return _error(404, "not_found", "no such delivery, or its endpoint is disabled")
    gateway.wake()
    return web.json_response({"status": webhooks.DeliveryStatus.PENDING.value}, status=202)


# ---- refunds ----------------------------------------------------------------------------


async def decide_refund(request: web.Request) -> web.Response:
    """``POST /v1/returns/{id}/refund``: approve or reject."""
    req = await _body(request, RefundDecision)
    if isinstance(req, web.Response):
        return req
    gateway = request.app[OUTBOUND]
    try:
        status = await refunds.decide(
            gateway.db,
            request.match_info["id"],
            approve=req.decision == "approve",
            operator=req.operator,
            note=req.note,
        )
    except KeyError:
        return _error(404, "not_found", "no such return")
    except refunds.RefundDecisionError as exc:
        return _error(409, exc.code, str(exc))
    gateway.wake()
    return web.json_response({"return_id": request.match_info["id"], "refund_status": status})


async def flag_return(request: web.Request) -> web.Response:
    """``POST /v1/returns/{id}/flags``."""
    req = await _body(request, FlagRequest)
    if isinstance(req, web.Response):
        return req
    try:
        held = await refunds.flag(
            request.app[OUTBOUND].db, request.match_info["id"], req.flag, req.note, req.source
        )
    except KeyError:
        return _error(404, "not_found", "no such return")
    return web.json_response({"flag": req.flag, "refund_held_for_review": held}, status=201)


async def merchant_system_callback(request: web.Request) -> web.Response:
    """``POST /v1/payments/merchant-system/{merchant}/callback``: a refund's final outcome."""
    gateway = request.app[OUTBOUND]
    merchant = request.match_info["merchant"]
    provider = gateway.refunds.provider(f"merchant-system:{merchant}")
    if not isinstance(provider, MerchantSystemRefunds):
        return _error(404, "not_found", "this merchant has no refund system configured")
    body = await request.read()
    try:
        signatures.verify(request.headers.get(signatures.HEADER), body, [provider.secret])
        result = refund_result(json.loads(body))
    except signatures.SignatureError as exc:
        gateway.metrics["refund_callback_rejected"] += 1
        log.warning("rejected refund callback from %s: %s", merchant, exc)
        return _error(401, "bad_signature", str(exc))
    except (ValueError, PaymentMalformedReply) as exc:
        return _error(422, "invalid_request", f"not a refund object: {exc}")
    try:
        outcome = await refunds.apply_provider_result(gateway.db, provider.name, result)
    except KeyError:
        return _error(404, "not_found", "no refund in flight for this return")
    gateway.wake()
    return web.json_response({"outcome": outcome})


# ---- notifications ----------------------------------------------------------------------


async def return_notifications(request: web.Request) -> web.Response:
    """``GET /v1/returns/{id}/notifications``."""
    rows = await notifications.for_return(request.app[OUTBOUND].db, request.match_info["id"])
    return web.json_response({"notifications": rows})


def add_routes(app: web.Application, gateway: "Gateway") -> None:
    """Mount the outbound routes on the gateway's application."""
    app[OUTBOUND] = gateway
    endpoints = "/v1/merchants/{merchant}/webhook-endpoints"
    deliveries = "/v1/merchants/{merchant}/webhook-deliveries"
    r = app.router
    r.add_post(endpoints, register_endpoint)
    r.add_get(endpoints, list_endpoints)
    r.add_post(endpoints + "/{endpoint}/rotate-secret", rotate_secret)
    r.add_delete(endpoints + "/{endpoint}", disable_endpoint)
    r.add_get(deliveries, list_deliveries)
    r.add_get(deliveries + "/{delivery}", delivery_detail)
    r.add_post(deliveries + "/{delivery}/redeliver", redeliver)
    r.add_post("/v1/returns/{id}/refund", decide_refund)
    r.add_post("/v1/returns/{id}/flags", flag_return)
    r.add_get("/v1/returns/{id}/notifications", return_notifications)
    r.add_post("/v1/payments/merchant-system/{merchant}/callback", merchant_system_callback)
