"""A merchant's webhook endpoints and deliveries (``/v1/merchants/{merchant}/…``): a tenant
key reaches only its own merchant; the operator any."""

from aiohttp import web
from pydantic import BaseModel, Field

from gateway import webhooks
from gateway.api.auth import tenant_scope
from gateway.api.errors import GATEWAY, not_found
from gateway.api.inputs import Input, Query, body, query
from gateway.api.routes import Route


class EndpointRequest(Input):
    """Register a webhook endpoint (all events when ``events`` is empty)."""

    url: str = Field(pattern=r"^https?://[^\s]+$", max_length=2000)
    events: list[webhooks.EventType] = Field(default_factory=list)


class RotateRequest(Input):
    """Rotate an endpoint's secret; the old one signs too for ``grace_s``."""

    grace_s: float | None = Field(default=None, ge=0, le=30 * 86_400)


class DeliveryQuery(Query):
    """``GET …/webhook-deliveries``."""

    status: webhooks.DeliveryStatus | None = None
    event_id: str | None = Field(default=None, max_length=64)
    limit: int = Field(default=100, ge=1, le=500)


class Endpoint(BaseModel):
    """A webhook endpoint; ``secret`` only on creation and rotation."""

    id: str
    merchant: str
    url: str
    events: list[str]
    active: bool
    created_at: float
    previous_secret_until: float | None
    secret: str | None = None


class EndpointList(BaseModel):
    """The merchant's endpoints."""

    endpoints: list[Endpoint]


class Disabled(BaseModel):
    """An endpoint was disabled."""

    disabled: bool


class Delivery(BaseModel):
    """One event to one endpoint."""

    id: str
    event_id: str
    event_type: str
    endpoint_id: str
    status: webhooks.DeliveryStatus
    attempts: int
    next_attempt_at: float
    last_status_code: int | None
    last_error: str | None
    created_at: float
    delivered_at: float | None


class DeliveryList(BaseModel):
    """Deliveries, newest first."""

    deliveries: list[Delivery]
    count: int


class Redelivery(BaseModel):
    """Queued again."""

    status: webhooks.DeliveryStatus


async def _merchant(request: web.Request) -> str:
    merchant = await tenant_scope(request, request.match_info["merchant"])
    assert merchant is not None  # named in the path
    return merchant


async def register_endpoint(request: web.Request) -> web.Response:
    """``POST /v1/merchants/{merchant}/webhook-endpoints``: the secret is shown once."""
    merchant = await _merchant(request)
    req = await body(request, EndpointRequest)
    endpoint = await webhooks.register_endpoint(
        request.app[GATEWAY].db, merchant, req.url, req.events
    )
    return web.json_response(endpoint.public(), status=201)


async def list_endpoints(request: web.Request) -> web.Response:
    """``GET /v1/merchants/{merchant}/webhook-endpoints`` (no secrets)."""
    merchant = await _merchant(request)
    found = await webhooks.list_endpoints(request.app[GATEWAY].db, merchant)
    return web.json_response({"endpoints": [e.public() for e in found]})


async def rotate_secret(request: web.Request) -> web.Response:
    """``POST …/webhook-endpoints/{endpoint}/rotate-secret``."""
    merchant = await _merchant(request)
    req = await body(request, RotateRequest, optional=True)
    gateway = request.app[GATEWAY]
    grace = gateway.config.webhooks.rotation_grace_s if req.grace_s is None else req.grace_s
    try:
        endpoint = await webhooks.rotate_secret(
            gateway.db, merchant, request.match_info["endpoint"], grace_s=grace
        )
    except webhooks.UnknownEndpointError:
        raise not_found("endpoint") from None
    return web.json_response(endpoint.public())


async def disable_endpoint(request: web.Request) -> web.Response:
    """``DELETE …/webhook-endpoints/{endpoint}``: its pending deliveries are cancelled."""
    merchant = await _merchant(request)
    try:
        await webhooks.disable_endpoint(
            request.app[GATEWAY].db, merchant, request.match_info["endpoint"]
        )
    except webhooks.UnknownEndpointError:
        raise not_found("endpoint") from None
    return web.json_response({"disabled": True})


async def list_deliveries(request: web.Request) -> web.Response:
    """``GET /v1/merchants/{merchant}/webhook-deliveries?status=&event_id=&limit=``."""
    merchant = await _merchant(request)
    q = query(request, DeliveryQuery)
    rows = await webhooks.list_deliveries(
        request.app[GATEWAY].db, merchant,
        status=None if q.status is None else q.status.value, event_id=q.event_id, limit=q.limit,
    )  # fmt: skip
    return web.json_response({"deliveries": rows, "count": len(rows)})


async def delivery_detail(request: web.Request) -> web.Response:
    """``GET …/webhook-deliveries/{delivery}``: with its event and attempts."""
    merchant = await _merchant(request)
    try:
        view = await webhooks.delivery_detail(
            request.app[GATEWAY].db, merchant, request.match_info["delivery"]
        )
    except webhooks.UnknownDeliveryError:
        raise not_found("delivery") from None
    return web.json_response(view)


async def redeliver(request: web.Request) -> web.Response:
    """``POST …/webhook-deliveries/{delivery}/redeliver``: send again now."""
    merchant = await _merchant(request)
    gateway = request.app[GATEWAY]
    try:
        await webhooks.redeliver(gateway.db, merchant, request.match_info["delivery"])
    except webhooks.UnknownDeliveryError:
        raise not_found("delivery, or its endpoint is disabled") from None
    gateway.wake()
    return web.json_response({"status": webhooks.DeliveryStatus.PENDING.value}, status=202)


ENDPOINTS = "/v1/merchants/{merchant}/webhook-endpoints"
DELIVERIES = "/v1/merchants/{merchant}/webhook-deliveries"
ROUTES: list[Route] = [
    Route("POST", ENDPOINTS, register_endpoint, "merchant", "Register a webhook endpoint",
          body=EndpointRequest, response=Endpoint, status=201, errors=(404, 422)),
    Route("GET", ENDPOINTS, list_endpoints, "merchant", "The merchant's webhook endpoints",
          response=EndpointList, errors=(404,)),
    Route("POST", ENDPOINTS + "/{endpoint}/rotate-secret", rotate_secret, "merchant",
          "Rotate an endpoint's secret", body=RotateRequest, body_optional=True,
          response=Endpoint, errors=(404, 422)),
    Route("DELETE", ENDPOINTS + "/{endpoint}", disable_endpoint, "merchant",
          "Disable an endpoint", response=Disabled, errors=(404,)),
    Route("GET", DELIVERIES, list_deliveries, "merchant", "Webhook deliveries, newest first",
          query=DeliveryQuery, response=DeliveryList, errors=(404, 422)),
    Route("GET", DELIVERIES + "/{delivery}", delivery_detail, "merchant",
          "A delivery with its event and attempts", errors=(404,)),
    Route("POST", DELIVERIES + "/{delivery}/redeliver", redeliver, "merchant",
          "Send a delivery again now", response=Redelivery, status=202, errors=(404,)),
]  # fmt: skip
