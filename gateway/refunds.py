"""Refunds, exactly once (DESIGN §2 flow 7, §5 rule 7; ADR 0010).

A refund is a row keyed by return id, inserted in the same transaction as the state change
that calls for it, so it exists once or not at all. When it is asked for depends on the
merchant's policy (:func:`apply_policy`, run from the state-machine hook): ``on_dropoff``
in the drop-off's transaction, ``on_receipt`` when the warehouse signs, ``manual`` when a
person approves (:func:`decide`). A high amount or a risk flag puts any refund up for
review first.

The row records the provider it is paid through (``gateway/payments/registry.py``). The
provider gets the return id as its idempotency key. :class:`RefundDesk` claims due rows
(several replicas never take the same one): a ``pending`` row is sent; a call whose outcome
is unknown (timeout, 5xx, unreadable reply, or a ``sending`` row whose worker died) is
reconciled by asking the provider, never by sending again blind.

``refunded`` means both halves are done: the money went back **and** the parcel reached the
warehouse. Under ``on_dropoff`` the money goes back early while the parcel still travels;
the return keeps its travel states and ``refund.issued`` is sent when the money goes, and
it becomes ``refunded`` when it is received.
"""

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.claims import JobTable, backoff_delay, claim_due
from gateway.config import MerchantSettings, RefundPolicy
from gateway.database import Database, Transaction, insert_values, placeholders
from gateway.payments.base import (
    PaymentDeclined,
    PaymentError,
    PaymentProvider,
    PaymentTimeout,
    PaymentUnavailable,
    RefundRequest,
    RefundResult,
    RefundStatus,
)
from gateway.payments.registry import DEFAULT_PROVIDER, provider_key
from gateway.returns import (
    JOURNEY,
    Cause,
    CauseKind,
    ReturnState,
    Transition,
    can_move,
    current_state,
    move,
)

log = logging.getLogger(__name__)

RETRY_BASE_S = 1.0
RETRY_MAX_S = 300.0
REFUNDS = JobTable("refunds", key="return_id")
_RNG = random.Random()


class Status:
    """A refund row's status."""

    REVIEW = "review"  # waits for a person's approval
    PENDING = "pending"  # to be sent
    SENDING = "sending"  # a call is (or was, before a crash) in flight: outcome unknown
    UNKNOWN = "unknown"  # timed out, unreadable, or the provider is still working: ask it
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # declined: needs an operator
    REJECTED = "rejected"  # a person said no


IN_FLIGHT = (Status.SENDING, Status.UNKNOWN)


# ---- configuration ----------------------------------------------------------------------


async def configure(db: Database, merchants: Sequence[MerchantSettings]) -> None:
    """Store each configured merchant's provider and review threshold."""
    async with db.transaction() as tx:
        await tx.executemany(
            "INSERT INTO refund_settings (merchant, provider, review_above_minor) "
            "VALUES (?, ?, ?) ON CONFLICT (merchant) DO UPDATE SET "
            "provider = excluded.provider, review_above_minor = excluded.review_above_minor",
            [(m.id, provider_key(m), m.review_above_minor) for m in merchants],
        )


@dataclass(frozen=True)
class Terms:
    """How a return's refund is paid: its merchant's policy, provider and review threshold,
    and the amount."""

    merchant: str
    policy: RefundPolicy
    provider: str
    review_above_minor: int | None
    amount_minor: int
    currency: str


TERMS_COLUMNS = (
    "r.merchant, m.refund_policy, s.provider, s.review_above_minor, r.amount_minor, r.currency"
)
"""What :func:`terms_from` reads, from ``returns r`` joined with :data:`TERMS_JOINS`."""
TERMS_JOINS = (
    "JOIN merchants m ON m.id = r.merchant LEFT JOIN refund_settings s ON s.merchant = r.merchant"
)


def terms_from(row: Sequence[Any]) -> Terms:
    """A return's terms from the values of :data:`TERMS_COLUMNS`, in order."""
    merchant, policy, provider, above, amount, currency = row
    return Terms(
        str(merchant),
        RefundPolicy(policy),
        str(provider or DEFAULT_PROVIDER),
        None if above is None else int(above),
        int(amount),
        str(currency),
    )


async def _terms_many(tx: Transaction, return_ids: Sequence[str]) -> dict[str, Terms]:
    ids = sorted(set(return_ids))
    rows = await tx.fetchall(
        f"SELECT r.id, {TERMS_COLUMNS} FROM returns r {TERMS_JOINS} "
        f"WHERE r.id IN ({placeholders(len(ids))})",
        ids,
    )
    return {str(r[0]): terms_from(r[1:]) for r in rows}


