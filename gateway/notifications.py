"""Customer messages (voucher with QR, drop-off receipt, refund issued) through a
transactional outbox.

:func:`queue_many` writes one row per message and channel the customer can be reached on
(e-mail address → ``email``, phone → ``sms``) in the caller's transaction, at most once per
return, kind and channel. :class:`NotificationDispatcher` claims due rows (safe across
replicas, ``gateway/claims.py``), renders them from the templates in
``gateway/templates/notifications`` (``{kind}.subject.txt``, ``{kind}.txt``, ``{kind}.html``
and ``{kind}.sms.txt``) and sends them through the configured :class:`Notifier` channels,
retrying transient failures with backoff. A channel that is not configured marks its rows
``skipped``, so the record says why a customer got nothing.
"""

import asyncio
import io
import json
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import jinja2
import segno

from gateway.claims import JobTable, backoff_delay, claim_due
from gateway.config import NotificationSettings
from gateway.database import Database, Row, Transaction, placeholders
from gateway.notifiers.base import (
    Attachment,
    Message,
    NotificationError,
    Notifier,
    PermanentNotificationError,
)
from protocol.ids import new_id

log = logging.getLogger(__name__)

NOTIFICATIONS = JobTable("notifications")
QR_CID = "voucher-qr@dropline"


class MessageKind(StrEnum):
    """What a customer is told."""

    VOUCHER = "voucher"
    DROPOFF_RECEIPT = "dropoff_receipt"
    PICKUP_BOOKED = "pickup_booked"  # a courier comes to the customer (home pickup)
    REFUND_ISSUED = "refund_issued"


class NotificationStatus(StrEnum):
    """Where a notification stands."""

    PENDING = "pending"
    SENT = "sent"
    DEAD = "dead"  # refused for good, or out of attempts
    SKIPPED = "skipped"  # no such channel configured


@dataclass(frozen=True)
class CustomerMessage:
    """A message to queue: the return, its customer (``name``/``email``/``phone``) and what
    the template needs beyond the return itself."""

    return_id: str
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
    now = time.time()
    rows = [
        (
            "ntf_" + new_id(),
            m.return_id,
            m.kind.value,
            channel,
            recipient,
            json.dumps(dict(m.context), sort_keys=True),
            NotificationStatus.PENDING.value,
            now,
            now,
        )
        for m in messages
        for channel, recipient in contacts(m.customer)
    ]
    await tx.executemany(
        "INSERT INTO notifications (id, return_id, kind, channel, recipient, context, status, "
        "next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (return_id, kind, channel) DO NOTHING",
        rows,
    )


async def for_return(db: Database, return_id: str) -> list[dict[str, Any]]:
    """The return's notifications, oldest first."""
    rows = await db.fetchall(
        "SELECT id, kind, channel, recipient, status, attempts, last_error, created_at, sent_at "
        "FROM notifications WHERE return_id = ? ORDER BY created_at, channel",
        (return_id,),
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


def voucher_png(token: str) -> bytes:
    """The voucher token as a QR code PNG (alphanumeric mode, ECC M, ADR 0003)."""
    out = io.BytesIO()
    segno.make_qr(token, error="m", boost_error=False).save(out, kind="png", scale=6, border=4)
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
    """Turns a queued notification into a :class:`Message` for its channel."""

    def __init__(self, base_url: str) -> None:
        self._base_url = base_url.rstrip("/")
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
        facts: ReturnFacts,
        context: Mapping[str, Any],
    ) -> Message:
        """The message for ``channel``: SMS gets the short text, e-mail the full one."""
        code = facts.short_code
        values = {
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
            **context,
        }
        if "at" in context:
            values["at"] = _when(float(context["at"]))
        subject = self._render(f"{kind}.subject.txt", values).strip()
        if channel == "sms":
            text = self._render(f"{kind}.sms.txt", values).strip()
            return Message(notification_id, kind.value, recipient, subject, text)
        attachments: tuple[Attachment, ...] = ()
        if kind is MessageKind.VOUCHER:
            png = voucher_png(facts.voucher)
            attachments = (Attachment("voucher.png", "image/png", png, content_id=QR_CID),)
        return Message(
            notification_id,
            kind.value,
            recipient,
            subject,
            self._render(f"{kind}.txt", values),
            self._render(f"{kind}.html", values),
            attachments,
        )

    def _render(self, name: str, values: Mapping[str, Any]) -> str:
        return self._env.get_template(name).render(**values)


# ---- dispatching ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    id: str
    return_id: str
    kind: MessageKind
    channel: str
    recipient: str
    context: dict[str, Any]
    attempts: int


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
        claim, jobs, facts = await self._claim()
        if not jobs:
            return 0
        limit = asyncio.Semaphore(self._settings.concurrency)

        async def attempt(job: _Job) -> tuple[NotificationStatus | None, str | None]:
            async with limit:
                return await self._send(job, facts[job.return_id])

        outcomes = await asyncio.gather(*(attempt(j) for j in jobs))
        await self._record(claim, list(zip(jobs, outcomes, strict=True)))
        return len(jobs)

    async def _claim(self) -> tuple[str, list[_Job], dict[str, ReturnFacts]]:
        async with self._db.transaction() as tx:
            claimed = await claim_due(
                tx,
                NOTIFICATIONS,
                columns=("return_id", "kind", "channel", "recipient", "context", "attempts"),
                statuses=(NotificationStatus.PENDING.value,),
                now=self._clock(),
                lease_s=self._settings.lease_s,
                limit=self._batch,
            )
            jobs = [
                _Job(
                    str(r[0]),
                    str(r[1]),
                    MessageKind(r[2]),
                    str(r[3]),
                    str(r[4]),
                    json.loads(r[5]),
                    int(r[6]),
                )
                for r in claimed.rows
            ]
            return_ids = sorted({j.return_id for j in jobs})
            rows = (
                await tx.fetchall(
                    "SELECT id, order_id, customer, short_code, voucher, expires_at, amount_minor, "
                    f"currency, stores FROM returns WHERE id IN ({placeholders(len(return_ids))})",
                    return_ids,
                )
                if return_ids
                else []
            )
        return claimed.token, jobs, {str(r[0]): _facts(r) for r in rows}

    async def _send(
        self, job: _Job, facts: ReturnFacts
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
