"""The gateway's ``sync`` to kiosks (``gateway.kiosk_flows.sync_due``), on both databases."""

import json
import time

from gateway import kiosk_flows
from gateway.database import Database, open_database


async def _online(db: Database, store: str, device: str, session: int) -> None:
    async with db.transaction() as tx:
        await tx.execute(
            "INSERT INTO device_presence (store, device, online, session, version, seen_at) "
            "VALUES (?, ?, 1, ?, '1.0', ?) ON CONFLICT (store, device) DO UPDATE SET "
            "session = excluded.session",
            (store, device, session, time.time()),
        )


async def _syncs(db: Database) -> list[tuple[bool, int, int]]:
    rows = await db.fetchall("SELECT body FROM commands WHERE name = 'sync' ORDER BY created_at")
    bodies = [json.loads(str(body)) for (body,) in rows]
    return [(b["inventory"], len(b["vouchers"]), len(b["pickups"])) for b in bodies]


async def test_a_kiosk_starting_with_nothing_to_sync_is_asked_for_its_inventory(
    gateway_database: str,
) -> None:
    """A new session of a kiosk, with no voucher or pickup code for its store, still gets
    one ``sync`` asking for its inventory; the same session is not asked again, a restart
    (new session) is."""
    db = await open_database(gateway_database)
    try:
        await _online(db, "s1", "k1", session=1)
        assert await kiosk_flows.sync_due(db) == 1
        assert await kiosk_flows.sync_due(db) == 0
        await _online(db, "s1", "k1", session=2)
        assert await kiosk_flows.sync_due(db) == 1
        assert await _syncs(db) == [(True, 0, 0), (True, 0, 0)]
    finally:
        await db.close()
