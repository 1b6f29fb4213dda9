"""HMAC-SHA256 request signatures with a timestamp, for everything the gateway sends out
(merchant webhooks, refund requests to a merchant's system, SMS webhooks) and for the
callbacks it accepts back.

The header is ``Dropline-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]`` where each
``v1`` is ``HMAC-SHA256(secret, f"{t}.".encode() + body)`` in lower-case hex. While a secret
is being rotated the header carries one ``v1`` per valid secret, so a receiver holding
either secret accepts it. A receiver checks that ``t`` is within its tolerance of its own
clock (five minutes by default) so a captured request cannot be replayed later, and
compares signatures in constant time. ``docs/webhooks.md`` shows a receiver in full.
"""

import hashlib
import hmac
import time
from collections.abc import Sequence

HEADER = "Dropline-Signature"
SCHEME = "v1"
DEFAULT_TOLERANCE_S = 300.0


class SignatureError(ValueError):
    """A signature header that is missing, malformed, stale or does not match."""


def digest(secret: str, timestamp: int, body: bytes) -> str:
    """The ``v1`` signature of ``body`` sent at ``timestamp``."""
    message = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secrets: Sequence[str], body: bytes, *, now: float | None = None) -> str:
    """The header value signing ``body`` with every secret in ``secrets`` (current first)."""
    if not secrets:
        raise ValueError("at least one secret is needed to sign")
    t = int(time.time() if now is None else now)
    return ",".join([f"t={t}", *(f"{SCHEME}={digest(s, t, body)}" for s in secrets)])


def parse(header: str) -> tuple[int, list[str]]:
    """The timestamp and the ``v1`` signatures of a header value."""
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureError(f"malformed signature element {part!r}")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise SignatureError("signature timestamp is not a number") from None
        elif key == SCHEME:
            signatures.append(value)
    if timestamp is None or not signatures:
        raise SignatureError("signature header needs t= and at least one v1=")
    return timestamp, signatures


def verify(
    header: str | None,
    body: bytes,
    secrets: Sequence[str],
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> int:
    """Check ``header`` against ``body``; returns its timestamp or raises SignatureError."""
    if not header:
        raise SignatureError(f"missing {HEADER} header")
    timestamp, signatures = parse(header)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise SignatureError("signature timestamp outside the tolerance (replayed or skewed)")
    for secret in secrets:
        expected = digest(secret, timestamp, body)
        if any(hmac.compare_digest(expected, s) for s in signatures):
            return timestamp
    raise SignatureError("no signature matches")
