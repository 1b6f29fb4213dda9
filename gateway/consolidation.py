"""One open tote (bulk shipment) per store, and when it closes (DESIGN §2 flow 5).

A tote closes when the next parcel would not fit (item count, estimated weight or volume),
when its oldest parcel has waited ``max_age_s``, at the store's daily cutoff, when a clerk
seals it, or when waiting for more parcels would save less shipping than the wait costs.
Closing only marks the tote ``closed``; booking the carrier and sending the label command
happen afterwards (``gateway/shipping.py``, transactional outbox), so a slow carrier never
holds up a drop-off.

The timed rules are a pure function over tote snapshots (:func:`plan`), so that planning a
whole chain is cheap to run and to measure (``bench/consolidation.py``).
"""

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from zoneinfo import ZoneInfo

from gateway.config import ConsolidationRules, ParcelProfile, ToteCost
from gateway.database import Transaction, placeholders
from protocol.ids import new_id


class CloseReason(StrEnum):
    """Why a tote closed."""

    COUNT = "count"
    WEIGHT = "weight"
    VOLUME = "volume"
    AGE = "age"
    CUTOFF = "cutoff"
    SEAL = "seal"
    COST = "cost"


@dataclass(frozen=True)
class Parcel:
    """A dropped-off return on its way into a tote."""

    return_id: str
    size: str


@dataclass
class ToteSnapshot:
    """An open tote as the planner sees it."""

    tote_id: str
    store: str
    items: int
    weight_kg: float
    volume_l: float
    opened_at: float


@dataclass(frozen=True)
class Placement:
    """Which tote each parcel went into, and the totes that closed on the way."""

    tote_of: dict[str, str]
    closed: list[tuple[str, CloseReason]]


# ---- filling ----------------------------------------------------------------------------


def _overflow(
    tote: ToteSnapshot, parcel: ParcelProfile, rules: ConsolidationRules
) -> CloseReason | None:
    """The rule the parcel would break by going into ``tote``, if any."""
    if tote.items + 1 > rules.max_items:
        return CloseReason.COUNT
    if tote.weight_kg + parcel.weight_kg > rules.max_weight_kg:
        return CloseReason.WEIGHT
    if tote.volume_l + parcel.volume_l > rules.max_volume_l:
        return CloseReason.VOLUME
    return None


def _full(tote: ToteSnapshot, rules: ConsolidationRules) -> CloseReason | None:
    """A tote that has reached a limit closes now rather than wait for a parcel that
    cannot fit."""
    if tote.items >= rules.max_items:
        return CloseReason.COUNT
    if tote.weight_kg >= rules.max_weight_kg:
        return CloseReason.WEIGHT
    if tote.volume_l >= rules.max_volume_l:
        return CloseReason.VOLUME
    return None


def _fresh_tote(store: str, now: float) -> ToteSnapshot:
    return ToteSnapshot("tote-" + new_id(), store, 0, 0.0, 0.0, now)


@dataclass(frozen=True)
class Packing:
    """A store's parcels packed: the totes they went into (in order, each but the last
    closed on the way), which tote each parcel went into, and the totes that closed."""

    totes: list[ToteSnapshot]
    tote_of: dict[str, str]
    closed: list[tuple[str, CloseReason]]


def pack(
    tote: ToteSnapshot, parcels: Iterable[Parcel], rules: ConsolidationRules, now: float
) -> Packing:
    """Put parcels into ``tote`` in order, closing it and opening the next (at ``now``)
    whenever a parcel would not fit; the last tote closes too if it has reached a limit."""
    totes = [tote]
    tote_of: dict[str, str] = {}
    closed: list[tuple[str, CloseReason]] = []
    for parcel in parcels:
        profile = rules.profile(parcel.size)
        reason = _overflow(tote, profile, rules) if tote.items else None
        if reason is not None:
            closed.append((tote.tote_id, reason))
            tote = _fresh_tote(tote.store, now)
            totes.append(tote)
        tote.items += 1
        tote.weight_kg += profile.weight_kg
        tote.volume_l += profile.volume_l
        tote_of[parcel.return_id] = tote.tote_id
    full = _full(tote, rules)
    if full is not None:
        closed.append((tote.tote_id, full))
    return Packing(totes, tote_of, closed)


