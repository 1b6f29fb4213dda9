"""The gateway's side of the kiosk flows of issue 3: pickups, tote seals, compartment service,
clerk credentials and the kiosks' offline lists (typed short codes, pickup codes).

Kept apart from the ingest core: :func:`apply` is called for the event types in
:data:`EVENT_TYPES` inside ingest's transaction, and everything it sends a kiosk is a row in
the command outbox (DESIGN §5 rule 6), published after that transaction commits and never
retained. SQL is in the dialect SQLite and PostgreSQL share.
"""

import json
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from gateway import commands, consolidation, pickup_parcels
from gateway.database import Database, Transaction
from protocol import clerks, shortcode
from protocol.envelope import Envelope
from protocol.ids import new_id
from protocol.messages import (
    ClerkCredential,
    CodeLookup,
    CompartmentService,
    Inventory,
    ParcelLoaded,
    Pickup,
    PickupCode,
    PickupEntry,
    ServiceAction,
    Sync,
    ToteSealed,
    VoucherCode,
)

log = logging.getLogger(__name__)


EVENT_TYPES = frozenset({"parcel_loaded", "pickup", "tote_sealed", "service", "inventory"})
"""Kiosk events handled here (``code_lookup`` too, see :data:`LIVE_TYPES`)."""

LIVE_TYPES = frozenset({"code_lookup"})
"""Requests a kiosk publishes live, not from its outbox."""

PICKUP_HOLD_S = 7 * 86_400
"""How long a parcel waits for its customer before it is overdue."""

COMMAND_TTL_S = 3600.0
SYNC_CHUNK = 200
SYNC_LAG_S = 5.0
"""Vouchers are synced once they are this old, so that a return whose transaction was still
open when its ``created_at`` was stamped is not skipped."""


async def apply_all(tx: Transaction, events: Sequence[Envelope[Any]]) -> bool:
    """The ingest handler for these types: :func:`apply` each event, in order."""
    work = False
    for m in events:
        work |= await apply(tx, m)
    return work


async def apply(tx: Transaction, m: Envelope[Any]) -> bool:
    """Apply one kiosk event of :data:`EVENT_TYPES` or :data:`LIVE_TYPES`; True when it made
    work for the gateway's timers (a tote to book, a command to send)."""
    body = m.body
    if isinstance(body, ParcelLoaded):
        return await _parcel_loaded(tx, m.store, m.device, str(m.id), body)
    if isinstance(body, Pickup):
        await tx.execute(
            "UPDATE pickups SET state = 'picked_up', picked_up_at = ? "
            "WHERE parcel_id = ? AND store = ? AND state = 'loaded'",
            (body.picked_up_at, body.parcel_id, m.store),
        )
        await _compartment(tx, m.store, m.device, body.compartment, occupied_by=None)
        return False
    if isinstance(body, ToteSealed):
        return await _seal(tx, m.store, body)
    if isinstance(body, CompartmentService):
        return await _service(tx, m.store, m.device, body)
    if isinstance(body, Inventory):
        for c in body.compartments:
            await _compartment(
                tx, m.store, m.device, c.id, occupied_by=c.occupied_by, size=c.size,
                out_of_order=c.out_of_order,
            )  # fmt: skip
        return False
    if isinstance(body, CodeLookup):
        return await _lookup(tx, m.store, m.device, body.short_code)
    return False


# ---- pickups ------------------------------------------------------------------------------


async def _parcel_loaded(
    tx: Transaction, store: str, device: str, event_id: str, body: ParcelLoaded
) -> bool:
    code = shortcode.new_short_code()
    valid_until = body.loaded_at + PICKUP_HOLD_S
    await tx.execute(
        "INSERT INTO pickups (parcel_id, store, device, compartment, size, loaded_by, state, "
        "code, loaded_at, valid_until, load_event) VALUES (?, ?, ?, ?, ?, ?, 'loaded', ?, ?, ?, ?) "
        "ON CONFLICT (parcel_id) DO UPDATE SET store = excluded.store, device = excluded.device, "
        "compartment = excluded.compartment, size = excluded.size, "
        "loaded_by = excluded.loaded_by, state = 'loaded', code = excluded.code, "
        "loaded_at = excluded.loaded_at, valid_until = excluded.valid_until, "
        "picked_up_at = NULL, load_event = excluded.load_event",
        (body.parcel_id, store, device, body.compartment, body.size, body.loaded_by, code,
         body.loaded_at, valid_until, event_id),
    )  # fmt: skip
    await _compartment(tx, store, device, body.compartment, occupied_by=body.parcel_id)
    command_id = new_id()
    await commands.enqueue(
        tx,
        store=store,
        device=device,
        command_id=command_id,
        body=PickupCode(
            command_id=command_id,
            expires_at=time.time() + COMMAND_TTL_S * 24,
            parcel_id=body.parcel_id,
            compartment=body.compartment,
            code_sha256=shortcode.digest(code),
            valid_until=valid_until,
        ),
    )
    # The customer learns the code from us (the kiosk only ever gets its hash).
    await pickup_parcels.parcel_loaded(tx, body.parcel_id, time.time())
    log.info("parcel %s in %s/%s %s: pickup code issued", body.parcel_id, store, device,
             body.compartment)  # fmt: skip
    return True


