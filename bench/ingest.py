"""Ingest benchmark: K simulated kiosks (each its own MQTT connection) publish drop-off
events at QoS 1 through a real Mosquitto; the gateway (``dropline gateway`` processes)
stores each, applies it and acks it after the commit.

    python bench/ingest.py [--kiosks 40] [--events 2000] [--window 100] [--workers 2]
                           [--postgres postgresql://postgres@127.0.0.1:5432/test]

Cases: SQLite with one replica, PostgreSQL with one and with two replicas (MQTT v5 shared
subscription), and the broker alone (the same payloads published and received by the
gateway's own MQTT link, paho-mqtt, with a handler that only counts). For each: durable
events/s (every event acked after its commit; first publish to last ack) and p50/p99 from
publish to ack at saturation, and applied events/s (first publish to the last event
applied: the gateway acks once an event is stored and applies it behind, ADR 0018). The
last line is one JSON object.

The returns the events drop off are seeded as ``authorized`` rows before each case; totes
are set never to close, so that what is measured is ingest (store, order, apply the
drop-off, add it to the tote, ack), not carrier bookings.
"""

import argparse
import asyncio
import json
import multiprocessing
import resource
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.synchronize import Barrier
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import cpu_seconds, cpu_seconds_named, cpu_spent, describe
from dropline.broker import MosquittoBroker, free_port
from dropline.gateway_process import GatewayProcess
from gateway.config import (
    AddressSettings,
    ApiSettings,
    BrokerSettings,
    ConsolidationRules,
    GatewayConfig,
    KdniaoSettings,
    MerchantSettings,
    RefundPolicy,
    StoreSettings,
    StripeSettings,
)
from gateway.database import Database, open_database
from gateway.mqtt import GatewayLink
from protocol.ids import uuid7
from simulator.kiosk_load import KioskPlan, KioskResult, run_kiosks

MERCHANT = "acme"
ADMIN_KEY = "op_bench_" + secrets.token_urlsafe(32)
KIOSKS_PER_STORE = 4
NOWHERE = "http://127.0.0.1:9"  # carriers and payments are never called in this benchmark
NEVER_CLOSE = ConsolidationRules(
    max_items=10**9,
    max_weight_kg=1e9,
    max_volume_l=1e9,
    max_age_s=1e9,
    daily_cutoff=None,
    cost=None,
)
SITE = AddressSettings(
    name="Store", phone="021-1", province="上海市", city="上海市", district="静安区", street="1 号"
)


def gateway_config(database: str, broker: int, stores: list[str], shared: bool) -> GatewayConfig:
    """A gateway whose totes never close and whose merchant refunds on receipt."""
    return GatewayConfig(
        database=database,
        http_port=free_port(),
        broker=BrokerSettings(
            port=broker,
            reconnect_s=0.2,
            **({"protocol": "5", "shared_group": "bench"} if shared else {}),
        ),
        merchants=[
            MerchantSettings(id=MERCHANT, name="ACME", refund_policy=RefundPolicy.ON_RECEIPT)
        ],
        stores=[StoreSettings(id=s, name=s, address=SITE) for s in stores],
        warehouse=SITE,
        consolidation=NEVER_CLOSE,
        kdniao=KdniaoSettings(base_url=NOWHERE, ebusiness_id="1", app_key="k"),
        stripe=StripeSettings(base_url=NOWHERE, api_key="sk_test_bench"),
        api=ApiSettings(admin_key=ADMIN_KEY),
    )


def plans(kiosks: int, events: int) -> list[KioskPlan]:
    """Each kiosk's returns (fresh ids for every case)."""
    return [
        KioskPlan(
            store=f"s{k // KIOSKS_PER_STORE:04d}",
            device=f"k{k % KIOSKS_PER_STORE + 1}",
            merchant=MERCHANT,
            return_ids=[str(uuid7()) for _ in range(events)],
        )
        for k in range(kiosks)
    ]


def bench_customer(n: int) -> dict[str, str]:
    """The customer of the n-th seeded return (no contact: no messages are queued)."""
    return {"name": "Bench"}