async def add_to_totes(
    tx: Transaction, store: str, parcels: Sequence[Parcel], rules: ConsolidationRules
) -> Placement:
    """Put a store's newly dropped-off parcels into its open tote, closing it (and opening
    the next) whenever a parcel would not fit. One tote row is locked per store."""
    now = time.time()
    current = await _open_tote(tx, store, now)
    packing = pack(current, parcels, rules, now)
    reasons = dict(packing.closed)
    # In order, each closed before the next is inserted: a store has one open tote.
    for tote in packing.totes:
        if tote is current:
            await _save(tx, tote)
        else:
            await _insert(tx, tote)
        if tote.tote_id in reasons:
            await close(tx, tote.tote_id, reasons[tote.tote_id])
    return Placement(packing.tote_of, packing.closed)


async def _open_tote(tx: Transaction, store: str, now: float) -> ToteSnapshot:
    """The store's open tote, locked; opened first if there is none. Two replicas may open
    one at once: the second insert does nothing (one open tote per store) and both go on
    with the one that committed."""
    select = (
        "SELECT id, item_count, weight_kg, volume_l, opened_at FROM totes "
        "WHERE store = ? AND state = 'open'" + tx.for_update()
    )
    row = await tx.fetchone(select, (store,))
    if row is None:
        await tx.execute(
            "INSERT INTO totes (id, store, state, opened_at) VALUES (?, ?, 'open', ?) "
            "ON CONFLICT DO NOTHING",
            (_fresh_tote(store, now).tote_id, store, now),
        )
        row = await tx.fetchone(select, (store,))
        assert row is not None, "an open tote exists after the insert"
    return ToteSnapshot(str(row[0]), store, int(row[1]), float(row[2]), float(row[3]), row[4])


async def _insert(tx: Transaction, tote: ToteSnapshot) -> None:
    await tx.execute(
        "INSERT INTO totes (id, store, state, opened_at, item_count, weight_kg, volume_l) "
        "VALUES (?, ?, 'open', ?, ?, ?, ?)",
        (tote.tote_id, tote.store, tote.opened_at, tote.items, tote.weight_kg, tote.volume_l),
    )


async def _save(tx: Transaction, tote: ToteSnapshot) -> None:
    await tx.execute(
        "UPDATE totes SET item_count = ?, weight_kg = ?, volume_l = ? WHERE id = ?",
        (tote.items, tote.weight_kg, tote.volume_l, tote.tote_id),
    )


async def close(tx: Transaction, tote_id: str, reason: CloseReason) -> bool:
    """Close an open tote so it gets booked; False if it was not open (or was empty)."""
    changed = await tx.execute(
        "UPDATE totes SET state = 'closed', closed_at = ?, close_reason = ? "
        "WHERE id = ? AND state = 'open' AND item_count > 0",
        (time.time(), reason.value, tote_id),
    )
    return changed == 1


async def seal(tx: Transaction, store: str) -> str | None:
    """A clerk sealed the store's tote: close it now. Returns its id, or None when the
    store has no open tote with anything in it."""
    row = await tx.fetchone(
        "SELECT id FROM totes WHERE store = ? AND state = 'open' AND item_count > 0"
        + tx.for_update(),
        (store,),
    )
    if row is None or not await close(tx, str(row[0]), CloseReason.SEAL):
        return None
    return str(row[0])


