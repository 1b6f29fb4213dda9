"""Outgoing merchant webhooks through a transactional outbox (DESIGN §1, §5 rule 6).

:func:`emit` writes an event and one delivery per subscribed endpoint of the merchant in
the caller's transaction, so a webhook exists exactly when the change behind it committed.
:class:`WebhookDispatcher` claims due deliveries (several replicas never take the same one,
see ``gateway/claims.py``), POSTs them signed (``gateway/signatures.py``), records every
attempt with its status code, latency and error, and retries with exponential backoff and
jitter until ``max_attempts``, after which the delivery is ``dead`` (an operator may
redeliver it). Delivery is at least once: receivers deduplicate by the event id, which is
the same on every attempt and in the ``Dropline-Event-Id`` header.
"""

import asyncio
import json
import logging
import random
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiohttp

from gateway import signatures
from gateway.claims import JobTable, backoff_delay, claim_due
from gateway.config import WebhookSettings
from gateway.database import Database, Row, Transaction, insert_values, placeholders
from protocol.ids import new_id, new_ids

log = logging.getLogger(__name__)

DELIVERIES = JobTable("webhook_deliveries")
_encode_body = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode
"""``json.dumps(body, separators=(",", ":"), sort_keys=True)`` with one encoder for all."""
MAX_REPLY_BYTES = 4096


class EventType(StrEnum):
    """The webhooks a merchant can subscribe to."""

    RETURN_AUTHORIZED = "return.authorized"
    RETURN_DROPPED_OFF = "return.dropped_off"
    SHIPMENT_CREATED = "shipment.created"
    RETURN_RECEIVED = "return.received"
    REFUND_ISSUED = "refund.issued"
    RETURN_EXCEPTION = "return.exception"


class DeliveryStatus(StrEnum):
    """Where a delivery stands."""

    PENDING = "pending"  # due at next_attempt_at (also while claimed: the lease)
    DELIVERED = "delivered"
    DEAD = "dead"  # out of attempts; an operator may redeliver
    CANCELLED = "cancelled"  # its endpoint was disabled


@dataclass(frozen=True)
class OutgoingEvent:
    """One webhook event. ``dedupe_key`` makes emitting it twice a no-op."""

    merchant: str
    type: EventType
    dedupe_key: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Endpoint:
    """A merchant's webhook receiver. ``secret`` is shown on creation and rotation only."""

    id: str
    merchant: str
    url: str
    events: list[str]
    active: bool
    created_at: float
    secret: str | None = None
    previous_secret_until: float | None = None

    def public(self) -> dict[str, Any]:
        """The JSON the management API shows."""
        view: dict[str, Any] = {
            "id": self.id,
            "merchant": self.merchant,
            "url": self.url,
            "events": self.events,
            "active": self.active,
            "created_at": self.created_at,
            "previous_secret_until": self.previous_secret_until,
        }
        if self.secret is not None:
            view["secret"] = self.secret
        return view


# ---- emitting ---------------------------------------------------------------------------


async def emit(
    tx: Transaction, merchant: str, type_: EventType, dedupe_key: str, data: dict[str, Any]
) -> str | None:
    """Queue one webhook in ``tx``; returns the event id, or None if it was emitted before."""
    ids = await emit_many(tx, [OutgoingEvent(merchant, type_, dedupe_key, data)])
    return ids[0] if ids else None


async def emit_many(tx: Transaction, events: Sequence[OutgoingEvent]) -> list[str]:
    """Queue webhooks in ``tx`` (one delivery per subscribed active endpoint); returns the
    ids of the events that were new. A few statements whatever the number of events."""
    if not events:
        return []
    now = time.time()
    rows = []
    for event, fresh in zip(events, new_ids(len(events)), strict=True):
        event_id = "evt_" + fresh
        body = {"id": event_id, "type": event.type.value, "created_at": now,
                "merchant": event.merchant, "data": event.data}  # fmt: skip
        text = _encode_body(body)
        rows.append((event_id, event.merchant, event.type.value, event.dedupe_key, text, now))
    inserted = await insert_values(
        tx,
        "INSERT INTO webhook_events (id, merchant, type, dedupe_key, body, created_at)",
        rows,
        "ON CONFLICT (dedupe_key) DO NOTHING RETURNING id",
    )
    new = {str(r[0]) for r in inserted}
    endpoints = await _active_endpoints(tx, {e.merchant for e in events})
    wanted = [
        (event_id, endpoint_id, event.merchant)
        for event, (event_id, *_) in zip(events, rows, strict=True)
        if event_id in new
        for endpoint_id, subscribed in endpoints.get(event.merchant, [])
        if not subscribed or event.type.value in subscribed
    ]
    pending = DeliveryStatus.PENDING.value
    await insert_values(
        tx,
        "INSERT INTO webhook_deliveries (id, event_id, endpoint_id, merchant, status, "
        "next_attempt_at, created_at)",
        [
            ("dlv_" + fresh, event_id, endpoint_id, merchant, pending, now, now)
            for fresh, (event_id, endpoint_id, merchant) in zip(
                new_ids(len(wanted)), wanted, strict=True
            )
        ],
    )
    return [r[0] for r in rows if r[0] in new]