async def seed(
    db: Database,
    kiosk_plans: list[KioskPlan],
    customer: Callable[[int], dict[str, str]] = bench_customer,
) -> None:
    """Insert every planned return as ``authorized`` (what ``POST /v1/returns`` leaves)."""
    now = time.time()
    rows = [
        (rid, p.merchant, f"o-{rid}", "[]", 1, "bench", 1000, "CNY", "locker", "M",
         json.dumps([p.store]), json.dumps(customer(n)), "authorized", f"B{n:09d}", "v",
         now + 86_400, now, now)
        for n, (p, rid) in enumerate((p, r) for p in kiosk_plans for r in p.return_ids)
    ]  # fmt: skip
    for start in range(0, len(rows), 5000):
        async with db.transaction() as tx:
            await tx.executemany(
                "INSERT INTO returns (id, merchant, order_id, items, item_count, reason, "
                "amount_minor, currency, method, size, stores, customer, state, short_code, "
                "voucher, expires_at, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows[start : start + 5000],
            )


async def all_applied(db: Database) -> float:
    """When no stored event is left to apply (the gateway applies behind its acks)."""
    while True:
        row = await db.fetchone("SELECT count(*) FROM events WHERE sequenced = 0")
        if row is not None and int(row[0]) == 0:
            return time.perf_counter()
        await asyncio.sleep(0.05)  # another process's progress: polled, no event to await


async def stored_events(db: Database) -> int:
    row = await db.fetchone("SELECT count(*) FROM events WHERE type = 'dropoff'")
    return int(row[0]) if row else 0


async def received_by(process: GatewayProcess) -> int:
    """How many events a replica took from the broker."""
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.get(f"{process.url}/v1/metrics") as reply,
    ):
        return int((await reply.json())["events_received"])


def _worker(
    port: int,
    kiosk_plans: list[KioskPlan],
    window: int,
    gateway: bool,
    rate_per_kiosk: float,
    barrier: Barrier,
    results: "multiprocessing.Queue[tuple[list[KioskResult], float]]",
    received: "EventType | None" = None,
) -> None:
    """One worker's kiosks; puts their results and the CPU seconds their program took."""
    hold = None if received is None else (lambda: received.wait(300))
    seen = run_kiosks("127.0.0.1", port, kiosk_plans, window=window, gateway=gateway,
                      rate_per_kiosk=rate_per_kiosk, ready=barrier.wait, hold=hold)  # fmt: skip
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the kiosks' program, exited
    results.put((seen, usage.ru_utime + usage.ru_stime))