async def _terms(tx: Transaction, return_id: str) -> Terms:
    found = await _terms_many(tx, [return_id])
    if return_id not in found:
        raise KeyError(return_id)
    return found[return_id]


async def policy_of(tx: Transaction, return_id: str) -> RefundPolicy:
    """The refund policy of the return's merchant."""
    return (await _terms(tx, return_id)).policy


# ---- asking for a refund ----------------------------------------------------------------


@dataclass(frozen=True)
class _Ask:
    return_id: str
    terms: Terms
    review_reason: str | None
    decided_by: str | None = None


async def request(
    tx: Transaction,
    return_id: str,
    provider: str | None = None,
    *,
    review_reason: str | None = None,
    decided_by: str | None = None,
) -> None:
    """Ask for the return's refund (to be reviewed first with ``review_reason``); nothing
    happens when it was asked for already.

    ``provider`` is accepted for callers written before providers were chosen per merchant
    and is ignored: the merchant's configured provider pays.
    """
    del provider
    terms = await _terms(tx, return_id)
    await _insert_many(tx, [_Ask(return_id, terms, review_reason, decided_by)])


async def request_many(
    tx: Transaction, wanted: Sequence[tuple[str, int, str]], provider: str | None = None
) -> None:
    """Ask for the refunds of ``(return id, amount, currency)``; those asked for already are
    left alone. The state-machine hook has normally asked already; this fills gaps for
    callers that ask directly. Amount, provider and review follow the return and its
    merchant's settings, whatever ``wanted`` and ``provider`` say."""
    del provider
    await _ask(tx, [w[0] for w in wanted])


async def _ask(
    tx: Transaction, return_ids: Sequence[str], terms: Mapping[str, Terms] | None = None
) -> None:
    """Ask for refunds, each for review first when it needs a person: a few statements
    whatever the number."""
    if not return_ids:
        return
    terms = terms or await _terms_many(tx, return_ids)
    flags = await _first_flags(tx, return_ids)
    await _insert_many(
        tx, [_Ask(r, terms[r], _review_reason(terms[r], flags.get(r))) for r in return_ids]
    )


async def _insert_many(tx: Transaction, asks: Sequence[_Ask]) -> None:
    now = time.time()
    await insert_values(
        tx,
        "INSERT INTO refunds (return_id, status, provider, amount_minor, currency, created_at, "
        "updated_at, review_reason, decided_by, decided_at)",
        [
            (a.return_id, Status.REVIEW if a.review_reason else Status.PENDING,
             a.terms.provider, a.terms.amount_minor, a.terms.currency, now, now,
             a.review_reason, a.decided_by, now if a.decided_by else None)
            for a in asks
        ],
        "ON CONFLICT (return_id) DO NOTHING",
    )  # fmt: skip


async def _first_flags(tx: Transaction, return_ids: Sequence[str]) -> dict[str, str]:
    ids = sorted(set(return_ids))
    rows = await tx.fetchall(
        f"SELECT return_id, flag FROM return_flags WHERE return_id IN ({placeholders(len(ids))}) "
        "ORDER BY at DESC",
        ids,
    )
    return {str(rid): str(flag) for rid, flag in rows}  # the earliest flag wins


def _review_reason(terms: Terms, flag: str | None) -> str | None:
    """Why a refund needs a person first, or None."""
    if terms.policy is RefundPolicy.MANUAL:
        return "manual_policy"
    if terms.review_above_minor is not None and terms.amount_minor > terms.review_above_minor:
        return "high_value"
    return None if flag is None else f"risk:{flag}"


def handed_over(t: Transition) -> bool:
    """True when ``t`` is the moment the shopper parts with the parcel: the drop-off at a
    kiosk, or the courier collecting a home pickup (``authorized`` → a travel state)."""
    if t.to_state is ReturnState.DROPPED_OFF:
        return True
    return t.from_state is ReturnState.AUTHORIZED and t.to_state in JOURNEY[2:]


def may_be_due(t: Transition) -> bool:
    """True when ``t`` may call for a refund or finish a refunded return."""
    return t.to_state is ReturnState.RECEIVED or handed_over(t)


