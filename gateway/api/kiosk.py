"""Operator routes for the kiosk flows (issue 3): pickups and the overdue report, clerk
credentials, compartments, and commands to a kiosk (open a door, sync, configure)."""

import contextlib
import time
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from gateway import commands, kiosk_flows
from gateway.api.errors import GATEWAY, ApiError, invalid, not_found
from gateway.api.inputs import Input, Query, body, query
from gateway.api.routes import Route
from gateway.mqtt import GatewayLinkDownError
from protocol import clerks
from protocol.ids import ID_PATTERN, is_valid_id, new_id
from protocol.messages import Configure, KioskSettings, OpenDoor, Sync

if TYPE_CHECKING:
    from gateway.service import Gateway


class ClerkInput(Input):
    """``PUT /v1/stores/{store}/clerks/{clerk}``: a badge and/or a PIN."""

    name: str = Field(min_length=1, max_length=100)
    role: Literal["clerk", "courier"] = "clerk"
    badge: str | None = Field(default=None, min_length=4, max_length=64)
    pin: str | None = Field(default=None, min_length=4, max_length=8)


class CommandInput(Input):
    """``POST /v1/stores/{store}/devices/{device}/commands``."""

    name: Literal["open_door", "sync", "configure"]
    compartment: str | None = Field(default=None, max_length=16)
    inventory: bool = True
    settings: KioskSettings | None = None
    ttl_s: float = Field(default=300.0, gt=0, le=86_400)


class OverdueQuery(Query):
    """``GET /v1/pickups/overdue``."""

    store: str | None = Field(default=None, max_length=64)


class Clerk(BaseModel):
    """A clerk as stored (never the badge or PIN)."""

    store: str
    id: str
    name: str
    role: str


class CommandAccepted(BaseModel):
    """A command queued for the kiosk."""

    command_id: str
    name: str
    expires_at: float


class Command(BaseModel):
    """A command and, once the kiosk reported it, its outcome."""

    id: str
    store: str
    device: str
    name: str
    created_at: float
    sent_at: float | None
    outcome: str | None
    outcome_at: float | None


def _gateway(request: web.Request) -> "Gateway":
    return request.app[GATEWAY]


async def _known_store(request: web.Request) -> str:
    store = request.match_info["store"]
    if not is_valid_id(store) or not await _gateway(request).db.fetchone(
        "SELECT 1 FROM stores WHERE id = ?", (store,)
    ):
        raise not_found("store")
    return store


async def get_pickup(request: web.Request) -> web.Response:
    """``GET /v1/pickups/{parcel}``: where the parcel is and its customer's pickup code."""
    view = await kiosk_flows.pickup_view(_gateway(request).db, request.match_info["parcel"])
    if view is None:
        raise not_found("pickup parcel")
    return web.json_response(view)


async def list_overdue(request: web.Request) -> web.Response:
    """``GET /v1/pickups/overdue?store=``: parcels past their pickup period."""
    q = query(request, OverdueQuery)
    rows = await kiosk_flows.overdue(_gateway(request).db, q.store)
    return web.json_response({"pickups": rows, "count": len(rows)})


async def put_clerk(request: web.Request) -> web.Response:
    """``PUT /v1/stores/{store}/clerks/{clerk}``: create or replace a clerk (badge and/or PIN,
    stored hashed), then republish the store config so kiosks learn it."""
    store = await _known_store(request)
    clerk = request.match_info["clerk"]
    if not is_valid_id(clerk):
        raise invalid("clerk", ID_PATTERN, "bad clerk id")
    req = await body(request, ClerkInput)
    try:
        if req.badge is None and req.pin is None:
            raise clerks.ClerkSecretError("a clerk needs a badge or a PIN")
        await kiosk_flows.put_clerk(
            _gateway(request).db, store, clerk, name=req.name, role=req.role,
            badge=req.badge, pin=req.pin,
        )  # fmt: skip
    except clerks.ClerkSecretError as exc:
        raise invalid("pin", str(exc), str(exc)) from None
    except kiosk_flows.ClerkConflictError as exc:
        raise ApiError(409, "conflict", f"another clerk of {store} has this {exc}") from None
    await _republish(request)
    return web.json_response({"store": store, "id": clerk, "name": req.name, "role": req.role})


