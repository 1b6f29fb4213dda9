"""Refunds paid by the merchant's own system, asked for by signed webhook (DESIGN §8).

The exchange (``docs/webhooks.md`` shows both sides):

- ``POST {url}/refunds`` with JSON ``{"return_id", "amount_minor", "currency", "merchant",
  "reason", "payment_ref", "callback_url"}``, an ``Idempotency-Key: return-{id}`` header and
  ``Dropline-Signature`` over the body (``gateway/signatures.py``). The merchant must treat
  the return id as the idempotency key: asking again for the same return never pays twice
  and answers with the refund it already has.
- It answers at once with a refund object ``{"refund_id", "return_id", "status",
  "amount_minor", "currency"}`` where ``status`` is ``succeeded``, ``failed`` or ``pending``
  (HTTP 200, or 202 for ``pending``). A ``pending`` refund is finished later: the merchant
  POSTs the final refund object to ``callback_url``, signed with the same secret; until
  then we ask for it with the status query. 402/4xx with ``{"error": {...}}`` is a decline;
  429 means nothing was done; 5xx, a timeout or a reply we cannot read leave the outcome
  unknown, and we ask before anything else.
- ``GET {url}/refunds/{return_id}`` is the status query: the refund object, or 404 when the
  merchant never saw the return. It is signed over the request path (no body), so a
  replayed query is as stale as its timestamp.
"""

import json
from typing import Any

import aiohttp

from gateway import signatures
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


def refund_result(data: object) -> RefundResult:
    """A refund object from the merchant (reply, status query or callback)."""
    if not isinstance(data, dict):
        raise PaymentMalformedReply("refund object is not a JSON object")
    try:
        return RefundResult(
            refund_id=str(data["refund_id"]),
            return_id=str(data["return_id"]),
            status=RefundStatus(data["status"]),
            amount_minor=int(data["amount_minor"]),
            currency=str(data["currency"]).upper(),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PaymentMalformedReply(f"refund object: {exc!r}") from None


class MerchantSystemRefunds:
    """One merchant's refund system at ``base_url``."""

    def __init__(
        self,
        merchant: str,
        base_url: str,
        secret: str,
        session: aiohttp.ClientSession,
        *,
        callback_url: str,
        timeout_s: float = 5.0,
    ) -> None:
        self.name = f"merchant-system:{merchant}"
        self.merchant = merchant
        self.secret = secret
        self._base = base_url.rstrip("/")
        self._session = session
        self._callback_url = callback_url
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def refund(self, req: RefundRequest) -> RefundResult:
        """Ask the merchant to refund ``req.return_id`` (its idempotency key)."""
        body = json.dumps(
            {
                "return_id": req.return_id,
                "amount_minor": req.amount_minor,
                "currency": req.currency,
                "merchant": req.merchant,
                "reason": req.reason,
                "payment_ref": req.payment_ref,
                "callback_url": self._callback_url,
            },
            sort_keys=True,
        ).encode()
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": f"return-{req.return_id}",
            signatures.HEADER: signatures.sign([self.secret], body),
        }
        status, data = await self._request("POST", "/refunds", body, headers)
        if status >= 400:
            _raise_error(status, data)
        result = refund_result(data)
        if result.return_id != req.return_id:
            raise PaymentMalformedReply("the reply is about another return")
        return result

    async def lookup(self, return_id: str) -> RefundResult | None:
        """The merchant's refund for ``return_id``, or None when it never saw one."""
        path = f"/refunds/{return_id}"
        headers = {signatures.HEADER: signatures.sign([self.secret], path.encode())}
        status, data = await self._request("GET", path, None, headers)
        if status == 404:
            return None
        if status >= 400:
            raise PaymentError(f"status query: HTTP {status}")
        return refund_result(data)

    async def _request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, Any]:
        try:
            async with self._session.request(
                method, self._base + path, data=body, headers=headers, timeout=self._timeout
            ) as resp:
                status, text = resp.status, await resp.text()
        except TimeoutError:
            raise PaymentTimeout(f"{method} {path}: no reply in time") from None
        except aiohttp.ClientConnectorError as exc:
            raise PaymentUnavailable(f"{method} {path}: {exc}") from None
        except aiohttp.ClientError as exc:
            raise PaymentError(f"{method} {path}: {exc}") from None
        if status == 404 and method == "GET":
            return status, None
        try:
            return status, json.loads(text)
        except json.JSONDecodeError:
            if status == 429:
                raise PaymentUnavailable(f"{method} {path}: rate limited") from None
            raise PaymentMalformedReply(f"{method} {path}: HTTP {status}, not JSON") from None


def _raise_error(status: int, data: Any) -> None:
    error = data.get("error") if isinstance(data, dict) else None
    message = json.dumps(error) if error else f"HTTP {status}"
    if status == 429:
        raise PaymentUnavailable(f"rate limited: {message}")
    if status >= 500:
        raise PaymentError(f"HTTP {status}: {message}")  # processed or not: unknown
    raise PaymentDeclined(f"HTTP {status}: {message}")
