"""Returns: authorize, list, read, cancel, and the voucher as an image or by short code."""

import contextlib
import io

import segno
from aiohttp import web
from pydantic import BaseModel, Field

from gateway import cancellation, return_listing
from gateway.api.auth import owned_return, path_return, principal, tenant_scope
from gateway.api.errors import GATEWAY, ApiError, invalid, not_found
from gateway.api.inputs import Input, Query, base_url, body, query
from gateway.api.routes import Route
from gateway.authorization import (
    MerchantMismatchError,
    ReturnRequest,
    UnknownMerchantError,
    UnknownStoreError,
    authorize,
)
from gateway.mqtt import GatewayLinkDownError
from gateway.returns import IllegalTransitionError, ReturnState
from protocol import shortcode
from protocol.errors import ShortCodeError

MAX_LIST = 500


class Money(BaseModel):
    """An amount in minor units."""

    amount_minor: int
    currency: str


class VoucherView(BaseModel):
    """The voucher a shopper shows at the kiosk (none while the return is in review)."""

    token: str
    short_code: str
    short_code_display: str
    expires_at: float
    qr_png: str
    qr_svg: str


class DropoffView(BaseModel):
    """Where the parcel was dropped off."""

    store: str
    device: str | None


class RefundView(BaseModel):
    """The refund, once asked for."""

    status: str
    provider: str
    refund_id: str | None
    attempts: int


class Cause(BaseModel):
    """Why a return moved."""

    kind: str
    id: str | None


class HistoryLine(BaseModel):
    """One transition."""

    from_: str | None = Field(alias="from")
    to: str
    cause: Cause
    at: float


class ReturnView(BaseModel):
    """A return as the API shows it."""

    id: str
    merchant: str
    order_id: str
    state: ReturnState
    method: str
    size: str
    item_count: int
    reason: str
    refund_amount: Money
    approval_rule: str | None
    """The approval rule that decided (``gateway/approval.py``)."""
    cancel_reason: str | None
    voucher: VoucherView | None
    dropoff: DropoffView | None
    tote_id: str | None
    refund: RefundView | None
    created_at: float
    updated_at: float
    history: list[HistoryLine] | None = None
    """Every transition with its cause (``GET /v1/returns/{id}`` only)."""


class ReturnSummary(BaseModel):
    """A return in a listing."""

    id: str
    state: ReturnState
    merchant: str
    order_id: str
    method: str
    store: str | None
    tote_id: str | None
    created_at: float
    updated_at: float


class ReturnPage(BaseModel):
    """One page of returns, newest first."""

    returns: list[ReturnSummary]
    count: int
    next_cursor: str | None
    """Pass as ``cursor`` for the next page; None on the last one."""


class ReturnQuery(Query):
    """Filters and paging of ``GET /v1/returns``."""

    state: ReturnState | None = None
    store: str | None = Field(default=None, max_length=64, description="the drop-off store")
    method: str | None = Field(default=None, max_length=32)
    order_id: str | None = Field(default=None, max_length=64)
    created_after: float | None = Field(default=None, ge=0, le=1e11)
    created_before: float | None = Field(default=None, ge=0, le=1e11)
    tenant: str | None = Field(default=None, max_length=16, description="operator only")
    cursor: str | None = Field(default=None, max_length=200)
    limit: int = Field(default=100, ge=1, le=MAX_LIST)


class CancelRequest(Input):
    """``POST /v1/returns/{id}/cancel``."""

    reason: str = Field(min_length=1, max_length=200)


async def _view(request: web.Request, return_id: str, *, history: bool = False) -> web.Response:
    view = await request.app[GATEWAY].return_view(
        return_id, base_url=base_url(request), history=history
    )
    if view is None:
        raise not_found("return")
    return web.json_response(view)


async def create_return(request: web.Request) -> web.Response:
    """``POST /v1/returns``: authorize a return (its tenant is the key's); answer with it and
    its voucher, or in ``review`` without one when the approval rules say so."""
    gateway = request.app[GATEWAY]
    req = await body(request, ReturnRequest)
    try:
        return_id = await authorize(
            gateway.db, gateway.keys, req, default_ttl_s=gateway.config.voucher_ttl_s,
            tenant=principal(request).tenant,
        )  # fmt: skip
    except MerchantMismatchError:
        raise invalid("merchant", "not the API key's tenant") from None
    except UnknownMerchantError as exc:
        raise ApiError(422, "unknown_merchant", f"unknown merchant: {exc}",
                       [{"field": "merchant", "reason": "unknown"}]) from None  # fmt: skip
    except UnknownStoreError as exc:
        raise ApiError(422, "unknown_store", f"unknown store {exc}",
                       [{"field": "stores", "reason": "unknown"}]) from None  # fmt: skip
    response = await _view(request, return_id)
    response.set_status(201)
    response.headers["Location"] = f"/v1/returns/{return_id}"
    return response