async def pickup_view(db: Database, parcel_id: str) -> dict[str, Any] | None:
    """A pickup parcel: where it is, its code, whether overdue, and whose it is (the merchant
    and order, when registered: ``gateway/pickup_parcels.py``)."""
    row = await db.fetchone(
        "SELECT p.parcel_id, p.store, p.device, p.compartment, p.size, p.loaded_by, p.state, "
        "p.code, p.loaded_at, p.valid_until, p.picked_up_at, r.merchant, r.order_id "
        "FROM pickups p LEFT JOIN pickup_parcels r ON r.parcel_id = p.parcel_id "
        "WHERE p.parcel_id = ?",
        (parcel_id,),
    )
    if row is None:
        return None
    return {**_pickup_json(row[:11], time.time()), "merchant": row[11], "order_id": row[12]}


async def overdue(
    db: Database, store: str | None, now: float | None = None
) -> list[dict[str, Any]]:
    """Parcels still in a locker after their pickup period: the clerk takes them out."""
    # No "? IS NULL" trick: PostgreSQL cannot type a parameter that is only compared to NULL.
    by_store, args = ("AND store = ? ", (store,)) if store is not None else ("", ())
    rows = await db.fetchall(
        "SELECT parcel_id, store, device, compartment, size, loaded_by, state, code, loaded_at, "
        "valid_until, picked_up_at FROM pickups WHERE state = 'loaded' AND valid_until < ? "
        f"{by_store}ORDER BY valid_until",
        (now or time.time(), *args),
    )
    return [_pickup_json(r, now or time.time()) for r in rows]


def _pickup_json(row: tuple[Any, ...], now: float) -> dict[str, Any]:
    (parcel, store, device, compartment, size, by, state, code, loaded_at, valid_until,
     picked_up_at) = row  # fmt: skip
    return {
        "parcel_id": parcel,
        "store": store,
        "device": device,
        "compartment": compartment,
        "size": size,
        "loaded_by": by,
        "state": state,
        "pickup_code": shortcode.display(str(code)),
        "pickup_qr_text": shortcode.PICKUP_PREFIX + str(code),
        "loaded_at": loaded_at,
        "valid_until": valid_until,
        "picked_up_at": picked_up_at,
        "overdue": state == "loaded" and float(valid_until) < now,
    }


# ---- totes and compartments -----------------------------------------------------------------


async def _seal(tx: Transaction, store: str, body: ToteSealed) -> bool:
    row = await tx.fetchone(
        "SELECT id, item_count FROM totes WHERE store = ? AND state = 'open'", (store,)
    )
    if row is None or int(row[1]) == 0:
        log.info("clerk %s sealed an empty tote at %s: nothing to ship", body.clerk, store)
        return False
    closed = await consolidation.close(tx, str(row[0]), consolidation.CloseReason.SEAL)
    log.info("clerk %s sealed tote %s at %s", body.clerk, row[0], store)
    return closed


async def _service(tx: Transaction, store: str, device: str, body: CompartmentService) -> bool:
    if body.action in (ServiceAction.OUT_OF_ORDER, ServiceAction.BACK_IN_SERVICE):
        await _compartment(
            tx, store, device, body.compartment,
            out_of_order=body.action is ServiceAction.OUT_OF_ORDER,
        )  # fmt: skip
    elif body.action is ServiceAction.EMPTIED:
        await _compartment(tx, store, device, body.compartment, occupied_by=None)
        if body.removed:
            await tx.execute(
                "UPDATE pickups SET state = 'removed' WHERE parcel_id = ? AND state = 'loaded'",
                (body.removed,),
            )
    return False


_UNSET: Any = object()


