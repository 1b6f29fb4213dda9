"""Refund review and risk flags on a return, and the merchant refund system's signed
callback (no API key: verified by the shared secret's signature)."""

import json
import logging
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, Field

from gateway import refunds, signatures
from gateway.api.auth import path_return
from gateway.api.errors import GATEWAY, ApiError, not_found
from gateway.api.inputs import Input, body
from gateway.api.routes import Route
from gateway.payments.base import PaymentMalformedReply
from gateway.payments.merchant_system import MerchantSystemRefunds, refund_result

log = logging.getLogger(__name__)


class RefundDecision(Input):
    """A person's decision on a refund held for review."""

    decision: Literal["approve", "reject"]
    operator: str = Field(min_length=1, max_length=100)
    note: str = Field(default="", max_length=500)


class FlagRequest(Input):
    """A risk flag on a return; an unsent refund goes to review."""

    flag: str = Field(pattern=r"^[a-z0-9_]{1,40}$")
    note: str = Field(default="", max_length=500)
    source: str = Field(default="api", max_length=100)


class DecisionResult(BaseModel):
    """The refund's status after the decision."""

    return_id: str
    refund_status: str


class FlagResult(BaseModel):
    """The flag, and whether it held an unsent refund for review."""

    flag: str
    refund_held_for_review: bool


class CallbackResult(BaseModel):
    """What the outcome changed."""

    outcome: str


async def decide_refund(request: web.Request) -> web.Response:
    """``POST /v1/returns/{id}/refund``: approve or reject."""
    return_id = await path_return(request)
    req = await body(request, RefundDecision)
    gateway = request.app[GATEWAY]
    try:
        status = await refunds.decide(
            gateway.db, return_id, approve=req.decision == "approve", operator=req.operator,
            note=req.note,
        )  # fmt: skip
    except KeyError:
        raise not_found("return") from None
    except refunds.RefundDecisionError as exc:
        raise ApiError(409, exc.code, str(exc)) from None
    gateway.wake()
    return web.json_response({"return_id": return_id, "refund_status": status})


async def flag_return(request: web.Request) -> web.Response:
    """``POST /v1/returns/{id}/flags``."""
    return_id = await path_return(request)
    req = await body(request, FlagRequest)
    try:
        held = await refunds.flag(
            request.app[GATEWAY].db, return_id, req.flag, req.note, req.source
        )
    except KeyError:
        raise not_found("return") from None
    return web.json_response({"flag": req.flag, "refund_held_for_review": held}, status=201)


async def merchant_system_callback(request: web.Request) -> web.Response:
    """``POST /v1/payments/merchant-system/{merchant}/callback``: a refund's final outcome."""
    gateway = request.app[GATEWAY]
    merchant = request.match_info["merchant"]
    provider = gateway.refunds.provider(f"merchant-system:{merchant}")
    if not isinstance(provider, MerchantSystemRefunds):
        raise not_found("refund system for this merchant")
    raw = await request.read()
    try:
        signatures.verify(request.headers.get(signatures.HEADER), raw, [provider.secret])
        result = refund_result(json.loads(raw))
    except signatures.SignatureError as exc:
        gateway.metrics["refund_callback_rejected"] += 1
        log.warning("rejected refund callback from %s: %s", merchant, exc)
        raise ApiError(401, "bad_signature", str(exc)) from None
    except (ValueError, RecursionError, PaymentMalformedReply) as exc:
        raise ApiError(422, "invalid_request", f"not a refund object: {exc}") from None
    try:
        outcome = await refunds.apply_provider_result(gateway.db, provider.name, result)
    except KeyError:
        raise not_found("refund in flight for this return") from None
    gateway.wake()
    return web.json_response({"outcome": outcome})


ROUTES: list[Route] = [
    Route("POST", "/v1/returns/{id}/refund", decide_refund, "merchant",
          "Approve or reject a refund held for review", body=RefundDecision,
          response=DecisionResult, errors=(404, 409, 422)),
    Route("POST", "/v1/returns/{id}/flags", flag_return, "merchant", "Flag a return",
          body=FlagRequest, response=FlagResult, status=201, errors=(404, 422)),
    Route("POST", "/v1/payments/merchant-system/{merchant}/callback", merchant_system_callback,
          "signed", "The merchant refund system's signed refund outcome",
          response=CallbackResult, errors=(401, 404, 422)),
]  # fmt: skip
