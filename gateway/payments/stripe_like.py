"""A Stripe-style refunds API: form-encoded ``POST /v1/refunds`` with an ``Idempotency-Key``,
and ``GET /v1/refunds?metadata[return_id]=...`` to find a refund after a timeout."""

import json
from typing import Any

import aiohttp

from gateway.payments.base import (
    PaymentDeclined,
    PaymentError,
    PaymentMalformedReply,
    PaymentTimeout,
    PaymentUnavailable,
    RefundRequest,
    RefundResult,
    RefundStatus,
)


class StripeLikeRefunds:
    """Refunds through a Stripe-compatible API at ``base_url``."""

    name = "stripe"

    def __init__(
        self, base_url: str, api_key: str, session: aiohttp.ClientSession, *, timeout_s: float = 5.0
    ) -> None:
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def refund(self, req: RefundRequest) -> RefundResult:
        """``POST /v1/refunds`` with the return id as idempotency key."""
        form = {
            "amount": str(req.amount_minor),
            "currency": req.currency.lower(),
            "reason": "requested_by_customer",
            "metadata[return_id]": req.return_id,
            "metadata[merchant]": req.merchant,
            "metadata[reason]": req.reason,
        }
        if req.payment_ref:
            form["payment_intent"] = req.payment_ref
        headers = {**self._headers, "Idempotency-Key": f"return-{req.return_id}"}
        data = await self._request("POST", "/v1/refunds", data=form, headers=headers)
        return _result(data)

    async def lookup(self, return_id: str) -> RefundResult | None:
        """The refund for ``return_id``, if any."""
        data = await self._request(
            "GET", "/v1/refunds", params={"metadata[return_id]": return_id}, headers=self._headers
        )
        items = data.get("data")
        if not isinstance(items, list):
            raise PaymentMalformedReply("refund list without data")
        return _result(items[0]) if items else None

    async def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            async with self._session.request(
                method, self._base + path, timeout=self._timeout, **kwargs
            ) as resp:
                text = await resp.text()
                status = resp.status
        except TimeoutError:
            raise PaymentTimeout(f"{method} {path}: no reply in time") from None
        except aiohttp.ClientConnectionError as exc:
            if isinstance(exc, aiohttp.ClientConnectorError):
                raise PaymentUnavailable(f"{method} {path}: {exc}") from None
            raise PaymentError(f"{method} {path}: {exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise PaymentMalformedReply(f"{method} {path}: HTTP {status}, not JSON") from None
        if not isinstance(data, dict):
            raise PaymentMalformedReply(f"{method} {path}: not an object")
        if status >= 400:
            _raise_error(status, data)
        return data


def _raise_error(status: int, data: dict[str, Any]) -> None:
    error = data.get("error") or {}
    message = f"{error.get('type')}/{error.get('code')}: {error.get('message')}"
    if status == 429:
        raise PaymentUnavailable(f"rate limited: {message}")  # Stripe did nothing
    if status == 402 or error.get("type") == "card_error":
        raise PaymentDeclined(message)
    if status >= 500:
        raise PaymentError(f"HTTP {status}: {message}")  # processed or not: unknown
    raise PaymentDeclined(f"HTTP {status}: {message}")


def _result(data: dict[str, Any]) -> RefundResult:
    try:
        status = RefundStatus(data["status"])
        return RefundResult(
            refund_id=str(data["id"]),
            return_id=str(data["metadata"]["return_id"]),
            status=status,
            amount_minor=int(data["amount"]),
            currency=str(data["currency"]).upper(),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PaymentMalformedReply(f"refund object: {exc}") from None