async def _active_endpoints(
    tx: Transaction, merchants: set[str]
) -> dict[str, list[tuple[str, set[str]]]]:
    ordered = sorted(merchants)
    rows = await tx.fetchall(
        f"SELECT merchant, id, events FROM webhook_endpoints WHERE active = 1 "
        f"AND merchant IN ({placeholders(len(ordered))}) ORDER BY created_at",
        ordered,
    )
    found: dict[str, list[tuple[str, set[str]]]] = {}
    for merchant, endpoint_id, events in rows:
        found.setdefault(str(merchant), []).append((str(endpoint_id), set(json.loads(events))))
    return found


# ---- endpoints --------------------------------------------------------------------------


class UnknownEndpointError(LookupError):
    """No such endpoint for this merchant."""


def new_secret() -> str:
    """A fresh signing secret."""
    return "whsec_" + secrets.token_urlsafe(32)


async def register_endpoint(
    db: Database, merchant: str, url: str, events: Iterable[EventType]
) -> Endpoint:
    """Add a receiver for ``merchant`` (no ``events``: every type); its secret is returned
    once, here."""
    endpoint = Endpoint(
        id="we_" + new_id(),
        merchant=merchant,
        url=url,
        events=sorted(e.value for e in events),
        active=True,
        created_at=time.time(),
        secret=new_secret(),
    )
    async with db.transaction() as tx:
        await tx.execute(
            "INSERT INTO webhook_endpoints (id, merchant, url, events, secret, active, "
            "created_at) VALUES (?, ?, ?, ?, ?, 1, ?)",
            (
                endpoint.id,
                merchant,
                url,
                json.dumps(endpoint.events),
                endpoint.secret,
                endpoint.created_at,
            ),
        )
    return endpoint


_ENDPOINT_COLUMNS = "id, merchant, url, events, active, created_at, previous_secret_until"


def _endpoint(row: Row, secret: str | None = None) -> Endpoint:
    return Endpoint(
        id=str(row[0]),
        merchant=str(row[1]),
        url=str(row[2]),
        events=list(json.loads(row[3])),
        active=bool(row[4]),
        created_at=float(row[5]),
        previous_secret_until=None if row[6] is None else float(row[6]),
        secret=secret,
    )


async def list_endpoints(db: Database, merchant: str) -> list[Endpoint]:
    """The merchant's endpoints, without their secrets."""
    rows = await db.fetchall(
        f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE merchant = ? ORDER BY created_at",
        (merchant,),
    )
    return [_endpoint(r) for r in rows]


async def rotate_secret(
    db: Database, merchant: str, endpoint_id: str, *, grace_s: float
) -> Endpoint:
    """Give the endpoint a new secret; the old one still signs for ``grace_s`` seconds."""
    secret = new_secret()
    now = time.time()
    async with db.transaction() as tx:
        changed = await tx.execute(
            "UPDATE webhook_endpoints SET previous_secret = secret, previous_secret_until = ?, "
            "secret = ? WHERE id = ? AND merchant = ?",
            (now + grace_s, secret, endpoint_id, merchant),
        )
        if not changed:
            raise UnknownEndpointError(endpoint_id)
        row = await tx.fetchone(
            f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = ?", (endpoint_id,)
        )
    assert row is not None
    return _endpoint(row, secret)


async def disable_endpoint(db: Database, merchant: str, endpoint_id: str) -> None:
    """Stop sending to an endpoint; its pending deliveries are cancelled."""
    async with db.transaction() as tx:
        changed = await tx.execute(
            "UPDATE webhook_endpoints SET active = 0 WHERE id = ? AND merchant = ?",
            (endpoint_id, merchant),
        )
        if not changed:
            raise UnknownEndpointError(endpoint_id)
        await tx.execute(
            "UPDATE webhook_deliveries SET status = ?, claim = NULL "
            "WHERE endpoint_id = ? AND status = ?",
            (DeliveryStatus.CANCELLED.value, endpoint_id, DeliveryStatus.PENDING.value),
        )


