"""The HTTP exchange both carrier adapters share: a form POST whose failures become typed
carrier errors (timeouts, refused connections, 5xx, 429 with Retry-After, non-JSON replies)."""

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from gateway.carriers.base import (
    CarrierMalformedReply,
    CarrierRateLimited,
    CarrierRejected,
    CarrierTimeout,
    CarrierUnavailable,
)


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """An HTTP ``Retry-After`` (seconds or an HTTP date) in seconds; None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


async def post_form(
    session: aiohttp.ClientSession,
    url: str,
    form: Mapping[str, str],
    *,
    carrier: str,
    timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's own per-request timeout
) -> str:
    """POST ``form`` and return the reply's text, or raise the matching carrier error."""
    try:
        async with session.post(url, data=dict(form), timeout=timeout) as resp:
            status = resp.status
            retry_after = resp.headers.get("Retry-After")
            text = await resp.text()
    except TimeoutError:
        raise CarrierTimeout(carrier, "no reply in time") from None
    except aiohttp.ClientConnectorError as exc:
        raise CarrierUnavailable(carrier, f"cannot connect: {exc}") from None
    except aiohttp.ClientError as exc:
        # The request may have arrived: like a timeout, the outcome is unknown.
        raise CarrierTimeout(carrier, f"connection lost: {exc}") from None
    if status == 429:
        raise CarrierRateLimited(carrier, "HTTP 429", retry_after_seconds(retry_after))
    if status >= 500:
        raise CarrierUnavailable(carrier, f"HTTP {status}")
    if status >= 400:
        raise CarrierRejected(carrier, f"HTTP{status}", text[:80])
    return text


def json_object(text: str, carrier: str) -> dict[str, Any]:
    """Parse a reply that must be a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise CarrierMalformedReply(carrier, f"not JSON: {text[:80]!r}") from None
    if not isinstance(value, dict):
        raise CarrierMalformedReply(carrier, f"not a JSON object: {text[:80]!r}")
    return value
