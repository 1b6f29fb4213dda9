"""Identifiers: UUIDv7 message ids and the id grammar for stores and devices."""

import os
import re
import time
import uuid

ID_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"
"""Store and device ids: lower-case letters, digits and inner hyphens (DESIGN §4)."""

_ID_RE = re.compile(ID_PATTERN)


def is_valid_id(value: str) -> bool:
    """True when ``value`` may be used as a store or device id in a topic."""
    return bool(_ID_RE.match(value))


_VERSION_CLEAR = ~(0xF << 76 | 0x3 << 62)
_VERSION_SET = 0x7 << 76 | 0x2 << 62  # version 7, RFC 4122 variant


def _uuid7_int(ms: int, rand: bytes) -> int:
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | int.from_bytes(rand, "big")
    return (value & _VERSION_CLEAR) | _VERSION_SET


def uuid7(now_ms: int | None = None) -> uuid.UUID:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then random bits; sorts by creation time."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    return uuid.UUID(int=_uuid7_int(ms, os.urandom(10)))


def _text(value: int) -> str:
    """``str(uuid.UUID(int=value))`` without building the UUID."""
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_id() -> str:
    """A fresh UUIDv7 in canonical text form."""
    return _text(_uuid7_int(time.time_ns() // 1_000_000, os.urandom(10)))


def new_ids(n: int) -> list[str]:
    """``n`` fresh UUIDv7s in canonical text form (one clock read and one call for
    randomness for them all: cheaper than ``n`` calls of :func:`new_id`)."""
    ms = time.time_ns() // 1_000_000
    rand = os.urandom(10 * n)
    return [_text(_uuid7_int(ms, rand[i : i + 10])) for i in range(0, 10 * n, 10)]
