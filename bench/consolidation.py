"""Consolidation: packing a chain's open returns into totes and planning which totes ship.

100,000 returns across 5,000 stores (sizes S/M/L/XL at 40/35/20/5 %) go through the
planner's two pure steps in ``gateway/consolidation.py``: :func:`pack` puts each store's
parcels into totes (closing a tote when the next parcel would break the item, weight or
volume limit), and :func:`plan` decides which of the open totes that remain should close
now (full, age, daily cutoff, cost). The open totes' opening times are spread over the last
30 hours so that every timed rule has work. Then the same rows go into a real SQLite
database (gateway schema) and :func:`close_due`, the timer's call, closes the due totes in
one transaction.

Run: ``python bench/consolidation.py [--returns 100000] [--stores 5000]``; the last line is
one JSON object.
"""

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe
from bench.seed import seed
from gateway.config import ConsolidationRules
from gateway.consolidation import Packing, Parcel, ToteSnapshot, close_due, pack, plan
from gateway.database import open_database

SIZES = ("S", "M", "L", "XL")
SIZE_WEIGHTS = (40, 35, 20, 5)
NOW = 1_794_967_200.0  # 2026-11-18 10:00 in Shanghai: fixed, so runs plan alike
REPEATS = 5


def _parcels(returns: int, stores: int, rng: random.Random) -> dict[str, list[Parcel]]:
    by_store: dict[str, list[Parcel]] = {f"store-{i:05d}": [] for i in range(stores)}
    names = list(by_store)
    sizes = rng.choices(SIZES, SIZE_WEIGHTS, k=returns)
    for i, size in enumerate(sizes):
        by_store[names[rng.randrange(stores)]].append(Parcel(f"ret-{i:07d}", size))
    return by_store


def _pack_all(by_store: dict[str, list[Parcel]], rules: ConsolidationRules) -> list[Packing]:
    return [
        pack(ToteSnapshot(f"tote-{store}-0", store, 0, 0.0, 0.0, NOW), parcels, rules, NOW)
        for store, parcels in by_store.items()
    ]


def _open_totes(packings: list[Packing], rng: random.Random) -> list[ToteSnapshot]:
    closed = {tote_id for p in packings for tote_id, _ in p.closed}
    open_ = [t for p in packings for t in p.totes if t.tote_id not in closed and t.items]
    for tote in open_:
        tote.opened_at = NOW - rng.uniform(0, 30 * 3600)
    return open_


async def _close_due_on_sqlite(
    packings: list[Packing], totes: list[ToteSnapshot], rules: ConsolidationRules, path: Path
) -> tuple[float, float, int]:
    """Load the packed rows into a fresh gateway database; time one ``close_due``."""
    started = time.perf_counter()
    db = await open_database(path)
    try:
        closed = {tote_id: reason for p in packings for tote_id, reason in p.closed}
        open_at = {t.tote_id: t.opened_at for t in totes}
        async with db.transaction() as tx:
            await seed(tx, [p.totes[0].store for p in packings])
            await tx.executemany(
                "INSERT INTO totes (id, store, state, item_count, weight_kg, volume_l, opened_at,"
                " closed_at, close_reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        t.tote_id,
                        t.store,
                        "closed" if t.tote_id in closed else "open",
                        t.items,
                        t.weight_kg,
                        t.volume_l,
                        open_at.get(t.tote_id, NOW),
                        NOW if t.tote_id in closed else None,
                        closed.get(t.tote_id),
                    )
                    for p in packings
                    for t in p.totes
                    if t.items
                ],
            )
            await tx.executemany(
                "INSERT INTO returns (id, merchant, order_id, items, item_count, reason, "
                "amount_minor, currency, method, size, stores, customer, state, short_code, "
                "voucher, expires_at, store, tote_id, created_at, updated_at) "
                "VALUES (?, 'acme', ?, '[]', 1, 'bench', 1999, 'CNY', 'locker', 'M', '[]', "
                "'{}', 'in_tote', ?, '', ?, ?, ?, ?, ?)",
                [
                    (rid, rid, rid, NOW + 86_400, p.totes[0].store, tote_id, NOW, NOW)
                    for p in packings
                    for rid, tote_id in p.tote_of.items()
                ],
            )
        loaded = time.perf_counter() - started
        started = time.perf_counter()
        async with db.transaction() as tx:
            closing = await close_due(tx, rules, NOW)
        return loaded, time.perf_counter() - started, len(closing)
    finally:
        await db.close()


async def run(returns: int, stores: int, seed: int) -> dict[str, object]:
    rules = ConsolidationRules()
    by_store = _parcels(returns, stores, random.Random(seed))
    pack_times, plan_times = [], []
    for _ in range(REPEATS):
        started = time.perf_counter()
        packings = _pack_all(by_store, rules)
        pack_times.append(time.perf_counter() - started)
        totes = _open_totes(packings, random.Random(seed))
        started = time.perf_counter()
        due = plan(totes, rules, NOW)
        plan_times.append(time.perf_counter() - started)
    reasons = Counter(reason.value for _, reason in due)
    with tempfile.TemporaryDirectory(prefix="dropline-bench-") as tmp:
        loaded_s, close_due_s, closed_in_db = await _close_due_on_sqlite(
            packings, totes, rules, Path(tmp) / "gateway.sqlite3"
        )
    if closed_in_db != len(due):
        raise SystemExit(f"close_due closed {closed_in_db} totes, plan said {len(due)}")
    total = min(pack_times) + min(plan_times)
    return {
        "returns": returns,
        "stores": stores,
        "rules": {
            "max_items": rules.max_items,
            "max_weight_kg": rules.max_weight_kg,
            "max_volume_l": rules.max_volume_l,
            "daily_cutoff": rules.daily_cutoff,
        },
        "totes_closed_while_packing": sum(len(p.closed) for p in packings),
        "totes_open": len(totes),
        "totes_due": len(due),
        "due_by_reason": dict(sorted(reasons.items())),
        "pack_seconds": round(min(pack_times), 4),
        "pack_median_seconds": round(statistics.median(pack_times), 4),
        "plan_seconds": round(min(plan_times), 4),
        "plan_median_seconds": round(statistics.median(plan_times), 4),
        "planning_seconds": round(total, 4),
        "returns_planned_per_s": round(returns / total),
        "sqlite_load_seconds": round(loaded_s, 2),
        "close_due_sqlite_seconds": round(close_due_s, 4),
        "machine": describe(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--returns", type=int, default=100_000)
    parser.add_argument("--stores", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.returns, args.stores, args.seed))))


if __name__ == "__main__":
    main()
