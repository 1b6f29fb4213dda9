"""Applying stored drop-offs, in process: the CPU the gateway spends behind its acks.

    python bench/apply.py [--kiosks 40] [--events 500] [--batch 500]
                          [--postgres postgresql://postgres@127.0.0.1:5432/test]
                          [--skip-postgres] [--skip-sqlite] [--profile FILE]

For each backend, a fresh database (a SQLite file in a temporary directory; PostgreSQL on a
private schema, dropped afterwards) gets two merchants (one refunding on drop-off, one on
receipt), each with a webhook endpoint, stores whose totes never close, and every planned
return seeded ``authorized`` with a customer reachable by e-mail and SMS. The gateway's
:class:`~gateway.ingest.Ingest` with the real handlers (as ``gateway/service.py`` wires
them) stores the kiosks' drop-offs through :meth:`~gateway.ingest.Ingest.handle`; then
``apply_stored(batch)`` is timed until everything is applied: events/s (wall clock) and
CPU µs per event (this process; the PostgreSQL server's own CPU is not counted). The last
line is one JSON object.
"""

import argparse
import asyncio
import cProfile
import json
import secrets
import sys
import tempfile
import time
from itertools import zip_longest
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import ingest as ingest_bench
from bench.ingest import NEVER_CLOSE, drop_schema
from bench.machine import describe
from gateway import commands, kiosk_flows, refunds, webhooks
from gateway.config import MerchantSettings, RefundPolicy
from gateway.database import Database, open_database
from gateway.dropoffs import DropoffDesk
from gateway.faults import FaultLog
from gateway.ingest import Ingest
from protocol.ids import uuid7
from simulator.kiosk_load import KioskPlan, prepare

MERCHANTS = [
    MerchantSettings(id="quick", name="Quick", refund_policy=RefundPolicy.ON_DROPOFF),
    MerchantSettings(id="acme", name="ACME", refund_policy=RefundPolicy.ON_RECEIPT),
]
KIOSKS_PER_STORE = 4
STORE_BATCH = 500  # messages per Ingest.handle, as the MQTT link hands them over


def plans(kiosks: int, events: int) -> list[KioskPlan]:
    """Each kiosk's returns; kiosks alternate between the two merchants."""
    return [
        KioskPlan(
            store=f"s{k // KIOSKS_PER_STORE:04d}",
            device=f"k{k % KIOSKS_PER_STORE + 1}",
            merchant=MERCHANTS[k % len(MERCHANTS)].id,
            return_ids=[str(uuid7()) for _ in range(events)],
        )
        for k in range(kiosks)
    ]


async def seed(db: Database, kiosk_plans: list[KioskPlan]) -> None:
    """Merchants, their refund settings and webhook endpoints, stores, and the returns."""
    stores = sorted({p.store for p in kiosk_plans})
    async with db.transaction() as tx:
        await tx.executemany(
            "INSERT INTO merchants (id, name, refund_policy, currency) VALUES (?, ?, ?, ?)",
            [(m.id, m.name, m.refund_policy.value, m.currency) for m in MERCHANTS],
        )
        await tx.executemany(
            "INSERT INTO stores (id, name) VALUES (?, ?)", [(s, s) for s in stores]
        )
    await refunds.configure(db, MERCHANTS)
    for m in MERCHANTS:
        await webhooks.register_endpoint(db, m.id, "http://127.0.0.1:9/hooks", [])
    await ingest_bench.seed(db, kiosk_plans, customer=_reachable)


def _reachable(n: int) -> dict[str, str]:
    """A customer with e-mail and phone: each drop-off queues two messages."""
    return {"name": "Bench", "email": f"b{n}@example.test", "phone": f"+86{n:09d}"}


