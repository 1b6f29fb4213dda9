"""Refunds, exactly once (DESIGN §2 flow 7, §5 rule 7).

A refund is a row keyed by return id, inserted in the same transaction as the state change
that calls for it, so it exists once or not at all. The provider gets the return id as its
idempotency key. A call whose outcome is unknown (timeout) is reconciled by asking the
provider, never by sending again blind.
"""

import logging
import time
from collections.abc import Sequence

from gateway.config import RefundPolicy
from gateway.database import Database, Transaction
from gateway.payments.base import (
    PaymentDeclined,
    PaymentError,
    PaymentProvider,
    PaymentTimeout,
    RefundRequest,
    RefundResult,
    RefundStatus,
)
from gateway.returns import Cause, CauseKind, ReturnState, current_state, move

log = logging.getLogger(__name__)

RETRY_BASE_S = 1.0
RETRY_MAX_S = 300.0


class Status:
    """A refund row's status."""

    PENDING = "pending"  # to be sent
    SENDING = "sending"  # a call is (or was, before a crash) in flight: outcome unknown
    UNKNOWN = "unknown"  # the call timed out: ask the provider
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # declined: needs an operator


async def request(tx: Transaction, return_id: str, provider: str) -> None:
    """Ask for the return's refund; nothing happens when it was asked for already."""
    row = await tx.fetchone("SELECT amount_minor, currency FROM returns WHERE id = ?", (return_id,))
    if row is None:
        raise KeyError(return_id)
    await request_many(tx, [(return_id, int(row[0]), str(row[1]))], provider)


async def request_many(
    tx: Transaction, wanted: Sequence[tuple[str, int, str]], provider: str
) -> None:
    """Ask for refunds of ``(return id, amount in minor units, currency)``; the return id is
    the key, so asking twice does nothing."""
    now = time.time()
    await tx.executemany(
        "INSERT INTO refunds (return_id, status, provider, amount_minor, currency, created_at, "
        "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (return_id) DO NOTHING",
        [
            (rid, Status.PENDING, provider, amount, currency, now, now)
            for rid, amount, currency in wanted
        ],
    )


async def policy_of(tx: Transaction, return_id: str) -> RefundPolicy:
    """The refund policy of the return's merchant."""
    row = await tx.fetchone(
        "SELECT m.refund_policy FROM returns r JOIN merchants m ON m.id = r.merchant "
        "WHERE r.id = ?",
        (return_id,),
    )
    if row is None:
        raise KeyError(return_id)
    return RefundPolicy(row[0])


async def complete_if_done(tx: Transaction, return_id: str, cause: Cause) -> bool:
    """A received return whose refund succeeded is ``refunded``; True if it moved now."""
    state = await current_state(tx, return_id)
    if state is not ReturnState.RECEIVED:
        return False
    row = await tx.fetchone("SELECT status FROM refunds WHERE return_id = ?", (return_id,))
    if row is None or row[0] != Status.SUCCEEDED:
        return False
    await move(tx, return_id, ReturnState.REFUNDED, cause)
    return True