async def delete_clerk(request: web.Request) -> web.Response:
    """``DELETE /v1/stores/{store}/clerks/{clerk}``."""
    store = await _known_store(request)
    if not await kiosk_flows.delete_clerk(_gateway(request).db, store, request.match_info["clerk"]):
        raise not_found("clerk")
    await _republish(request)
    return web.Response(status=204)


async def _republish(request: web.Request) -> None:
    with contextlib.suppress(GatewayLinkDownError):  # else published on the next connect
        await _gateway(request).publish_store_configs()


async def list_compartments(request: web.Request) -> web.Response:
    """``GET /v1/stores/{store}/compartments``: what the store's kiosks reported."""
    store = await _known_store(request)
    rows = await kiosk_flows.compartments_view(_gateway(request).db, store)
    return web.json_response({"compartments": rows})


def _command_body(req: CommandInput, command_id: str, expires_at: float) -> Any:
    if req.name == "open_door":
        if not req.compartment:
            raise invalid("compartment", "required", "open_door needs a compartment")
        return OpenDoor(
            command_id=command_id, expires_at=expires_at, compartment=req.compartment,
            reason="operator",
        )  # fmt: skip
    if req.name == "sync":
        return Sync(command_id=command_id, expires_at=expires_at, inventory=req.inventory)
    return Configure(
        command_id=command_id, expires_at=expires_at, settings=req.settings or KioskSettings()
    )


async def post_command(request: web.Request) -> web.Response:
    """``POST /v1/stores/{store}/devices/{device}/commands``: queue a command for a kiosk."""
    store = await _known_store(request)
    device = request.match_info["device"]
    if not is_valid_id(device):
        raise not_found("device")
    req = await body(request, CommandInput)
    command_id, expires_at = new_id(), time.time() + req.ttl_s
    command = _command_body(req, command_id, expires_at)
    gateway = _gateway(request)
    async with gateway.db.transaction() as tx:
        await commands.enqueue(tx, store=store, device=device, command_id=command_id, body=command)
    gateway.wake()
    return web.json_response(
        {"command_id": command_id, "name": req.name, "expires_at": expires_at},
        status=202,
        headers={"Location": f"/v1/commands/{command_id}"},
    )


async def get_command(request: web.Request) -> web.Response:
    """``GET /v1/commands/{id}``: a command and its outcome, once the kiosk reported it."""
    row = await _gateway(request).db.fetchone(
        "SELECT id, store, device, name, created_at, sent_at, outcome, outcome_at "
        "FROM commands WHERE id = ?",
        (request.match_info["id"],),
    )
    if row is None:
        raise not_found("command")
    keys = ("id", "store", "device", "name", "created_at", "sent_at", "outcome", "outcome_at")
    return web.json_response(dict(zip(keys, row, strict=True)))


ROUTES: list[Route] = [
    Route("GET", "/v1/pickups/overdue", list_overdue, "operator",
          "Pickup parcels past their period", query=OverdueQuery, errors=(422,)),
    Route("GET", "/v1/pickups/{parcel}", get_pickup, "operator", "A pickup parcel",
          errors=(404,)),
    Route("PUT", "/v1/stores/{store}/clerks/{clerk}", put_clerk, "operator",
          "Create or replace a clerk", body=ClerkInput, response=Clerk, errors=(404, 409, 422)),
    Route("DELETE", "/v1/stores/{store}/clerks/{clerk}", delete_clerk, "operator",
          "Remove a clerk", status=204, content=(), errors=(404,)),
    Route("GET", "/v1/stores/{store}/compartments", list_compartments, "operator",
          "The store's compartments", errors=(404,)),
    Route("POST", "/v1/stores/{store}/devices/{device}/commands", post_command, "operator",
          "Queue a command for a kiosk", body=CommandInput, response=CommandAccepted,
          status=202, errors=(404, 422)),
    Route("GET", "/v1/commands/{id}", get_command, "operator", "A command and its outcome",
          response=Command, errors=(404,)),
]  # fmt: skip