def make_ingest(db: Database) -> Ingest:
    """The gateway's ingest with its real handlers (``Gateway._make_ingest``)."""
    ingest = Ingest(db)
    faults = FaultLog()
    ingest.on("dropoff", DropoffDesk(NEVER_CLOSE).apply)
    ingest.on("cmd_result", commands.record_results)
    ingest.on("fault", faults.record_faults)
    ingest.on("scan_rejected", faults.count_rejections)
    for event_type in kiosk_flows.EVENT_TYPES | kiosk_flows.LIVE_TYPES:
        ingest.on(event_type, kiosk_flows.apply_all)
    return ingest


async def store_all(ingest: Ingest, kiosk_plans: list[KioskPlan]) -> int:
    """Store every kiosk's drop-offs, the kiosks' streams interleaved as a broker would."""
    streams = [prepare(p) for p in kiosk_plans]
    messages = [
        (topic, payload)
        for round_ in zip_longest(*streams)
        for event in round_
        if event is not None
        for _, topic, payload in [event]
    ]
    stored = 0
    for start in range(0, len(messages), STORE_BATCH):
        stored += (await ingest.handle(messages[start : start + STORE_BATCH])).new
    return stored


async def apply_all(ingest: Ingest, batch: int, profile: cProfile.Profile | None) -> int:
    applied = 0
    if profile is not None:
        profile.enable()
    try:
        while (result := await ingest.apply_stored(batch)).taken:
            applied += result.taken
    finally:
        if profile is not None:
            profile.disable()
    return applied


async def check(db: Database, events: int) -> dict[str, int]:
    """What applying left behind, to see that the work was done."""
    counts = {}
    for name, sql in {
        "in_tote": "SELECT count(*) FROM returns WHERE state = 'in_tote'",
        "history": "SELECT count(*) FROM return_history",
        "webhook_events": "SELECT count(*) FROM webhook_events",
        "deliveries": "SELECT count(*) FROM webhook_deliveries",
        "notifications": "SELECT count(*) FROM notifications",
        "refunds": "SELECT count(*) FROM refunds",
        "tote_items": "SELECT coalesce(sum(item_count), 0) FROM totes",
    }.items():
        row = await db.fetchone(sql)
        counts[name] = int(row[0]) if row else 0
    assert counts["in_tote"] == events, counts
    return counts


async def case(name: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    """One backend, on a fresh database."""
    kiosk_plans = plans(args.kiosks, args.events)
    db = await open_database(url)
    try:
        await seed(db, kiosk_plans)
        ingest = make_ingest(db)
        stored = await store_all(ingest, kiosk_plans)
        profile = cProfile.Profile() if args.profile else None
        wall, cpu = time.perf_counter(), time.process_time()
        applied = await apply_all(ingest, args.batch, profile)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        counts = await check(db, stored)
    finally:
        await db.close()
    if profile is not None:
        profile.dump_stats(f"{args.profile}.{name}")
    result = {
        f"{name}_apply_per_s": round(applied / wall),
        f"{name}_apply_cpu_us_per_event": round(cpu / applied * 1e6, 1),
        f"{name}_applied": applied,
    }
    print(f"{name}: {result} {counts}", flush=True)
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kiosks", type=int, default=40)
    parser.add_argument("--events", type=int, default=500, help="drop-offs per kiosk")
    parser.add_argument("--batch", type=int, default=500, help="apply_stored's limit")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--profile", help="write cProfile stats to FILE.<backend>")
    args = parser.parse_args()
    out: dict[str, Any] = {"machine": describe(), "events": args.kiosks * args.events}
    if not args.skip_sqlite:
        with tempfile.TemporaryDirectory(prefix="dropline-apply-") as workdir:
            out |= await case("sqlite", str(Path(workdir) / "gateway.sqlite3"), args)
    if not args.skip_postgres:
        url = f"{args.postgres}?schema=bench_{secrets.token_hex(4)}"
        try:
            out |= await case("postgresql", url, args)
        finally:
            await drop_schema(url)
    print(json.dumps(out, ensure_ascii=False))


if __name__ == "__main__":
    asyncio.run(main())