async def get_return(request: web.Request) -> web.Response:
    """``GET /v1/returns/{id}``: state, history and refund."""
    return_id = await path_return(request)
    return await _view(request, return_id, history=True)


async def list_returns(request: web.Request) -> web.Response:
    """``GET /v1/returns``: filtered, newest first, a page at a time."""
    q = query(request, ReturnQuery)
    where = return_listing.ReturnFilter(
        tenant=await tenant_scope(request, q.tenant), state=q.state, store=q.store,
        method=q.method, order_id=q.order_id, created_after=q.created_after,
        created_before=q.created_before,
    )  # fmt: skip
    try:
        rows, cursor = await return_listing.page(
            request.app[GATEWAY].db, where, limit=q.limit, cursor=q.cursor
        )
    except return_listing.BadCursorError:
        raise invalid("cursor", "not a cursor this API handed out") from None
    return web.json_response({"returns": rows, "count": len(rows), "next_cursor": cursor})


async def cancel_return(request: web.Request) -> web.Response:
    """``POST /v1/returns/{id}/cancel``: before drop-off; kiosks then refuse the voucher."""
    return_id = await path_return(request)
    req = await body(request, CancelRequest)
    gateway = request.app[GATEWAY]
    try:
        await cancellation.cancel(
            gateway.db, return_id, reason=req.reason, by=principal(request).name
        )
    except IllegalTransitionError as exc:
        raise ApiError(409, "illegal_transition", str(exc)) from None
    with contextlib.suppress(GatewayLinkDownError):  # else published on the next connect
        await gateway.publish_store_configs()
    return await _view(request, return_id)


async def voucher_image(request: web.Request) -> web.Response:
    """``GET /v1/returns/{id}/voucher.png`` or ``.svg``: the voucher as a QR code."""
    return_id = await path_return(request)
    row = await request.app[GATEWAY].db.fetchone(
        "SELECT voucher FROM returns WHERE id = ?", (return_id,)
    )
    if row is None or not row[0]:
        raise not_found("voucher (a return in review has none yet)")
    qr = segno.make_qr(str(row[0]), error="m", boost_error=False)
    out = io.BytesIO()
    if request.match_info["ext"] == "svg":
        qr.save(out, kind="svg", scale=4, border=4)
        return web.Response(body=out.getvalue(), content_type="image/svg+xml")
    qr.save(out, kind="png", scale=6, border=4)
    return web.Response(body=out.getvalue(), content_type="image/png")


async def lookup_short_code(request: web.Request) -> web.Response:
    """``GET /v1/vouchers/{code}``: the return a typed short code belongs to."""
    try:
        code = shortcode.normalize(request.match_info["code"])
    except ShortCodeError as exc:
        raise ApiError(422, "bad_short_code", str(exc),
                       [{"field": "code", "reason": str(exc)}]) from None  # fmt: skip
    row = await request.app[GATEWAY].db.fetchone(
        "SELECT id FROM returns WHERE short_code = ? AND voucher != ''", (code,)
    )
    if row is None:
        raise not_found("return with this short code")
    await owned_return(request, str(row[0]))
    return await _view(request, str(row[0]))


ERRORS_ONE: tuple[int, ...] = (404,)
ROUTES: list[Route] = [
    Route("POST", "/v1/returns", create_return, "merchant", "Authorize a return",
          body=ReturnRequest, response=ReturnView, status=201, errors=(422,)),
    Route("GET", "/v1/returns", list_returns, "merchant", "List returns",
          query=ReturnQuery, response=ReturnPage, errors=(422,)),
    Route("GET", "/v1/returns/{id}", get_return, "merchant", "A return with its history",
          response=ReturnView, errors=ERRORS_ONE),
    Route("POST", "/v1/returns/{id}/cancel", cancel_return, "merchant",
          "Cancel a return before drop-off", body=CancelRequest, response=ReturnView,
          errors=(404, 409, 422)),
    Route("GET", "/v1/returns/{id}/voucher.{ext:png|svg}", voucher_image, "merchant",
          "The voucher as a QR code", content=("image/png", "image/svg+xml"),
          errors=ERRORS_ONE),
    Route("GET", "/v1/vouchers/{code}", lookup_short_code, "merchant",
          "The return a typed short code belongs to", response=ReturnView, errors=(404, 422)),
]  # fmt: skip
