"""REST routes for the kiosk flows (issue 3): pickups and the overdue report, clerk
credentials, compartments, and operator commands to a kiosk (open a door, sync, configure).

Added to the gateway's application by :func:`add_routes`; errors use the API's JSON shape.
"""

import contextlib
import time
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway import commands, kiosk_flows
from gateway.api import GATEWAY, _field_errors, _json_body, error
from gateway.mqtt import GatewayLinkDownError
from protocol import clerks
from protocol.ids import ID_PATTERN, is_valid_id, new_id
from protocol.messages import Configure, KioskSettings, OpenDoor, Sync

if TYPE_CHECKING:
    from gateway.service import Gateway


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ClerkInput(_Input):
    """``PUT /v1/stores/{store}/clerks/{clerk}``."""

    name: str = Field(min_length=1, max_length=100)
    role: Literal["clerk", "courier"] = "clerk"
    badge: str | None = Field(default=None, min_length=4, max_length=64)
    pin: str | None = Field(default=None, min_length=4, max_length=8)


class CommandInput(_Input):
    """``POST /v1/stores/{store}/devices/{device}/commands``."""

    name: Literal["open_door", "sync", "configure"]
    compartment: str | None = None
    inventory: bool = True
    settings: KioskSettings | None = None
    ttl_s: float = Field(default=300.0, gt=0, le=86_400)


def _gateway(request: web.Request) -> "Gateway":
    return request.app[GATEWAY]


async def _known_store(request: web.Request) -> str | None:
    store = request.match_info["store"]
    if not is_valid_id(store):
        return None
    row = await _gateway(request).db.fetchone("SELECT 1 FROM stores WHERE id = ?", (store,))
    return store if row else None


async def get_pickup(request: web.Request) -> web.Response:
    """``GET /v1/pickups/{parcel}``: where the parcel is and its customer's pickup code."""
    view = await kiosk_flows.pickup_view(_gateway(request).db, request.match_info["parcel"])
    if view is None:
        return error(404, "not_found", "no such pickup parcel")
    return web.json_response(view)


async def list_overdue(request: web.Request) -> web.Response:
    """``GET /v1/pickups/overdue?store=``: parcels past their pickup period."""
    store = request.query.get("store")
    rows = await kiosk_flows.overdue(_gateway(request).db, store)
    return web.json_response({"pickups": rows, "count": len(rows)})


async def put_clerk(request: web.Request) -> web.Response:
    """``PUT /v1/stores/{store}/clerks/{clerk}``: create or replace a clerk (badge and/or PIN,
    stored hashed), then republish the store config so kiosks learn it."""
    store = await _known_store(request)
    if store is None:
        return error(404, "not_found", "unknown store")
    clerk = request.match_info["clerk"]
    if not is_valid_id(clerk):
        return error(
            422, "invalid_request", "bad clerk id", [{"field": "clerk", "reason": ID_PATTERN}]
        )
    try:
        body = ClerkInput.model_validate(await _json_body(request))
        if body.badge is None and body.pin is None:
            raise clerks.ClerkSecretError("a clerk needs a badge or a PIN")
        await kiosk_flows.put_clerk(
            _gateway(request).db, store, clerk, name=body.name, role=body.role,
            badge=body.badge, pin=body.pin,
        )  # fmt: skip
    except ValidationError as exc:
        return error(422, "invalid_request", "the request has invalid fields", _field_errors(exc))
    except clerks.ClerkSecretError as exc:
        return error(422, "invalid_request", str(exc), [{"field": "pin", "reason": str(exc)}])
    except kiosk_flows.ClerkConflictError as exc:
        return error(409, "conflict", f"another clerk of {store} has this {exc}")
    await _republish(request)
    return web.json_response({"store": store, "id": clerk, "name": body.name, "role": body.role})


async def delete_clerk(request: web.Request) -> web.Response:
    """``DELETE /v1/stores/{store}/clerks/{clerk}``."""
    store = await _known_store(request)
    if store is None or not await kiosk_flows.delete_clerk(
        _gateway(request).db, store, request.match_info["clerk"]
    ):
        return error(404, "not_found", "no such clerk")
    await _republish(request)
    return web.Response(status=204)


async def _republish(request: web.Request) -> None:
    with contextlib.suppress(GatewayLinkDownError):  # else published on the next connect
        await _gateway(request).publish_store_configs()


async def list_compartments(request: web.Request) -> web.Response:
    """``GET /v1/stores/{store}/compartments``: what the store's kiosks reported."""
    store = await _known_store(request)
    if store is None:
        return error(404, "not_found", "unknown store")
    rows = await kiosk_flows.compartments_view(_gateway(request).db, store)
    return web.json_response({"compartments": rows})


async def post_command(request: web.Request) -> web.Response:
    """``POST /v1/stores/{store}/devices/{device}/commands``: queue a command for a kiosk."""
    store = await _known_store(request)
    device = request.match_info["device"]
    if store is None or not is_valid_id(device):
        return error(404, "not_found", "unknown store or device")
    try:
        req = CommandInput.model_validate(await _json_body(request))
    except ValidationError as exc:
        return error(422, "invalid_request", "the request has invalid fields", _field_errors(exc))
    command_id, expires_at = new_id(), time.time() + req.ttl_s
    body: Any
    if req.name == "open_door":
        if not req.compartment:
            return error(422, "invalid_request", "open_door needs a compartment",
                         [{"field": "compartment", "reason": "required"}])  # fmt: skip
        body = OpenDoor(
            command_id=command_id, expires_at=expires_at, compartment=req.compartment,
            reason="operator",
        )  # fmt: skip
    elif req.name == "sync":
        body = Sync(command_id=command_id, expires_at=expires_at, inventory=req.inventory)
    else:
        body = Configure(
            command_id=command_id, expires_at=expires_at, settings=req.settings or KioskSettings()
        )
    gateway = _gateway(request)
    async with gateway.db.transaction() as tx:
        await commands.enqueue(tx, store=store, device=device, command_id=command_id, body=body)
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
        return error(404, "not_found", "no such command")
    keys = ("id", "store", "device", "name", "created_at", "sent_at", "outcome", "outcome_at")
    return web.json_response(dict(zip(keys, row, strict=True)))


def add_routes(app: web.Application) -> None:
    """Register the kiosk-flow routes."""
    app.router.add_get("/v1/pickups/overdue", list_overdue)
    app.router.add_get("/v1/pickups/{parcel}", get_pickup)
    app.router.add_put("/v1/stores/{store}/clerks/{clerk}", put_clerk)
    app.router.add_delete("/v1/stores/{store}/clerks/{clerk}", delete_clerk)
    app.router.add_get("/v1/stores/{store}/compartments", list_compartments)
    app.router.add_post("/v1/stores/{store}/devices/{device}/commands", post_command)
    app.router.add_get("/v1/commands/{id}", get_command)
