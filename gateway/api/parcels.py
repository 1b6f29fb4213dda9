"""Pickup parcels the merchant registers: for which order and customer, at which store; and
the customer's messages about them (``gateway/pickup_parcels.py``)."""

from typing import Literal

from aiohttp import web
from pydantic import BaseModel, Field

from gateway import notifications, pickup_parcels
from gateway.api.auth import principal
from gateway.api.errors import GATEWAY, ApiError, invalid, not_found
from gateway.api.inputs import Input, body
from gateway.api.notifications import NotificationList
from gateway.api.routes import Route
from gateway.authorization import Customer
from protocol.ids import ID_PATTERN

MAX_PARCEL_ID = 128
"""As long as a parcel id a kiosk reports (``protocol.messages.ParcelLoaded``)."""


class ParcelRegistration(Input):
    """``PUT /v1/pickups/{parcel}``: the parcel id is what its label's barcode reads."""

    merchant: str | None = Field(default=None, pattern=r"^[a-z0-9-]{1,16}$")
    """The tenant; taken from the API key (the operator names it)."""
    order_id: str = Field(min_length=1, max_length=64)
    store: str = Field(pattern=ID_PATTERN)
    """Where the customer collects it."""
    customer: Customer
    """Told the store, locker door, pickup code and deadline once the parcel is loaded."""


class Locker(BaseModel):
    """Where a loaded parcel is."""

    store: str
    compartment: str
    valid_until: float
    """The pickup code's end; the parcel is overdue after it."""


class ParcelView(BaseModel):
    """A registered pickup parcel."""

    parcel_id: str
    merchant: str
    order_id: str
    store: str
    customer: Customer
    state: Literal["expected", "loaded", "picked_up", "removed"]
    """``expected`` until a kiosk loads it."""
    locker: Locker | None
    created_at: float
    updated_at: float


def _parcel_id(request: web.Request) -> str:
    parcel = request.match_info["parcel"]
    if not 1 <= len(parcel) <= MAX_PARCEL_ID or any(ord(c) < 32 for c in parcel):
        raise invalid("parcel", f"1 to {MAX_PARCEL_ID} printable characters")
    return parcel


def _merchant(request: web.Request, named: str | None) -> str:
    tenant = principal(request).tenant
    if tenant is not None and named not in (None, tenant):
        raise invalid("merchant", "not the API key's tenant")
    merchant = tenant or named
    if merchant is None:
        raise invalid("merchant", "required with the operator key")
    return merchant


async def put_parcel(request: web.Request) -> web.Response:
    """``PUT /v1/pickups/{parcel}``: register (or replace) a parcel for pickup; a parcel
    already in its locker gets its customer's notice now."""
    parcel = _parcel_id(request)
    req = await body(request, ParcelRegistration)
    reg = pickup_parcels.Registration(
        parcel_id=parcel, merchant=_merchant(request, req.merchant), order_id=req.order_id,
        store=req.store, customer=req.customer.model_dump(exclude_none=True),
    )  # fmt: skip
    gateway = request.app[GATEWAY]
    try:
        view = await pickup_parcels.register(gateway.db, reg)
    except pickup_parcels.UnknownStoreError:
        raise ApiError(422, "unknown_store", f"unknown store {req.store}",
                       [{"field": "store", "reason": "unknown"}]) from None  # fmt: skip
    except pickup_parcels.ParcelTakenError:
        raise ApiError(409, "conflict", "another merchant registered this parcel id") from None
    gateway.wake()
    return web.json_response(view)


async def parcel_notifications(request: web.Request) -> web.Response:
    """``GET /v1/pickups/{parcel}/notifications``: the customer's messages, every code."""
    parcel = _parcel_id(request)
    db = request.app[GATEWAY].db
    view = await pickup_parcels.registration(db, parcel)
    tenant = principal(request).tenant
    if view is None or (tenant is not None and view["merchant"] != tenant):
        raise not_found("pickup parcel")
    return web.json_response({"notifications": await notifications.for_parcel(db, parcel)})


ROUTES: list[Route] = [
    Route("PUT", "/v1/pickups/{parcel}", put_parcel, "merchant",
          "Register a parcel for pickup", body=ParcelRegistration, response=ParcelView,
          errors=(409, 422)),
    Route("GET", "/v1/pickups/{parcel}/notifications", parcel_notifications, "merchant",
          "The customer messages of a pickup parcel", response=NotificationList,
          errors=(404, 422)),
]  # fmt: skip