def _due(t: Transition, policy: RefundPolicy) -> bool:
    if policy is RefundPolicy.ON_DROPOFF:
        # Asking again on receipt is a no-op once asked; it covers a hand-over the history
        # does not show (a home pickup held in ``exception`` before its collection).
        return handed_over(t) or t.to_state is ReturnState.RECEIVED
    return t.to_state is ReturnState.RECEIVED


async def apply_policy(
    tx: Transaction, transitions: Sequence[Transition], known: Mapping[str, Terms] | None = None
) -> None:
    """The refund side of transitions (called from the state-machine hook, in their
    transaction): ask for each refund the merchant's policy calls for now, and finish
    returns that are received and already refunded. ``known``: the returns' terms, when
    the caller has read them in this transaction already."""
    relevant = [t for t in transitions if may_be_due(t)]
    if not relevant:
        return
    ids = [t.return_id for t in relevant]
    terms: Mapping[str, Terms]
    if known is not None and all(i in known for i in ids):
        terms = known
    else:
        terms = await _terms_many(tx, ids)
    due = [t.return_id for t in relevant if _due(t, terms[t.return_id].policy)]
    await _ask(tx, due, terms)
    for t in relevant:
        if t.to_state is ReturnState.RECEIVED:
            await complete_if_done(tx, t.return_id, t.cause)


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


# ---- people: review, approval, risk flags ------------------------------------------------


class RefundDecisionError(ValueError):
    """A decision that does not fit the refund's state; ``code`` is for the API."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


PARCEL_IN_HAND = frozenset(JOURNEY[1:6])
"""States in which we hold the parcel and a person may approve its refund early."""


async def decide(
    db: Database, return_id: str, *, approve: bool, operator: str, note: str = ""
) -> str:
    """A person approves or rejects the return's refund; returns the refund's new status.

    Approving sends a refund waiting for review, or asks for one early for a parcel we
    already hold. Rejecting moves the return to ``exception`` for follow-up.
    """
    async with db.transaction() as tx:
        state = await current_state(tx, return_id)
        if state is None:
            raise KeyError(return_id)
        row = await tx.fetchone(
            f"SELECT status FROM refunds WHERE return_id = ?{tx.for_update()}", (return_id,)
        )
        if row is not None and row[0] != Status.REVIEW:
            raise RefundDecisionError("refund_not_in_review", f"the refund is {row[0]}")
        if row is None and state not in PARCEL_IN_HAND:
            raise RefundDecisionError("no_parcel", f"the return is {state}: no parcel to refund")
        if row is None:
            await request(tx, return_id, review_reason=f"operator:{note}" if note else None)
        status = Status.PENDING if approve else Status.REJECTED
        await tx.execute(
            "UPDATE refunds SET status = ?, decided_by = ?, decided_at = ?, updated_at = ?, "
            "next_attempt_at = 0, last_error = COALESCE(?, last_error) WHERE return_id = ?",
            (
                status,
                operator,
                time.time(),
                time.time(),
                None if approve else f"rejected: {note or 'no reason given'}",
                return_id,
            ),
        )
        if not approve and can_move(state, ReturnState.EXCEPTION):
            await move(tx, return_id, ReturnState.EXCEPTION, Cause(CauseKind.OPERATOR, operator))
    log.info("refund for %s %s by %s", return_id, status, operator)
    return status


async def flag(db: Database, return_id: str, name: str, note: str, source: str) -> bool:
    """Record a risk flag; a refund not yet sent goes back to review. True if it did."""
    async with db.transaction() as tx:
        if await current_state(tx, return_id) is None:
            raise KeyError(return_id)
        await tx.execute(
            "INSERT INTO return_flags (return_id, flag, note, source, at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (return_id, flag) DO NOTHING",
            (return_id, name, note, source, time.time()),
        )
        held = await tx.execute(
            "UPDATE refunds SET status = ?, review_reason = ?, claim = NULL "
            "WHERE return_id = ? AND status = ?",
            (Status.REVIEW, f"risk:{name}", return_id, Status.PENDING),
        )
    return held == 1


# ---- the provider's word ----------------------------------------------------------------


async def _succeeded(
    tx: Transaction,
    return_id: str,
    result: RefundResult,
    provider: str,
    where: str,
    params: tuple[object, ...],
) -> bool:
    from gateway import return_events  # it builds on this module

    changed = await tx.execute(
        "UPDATE refunds SET status = ?, provider_refund_id = ?, updated_at = ?, claim = NULL, "
        f"last_error = NULL WHERE return_id = ? AND {where}",
        (Status.SUCCEEDED, result.refund_id, time.time(), return_id, *params),
    )
    if not changed:
        return False
    await return_events.refund_issued(tx, return_id, result.refund_id, provider)
    await complete_if_done(tx, return_id, Cause(CauseKind.REFUND, result.refund_id))
    return True


async def _failed(
    tx: Transaction, return_id: str, why: str, where: str, params: tuple[object, ...]
) -> bool:
    changed = await tx.execute(
        "UPDATE refunds SET status = ?, last_error = ?, updated_at = ?, claim = NULL "
        f"WHERE return_id = ? AND {where}",
        (Status.FAILED, why, time.time(), return_id, *params),
    )
    if not changed:
        return False
    state = await current_state(tx, return_id)
    if state is not None and can_move(state, ReturnState.EXCEPTION):
        await move(tx, return_id, ReturnState.EXCEPTION, Cause(CauseKind.REFUND, "declined"))
    return True


class CallbackOutcome:
    """What a provider's callback did."""

    RECORDED = "recorded"
    ALREADY_FINAL = "already_final"
    STILL_PENDING = "still_pending"


