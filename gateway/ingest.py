"""Kiosk events in, application acks out (DESIGN §2 flow 2, §5 rules 4, 5 and 9).

Events are acked once stored and applied behind (ADR 0018). One batch of raw MQTT messages is
one short transaction:

1. decode every message; what does not decode is dead-lettered with its raw bytes, counted;
2. store the events in one statement, ``ON CONFLICT (id) DO NOTHING ... RETURNING id``, so a
   duplicate does nothing and we learn which events are new; a new event is stored
   ``sequenced = 0``;
3. after the commit the caller acks every stored event, new or duplicate, to its kiosk: the
   event is durable, and the kiosk may forget it.

:meth:`Ingest.apply_stored` then applies stored events (``gateway/applier.py`` runs it), any
replica's, in transactions of its own:

4. claim a set of unsequenced events (``FOR UPDATE SKIP LOCKED``, so two replicas never take
   the same one) and mark them sequenced;
5. apply them per device in ``seq`` order, never by arrival: each device has a cursor (the
   last ``seq`` applied); an event right after it is applied, a later one waits in
   ``pending_events`` until the gap fills or :meth:`Ingest.release_stale_gaps` gives up on
   it; an event at or below the cursor (a kiosk whose numbering restarted) is applied at
   once and counted as late, and so is a live request with ``seq`` 0 (taken first).

Applying is set-based so that a batch costs a handful of statements, not a few per event:
a device's events are cut into runs of one type, the n-th runs of all devices form a wave,
and each wave hands every handler all of its events at once. Order within a device is kept;
handlers receive their events in ``seq`` order.
"""

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from gateway.database import Database, Transaction, insert_values, placeholders
from protocol import envelope, topics
from protocol.envelope import Envelope
from protocol.errors import ProtocolError
from protocol.messages import EVENT_TYPES, Status

log = logging.getLogger(__name__)

Event = Envelope[Any]
EventHandler = Callable[[Transaction, Sequence[Event]], Awaitable[bool]]
"""Applies events of one type inside the batch's transaction; True when it made work for the
timers (a tote to book, a refund to send)."""

ACKED_TYPES = EVENT_TYPES | {"cmd_result"}
KEPT_DECODED = 10_000
"""Events this process stored are kept decoded, up to this many (about two seconds of peak
ingest), for when it applies them: decoding a stored event again costs more than applying
much of it. An event not kept (stored by another replica, or evicted) is decoded from its
stored envelope."""
UNSEQUENCED = 0
"""The ``seq`` of a live request sent outside the outbox (``code_lookup``): applied at once,
outside its device's order."""
DeviceKey = tuple[str, str]


