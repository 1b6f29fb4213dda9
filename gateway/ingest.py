"""Kiosk events in, application acks out (DESIGN §2 flow 2, §5 rules 4, 5 and 9).

Messages are decoded, written idempotently by id in one transaction per batch, applied to the
return state machine in per-device ``seq`` order, and acked only after the commit. Anything
that does not decode is dead-lettered with its raw bytes and counted; nothing stops ingest.
"""

import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from gateway import commands, consolidation, kiosk_flows
from gateway.config import ConsolidationRules, RefundPolicy
from gateway.database import Database, Transaction
from gateway.refunds import policy_of
from gateway.refunds import request as request_refund
from gateway.returns import Cause, CauseKind, ReturnState, current_state, move
from protocol import envelope, topics
from protocol.envelope import Envelope
from protocol.errors import ProtocolError
from protocol.messages import CommandResult, Dropoff, Fault, ScanRejected, Status

log = logging.getLogger(__name__)

ACKED_TYPES = frozenset({"dropoff", "scan_rejected", "fault", "cmd_result"}) | (
    kiosk_flows.EVENT_TYPES | kiosk_flows.LIVE_TYPES
)


@dataclass
class IngestStats:
    """Counters for the operator and the tests."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    faults: int = 0
    rejected_scans: int = 0
    unknown_returns: int = 0


@dataclass
class BatchResult:
    """What a batch produced: ids to ack per device, and whether new work appeared."""

    acks: dict[tuple[str, str], list[str]] = field(default_factory=lambda: defaultdict(list))
    work: bool = False


class Ingest:
    """Applies batches of raw MQTT messages to the database."""

    def __init__(self, db: Database, rules: ConsolidationRules, refund_provider: str) -> None:
        self._db = db
        self._rules = rules
        self._refund_provider = refund_provider
        self.stats = IngestStats()

    async def handle(self, batch: list[tuple[str, bytes]]) -> BatchResult:
        """Decode, store and apply one batch; the caller publishes ``acks`` after this returns."""
        result = BatchResult()
        decoded: list[Envelope[Any]] = []
        async with self._db.transaction() as tx:
            for topic, payload in batch:
                self.stats.received += 1
                message = await self._decode(tx, topic, payload)
                if message is not None:
                    decoded.append(message)
            # Per device in seq order, never by arrival (rule 5).
            decoded.sort(key=lambda m: (m.store, m.device, m.seq))
            for message in decoded:
                if message.type in ACKED_TYPES:
                    if await self._store_event(tx, message):
                        result.work |= await self._apply(tx, message)
                    result.acks[(message.store, message.device)].append(str(message.id))
                elif isinstance(message.body, Status):
                    await self._presence(tx, message)
        return result

    async def _decode(self, tx: Transaction, topic: str, payload: bytes) -> Envelope[Any] | None:
        try:
            where = topics.parse(topic)
            message = envelope.decode(payload)
            if (where.store, where.device) != (message.store, message.device):
                raise ProtocolError(
                    "envelope names another device than its topic", reason="topic_mismatch"
                )
        except ProtocolError as exc:
            await self._dead_letter(tx, topic, payload, exc.reason, exc.detail)
            return None
        return message

    async def _dead_letter(
        self, tx: Transaction, topic: str, payload: bytes, reason: str, detail: str
    ) -> None:
        self.stats.dead_letters[reason] += 1
        log.warning("dead-lettered message on %s: %s (%s)", topic, reason, detail)
        await tx.execute(
            "INSERT INTO dead_letters (topic, payload, reason, detail, received_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (topic, payload, reason, detail, time.time()),
        )

    async def _store_event(self, tx: Transaction, m: Envelope[Any]) -> bool:
        inserted = await tx.execute(
            "INSERT INTO events (id, store, device, seq, session, type, historical, body, ts, "
            "received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            (
                str(m.id),
                m.store,
                m.device,
                m.seq,
                m.session,
                m.type,
                int(m.historical),
                m.body.model_dump_json(),
                m.ts,
                time.time(),
            ),
        )
        if inserted:
            self.stats.stored += 1
        else:
            self.stats.duplicates += 1
        return inserted == 1

    async def _apply(self, tx: Transaction, m: Envelope[Any]) -> bool:
        body = m.body
        if m.type in kiosk_flows.EVENT_TYPES | kiosk_flows.LIVE_TYPES:
            return await kiosk_flows.apply(tx, m)
        if isinstance(body, Dropoff):
            return await self._dropoff(tx, m, body)
        if isinstance(body, CommandResult):
            await commands.record_result(tx, body)
        elif isinstance(body, Fault):
            self.stats.faults += 1
            log.warning("fault at %s/%s: %s %s", m.store, m.device, body.kind, body.compartment)
        elif isinstance(body, ScanRejected):
            self.stats.rejected_scans += 1
        return False

    async def _dropoff(self, tx: Transaction, m: Envelope[Any], body: Dropoff) -> bool:
        cause = Cause(CauseKind.EVENT, str(m.id))
        state = await current_state(tx, body.return_id)
        if state is None:
            self.stats.unknown_returns += 1
            await self._dead_letter(
                tx,
                topics.event(m.store, m.device, m.type),
                envelope.encode(m),
                "unknown_return",
                body.return_id,
            )
            return False
        if state is not ReturnState.AUTHORIZED:
            # A parcel is physically in our hands for a return we did not expect there.
            await move(tx, body.return_id, ReturnState.EXCEPTION, cause)
            return False
        await move(
            tx, body.return_id, ReturnState.DROPPED_OFF, cause, store=m.store, device=m.device
        )
        if await policy_of(tx, body.return_id) is RefundPolicy.ON_DROPOFF:
            await request_refund(tx, body.return_id, self._refund_provider)
        await consolidation.add_to_tote(tx, m.store, body.return_id, self._rules)
        return True

    async def _presence(self, tx: Transaction, m: Envelope[Any]) -> None:
        body: Status = m.body
        await tx.execute(
            "INSERT INTO device_presence (store, device, online, session, version, seen_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (store, device) DO UPDATE SET "
            "online = excluded.online, session = excluded.session, version = excluded.version, "
            "seen_at = excluded.seen_at WHERE excluded.session >= device_presence.session",
            (m.store, m.device, int(body.online), body.session, body.version, time.time()),
        )
