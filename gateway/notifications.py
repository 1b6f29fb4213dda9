"""Customer messages (voucher with QR, drop-off receipt, refund issued, a pickup parcel ready
in its locker) through a transactional outbox.

:func:`queue_many` writes one row per message and channel the customer can be reached on
(e-mail address → ``email``, phone → ``sms``) in the caller's transaction, at most once per
return, kind and channel; :func:`queue_for_parcels` likewise for pickup parcels, at most once
per pickup code issued, kind and channel. :class:`NotificationDispatcher` claims due rows
(safe across replicas, ``gateway/claims.py``), renders them from the templates in
``gateway/templates/notifications`` (``{kind}.subject.txt``, ``{kind}.txt``, ``{kind}.html``
and ``{kind}.sms.txt``) and sends them through the configured :class:`Notifier` channels,
retrying transient failures with backoff. A channel that is not configured marks its rows
``skipped``, so the record says why a customer got nothing; so does a pickup notice whose code
was replaced by a newer one, or whose parcel was collected, before it went out.
"""

import asyncio
import io
import json
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
import segno

from gateway.claims import JobTable, backoff_delay, claim_due
from gateway.config import NotificationSettings
from gateway.database import Database, Row, Transaction, insert_values, placeholders
from gateway.notifiers.base import (
    Attachment,
    Message,
    NotificationError,
    Notifier,
    PermanentNotificationError,
)
from protocol.ids import new_ids

log = logging.getLogger(__name__)

NOTIFICATIONS = JobTable("notifications")
_encode_context = json.JSONEncoder(sort_keys=True).encode
"""``json.dumps(context, sort_keys=True)`` with one encoder for all."""
QR_CID = "voucher-qr@dropline"
PICKUP_QR_CID = "pickup-qr@dropline"


class MessageKind(StrEnum):
    """What a customer is told."""

    VOUCHER = "voucher"
    DROPOFF_RECEIPT = "dropoff_receipt"
    PICKUP_BOOKED = "pickup_booked"  # a courier comes to the customer (home pickup)
    REFUND_ISSUED = "refund_issued"
    PARCEL_READY = "parcel_ready"  # a pickup parcel is in its locker: store, door, code, deadline


class NotificationStatus(StrEnum):
    """Where a notification stands."""

    PENDING = "pending"
    SENT = "sent"
    DEAD = "dead"  # refused for good, or out of attempts
    SKIPPED = "skipped"  # no such channel configured, or the message no longer holds


@dataclass(frozen=True)
class CustomerMessage:
    """A message to queue: the return, its customer (``name``/``email``/``phone``) and what
    the template needs beyond the return itself."""

    return_id: str
    kind: MessageKind
    customer: Mapping[str, Any]
    context: Mapping[str, Any]


@dataclass(frozen=True)
class ParcelMessage:
    """A message about a pickup parcel: the ``parcel_loaded`` event that issued the code it
    carries (``code_issue``), the customer, and everything the template says (a snapshot:
    a later code is another message)."""

    parcel_id: str
    code_issue: str
    kind: MessageKind
    customer: Mapping[str, Any]
    context: Mapping[str, Any]