@dataclass
class IngestStats:
    """Counters for the operator and the tests."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    applied: int = 0
    late: int = 0
    gaps_released: int = 0
    sequenced: int = 0
    apply_failures: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    by_type: Counter[str] = field(default_factory=Counter)


@dataclass
class BatchResult:
    """What a batch produced: ids to ack per device, and how many events were new."""

    acks: dict[DeviceKey, list[str]] = field(default_factory=lambda: defaultdict(list))
    new: int = 0


@dataclass(frozen=True)
class ApplyResult:
    """What one :meth:`Ingest.apply_stored` did."""

    taken: int
    work: bool


@dataclass
class _Decoded:
    events: dict[str, Event] = field(default_factory=dict)  # by id: a duplicate counts once
    raw: dict[str, bytes] = field(default_factory=dict)  # event id → payload as received
    received: int = 0  # events in the batch, duplicates included
    statuses: list[Event] = field(default_factory=list)
    dead: list[tuple[str, bytes, str, str]] = field(default_factory=list)


class Ingest:
    """Applies batches of raw MQTT messages to the database through registered handlers."""

    def __init__(self, db: Database, *, kept_decoded: int = KEPT_DECODED) -> None:
        self._db = db
        self._handlers: dict[str, EventHandler] = {}
        self._kept: dict[str, Event] = {}  # stored here, not yet claimed: by id, oldest first
        self._kept_max = kept_decoded
        self.stats = IngestStats()

    def on(self, event_type: str, handler: EventHandler) -> None:
        """Apply events of ``event_type`` with ``handler``."""
        self._handlers[event_type] = handler

    async def handle(self, batch: Sequence[tuple[str, bytes]]) -> BatchResult:
        """Decode and store one batch; the caller publishes ``acks`` after this returns."""
        self.stats.received += len(batch)
        decoded = self._decode(batch)
        result = BatchResult()
        new: list[str] = []
        async with self._db.transaction() as tx:
            await self._dead_letter(tx, decoded.dead)
            await _record_presence(tx, decoded.statuses)
            if decoded.events:
                new = await self._store(tx, decoded)
        result.new = len(new)
        self._keep({event_id: decoded.events[event_id] for event_id in new})  # as committed
        for event_id, event in decoded.events.items():
            result.acks[(event.store, event.device)].append(event_id)
        return result

    # ---- 1. decode ----------------------------------------------------------------------

    def _decode(self, batch: Sequence[tuple[str, bytes]]) -> _Decoded:
        out = _Decoded()
        for topic, payload in batch:
            try:
                where = topics.parse(topic)
                message = envelope.decode(payload, where.message_type)
                if (where.store, where.device) != (message.store, message.device):
                    raise ProtocolError(
                        "envelope names another device than its topic", reason="topic_mismatch"
                    )
            except ProtocolError as exc:
                out.dead.append((topic, payload, exc.reason, exc.detail))
                continue
            if message.type in ACKED_TYPES:
                event_id = str(message.id)
                out.events[event_id] = message
                out.raw[event_id] = payload
                out.received += 1
            elif isinstance(message.body, Status):
                out.statuses.append(message)
            else:
                out.dead.append((topic, payload, "unexpected_type", message.type))
        return out

    async def quarantine(self, topic: str, payload: bytes, error: Exception) -> None:
        """Set aside a message whose batch keeps failing to store although it decoded (data
        the database refuses): dead-lettered with the error, so the stream goes on. Events
        that fail when applied are set aside by :meth:`apply_alone`."""
        async with self._db.transaction() as tx:
            await self._dead_letter(tx, [(topic, payload, "handler_failed", repr(error)[:500])])

    async def _dead_letter(self, tx: Transaction, dead: list[tuple[str, bytes, str, str]]) -> None:
        if not dead:
            return
        now = time.time()
        for topic, _, reason, detail in dead:
            self.stats.dead_letters[reason] += 1
            log.warning("dead-lettered message on %s: %s (%s)", topic, reason, detail)
        await tx.executemany(
            "INSERT INTO dead_letters (topic, payload, reason, detail, received_at) "
            "VALUES (?, ?, ?, ?, ?)",
            [(topic, payload, reason, detail, now) for topic, payload, reason, detail in dead],
        )

    # ---- 2. store -----------------------------------------------------------------------

    async def _store(self, tx: Transaction, decoded: _Decoded) -> list[str]:
        """Insert the events (as received), to be applied; returns the ids of the new ones."""
        now = time.time()
        rows = [
            (eid, e.store, e.device, e.seq, e.session, e.type, int(e.historical),
             decoded.raw[eid].decode(), e.ts, now)
            for eid, e in decoded.events.items()
        ]  # fmt: skip
        inserted = await insert_values(
            tx,
            "INSERT INTO events (id, store, device, seq, session, type, historical, envelope, "
            "ts, received_at, sequenced)",
            rows,
            "ON CONFLICT (id) DO NOTHING RETURNING id",
            row="(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
        )
        self.stats.stored += len(inserted)
        self.stats.duplicates += decoded.received - len(inserted)
        return [str(r[0]) for r in inserted]

    def _keep(self, events: dict[str, Event]) -> None:
        """Keep newly stored events (by id) decoded for :meth:`_claim`, dropping the oldest
        kept beyond the limit."""
        self._kept.update(events)
        excess = len(self._kept) - self._kept_max
        if excess > 0:
            for event_id in list(islice(self._kept, excess)):
                del self._kept[event_id]

    # ---- 4. claim stored events -----------------------------------------------------------

    async def apply_stored(self, limit: int) -> ApplyResult:
        """Apply up to ``limit`` stored events not yet sequenced (live requests first), in
        one transaction; returns how many it took and whether handlers made work."""
        async with self._db.transaction() as tx:
            events = await self._claim(tx, limit)
            work = await self._apply_in_order(tx, events)
        self.stats.sequenced += len(events)
        return ApplyResult(len(events), work)

    async def apply_alone(self, event_id: str) -> bool:
        """Apply one stored event by itself; when that fails too, dead-letter it (marked
        sequenced, so it is never taken again) and return False. For an applier whose
        batch keeps failing: one bad event must not hold up the others."""
        try:
            async with self._db.transaction() as tx:
                events = await self._claim(tx, 1, event_id=event_id)
                await self._apply_in_order(tx, events)
            self.stats.sequenced += len(events)
            return True
        except Exception as exc:
            log.exception("event %s cannot be applied; dead-lettered", event_id)
            self.stats.apply_failures += 1
            async with self._db.transaction() as tx:
                rows = await tx.fetchall(
                    "UPDATE events SET sequenced = 1 WHERE id = ? AND sequenced = 0 "
                    "RETURNING store, device, type, envelope",
                    (event_id,),
                )
                dead = [
                    (_topic_of(str(st), str(dv), str(ty)), str(raw).encode(),
                     "handler_failed", repr(exc)[:500])
                    for st, dv, ty, raw in rows
                ]  # fmt: skip
                await self._dead_letter(tx, dead)
            return False

    async def unsequenced_ids(self, limit: int) -> list[str]:
        """Ids of stored events not yet applied, oldest first."""
        rows = await self._db.fetchall(
            "SELECT id FROM events WHERE sequenced = 0 ORDER BY received_at LIMIT ?", (limit,)
        )
        return [str(r[0]) for r in rows]

    async def _claim(
        self, tx: Transaction, limit: int, *, event_id: str | None = None
    ) -> list[Event]:
        """Take unsequenced events (locked, skipping those another replica holds), mark
        them sequenced and decode them; live requests (``seq`` 0) come first."""
        lock = tx.for_update(skip_locked=True)
        if event_id is not None:
            rows = await tx.fetchall(
                "SELECT id, type, envelope FROM events WHERE id = ? AND sequenced = 0" + lock,
                (event_id,),
            )
        else:
            rows = await tx.fetchall(
                "SELECT id, type, envelope FROM events WHERE sequenced = 0 AND seq = 0 "
                "ORDER BY received_at LIMIT ?" + lock,
                (limit,),
            )
            if len(rows) < limit:
                rows += await tx.fetchall(
                    "SELECT id, type, envelope FROM events WHERE sequenced = 0 "
                    "ORDER BY received_at LIMIT ?" + lock,
                    (limit,),
                )
        taken = list({str(r[0]): r for r in rows}.values())[:limit]
        if not taken:
            return []
        await tx.execute(
            f"UPDATE events SET sequenced = 1 WHERE id IN ({placeholders(len(taken))})",
            [r[0] for r in taken],
        )
        kept = self._kept
        return [
            kept.pop(event_id) if event_id in kept else envelope.decode(raw, event_type)
            for event_id, event_type, raw in taken
        ]

    # ---- 5. apply in seq order ----------------------------------------------------------

    async def _apply_in_order(self, tx: Transaction, new: list[Event]) -> bool:
        if not new:
            return False
        by_device: dict[DeviceKey, list[Event]] = defaultdict(list)
        for event in new:
            by_device[(event.store, event.device)].append(event)
        cursors = await _lock_cursors(tx, by_device)
        ready: dict[DeviceKey, list[Event]] = {}
        newly_held: list[Event] = []
        released: list[str] = []
        for key, events in by_device.items():
            cursor, pending_ids = cursors[key]
            earlier = await _load_pending(tx, pending_ids) if pending_ids else []
            if cursor < 0:  # a device we have never heard from starts where it is now
                cursor = min((e.seq for e in events if e.seq != UNSEQUENCED), default=1) - 1
            applicable, held, cursor = self._contiguous([*events, *earlier], cursor)
            ready[key] = applicable
            waiting = {str(e.id) for e in held}
            released += [i for i in pending_ids if i not in waiting]
            newly_held += [e for e in held if str(e.id) not in pending_ids]
            cursors[key] = (cursor, sorted(waiting))
        await _save_cursors(tx, cursors, released, newly_held)
        return await self._apply(tx, ready)

    def _contiguous(self, events: list[Event], cursor: int) -> tuple[list[Event], list[Event], int]:
        """Split a device's events into those to apply now (in order) and those that wait
        for a gap before them to fill; returns them and the new cursor."""
        applicable: list[Event] = []
        held: list[Event] = []
        for event in sorted({e.id: e for e in events}.values(), key=lambda e: e.seq):
            if event.seq == UNSEQUENCED:
                applicable.append(event)
            elif event.seq <= cursor:
                self.stats.late += 1
                log.info("late event %s seq %d (cursor %d)", event.id, event.seq, cursor)
                applicable.append(event)
            elif event.seq == cursor + 1 and not held:
                applicable.append(event)
                cursor = event.seq
            else:
                held.append(event)
        return applicable, held, cursor

    async def _apply(self, tx: Transaction, ready: dict[DeviceKey, list[Event]]) -> bool:
        work = False
        for wave in _waves(ready.values()):
            for event_type, events in wave.items():
                handler = self._handlers.get(event_type)
                self.stats.by_type[event_type] += len(events)
                self.stats.applied += len(events)
                if handler is not None:
                    work |= await handler(tx, events)
        return work

    async def release_stale_gaps(self, older_than_s: float) -> int:
        """Apply events that have waited longer than ``older_than_s`` for an earlier ``seq``
        that never came (a kiosk whose outbox was lost); returns how many were applied."""
        async with self._db.transaction() as tx:
            rows = await tx.fetchall(
                "SELECT DISTINCT store, device FROM pending_events WHERE received_at <= ?",
                (time.time() - older_than_s,),
            )
            if not rows:
                return 0
            cursors = await _lock_cursors(tx, [(str(s), str(d)) for s, d in rows])
            ready: dict[DeviceKey, list[Event]] = {}
            released: list[str] = []
            for key, (cursor, pending_ids) in cursors.items():
                events = sorted(await _load_pending(tx, pending_ids), key=lambda e: e.seq)
                newest = max([cursor, *(e.seq for e in events)])
                log.warning("gave up on a gap at %s/%s: applying up to seq %d", *key, newest)
                ready[key] = events
                released += pending_ids
                cursors[key] = (newest, [])
            await _save_cursors(tx, cursors, released, [])
            await self._apply(tx, ready)
        self.stats.gaps_released += len(released)
        return len(released)

    async def pending_count(self) -> int:
        """Events stored but waiting for an earlier ``seq`` of their device."""
        row = await self._db.fetchone("SELECT count(*) FROM pending_events")
        return int(row[0]) if row else 0


def _topic_of(store: str, device: str, event_type: str) -> str:
    """The topic a stored event came in on."""
    if event_type == "cmd_result":
        return topics.command_result(store, device)
    return topics.event(store, device, event_type)


def _waves(devices: Iterable[list[Event]]) -> list[dict[str, list[Event]]]:
    """Cut each device's ordered events into runs of one type; wave n holds every device's
    n-th run, grouped by type."""
    waves: list[dict[str, list[Event]]] = []
    for events in devices:
        run_index = -1
        previous: str | None = None
        for event in events:
            if event.type != previous:
                run_index += 1
                previous = event.type
                if run_index == len(waves):
                    waves.append(defaultdict(list))
            waves[run_index][event.type].append(event)
    return waves


async def _lock_cursors(
    tx: Transaction, keys: Iterable[DeviceKey]
) -> dict[DeviceKey, tuple[int, list[str]]]:
    """Each device's cursor and pending event ids, locked for this transaction (in a fixed
    order, so that replicas never deadlock); a device seen for the first time starts with
    its lowest new ``seq``."""
    wanted = sorted(set(keys))
    names = [f"{s}/{d}" for s, d in wanted]
    await tx.executemany(
        "INSERT INTO device_cursors (device_key, store, device, applied_seq, pending) "
        "VALUES (?, ?, ?, -1, 0) ON CONFLICT (device_key) DO NOTHING",
        [(n, s, d) for n, (s, d) in zip(names, wanted, strict=True)],
    )
    rows = await tx.fetchall(
        f"SELECT device_key, store, device, applied_seq, pending FROM device_cursors "
        f"WHERE device_key IN ({placeholders(len(names))}) ORDER BY device_key" + tx.for_update(),
        names,
    )
    cursors: dict[DeviceKey, tuple[int, list[str]]] = {}
    with_pending: list[str] = []
    for _, store, device, applied_seq, pending in rows:
        cursors[(str(store), str(device))] = (int(applied_seq), [])
        if pending:
            with_pending.append(f"{store}/{device}")
    if with_pending:
        for store, device, event_id in await tx.fetchall(
            "SELECT store, device, event_id FROM pending_events "
            f"WHERE device_key IN ({placeholders(len(with_pending))})",
            with_pending,
        ):
            cursors[(str(store), str(device))][1].append(str(event_id))
    return cursors


async def _load_pending(tx: Transaction, event_ids: list[str]) -> list[Event]:
    rows = await tx.fetchall(
        f"SELECT type, envelope FROM events WHERE id IN ({placeholders(len(event_ids))})",
        event_ids,
    )
    return [envelope.decode(raw, event_type) for event_type, raw in rows]


async def _save_cursors(
    tx: Transaction,
    cursors: dict[DeviceKey, tuple[int, list[str]]],
    released: list[str],
    newly_held: list[Event],
) -> None:
    """Write back each device's cursor and the events that still wait for a gap."""
    if released:
        await tx.execute(
            f"DELETE FROM pending_events WHERE event_id IN ({placeholders(len(released))})",
            released,
        )
    now = time.time()
    await tx.executemany(
        "INSERT INTO pending_events (event_id, device_key, store, device, seq, received_at) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
        [(str(e.id), f"{e.store}/{e.device}", e.store, e.device, e.seq, now) for e in newly_held],
    )
    await tx.executemany(
        "UPDATE device_cursors SET applied_seq = ?, pending = ? WHERE device_key = ?",
        [(cursor, len(held), f"{s}/{d}") for (s, d), (cursor, held) in cursors.items()],
    )


async def _record_presence(tx: Transaction, statuses: list[Event]) -> None:
    """Latest presence per kiosk; an older session's message never overwrites a newer one."""
    await tx.executemany(
        "INSERT INTO device_presence (store, device, online, session, version, seen_at) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (store, device) DO UPDATE SET "
        "online = excluded.online, session = excluded.session, version = excluded.version, "
        "seen_at = excluded.seen_at WHERE excluded.session >= device_presence.session",
        [
            (m.store, m.device, int(m.body.online), m.body.session, m.body.version, time.time())
            for m in statuses
        ],
    )
