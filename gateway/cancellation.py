"""Cancelling a return before drop-off (``authorized`` or ``review`` → ``cancelled``).

The voucher stays signed and valid until it expires, so kiosks must learn of the cancel: the
store config's ``revoked_returns`` lists cancelled returns that had a voucher, and the caller
republishes the store configs right after the commit (``Gateway.publish_store_configs``).
"""

from gateway.database import Database
from gateway.returns import Cause, CauseKind, IllegalTransitionError, ReturnState, move

CANCELLABLE = frozenset({ReturnState.AUTHORIZED, ReturnState.REVIEW})


async def cancel(db: Database, return_id: str, *, reason: str, by: str) -> ReturnState:
    """Cancel; returns the state it left. Raises ``KeyError`` for an unknown return and
    :class:`IllegalTransitionError` once it was dropped off (or ended otherwise)."""
    async with db.transaction() as tx:
        row = await tx.fetchone(
            "SELECT state FROM returns WHERE id = ?" + tx.for_update(), (return_id,)
        )
        if row is None:
            raise KeyError(return_id)
        if ReturnState(row[0]) not in CANCELLABLE:
            raise IllegalTransitionError(f"return {return_id} is {row[0]}: too late to cancel")
        return await move(
            tx, return_id, ReturnState.CANCELLED, Cause(CauseKind.API, by), cancel_reason=reason
        )