async def _compartment(
    tx: Transaction,
    store: str,
    device: str,
    compartment: str,
    *,
    occupied_by: str | None = _UNSET,
    size: str | None = None,
    out_of_order: bool | None = None,
) -> None:
    await tx.execute(
        "INSERT INTO kiosk_compartments (store, device, compartment, updated_at) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (store, device, compartment) DO NOTHING",
        (store, device, compartment, time.time()),
    )
    sets: list[str] = ["updated_at = ?"]
    params: list[Any] = [time.time()]
    if occupied_by is not _UNSET:
        sets.append("occupied_by = ?")
        params.append(occupied_by)
    if size is not None:
        sets.append("size = ?")
        params.append(size)
    if out_of_order is not None:
        sets.append("out_of_order = ?")
        params.append(int(out_of_order))
    await tx.execute(
        f"UPDATE kiosk_compartments SET {', '.join(sets)} "
        "WHERE store = ? AND device = ? AND compartment = ?",
        (*params, store, device, compartment),
    )


async def compartments_view(db: Database, store: str) -> list[dict[str, Any]]:
    """Every compartment the store's kiosks reported, for the operator."""
    rows = await db.fetchall(
        "SELECT device, compartment, size, occupied_by, out_of_order, updated_at "
        "FROM kiosk_compartments WHERE store = ? ORDER BY device, compartment",
        (store,),
    )
    keys = ("device", "compartment", "size", "occupied_by", "out_of_order", "updated_at")
    return [dict(zip(keys, (*r[:4], bool(r[4]), r[5]), strict=True)) for r in rows]


# ---- short codes --------------------------------------------------------------------------


async def _lookup(tx: Transaction, store: str, device: str, code: str) -> bool:
    row = await tx.fetchone(
        "SELECT short_code, voucher, stores FROM returns WHERE short_code = ? "
        "AND state = 'authorized' AND expires_at > ?",
        (code, time.time()),
    )
    usable = row is not None and (not json.loads(row[2]) or store in json.loads(row[2]))
    command_id = new_id()
    body = Sync(
        command_id=command_id,
        expires_at=time.time() + 60,
        vouchers=[VoucherCode(short_code=code, token=str(row[1]))] if usable and row else [],
        not_found=[] if usable else [code],
    )
    await commands.enqueue(tx, store=store, device=device, command_id=command_id, body=body)
    return True


async def sync_due(db: Database) -> int:
    """Send each online kiosk the short codes of vouchers scoped to its store that it lacks
    (all of them after a restart of the kiosk, new ones otherwise) and, after a restart, its
    pickup codes. Returns how many ``sync`` commands were queued.

    One query finds the new vouchers of every store, however many kiosks are online (it ran
    once per kiosk, which held the writer for seconds at a thousand kiosks: bench/fleet.py).
    """
    now = time.time() - SYNC_LAG_S
    queued = 0
    async with db.transaction() as tx:
        rows = await tx.fetchall(
            "SELECT p.store, p.device, p.session, s.session, s.synced_until "
            "FROM device_presence p LEFT JOIN voucher_sync s "
            "ON s.store = p.store AND s.device = p.device WHERE p.online = 1"
            + tx.for_update(of="p", skip_locked=True)  # replicas sync different kiosks
        )
        if not rows:
            return 0
        devices = []  # (store, device, session, fresh: a new session, synced since)
        for store, device, session, synced_session, synced_until in rows:
            fresh = synced_session is None or int(synced_session) != int(session)
            since = 0.0 if fresh else float(synced_until)
            devices.append((str(store), str(device), int(session), fresh, since))
        new = await _new_vouchers(tx, min(d[4] for d in devices), now)
        for store, device, _, fresh, since in devices:
            vouchers = [code for created, code in new.get(store, ()) if created >= since]
            if vouchers or fresh:
                queued += await _sync_device(tx, store, device, vouchers, fresh, now)
        await tx.executemany(
            "INSERT INTO voucher_sync (store, device, session, synced_until) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (store, device) DO UPDATE SET "
            "session = excluded.session, synced_until = excluded.synced_until",
            [(store, device, session, now) for store, device, session, _, _ in devices],
        )
    return queued


async def _new_vouchers(
    tx: Transaction, since: float, now: float
) -> dict[str, list[tuple[float, VoucherCode]]]:
    """Store-scoped vouchers of returns authorized in ``[since, now)``, by store, oldest
    first, with the time they were authorized."""
    rows = await tx.fetchall(
        # updated_at: when it became authorized (at creation, or when approved in review).
        "SELECT short_code, voucher, stores, updated_at FROM returns WHERE state = 'authorized' "
        "AND expires_at > ? AND updated_at >= ? AND updated_at < ? AND stores != '[]' "
        "ORDER BY updated_at",
        (now + SYNC_LAG_S, since, now),
    )
    by_store: dict[str, list[tuple[float, VoucherCode]]] = defaultdict(list)
    for code, token, stores, authorized_at in rows:
        entry = (float(authorized_at), VoucherCode(short_code=str(code), token=str(token)))
        for store in json.loads(stores):
            by_store[store].append(entry)
    return by_store


