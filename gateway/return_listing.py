"""Listing returns with filters, newest first, a page at a time.

The order is ``(created_at, id)`` descending: unique and stable, so a page never repeats or
skips a return however many are created meanwhile. The cursor is that pair of the last
return of a page, encoded opaquely (URL-safe base64 of JSON); clients pass it back as is.
"""

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from gateway.database import Database

COLUMNS = ("id", "state", "merchant", "order_id", "method", "store", "tote_id", "created_at",
           "updated_at")  # fmt: skip


class BadCursorError(ValueError):
    """The cursor was not one this API handed out."""


@dataclass(frozen=True)
class ReturnFilter:
    """Which returns to list; None means any."""

    tenant: str | None = None
    state: str | None = None
    store: str | None = None
    method: str | None = None
    order_id: str | None = None
    created_after: float | None = None
    created_before: float | None = None


def encode_cursor(created_at: float, return_id: str) -> str:
    """The opaque cursor after a return."""
    raw = json.dumps([created_at, return_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The position a cursor stands for; raises :class:`BadCursorError`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, return_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise BadCursorError(cursor) from None
    if not isinstance(created_at, int | float) or isinstance(created_at, bool):
        raise BadCursorError(cursor)
    if not isinstance(return_id, str) or len(return_id) > 64 or "\x00" in return_id:
        raise BadCursorError(cursor)
    return float(created_at), return_id


async def page(
    db: Database, where: ReturnFilter, *, limit: int, cursor: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of returns and the cursor of the next (None on the last page)."""
    clauses: list[str] = []
    args: list[Any] = []
    equal = {"merchant": where.tenant, "state": where.state, "store": where.store,
             "method": where.method, "order_id": where.order_id}  # fmt: skip
    for column, value in equal.items():
        if value is not None:
            clauses.append(f"{column} = ?")
            args.append(value)
    if where.created_after is not None:
        clauses.append("created_at > ?")
        args.append(where.created_after)
    if where.created_before is not None:
        clauses.append("created_at < ?")
        args.append(where.created_before)
    if cursor is not None:
        created_at, return_id = decode_cursor(cursor)
        clauses.append("(created_at < ? OR (created_at = ? AND id < ?))")
        args += [created_at, created_at, return_id]
    rows = await db.fetchall(
        f"SELECT {', '.join(COLUMNS)} FROM returns "
        + ("WHERE " + " AND ".join(clauses) if clauses else "")
        + " ORDER BY created_at DESC, id DESC LIMIT ?",
        (*args, limit + 1),
    )
    items = [dict(zip(COLUMNS, r, strict=True)) for r in rows[:limit]]
    more = len(rows) > limit
    return items, encode_cursor(items[-1]["created_at"], items[-1]["id"]) if more else None