async def apply_provider_result(db: Database, provider: str, result: RefundResult) -> str:
    """A provider told us (by callback) how a refund ended. Raises KeyError when no refund
    for the return was sent through ``provider``."""
    async with db.transaction() as tx:
        row = await tx.fetchone(
            f"SELECT status FROM refunds WHERE return_id = ? AND provider = ?{tx.for_update()}",
            (result.return_id, provider),
        )
        if row is None or row[0] in (Status.REVIEW, Status.PENDING, Status.REJECTED):
            raise KeyError(result.return_id)
        if row[0] not in IN_FLIGHT:
            return CallbackOutcome.ALREADY_FINAL
        where, params = f"status IN ({placeholders(len(IN_FLIGHT))})", IN_FLIGHT
        if result.status is RefundStatus.SUCCEEDED:
            await _succeeded(tx, result.return_id, result, provider, where, params)
        elif result.status is RefundStatus.FAILED:
            await _failed(tx, result.return_id, "provider reports it failed", where, params)
        else:
            return CallbackOutcome.STILL_PENDING
    return CallbackOutcome.RECORDED


# ---- the desk ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    req: RefundRequest
    status: str
    provider: str
    attempts: int


class RefundDesk:
    """Works through due refunds, each with the provider it was requested through; safe to
    run in several replicas at once."""

    def __init__(
        self,
        db: Database,
        providers: Mapping[str, PaymentProvider],
        *,
        lease_s: float = 60.0,
        batch: int = 50,
        concurrency: int = 8,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._providers = dict(providers)
        self._lease_s = lease_s
        self._batch = batch
        self._concurrency = concurrency
        self._clock = clock
        self.issued = 0
        self.reconciled = 0
        self.failures = 0

    @property
    def provider_name(self) -> str:
        """The default provider's key (refunds record their own)."""
        return DEFAULT_PROVIDER

    def provider(self, key: str) -> PaymentProvider | None:
        """The provider known by ``key``."""
        return self._providers.get(key)

    async def recover_after_restart(self) -> int:
        """A ``sending`` row whose lease ran out means a worker died mid-call: its outcome is
        unknown, and it will be looked up before anything else. Returns how many."""
        async with self._db.transaction() as tx:
            return await tx.execute(
                "UPDATE refunds SET status = ?, claim = NULL WHERE status = ? "
                "AND next_attempt_at <= ?",
                (Status.UNKNOWN, Status.SENDING, self._clock()),
            )

    async def process_due(self) -> int:
        """Send or reconcile every refund that is due; returns how many were handled."""
        claim, jobs = await self._claim()
        limit = asyncio.Semaphore(self._concurrency)

        async def handle(job: _Job) -> None:
            async with limit:
                await self._handle(claim, job)

        await asyncio.gather(*(handle(j) for j in jobs))
        return len(jobs)

    async def _claim(self) -> tuple[str, list[_Job]]:
        async with self._db.transaction() as tx:
            claimed = await claim_due(
                tx,
                REFUNDS,
                columns=("status", "provider", "attempts", "amount_minor", "currency"),
                statuses=(Status.PENDING, Status.UNKNOWN, Status.SENDING),
                now=self._clock(),
                lease_s=self._lease_s,
                limit=self._batch,
            )
            if not claimed.rows:
                return claimed.token, []
            # A pending refund is being sent; a ``sending`` one whose lease ran out was
            # being sent by a worker that died: its outcome is unknown.
            for old, new in ((Status.PENDING, Status.SENDING), (Status.SENDING, Status.UNKNOWN)):
                ids = [r[0] for r in claimed.rows if r[1] == old]
                if ids:
                    await tx.execute(
                        f"UPDATE refunds SET status = ? WHERE return_id IN "
                        f"({placeholders(len(ids))})",
                        (new, *ids),
                    )
            ids = [r[0] for r in claimed.rows]
            details = await tx.fetchall(
                f"SELECT id, merchant, reason FROM returns WHERE id IN ({placeholders(len(ids))})",
                ids,
            )
        about = {str(r[0]): (str(r[1]), str(r[2])) for r in details}
        jobs = []
        for return_id, status, provider, attempts, amount, currency in claimed.rows:
            merchant, reason = about[str(return_id)]
            req = RefundRequest(str(return_id), int(amount), str(currency), None, merchant, reason)
            jobs.append(_Job(req, str(status), str(provider), int(attempts)))
        return claimed.token, jobs

    async def _handle(self, claim: str, job: _Job) -> None:
        provider = self._providers.get(job.provider)
        if provider is None:
            log.error("refund %s: provider %s is not configured", job.req.return_id, job.provider)
            back = Status.PENDING if job.status == Status.PENDING else Status.UNKNOWN
            await self._set(claim, job, back, error=f"provider {job.provider} not configured")
        elif job.status == Status.PENDING:
            await self._send(claim, job, provider)
        else:
            await self._reconcile(claim, job, provider)

    async def _send(self, claim: str, job: _Job, provider: PaymentProvider) -> None:
        try:
            result = await provider.refund(job.req)
        except PaymentTimeout as exc:
            log.warning("refund %s timed out; will ask the provider: %s", job.req.return_id, exc)
            await self._set(claim, job, Status.UNKNOWN, error=str(exc))
        except PaymentDeclined as exc:
            await self._declined(claim, job, str(exc))
        except PaymentUnavailable as exc:
            # Nothing reached the provider: sending again later cannot double it.
            await self._set(claim, job, Status.PENDING, error=str(exc))
        except PaymentError as exc:
            # Processed or not, we cannot tell: ask before anything else.
            await self._set(claim, job, Status.UNKNOWN, error=str(exc))
        else:
            await self._record(claim, job, result)

    async def _reconcile(self, claim: str, job: _Job, provider: PaymentProvider) -> None:
        try:
            found = await provider.lookup(job.req.return_id)
        except PaymentError as exc:
            await self._set(claim, job, Status.UNKNOWN, error=f"lookup: {exc}")
            return
        self.reconciled += 1
        if found is None:
            # The provider never saw it: sending now cannot double it.
            await self._set(claim, job, Status.PENDING, retry=False)
        else:
            await self._record(claim, job, found)

    async def _record(self, claim: str, job: _Job, result: RefundResult) -> None:
        if result.status is RefundStatus.FAILED:
            await self._declined(claim, job, "provider reports the refund failed")
            return
        if result.status is RefundStatus.PENDING:
            # The provider is working on it: a callback or a later lookup will tell.
            await self._set(claim, job, Status.UNKNOWN, error="provider: pending")
            return
        async with self._db.transaction() as tx:
            recorded = await _succeeded(
                tx, job.req.return_id, result, job.provider, "claim = ?", (claim,)
            )
        if recorded:
            self.issued += 1
            log.info("refund for %s issued (%s)", job.req.return_id, result.refund_id)

    async def _declined(self, claim: str, job: _Job, why: str) -> None:
        self.failures += 1
        log.error("refund for %s declined: %s", job.req.return_id, why)
        async with self._db.transaction() as tx:
            await _failed(tx, job.req.return_id, why, "claim = ?", (claim,))

    async def _set(
        self, claim: str, job: _Job, status: str, *, error: str | None = None, retry: bool = True
    ) -> None:
        attempts = job.attempts + 1
        delay = backoff_delay(attempts, base_s=RETRY_BASE_S, max_s=RETRY_MAX_S, rng=_RNG)
        async with self._db.transaction() as tx:
            await tx.execute(
                "UPDATE refunds SET status = ?, last_error = COALESCE(?, last_error), "
                "updated_at = ?, attempts = ?, next_attempt_at = ?, claim = NULL "
                "WHERE return_id = ? AND claim = ?",
                (
                    status,
                    error,
                    self._clock(),
                    attempts,
                    self._clock() + (delay if retry else 0.0),
                    job.req.return_id,
                    claim,
                ),
            )
