"""The review queue and the auto-approval rules that fill it (``gateway/approval.py``)."""

from aiohttp import web
from pydantic import BaseModel, Field

from gateway import approval, review
from gateway.api.auth import one_tenant, path_return, principal, tenant_scope
from gateway.api.errors import GATEWAY, ApiError
from gateway.api.inputs import Input, Query, base_url, body, query
from gateway.api.returns import Money, ReturnView
from gateway.api.routes import Route
from gateway.approval import ApprovalRules
from gateway.returns import IllegalTransitionError


class ReviewItem(BaseModel):
    """A return waiting for a person."""

    id: str
    merchant: str
    order_id: str
    reason: str
    refund_amount: Money
    rule: str | None
    created_at: float


class ReviewQueue(BaseModel):
    """Returns in review, oldest first."""

    reviews: list[ReviewItem]
    count: int


class ReviewQuery(Query):
    """``GET /v1/reviews``."""

    tenant: str | None = Field(default=None, max_length=16, description="operator only")
    limit: int = Field(default=100, ge=1, le=500)


class RejectRequest(Input):
    """Why a return in review is refused."""

    reason: str = Field(min_length=1, max_length=200)


class TenantQuery(Query):
    """The operator names the tenant; a tenant's key implies it."""

    tenant: str | None = Field(default=None, max_length=16, description="operator only")


async def list_reviews(request: web.Request) -> web.Response:
    """``GET /v1/reviews``: the queue."""
    q = query(request, ReviewQuery)
    items = await review.queue(
        request.app[GATEWAY].db, await tenant_scope(request, q.tenant), q.limit
    )
    return web.json_response({"reviews": items, "count": len(items)})


async def _answer(request: web.Request, return_id: str) -> web.Response:
    view = await request.app[GATEWAY].return_view(return_id, base_url=base_url(request))
    return web.json_response(view)


async def approve(request: web.Request) -> web.Response:
    """``POST /v1/reviews/{id}/approve``: authorized, with its voucher."""
    return_id = await path_return(request)
    gateway = request.app[GATEWAY]
    try:
        await review.approve(gateway.db, gateway.keys, return_id, by=principal(request).name)
    except IllegalTransitionError as exc:
        raise ApiError(409, "not_in_review", str(exc)) from None
    gateway.wake()
    return await _answer(request, return_id)


async def reject(request: web.Request) -> web.Response:
    """``POST /v1/reviews/{id}/reject``: cancelled."""
    return_id = await path_return(request)
    req = await body(request, RejectRequest)
    try:
        await review.reject(
            request.app[GATEWAY].db, return_id, by=principal(request).name, reason=req.reason
        )
    except IllegalTransitionError as exc:
        raise ApiError(409, "not_in_review", str(exc)) from None
    return await _answer(request, return_id)


async def get_rules(request: web.Request) -> web.Response:
    """``GET /v1/approval-rules``: the tenant's rules (the defaults until set)."""
    tenant = await one_tenant(request, query(request, TenantQuery).tenant)
    async with request.app[GATEWAY].db.transaction() as tx:
        rules = await approval.load(tx, tenant)
    return web.json_response(rules.model_dump())


async def put_rules(request: web.Request) -> web.Response:
    """``PUT /v1/approval-rules``: replace the tenant's rules."""
    tenant = await one_tenant(request, query(request, TenantQuery).tenant)
    rules = await body(request, ApprovalRules)
    await approval.save(request.app[GATEWAY].db, tenant, rules)
    return web.json_response(rules.model_dump())


ROUTES: list[Route] = [
    Route("GET", "/v1/reviews", list_reviews, "merchant", "Returns waiting in review",
          query=ReviewQuery, response=ReviewQueue, errors=(404, 422)),
    Route("POST", "/v1/reviews/{id}/approve", approve, "merchant",
          "Approve: authorized, voucher issued, return.authorized sent", response=ReturnView,
          errors=(404, 409)),
    Route("POST", "/v1/reviews/{id}/reject", reject, "merchant", "Reject: cancelled",
          body=RejectRequest, response=ReturnView, errors=(404, 409, 422)),
    Route("GET", "/v1/approval-rules", get_rules, "merchant", "The auto-approval rules",
          query=TenantQuery, response=ApprovalRules, errors=(404, 422)),
    Route("PUT", "/v1/approval-rules", put_rules, "merchant", "Replace the auto-approval rules",
          query=TenantQuery, body=ApprovalRules, response=ApprovalRules, errors=(404, 422)),
]  # fmt: skip