def load(
    port: int,
    kiosk_plans: list[KioskPlan],
    args: argparse.Namespace,
    *,
    gateway: bool,
    rate_per_kiosk: float = 0.0,
) -> tuple[list[KioskResult], float]:
    """Run the kiosks in ``args.workers`` processes, all starting at one barrier; paced at
    ``rate_per_kiosk`` events/s each, or as fast as acks allow. Returns what the kiosks saw
    and the CPU seconds their programs took."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(args.workers)
    queue: multiprocessing.Queue[tuple[list[KioskResult], float]] = ctx.Queue()
    shares = [kiosk_plans[w :: args.workers] for w in range(args.workers)]
    workers = [
        ctx.Process(
            target=_worker,
            args=(port, share, args.window, gateway, rate_per_kiosk, barrier, queue),
        )
        for share in shares
    ]
    for w in workers:
        w.start()
    done = [queue.get() for _ in workers]
    for w in workers:
        w.join()
    return [r for seen, _ in done for r in seen], sum(cpu for _, cpu in done)


def summarize(results: list[KioskResult]) -> dict[str, float]:
    published = sum(r.published for r in results)
    acked = sum(r.acked for r in results)
    seconds = max(r.last_ack for r in results) - min(r.first_publish for r in results)
    latencies = sorted(x for r in results for x in r.latencies_s)
    out = {"published": published, "acked": acked, "seconds": round(seconds, 3),
           "events_per_s": round(acked / seconds)}  # fmt: skip
    if latencies:
        q = statistics.quantiles(latencies, n=100, method="inclusive")
        out |= {"p50_ms": round(q[49] * 1000, 1), "p99_ms": round(q[98] * 1000, 1)}
    return out


async def gateway_case(
    name: str, database: str, replicas: int, broker: MosquittoBroker, args: argparse.Namespace
) -> dict[str, Any]:
    """One storage/replica combination, on a fresh database."""
    kiosk_plans = plans(args.kiosks, args.events)
    stores = sorted({p.store for p in kiosk_plans})
    processes = [
        GatewayProcess(
            gateway_config(database, broker.port, stores, shared=replicas > 1).model_copy(
                update=args.gateway_overrides
            ),
            Path(args.workdir),
            f"{name}-{i + 1}",
        )
        for i in range(replicas)
    ]
    for process in processes:  # one after another: the first migrates the database
        await process.start()
    # Opened (its migration a no-op) before the load: opening it later would wait for
    # SQLite's write lock against a gateway applying flat out.
    db = await open_database(database)
    try:
        await seed(db, kiosk_plans)
        pids = [p.pid for p in processes]
        before, server_before = _cpu(pids, broker), cpu_seconds_named("postgres")
        results, kiosks_cpu = await asyncio.to_thread(
            load, broker.port, kiosk_plans, args, gateway=True
        )
        gateway_cpu, broker_cpu = (a - b for a, b in zip(_cpu(pids, broker), before, strict=True))
        server_cpu = cpu_spent(server_before, cpu_seconds_named("postgres"))
        applied_at = await all_applied(db)
        shares = [await received_by(p) for p in processes]
        stored = await stored_events(db)
    finally:
        for process in processes:
            await process.stop()
        await db.close()
    result = summarize(results)
    first = min(r.first_publish for r in results)
    result["applied_per_s"] = round(result["acked"] / (applied_at - first))
    parts = {"gateway": gateway_cpu, "broker": broker_cpu, "kiosks": kiosks_cpu}
    if database.startswith("postgres"):
        parts["postgres"] = server_cpu  # the whole server: nothing else uses it meanwhile
    for part, cpu in parts.items():
        result[f"{part}_cpu_us_per_event"] = round(cpu / max(1, result["acked"]) * 1e6, 1)
    result["stored"] = stored
    result["received_by_replica"] = shares
    print(f"{name}: {result}", flush=True)
    return result


def _cpu(gateways: list[int], broker: MosquittoBroker) -> tuple[float, float]:
    """CPU seconds so far of the gateway processes (together) and of the broker."""
    assert broker.pid is not None
    return sum(map(cpu_seconds, gateways)), cpu_seconds(broker.pid)


def _count_events(
    port: int,
    total: int,
    barrier: Barrier,
    out: "multiprocessing.Queue[float]",
    received: "EventType",
) -> None:
    """The raw broker's receiving side: the gateway's own MQTT link (paho, driven the same
    way) with a batch handler that only counts, so every message is acked at once."""

    async def count() -> float:
        counted = 0
        done = asyncio.Event()

        async def on_batch(batch: list[tuple[str, bytes]]) -> None:
            nonlocal counted
            counted += len(batch)
            if counted >= total:
                done.set()

        async def nothing(*_: object) -> None:
            return None

        link = GatewayLink(BrokerSettings(port=port), client_id="raw-counter",
                           on_batch=on_batch, on_connect=nothing, on_poison=nothing)  # fmt: skip
        running = asyncio.create_task(link.run())
        await link.consuming.wait()
        await asyncio.to_thread(barrier.wait)
        async with asyncio.timeout(300):
            await done.wait()
        finished = time.perf_counter()
        received.set()
        running.cancel()
        await asyncio.wait([running])
        return finished

    out.put(asyncio.run(count()))


def raw_case(broker: MosquittoBroker, args: argparse.Namespace) -> dict[str, Any]:
    """The same payloads through the broker with nothing behind it."""
    kiosk_plans = plans(args.kiosks, args.events)
    total = args.kiosks * args.events
    ctx = multiprocessing.get_context("fork")
    finished: multiprocessing.Queue[float] = ctx.Queue()
    # The counter joins the kiosks' barrier, so it is subscribed before anything is sent.
    counter_barrier = ctx.Barrier(args.workers + 1)
    received = ctx.Event()
    counter = ctx.Process(
        target=_count_events, args=(broker.port, total, counter_barrier, finished, received)
    )
    counter.start()
    shares = [kiosk_plans[w :: args.workers] for w in range(args.workers)]
    queue: multiprocessing.Queue[tuple[list[KioskResult], float]] = ctx.Queue()
    workers = [
        ctx.Process(
            target=_worker,
            args=(broker.port, s, args.window, False, 0.0, counter_barrier, queue, received),
        )
        for s in shares
    ]
    for w in workers:
        w.start()
    results = [r for _ in workers for r in queue.get()[0]]
    last_received = finished.get(timeout=600)  # raises if the counter died
    for w in [*workers, counter]:
        w.join()
    first = min(r.first_publish for r in results)
    seconds = last_received - first
    result = {"published": sum(r.published for r in results), "seconds": round(seconds, 3),
              "events_per_s": round(total / seconds)}  # fmt: skip
    print(f"broker alone: {result}", flush=True)
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kiosks", type=int, default=40)
    parser.add_argument("--events", type=int, default=2000, help="drop-offs per kiosk")
    parser.add_argument("--window", type=int, default=100, help="unacked events per kiosk")
    parser.add_argument("--workers", type=int, default=2, help="kiosk processes")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--apply-max-lag-s", type=float, default=None,
                        help="the gateway's apply_max_lag_s (default: its default)")  # fmt: skip
    args = parser.parse_args()
    args.gateway_overrides = (
        {} if args.apply_max_lag_s is None else {"apply_max_lag_s": args.apply_max_lag_s}
    )
    with tempfile.TemporaryDirectory(prefix="dropline-ingest-") as workdir:
        args.workdir = workdir
        broker = MosquittoBroker(Path(workdir) / "mosquitto")
        await broker.start()
        try:
            out: dict[str, Any] = {"machine": describe(), "kiosks": args.kiosks,
                                   "events": args.kiosks * args.events,
                                   **args.gateway_overrides}  # fmt: skip
            raw = await asyncio.to_thread(raw_case, broker, args)
            sqlite = await gateway_case(
                "sqlite-1", str(Path(workdir) / "gateway.sqlite3"), 1, broker, args
            )
            out |= {"broker_raw_per_s": raw["events_per_s"]} | _keyed("sqlite_1", sqlite)
            out["ratio_sqlite_1_to_broker"] = round(sqlite["events_per_s"] / raw["events_per_s"], 2)
            if not args.skip_postgres:
                for replicas in (1, 2):
                    url = f"{args.postgres}?schema=bench_{secrets.token_hex(4)}"
                    pg = await gateway_case(f"postgresql-{replicas}", url, replicas, broker, args)
                    out |= _keyed(f"postgresql_{replicas}", pg)
                    await drop_schema(url)
                out["ratio_postgresql_2_to_1"] = round(
                    out["postgresql_2_per_s"] / out["postgresql_1_per_s"], 2
                )
        finally:
            await broker.stop()
    print(json.dumps(out, ensure_ascii=False))


def _keyed(case: str, result: dict[str, Any]) -> dict[str, Any]:
    """A case's numbers under the names the summary uses."""
    return {
        f"{case}_per_s": result["events_per_s"],
        f"{case}_p50_ms": result.get("p50_ms"),
        f"{case}_p99_ms": result.get("p99_ms"),
        f"{case}_applied_per_s": result["applied_per_s"],
        f"{case}_lost": result["published"] - result["stored"],
        **{
            f"{case}_{part}_cpu_us_per_event": result[f"{part}_cpu_us_per_event"]
            for part in ("gateway", "broker", "kiosks", "postgres")
            if f"{part}_cpu_us_per_event" in result
        },
    }


async def drop_schema(url: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    server, schema = url.split("?schema=")
    conn = await asyncpg.connect(server)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