# ---- the timed rules ---------------------------------------------------------------------


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def last_cutoff(rules: ConsolidationRules, now: float) -> float | None:
    """The most recent daily cutoff at or before ``now`` (store-local time)."""
    if rules.daily_cutoff is None:
        return None
    hour, minute = (int(part) for part in rules.daily_cutoff.split(":"))
    local = datetime.fromtimestamp(now, _zone(rules.timezone))
    cutoff = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if cutoff > local:
        cutoff -= timedelta(days=1)
    return cutoff.timestamp()


def _shipping(cost: ToteCost, weight_kg: float) -> float:
    return cost.ship_base + cost.ship_per_kg * weight_kg


def waiting_costs_more(tote: ToteSnapshot, cost: ToteCost, now: float) -> bool:
    """True when another hour of waiting would save less shipping than it costs.

    The tote's own fill rate estimates how many parcels the next hour brings; each would
    lower the per-parcel share of the tote's fixed shipping cost. Against that saving stands
    an hour of holding every parcel already waiting.
    """
    age_h = (now - tote.opened_at) / 3600
    if tote.items == 0 or now - tote.opened_at < cost.min_wait_s:
        return False
    arrivals = (tote.items - 1) / age_h if age_h > 0 else 0.0
    mean_kg = tote.weight_kg / tote.items
    per_item_now = _shipping(cost, tote.weight_kg) / tote.items
    later = tote.items + arrivals
    per_item_later = _shipping(cost, tote.weight_kg + arrivals * mean_kg) / later
    saving = tote.items * (per_item_now - per_item_later)
    return saving < tote.items * cost.holding_per_item_hour


def plan(
    totes: Iterable[ToteSnapshot], rules: ConsolidationRules, now: float
) -> list[tuple[str, CloseReason]]:
    """The open totes that should close now, and why (the first rule that fires)."""
    cutoff = last_cutoff(rules, now)
    due: list[tuple[str, CloseReason]] = []
    for tote in totes:
        if tote.items == 0:
            continue
        reason = _full(tote, rules)
        if reason is None and now - tote.opened_at >= rules.max_age_s:
            reason = CloseReason.AGE
        if reason is None and cutoff is not None and tote.opened_at < cutoff:
            reason = CloseReason.CUTOFF
        if reason is None and rules.cost is not None and waiting_costs_more(tote, rules.cost, now):
            reason = CloseReason.COST
        if reason is not None:
            due.append((tote.tote_id, reason))
    return due


async def open_totes(tx: Transaction) -> list[ToteSnapshot]:
    """Every non-empty open tote."""
    rows = await tx.fetchall(
        "SELECT id, store, item_count, weight_kg, volume_l, opened_at FROM totes "
        "WHERE state = 'open' AND item_count > 0"
    )
    return [
        ToteSnapshot(str(r[0]), str(r[1]), int(r[2]), float(r[3]), float(r[4]), float(r[5]))
        for r in rows
    ]


async def close_due(
    tx: Transaction, rules: ConsolidationRules, now: float | None = None
) -> list[tuple[str, CloseReason]]:
    """Close every open tote a timed rule says should go; returns them with the reason.

    Several replicas may run this at once: each closes only totes still open, so a tote is
    closed once whoever gets there first.
    """
    moment = time.time() if now is None else now
    due = plan(await open_totes(tx), rules, moment)
    still_open: set[str] = set()
    for start in range(0, len(due), 500):
        chunk = [tote_id for tote_id, _ in due[start : start + 500]]
        rows = await tx.fetchall(
            f"SELECT id FROM totes WHERE state = 'open' AND id IN ({placeholders(len(chunk))}) "
            "ORDER BY id" + tx.for_update(),
            chunk,
        )
        still_open.update(str(r[0]) for r in rows)
    closing = [(tote_id, reason) for tote_id, reason in due if tote_id in still_open]
    await tx.executemany(
        "UPDATE totes SET state = 'closed', closed_at = ?, close_reason = ? WHERE id = ?",
        [(moment, reason.value, tote_id) for tote_id, reason in closing],
    )
    return closing