async def _sync_device(
    tx: Transaction,
    store: str,
    device: str,
    vouchers: list[VoucherCode],
    fresh: bool,
    now: float,
) -> int:
    pickups: list[PickupEntry] = []
    if fresh:
        loaded = await tx.fetchall(
            "SELECT parcel_id, compartment, code, valid_until FROM pickups "
            "WHERE store = ? AND device = ? AND state = 'loaded'",
            (store, device),
        )
        pickups = [
            PickupEntry(
                parcel_id=str(p), compartment=str(c), code_sha256=shortcode.digest(str(code)),
                valid_until=float(v),
            )
            for p, c, code, v in loaded
        ]  # fmt: skip
    queued = 0
    # A new session gets at least one sync, empty or not: it asks for the kiosk's inventory.
    for start in range(0, max(len(vouchers), len(pickups), int(fresh)), SYNC_CHUNK):
        command_id = new_id()
        body = Sync(
            command_id=command_id,
            expires_at=now + COMMAND_TTL_S,
            vouchers=vouchers[start : start + SYNC_CHUNK],
            pickups=pickups[start : start + SYNC_CHUNK],
            inventory=fresh and start == 0,
        )
        await commands.enqueue(tx, store=store, device=device, command_id=command_id, body=body)
        queued += 1
    return queued


# ---- clerks -------------------------------------------------------------------------------


class ClerkConflictError(ValueError):
    """Another clerk of the store already has this badge or PIN."""


async def store_salt(tx: Transaction, store: str) -> str:
    """The store's clerk salt, created on first use."""
    row = await tx.fetchone("SELECT clerk_salt FROM store_secrets WHERE store = ?", (store,))
    if row is not None:
        return str(row[0])
    salt = clerks.new_salt()
    await tx.execute(
        "INSERT INTO store_secrets (store, clerk_salt) VALUES (?, ?) ON CONFLICT DO NOTHING",
        (store, salt),
    )
    return salt


async def put_clerk(
    db: Database,
    store: str,
    clerk: str,
    *,
    name: str,
    role: str,
    badge: str | None,
    pin: str | None,
) -> None:
    """Create or replace a clerk; badge and PIN are stored only as scrypt hashes."""
    if pin is not None:
        clerks.check_pin(pin)
    async with db.transaction() as tx:
        salt = await store_salt(tx, store)
        badge_hash = None if badge is None else clerks.secret_hash(salt, "badge", badge)
        pin_hash = None if pin is None else clerks.secret_hash(salt, "pin", pin)
        for column, value in (("badge_hash", badge_hash), ("pin_hash", pin_hash)):
            if value is not None and await tx.fetchone(
                f"SELECT 1 FROM clerks WHERE store = ? AND id != ? AND {column} = ?",
                (store, clerk, value),
            ):
                raise ClerkConflictError(column.removesuffix("_hash"))
        await tx.execute(
            "INSERT INTO clerks (store, id, name, role, badge_hash, pin_hash, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (store, id) DO UPDATE SET "
            "name = excluded.name, role = excluded.role, badge_hash = excluded.badge_hash, "
            "pin_hash = excluded.pin_hash, updated_at = excluded.updated_at",
            (store, clerk, name, role, badge_hash, pin_hash, time.time()),
        )


async def delete_clerk(db: Database, store: str, clerk: str) -> bool:
    """Remove a clerk; False when there was none."""
    async with db.transaction() as tx:
        return await tx.execute("DELETE FROM clerks WHERE store = ? AND id = ?", (store, clerk)) > 0


async def config_extras(tx: Transaction, store: str) -> dict[str, Any]:
    """What the store config carries for clerk mode: the salt and the clerks' hashes."""
    rows = await tx.fetchall(
        "SELECT id, name, role, badge_hash, pin_hash FROM clerks WHERE store = ? ORDER BY id",
        (store,),
    )
    if not rows:
        return {}
    creds = [
        ClerkCredential(id=r[0], name=r[1], role=r[2], badge_hash=r[3], pin_hash=r[4]) for r in rows
    ]
    return {
        "clerk_salt": await store_salt(tx, store),
        "clerks": [c.model_dump() for c in creds],
    }
