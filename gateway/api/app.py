"""The route table (one list, made of each resource module's routes) and the aiohttp
application made from it."""

from dataclasses import replace
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.api import (
    carriers,
    exceptions,
    health,
    kiosk,
    notifications,
    openapi,
    parcels,
    refunds,
    reports,
    returns,
    reviews,
    tenants,
    webhooks,
)
from gateway.api.errors import GATEWAY, errors_middleware
from gateway.api.routes import ROUTE_TABLE, Route

if TYPE_CHECKING:
    from gateway.service import Gateway

RESOURCES: dict[str, list[Route]] = {
    "returns": returns.ROUTES,
    "reviews": reviews.ROUTES,
    "refunds": refunds.ROUTES,
    "notifications": notifications.ROUTES,
    "parcels": parcels.ROUTES,
    "webhooks": webhooks.ROUTES,
    "reports": reports.ROUTES,
    "tenants": tenants.ROUTES,
    "kiosk": kiosk.ROUTES,
    "exceptions": exceptions.ROUTES,
    "carriers": carriers.ROUTES,
    "health": health.ROUTES,
    "openapi": openapi.ROUTES,
}
ROUTES: list[Route] = [replace(r, tag=tag) for tag, routes in RESOURCES.items() for r in routes]
"""Every route of the API, in the order they are matched."""


def make_app(gateway: "Gateway") -> web.Application:
    """The aiohttp application for ``gateway``."""
    app = web.Application(middlewares=[errors_middleware], client_max_size=256 * 1024)
    app[GATEWAY] = gateway
    app[ROUTE_TABLE] = ROUTES
    app[openapi.OPENAPI_DOCUMENT] = openapi.document(ROUTES)
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.guarded())
    return app