# ---- deliveries (reading, redelivering) ---------------------------------------------------


class UnknownDeliveryError(LookupError):
    """No such delivery for this merchant."""


_DELIVERY_COLUMNS = (
    "d.id, d.event_id, e.type, d.endpoint_id, d.status, d.attempts, d.next_attempt_at, "
    "d.last_status_code, d.last_error, d.created_at, d.delivered_at"
)


def _delivery_json(row: Row) -> dict[str, Any]:
    keys = (
        "id",
        "event_id",
        "event_type",
        "endpoint_id",
        "status",
        "attempts",
        "next_attempt_at",
        "last_status_code",
        "last_error",
        "created_at",
        "delivered_at",
    )
    return dict(zip(keys, row, strict=True))


async def list_deliveries(
    db: Database, merchant: str, *, status: str | None, event_id: str | None, limit: int
) -> list[dict[str, Any]]:
    """The merchant's deliveries, newest first."""
    filters = {"d.status": status, "d.event_id": event_id}
    where = "".join(f" AND {column} = ?" for column, value in filters.items() if value)
    rows = await db.fetchall(
        f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries d "
        f"JOIN webhook_events e ON e.id = d.event_id WHERE d.merchant = ?{where} "
        "ORDER BY d.created_at DESC LIMIT ?",
        (merchant, *(v for v in filters.values() if v), limit),
    )
    return [_delivery_json(r) for r in rows]


async def delivery_detail(db: Database, merchant: str, delivery_id: str) -> dict[str, Any]:
    """One delivery with its event body and every attempt."""
    async with db.transaction() as tx:
        row = await tx.fetchone(
            f"SELECT {_DELIVERY_COLUMNS}, e.body FROM webhook_deliveries d "
            "JOIN webhook_events e ON e.id = d.event_id WHERE d.id = ? AND d.merchant = ?",
            (delivery_id, merchant),
        )
        if row is None:
            raise UnknownDeliveryError(delivery_id)
        attempts = await tx.fetchall(
            "SELECT attempt, at, status_code, latency_ms, error FROM webhook_attempts "
            "WHERE delivery_id = ? ORDER BY id",
            (delivery_id,),
        )
    view = _delivery_json(row[:-1])
    view["event"] = json.loads(row[-1])
    view["attempts_log"] = [
        dict(zip(("attempt", "at", "status_code", "latency_ms", "error"), a, strict=True))
        for a in attempts
    ]
    return view


async def redeliver(db: Database, merchant: str, delivery_id: str) -> None:
    """Send a delivery again now, with a fresh attempt budget (it keeps its history)."""
    async with db.transaction() as tx:
        changed = await tx.execute(
            "UPDATE webhook_deliveries SET status = ?, attempts = 0, next_attempt_at = ?, "
            "claim = NULL WHERE id = ? AND merchant = ? AND status <> ?",
            (
                DeliveryStatus.PENDING.value,
                time.time(),
                delivery_id,
                merchant,
                DeliveryStatus.CANCELLED.value,
            ),
        )
    if not changed:
        raise UnknownDeliveryError(delivery_id)


# ---- dispatching ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    delivery_id: str
    event_id: str
    event_type: str
    attempts: int
    url: str
    secrets: list[str]
    active: bool
    body: bytes


@dataclass(frozen=True)
class _Outcome:
    ok: bool
    status_code: int | None
    latency_ms: float
    error: str | None
    at: float


