"""The review queue: returns the approval rules held back (``gateway/approval.py``).

Approving issues the voucher then (its validity starts at approval, as long as the one asked
for) and moves the return to ``authorized``, which emits ``return.authorized`` and sends the
shopper the voucher (``gateway/return_events.py``). Rejecting cancels it; having no voucher,
there is nothing for kiosks to revoke.
"""

import json
import time
import uuid
from typing import Any

from gateway.authorization import issue_voucher
from gateway.database import Database
from gateway.keys import SigningKeys
from gateway.returns import Cause, CauseKind, IllegalTransitionError, ReturnState, move


async def approve(db: Database, keys: SigningKeys, return_id: str, *, by: str) -> None:
    """``review`` → ``authorized`` with a fresh voucher. Raises ``KeyError`` for an unknown
    return and ``IllegalTransitionError`` when it is not in review."""
    async with db.transaction() as tx:
        row = await tx.fetchone(
            "SELECT merchant, size, item_count, stores, expires_at, created_at FROM returns "
            "WHERE id = ?" + tx.for_update(),
            (return_id,),
        )
        if row is None:
            raise KeyError(return_id)
        merchant, size, items, stores, expires_at, created_at = row
        now = time.time()
        valid_until = int(now + float(expires_at) - float(created_at))
        token = issue_voucher(
            keys, uuid.UUID(return_id), str(merchant), expires_at=valid_until, size=str(size),
            items=int(items), stores=json.loads(stores),
        )  # fmt: skip
        await move(
            tx, return_id, ReturnState.AUTHORIZED, Cause(CauseKind.OPERATOR, by),
            voucher=token, expires_at=valid_until,
        )  # fmt: skip


async def reject(db: Database, return_id: str, *, by: str, reason: str) -> None:
    """``review`` → ``cancelled``. Raises like :func:`approve`."""
    async with db.transaction() as tx:
        state = await tx.fetchone(
            "SELECT state FROM returns WHERE id = ?" + tx.for_update(), (return_id,)
        )
        if state is not None and state[0] != ReturnState.REVIEW.value:
            raise IllegalTransitionError(f"return {return_id} is {state[0]}, not in review")
        await move(
            tx, return_id, ReturnState.CANCELLED, Cause(CauseKind.OPERATOR, by),
            cancel_reason=reason,
        )  # fmt: skip


async def queue(db: Database, tenant: str | None, limit: int) -> list[dict[str, Any]]:
    """Returns waiting in review, oldest first (the order a person works through them)."""
    where, args = ("AND merchant = ? ", (tenant,)) if tenant else ("", ())
    rows = await db.fetchall(
        "SELECT id, merchant, order_id, reason, amount_minor, currency, approval_rule, "
        f"created_at FROM returns WHERE state = 'review' {where}ORDER BY created_at, id LIMIT ?",
        (*args, limit),
    )
    return [
        {"id": r[0], "merchant": r[1], "order_id": r[2], "reason": r[3],
         "refund_amount": {"amount_minor": r[4], "currency": r[5]}, "rule": r[6],
         "created_at": r[7]}
        for r in rows
    ]  # fmt: skip
