"""One route of the API as data: method, path, handler, who may call it, and the models of
its query, body and answer. The application (``gateway/api/app.py``) and the OpenAPI
document (``gateway/api/openapi.py``) are both made from the table of these."""

from dataclasses import dataclass, field

from aiohttp import web
from pydantic import BaseModel

from gateway.api.auth import PRINCIPAL, Access, authenticate
from gateway.api.errors import Handler
from gateway.api.inputs import check_request_text

ROUTE_TABLE: web.AppKey[list["Route"]] = web.AppKey("route-table")


@dataclass(frozen=True)
class Route:
    """One method on one path."""

    method: str
    path: str
    """aiohttp's syntax: ``{name}`` or ``{name:regex}``."""
    handler: Handler
    access: Access
    summary: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    """The success answer's JSON; None for a free-form object (or non-JSON content)."""
    status: int = 200
    content: tuple[str, ...] = ("application/json",)
    errors: tuple[int, ...] = ()
    """Error statuses beyond those every route of its access can give."""
    body_optional: bool = False
    form: bool = False
    """The body is form-encoded in someone else's format (carrier pushes)."""
    path_values: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Path parameters that take one of a few values."""
    tag: str = ""

    def guarded(self) -> Handler:
        """The handler behind authentication and the request-text check."""

        async def handle(request: web.Request) -> web.StreamResponse:
            request[PRINCIPAL] = await authenticate(request, self.access)
            check_request_text(request)
            return await self.handler(request)

        handle.__doc__ = self.handler.__doc__
        return handle