class WebhookDispatcher:
    """Posts due deliveries; safe to run in several replicas at once."""

    def __init__(
        self,
        db: Database,
        session: aiohttp.ClientSession,
        settings: WebhookSettings,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._db = db
        self._session = session
        self._settings = settings
        self._clock = clock
        self._rng = rng or random.Random()
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout_s)
        self.delivered = 0
        self.failed_attempts = 0
        self.dead = 0

    async def process_due(self) -> int:
        """Claim and post every due delivery; returns how many were attempted."""
        claim, jobs = await self._claim()
        if not jobs:
            return 0
        limit = asyncio.Semaphore(self._settings.concurrency)

        async def attempt(job: _Job) -> _Outcome:
            async with limit:
                return await self._post(job)

        outcomes = await asyncio.gather(*(attempt(j) for j in jobs))
        await self._record(claim, list(zip(jobs, outcomes, strict=True)))
        return len(jobs)

    async def _claim(self) -> tuple[str, list[_Job]]:
        now = self._clock()
        async with self._db.transaction() as tx:
            claimed = await claim_due(
                tx,
                DELIVERIES,
                columns=("event_id", "endpoint_id", "attempts"),
                statuses=(DeliveryStatus.PENDING.value,),
                now=now,
                lease_s=self._settings.lease_s,
                limit=self._settings.batch,
            )
            if not claimed.rows:
                return claimed.token, []
            ids = [r[0] for r in claimed.rows]
            details = await tx.fetchall(
                "SELECT d.id, e.type, e.body, w.url, w.secret, w.previous_secret, "
                "w.previous_secret_until, w.active FROM webhook_deliveries d "
                "JOIN webhook_events e ON e.id = d.event_id "
                "JOIN webhook_endpoints w ON w.id = d.endpoint_id "
                f"WHERE d.id IN ({placeholders(len(ids))})",
                ids,
            )
        by_id = {str(r[0]): r for r in details}
        jobs = []
        for delivery_id, event_id, _, attempts in claimed.rows:
            _, type_, body, url, secret, previous, until, active = by_id[str(delivery_id)]
            valid = [secret] + ([previous] if previous and until and until > now else [])
            jobs.append(
                _Job(
                    str(delivery_id),
                    str(event_id),
                    str(type_),
                    int(attempts),
                    str(url),
                    valid,
                    bool(active),
                    str(body).encode(),
                )
            )
        return claimed.token, jobs

    async def _post(self, job: _Job) -> _Outcome:
        started = self._clock()
        if not job.active:
            return _Outcome(False, None, 0.0, "endpoint disabled", started)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Dropline-Webhooks/1",
            signatures.HEADER: signatures.sign(job.secrets, job.body, now=started),
            "Dropline-Event-Id": job.event_id,
            "Dropline-Event-Type": job.event_type,
            "Dropline-Delivery-Id": job.delivery_id,
            "Dropline-Attempt": str(job.attempts + 1),
        }
        t0 = time.perf_counter()
        status: int | None = None
        error: str | None = None
        try:
            async with self._session.post(
                job.url,
                data=job.body,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                status = resp.status
                await resp.content.read(MAX_REPLY_BYTES)
        except TimeoutError:
            error = f"no reply within {self._settings.timeout_s:g}s"
        except (aiohttp.ClientError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        latency_ms = (time.perf_counter() - t0) * 1000
        ok = status is not None and 200 <= status < 300
        if status is not None and not ok:
            error = f"HTTP {status}"
        return _Outcome(ok, status, latency_ms, error, started)

    async def _record(self, claim: str, results: list[tuple[_Job, _Outcome]]) -> None:
        retry = self._settings.retry
        async with self._db.transaction() as tx:
            await tx.executemany(
                "INSERT INTO webhook_attempts (delivery_id, attempt, at, status_code, "
                "latency_ms, error) VALUES (?, (SELECT count(*) + 1 FROM webhook_attempts "
                "WHERE delivery_id = ?), ?, ?, ?, ?)",
                [
                    (j.delivery_id, j.delivery_id, o.at, o.status_code, o.latency_ms, o.error)
                    for j, o in results
                    if j.active
                ],
            )
            for job, outcome in results:
                attempts = job.attempts + 1
                if outcome.ok:
                    status, next_at = DeliveryStatus.DELIVERED, outcome.at
                    self.delivered += 1
                elif not job.active:
                    status, next_at = DeliveryStatus.CANCELLED, outcome.at
                elif attempts >= retry.max_attempts:
                    status, next_at = DeliveryStatus.DEAD, outcome.at
                    self.dead += 1
                    log.warning(
                        "webhook %s is dead after %d attempts: %s",
                        job.delivery_id,
                        attempts,
                        outcome.error,
                    )
                else:
                    status = DeliveryStatus.PENDING
                    delay = backoff_delay(
                        attempts, base_s=retry.base_s, max_s=retry.max_s, rng=self._rng
                    )
                    next_at = self._clock() + delay
                if not outcome.ok:
                    self.failed_attempts += 1
                await tx.execute(
                    "UPDATE webhook_deliveries SET status = ?, attempts = ?, next_attempt_at = ?, "
                    "last_status_code = ?, last_error = ?, delivered_at = ?, claim = NULL "
                    "WHERE id = ? AND claim = ?",
                    (
                        status.value,
                        attempts,
                        next_at,
                        outcome.status_code,
                        outcome.error,
                        outcome.at if outcome.ok else None,
                        job.delivery_id,
                        claim,
                    ),
                )
