"""Reading requests: JSON bodies and query strings through pydantic models, with the
checks both databases need (no NUL characters, no lone surrogates: PostgreSQL and the
drivers refuse them, which would otherwise surface as a 500)."""

import json
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from gateway.api.errors import ApiError, invalid, validation_error

M = TypeVar("M", bound=BaseModel)


class Input(BaseModel):
    """A request body: unknown fields are errors, strings are stripped."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Query(BaseModel):
    """A query string: unknown parameters are errors; numbers must be finite."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, allow_inf_nan=False)


def storable(text: str) -> bool:
    """True when both databases can store ``text``."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_storable(value: object, where: str) -> None:
    if isinstance(value, str):
        if not storable(value):
            raise invalid(where, "contains a NUL character or invalid Unicode")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_storable(item, f"{where}.{i}")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_storable(key, where)
            _check_storable(item, f"{where}.{key}")


def check_request_text(request: web.Request) -> None:
    """Refuse path and query text no database could store."""
    for name, value in request.match_info.items():
        if not storable(value):
            raise invalid(name, "contains a NUL character or invalid Unicode")
    for name, value in request.query.items():
        if not storable(name) or not storable(value):
            raise invalid("query", "contains a NUL character or invalid Unicode")


async def json_body(request: web.Request) -> object:
    """The parsed JSON body (400 when it is not JSON)."""
    try:
        data = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "bad_request", "request body is not valid JSON") from None
    _check_storable(data, "body")
    return data


async def body(request: web.Request, model: type[M], *, optional: bool = False) -> M:
    """The body validated as ``model``; with ``optional`` an empty body is ``model()``."""
    if optional and not await request.read():
        return model()
    try:
        return model.model_validate(await json_body(request))
    except ValidationError as exc:
        raise validation_error(exc) from None


def query(request: web.Request, model: type[M]) -> M:
    """The query string validated as ``model`` (the last value of a repeated parameter)."""
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        raise validation_error(exc) from None


def base_url(request: web.Request) -> str:
    """The gateway's URL as this client reached it."""
    return f"{request.scheme}://{request.host}"