def contacts(customer: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(channel, recipient)`` for every way the customer can be reached."""
    found = []
    if customer.get("email"):
        found.append(("email", str(customer["email"])))
    if customer.get("phone"):
        found.append(("sms", str(customer["phone"])))
    return found


async def queue_many(tx: Transaction, messages: Sequence[CustomerMessage]) -> None:
    """Queue messages in ``tx``; a message already queued for the return is left alone."""
    await _queue(
        tx,
        ("return_id",),
        "return_id",
        [((m.return_id,), m.kind, m.customer, m.context) for m in messages],
    )


async def queue_for_parcels(tx: Transaction, messages: Sequence[ParcelMessage]) -> None:
    """Queue pickup-parcel messages in ``tx``; one already queued for the same code issue,
    kind and channel is left alone."""
    await _queue(
        tx,
        ("parcel_id", "code_issue"),
        "code_issue",
        [((m.parcel_id, m.code_issue), m.kind, m.customer, m.context) for m in messages],
    )


async def _queue(
    tx: Transaction,
    owner_columns: tuple[str, ...],
    unique_by: str,
    messages: Sequence[tuple[tuple[str, ...], MessageKind, Mapping[str, Any], Mapping[str, Any]]],
) -> None:
    """One row per message and contact channel, pending; the owner (return or parcel code
    issue), kind and channel are unique."""
    now = time.time()
    pending = NotificationStatus.PENDING.value
    rows = []
    for owner, kind, customer, context in messages:
        reach = contacts(customer)
        if not reach:
            continue
        text = _encode_context(dict(context))  # once for all its channels
        ids = new_ids(len(reach))
        rows += [
            ("ntf_" + i, *owner, kind.value, channel, recipient, text, pending, now, now)
            for i, (channel, recipient) in zip(ids, reach, strict=True)
        ]
    columns = ", ".join(owner_columns)
    await insert_values(
        tx,
        f"INSERT INTO notifications (id, {columns}, kind, channel, recipient, context, status, "
        "next_attempt_at, created_at)",
        rows,
        f"ON CONFLICT ({unique_by}, kind, channel) DO NOTHING",
    )


async def for_return(db: Database, return_id: str) -> list[dict[str, Any]]:
    """The return's notifications, oldest first."""
    return await _listing(db, "return_id", return_id)


async def for_parcel(db: Database, parcel_id: str) -> list[dict[str, Any]]:
    """A pickup parcel's notifications (every code issued), oldest first."""
    return await _listing(db, "parcel_id", parcel_id)


async def _listing(db: Database, column: str, value: str) -> list[dict[str, Any]]:
    rows = await db.fetchall(
        "SELECT id, kind, channel, recipient, status, attempts, last_error, created_at, sent_at "
        f"FROM notifications WHERE {column} = ? ORDER BY created_at, channel",
        (value,),
    )
    keys = (
        "id",
        "kind",
        "channel",
        "recipient",
        "status",
        "attempts",
        "last_error",
        "created_at",
        "sent_at",
    )
    return [dict(zip(keys, r, strict=True)) for r in rows]


# ---- rendering --------------------------------------------------------------------------


def money(amount_minor: int, currency: str) -> str:
    """``1999, "CNY"`` → ``"19.99 CNY"`` (two minor digits, as every currency we serve has)."""
    return f"{amount_minor / 100:.2f} {currency}"


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _local(ts: float, zone: tzinfo) -> str:
    return datetime.fromtimestamp(ts, zone).strftime("%Y-%m-%d %H:%M %Z")


def voucher_png(token: str) -> bytes:
    """The voucher token as a QR code PNG (alphanumeric mode, ECC M, ADR 0003)."""
    return qr_png(token)


def qr_png(text: str) -> bytes:
    """``text`` as a QR code PNG (ECC M; vouchers and pickup codes)."""
    out = io.BytesIO()
    segno.make_qr(text, error="m", boost_error=False).save(out, kind="png", scale=6, border=4)
    return out.getvalue()


@dataclass(frozen=True)
class ReturnFacts:
    """What the templates may say about a return."""

    return_id: str
    order_id: str
    customer_name: str
    short_code: str
    voucher: str
    expires_at: float
    amount_minor: int
    currency: str
    stores: list[str]


class Renderer:
    """Turns a queued notification into a :class:`Message` for its channel. Times a shopper
    must be at a store by are shown in the stores' ``timezone``."""

    def __init__(self, base_url: str, *, timezone: str = "UTC") -> None:
        self._base_url = base_url.rstrip("/")
        self._zone = ZoneInfo(timezone)
        self._env = jinja2.Environment(
            loader=jinja2.PackageLoader("gateway", "templates/notifications"),
            autoescape=jinja2.select_autoescape(enabled_extensions=("html",)),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
        )

    def render(
        self,
        notification_id: str,
        kind: MessageKind,
        channel: str,
        recipient: str,
        facts: ReturnFacts | None,
        context: Mapping[str, Any],
    ) -> Message:
        """The message for ``channel``: SMS gets the short text, e-mail the full one.
        ``facts``: the return the message is about; None for a pickup parcel's, whose
        ``context`` says everything."""
        values = {**(self._return_values(facts) if facts else {}), **context}
        if "at" in context:
            values["at"] = _when(float(context["at"]))
        if kind is MessageKind.PARCEL_READY:
            values["deadline"] = _local(float(context["valid_until"]), self._zone)
            values["qr_cid"] = PICKUP_QR_CID
        subject = self._render(f"{kind}.subject.txt", values).strip()
        if channel == "sms":
            text = self._render(f"{kind}.sms.txt", values).strip()
            return Message(notification_id, kind.value, recipient, subject, text)
        attachments: tuple[Attachment, ...] = ()
        if kind is MessageKind.VOUCHER and facts is not None:
            png = voucher_png(facts.voucher)
            attachments = (Attachment("voucher.png", "image/png", png, content_id=QR_CID),)
        elif kind is MessageKind.PARCEL_READY:
            png = qr_png(str(context["pickup_qr_text"]))
            attachments = (Attachment("pickup.png", "image/png", png, content_id=PICKUP_QR_CID),)
        return Message(
            notification_id,
            kind.value,
            recipient,
            subject,
            self._render(f"{kind}.txt", values),
            self._render(f"{kind}.html", values),
            attachments,
        )

    def _return_values(self, facts: ReturnFacts) -> dict[str, Any]:
        code = facts.short_code
        return {
            "return_id": facts.return_id,
            "order_id": facts.order_id,
            "customer_name": facts.customer_name,
            "short_code": f"{code[:4]}-{code[4:8]}-{code[8:]}",
            "expires": _when(facts.expires_at),
            "amount": money(facts.amount_minor, facts.currency),
            "stores": facts.stores,
            "voucher_url": f"{self._base_url}/v1/returns/{facts.return_id}/voucher.png",
            "qr_cid": QR_CID,
            "refund_note": "",
        }

    def _render(self, name: str, values: Mapping[str, Any]) -> str:
        return self._env.get_template(name).render(**values)


# ---- dispatching ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    id: str
    return_id: str | None
    code_issue: str | None
    kind: MessageKind
    channel: str
    recipient: str
    context: dict[str, Any]
    attempts: int


@dataclass(frozen=True)
class _Subjects:
    """What claimed jobs are about: their returns, and the pickup codes still valid."""

    returns: dict[str, ReturnFacts]
    live_codes: set[str]
    """``code_issue`` of every claimed parcel job whose code is the parcel's current one and
    whose parcel is still in its locker."""

    def stale(self, job: _Job) -> str | None:
        """Why ``job`` should not be sent any more, or None."""
        if job.code_issue is not None and job.code_issue not in self.live_codes:
            return "pickup code replaced by a newer one, or the parcel was collected"
        return None


def _facts(row: Row) -> ReturnFacts:
    rid, order_id, customer, code, token, expires_at, amount, currency, stores = row
    return ReturnFacts(
        str(rid),
        str(order_id),
        str(json.loads(customer).get("name", "")),
        str(code),
        str(token),
        float(expires_at),
        int(amount),
        str(currency),
        list(json.loads(stores)),
    )


class NotificationDispatcher:
    """Sends due notifications; safe to run in several replicas at once."""

    def __init__(
        self,
        db: Database,
        channels: Mapping[str, Notifier],
        renderer: Renderer,
        settings: NotificationSettings,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        batch: int = 100,
    ) -> None:
        self._db = db
        self._channels = dict(channels)
        self._renderer = renderer
        self._settings = settings
        self._clock = clock
        self._rng = rng or random.Random()
        self._batch = batch
        self.sent = 0
        self.failed_attempts = 0

    async def process_due(self) -> int:
        """Claim and send every due notification; returns how many were handled."""
        claim, jobs, subjects = await self._claim()
        if not jobs:
            return 0
        limit = asyncio.Semaphore(self._settings.concurrency)

        async def attempt(job: _Job) -> tuple[NotificationStatus | None, str | None]:
            stale = subjects.stale(job)
            if stale is not None:
                return NotificationStatus.SKIPPED, stale
            async with limit:
                facts = subjects.returns[job.return_id] if job.return_id else None
                return await self._send(job, facts)

        outcomes = await asyncio.gather(*(attempt(j) for j in jobs))
        await self._record(claim, list(zip(jobs, outcomes, strict=True)))
        return len(jobs)

    async def _claim(self) -> tuple[str, list[_Job], _Subjects]:
        async with self._db.transaction() as tx:
            claimed = await claim_due(
                tx,
                NOTIFICATIONS,
                columns=(
                    "return_id",
                    "code_issue",
                    "kind",
                    "channel",
                    "recipient",
                    "context",
                    "attempts",
                ),
                statuses=(NotificationStatus.PENDING.value,),
                now=self._clock(),
                lease_s=self._settings.lease_s,
                limit=self._batch,
            )
            jobs = [
                _Job(
                    str(r[0]),
                    None if r[1] is None else str(r[1]),
                    None if r[2] is None else str(r[2]),
                    MessageKind(r[3]),
                    str(r[4]),
                    str(r[5]),
                    json.loads(r[6]),
                    int(r[7]),
                )
                for r in claimed.rows
            ]
            return_ids = sorted({j.return_id for j in jobs if j.return_id})
            rows = (
                await tx.fetchall(
                    "SELECT id, order_id, customer, short_code, voucher, expires_at, amount_minor, "
                    f"currency, stores FROM returns WHERE id IN ({placeholders(len(return_ids))})",
                    return_ids,
                )
                if return_ids
                else []
            )
            live = await _live_codes(tx, [j.code_issue for j in jobs if j.code_issue])
        return claimed.token, jobs, _Subjects({str(r[0]): _facts(r) for r in rows}, live)

    async def _send(
        self, job: _Job, facts: ReturnFacts | None
    ) -> tuple[NotificationStatus | None, str | None]:
        """``(final status or None to retry, error)``."""
        channel = self._channels.get(job.channel)
        if channel is None:
            return NotificationStatus.SKIPPED, f"no {job.channel} channel configured"
        try:
            message = self._renderer.render(
                job.id, job.kind, job.channel, job.recipient, facts, job.context
            )
            await channel.send(message)
        except PermanentNotificationError as exc:
            return NotificationStatus.DEAD, str(exc)
        except NotificationError as exc:
            return None, str(exc)
        except jinja2.TemplateError as exc:
            log.exception("notification %s does not render", job.id)
            return NotificationStatus.DEAD, f"template: {exc}"
        return NotificationStatus.SENT, None

    async def _record(
        self,
        claim: str,
        results: list[tuple[_Job, tuple[NotificationStatus | None, str | None]]],
    ) -> None:
        retry = self._settings.retry
        now = self._clock()
        async with self._db.transaction() as tx:
            for job, (outcome, error) in results:
                attempts = job.attempts + 1
                next_at = now
                if outcome is NotificationStatus.SENT:
                    self.sent += 1
                else:
                    self.failed_attempts += outcome is not NotificationStatus.SKIPPED
                    log.info("notification %s (%s): %s", job.id, job.channel, error)
                status = outcome or NotificationStatus.PENDING
                if outcome is None and attempts >= retry.max_attempts:
                    status = NotificationStatus.DEAD
                elif outcome is None:
                    next_at = now + backoff_delay(
                        attempts, base_s=retry.base_s, max_s=retry.max_s, rng=self._rng
                    )
                await tx.execute(
                    "UPDATE notifications SET status = ?, attempts = ?, next_attempt_at = ?, "
                    "last_error = ?, sent_at = ?, claim = NULL WHERE id = ? AND claim = ?",
                    (
                        status.value,
                        attempts,
                        next_at,
                        error,
                        now if status is NotificationStatus.SENT else None,
                        job.id,
                        claim,
                    ),
                )


async def _live_codes(tx: Transaction, code_issues: list[str]) -> set[str]:
    """Those of ``code_issues`` that issued the current code of a parcel still in its locker."""
    distinct = sorted(set(code_issues))
    if not distinct:
        return set()
    rows = await tx.fetchall(
        "SELECT load_event FROM pickups WHERE state = 'loaded' "
        f"AND load_event IN ({placeholders(len(distinct))})",
        distinct,
    )
    return {str(r[0]) for r in rows}
