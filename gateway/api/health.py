"""Liveness (open) and the operators' counters."""

from aiohttp import web
from pydantic import BaseModel

from gateway.api.errors import GATEWAY
from gateway.api.routes import Route


class Health(BaseModel):
    """Is the gateway serving, and connected to the broker."""

    ok: bool
    broker_connected: bool
    consuming: bool
    """The broker has confirmed the gateway's subscriptions: events flow to it."""


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


ROUTES: list[Route] = [
    Route("GET", "/v1/health", health, "open", "Liveness", response=Health),
    Route("GET", "/v1/metrics", metrics, "operator", "Counters and queue depths"),
]  # fmt: skip