class RefundDesk:
    """Works through due refunds against one payment provider."""

    def __init__(
        self, db: Database, provider: PaymentProvider, merchant_of: dict[str, str]
    ) -> None:
        self._db = db
        self._provider = provider
        self._merchant_of = merchant_of
        self.issued = 0
        self.reconciled = 0
        self.failures = 0

    @property
    def provider_name(self) -> str:
        """The provider refunds are recorded against."""
        return self._provider.name

    async def recover_after_restart(self) -> None:
        """A ``sending`` row at start-up means we crashed mid-call: its outcome is unknown."""
        async with self._db.transaction() as tx:
            await tx.execute(
                "UPDATE refunds SET status = ? WHERE status = ?", (Status.UNKNOWN, Status.SENDING)
            )

    async def process_due(self) -> int:
        """Send or reconcile every refund that is due; returns how many were handled."""
        rows = await self._db.fetchall(
            "SELECT f.return_id, f.status, f.amount_minor, f.currency, r.merchant, r.reason "
            "FROM refunds f JOIN returns r ON r.id = f.return_id "
            "WHERE f.status IN (?, ?) AND f.next_attempt_at <= ? ORDER BY f.created_at LIMIT 200",
            (Status.PENDING, Status.UNKNOWN, time.time()),
        )
        for return_id, status, amount, currency, merchant, reason in rows:
            req = RefundRequest(
                return_id=return_id,
                amount_minor=int(amount),
                currency=currency,
                payment_ref=None,
                merchant=merchant,
                reason=reason,
            )
            if status == Status.UNKNOWN:
                await self._reconcile(req)
            else:
                await self._send(req)
        return len(rows)

    async def _send(self, req: RefundRequest) -> None:
        await self._set(req.return_id, Status.SENDING)
        try:
            result = await self._provider.refund(req)
        except PaymentTimeout as exc:
            log.warning("refund %s timed out; will ask the provider: %s", req.return_id, exc)
            await self._set(req.return_id, Status.UNKNOWN, error=str(exc))
            return
        except PaymentDeclined as exc:
            await self._declined(req.return_id, str(exc))
            return
        except PaymentError as exc:
            # Not known to be processed or not: treat like a timeout and ask first.
            await self._set(req.return_id, Status.UNKNOWN, error=str(exc), retry=True)
            return
        await self._record(req.return_id, result)

    async def _reconcile(self, req: RefundRequest) -> None:
        try:
            found = await self._provider.lookup(req.return_id)
        except PaymentError as exc:
            await self._set(req.return_id, Status.UNKNOWN, error=str(exc), retry=True)
            return
        self.reconciled += 1
        if found is None:
            # The provider never saw it: sending now cannot double it.
            await self._set(req.return_id, Status.PENDING)
        else:
            await self._record(req.return_id, found)

    async def _record(self, return_id: str, result: RefundResult) -> None:
        if result.status is RefundStatus.FAILED:
            await self._declined(return_id, "provider reports the refund failed")
            return
        if result.status is RefundStatus.PENDING:
            await self._set(return_id, Status.UNKNOWN, retry=True)
            return
        async with self._db.transaction() as tx:
            await tx.execute(
                "UPDATE refunds SET status = ?, provider_refund_id = ?, updated_at = ?, "
                "attempts = attempts + 1 WHERE return_id = ?",
                (Status.SUCCEEDED, result.refund_id, time.time(), return_id),
            )
            await complete_if_done(tx, return_id, Cause(CauseKind.REFUND, result.refund_id))
        self.issued += 1
        log.info("refund for %s issued (%s)", return_id, result.refund_id)

    async def _declined(self, return_id: str, why: str) -> None:
        self.failures += 1
        log.error("refund for %s declined: %s", return_id, why)
        async with self._db.transaction() as tx:
            await tx.execute(
                "UPDATE refunds SET status = ?, last_error = ?, updated_at = ? WHERE return_id = ?",
                (Status.FAILED, why, time.time(), return_id),
            )
            await move(tx, return_id, ReturnState.EXCEPTION, Cause(CauseKind.REFUND, "declined"))

    async def _set(
        self, return_id: str, status: str, *, error: str | None = None, retry: bool = False
    ) -> None:
        async with self._db.transaction() as tx:
            row = await tx.fetchone(
                "SELECT attempts FROM refunds WHERE return_id = ?", (return_id,)
            )
            attempts = int(row[0]) if row else 0
            delay = min(RETRY_MAX_S, RETRY_BASE_S * 2**attempts) if retry else 0.0
            await tx.execute(
                "UPDATE refunds SET status = ?, last_error = COALESCE(?, last_error), "
                "updated_at = ?, attempts = attempts + ?, next_attempt_at = ? WHERE return_id = ?",
                (status, error, time.time(), int(retry), time.time() + delay, return_id),
            )
