"""The customer messages of a return."""

from aiohttp import web
from pydantic import BaseModel

from gateway import notifications
from gateway.api.auth import path_return
from gateway.api.errors import GATEWAY
from gateway.api.routes import Route


class Notification(BaseModel):
    """One customer message on one channel."""

    id: str
    kind: str
    channel: str
    recipient: str
    status: str
    attempts: int
    last_error: str | None
    created_at: float
    sent_at: float | None


class NotificationList(BaseModel):
    """A return's customer messages, oldest first."""

    notifications: list[Notification]


async def return_notifications(request: web.Request) -> web.Response:
    """``GET /v1/returns/{id}/notifications``."""
    return_id = await path_return(request)
    rows = await notifications.for_return(request.app[GATEWAY].db, return_id)
    return web.json_response({"notifications": rows})


ROUTES: list[Route] = [
    Route("GET", "/v1/returns/{id}/notifications", return_notifications, "merchant",
          "The customer messages of a return", response=NotificationList, errors=(404,)),
]  # fmt: skip
