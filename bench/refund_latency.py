"""Refund latency under ingest load: with the ``on_dropoff`` policy, from the door closing
(the drop-off's ``accepted_at``) to the refund made at the payment provider.

    python bench/refund_latency.py [--load-rate 4000] [--seconds 10] [--probe-rate 20]

A ``dropline gateway`` process on SQLite (the embedded default) takes a steady background
load of drop-offs for a merchant refunding on receipt, from K kiosk connections (as
bench/ingest.py), while a probe kiosk drops off returns of a merchant refunding on drop-off,
each stamped with the moment its door closed. The simulated Stripe-style provider (in this
process) notes when each refund is made. The last line is one JSON object.
"""

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import ingest
from bench.machine import describe
from dropline.broker import MosquittoBroker
from dropline.gateway_process import GatewayProcess
from gateway.config import MerchantSettings, RefundPolicy, StripeSettings
from gateway.database import open_database
from protocol import envelope, topics
from protocol.ids import uuid7
from protocol.messages import Dropoff, DropoffMethod
from simulator.kiosk_load import KioskPlan, KioskResult
from simulator.payments import PaymentsSimulator

PROBE = KioskPlan(store="probe", device="k1", merchant="quick", return_ids=[])
API_KEY = "sk_test_latency"


async def probe(port: int, plan: KioskPlan, rate: float) -> dict[str, float]:
    """Drop off ``plan``'s returns at ``rate`` per second; returns when each door closed."""
    closed: dict[str, float] = {}
    async with aiomqtt.Client("127.0.0.1", port, identifier="probe-k1") as client:
        start = time.monotonic()
        for seq, return_id in enumerate(plan.return_ids, start=1):
            await asyncio.sleep(max(0.0, start + seq / rate - time.monotonic()))  # pacing
            now = time.time()
            body = Dropoff(
                return_id=return_id, merchant=plan.merchant, method=DropoffMethod.LOCKER,
                compartment="A1", size="M", items=1, voucher_kid="k0000",
                scanned_at=now, accepted_at=now,
            )  # fmt: skip
            env = envelope.make(body, store=plan.store, device=plan.device, seq=seq, session=1)
            closed[return_id] = now
            await client.publish(
                topics.event(plan.store, plan.device, "dropoff"), envelope.encode(env), qos=1
            )
    return closed


def _quantiles(samples: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return round(q[49] * 1000, 1), round(q[98] * 1000, 1)


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    broker = MosquittoBroker(workdir / "mosquitto")
    await broker.start()
    payments = PaymentsSimulator(API_KEY)
    payments_url = await payments.start()
    per_kiosk = args.load_rate / args.kiosks
    background = ingest.plans(args.kiosks, int(per_kiosk * args.seconds))
    probes = KioskPlan(
        PROBE.store, PROBE.device, PROBE.merchant,
        [str(uuid7()) for _ in range(int(args.probe_rate * args.seconds))],
    )  # fmt: skip
    stores = sorted({p.store for p in background} | {probes.store})
    database = str(workdir / "gateway.sqlite3")
    config = ingest.gateway_config(database, broker.port, stores, shared=False)
    config = config.model_copy(
        update={
            "merchants": [
                *config.merchants,
                MerchantSettings(
                    id=probes.merchant, name="Q", refund_policy=RefundPolicy.ON_DROPOFF
                ),
            ],
            "stripe": StripeSettings(base_url=payments_url, api_key=API_KEY),
        }
    )
    gateway = GatewayProcess(config, workdir, "gateway")
    await gateway.start()
    try:
        db = await open_database(database)
        try:
            await ingest.seed(db, [*background, probes])
        finally:
            await db.close()
        load = asyncio.to_thread(
            ingest.load, broker.port, background, args, gateway=True, rate_per_kiosk=per_kiosk
        )
        (results, _), closed = await asyncio.gather(
            load, probe(broker.port, probes, args.probe_rate)
        )
        async with asyncio.timeout(60):  # only the probes' merchant refunds on drop-off
            await payments.wait_for_refunds(len(probes.return_ids))
    finally:
        await gateway.stop()
        await payments.stop()
        await broker.stop()
    return summary(args, results, closed, payments)


def summary(
    args: argparse.Namespace,
    results: list[KioskResult],
    closed: dict[str, float],
    payments: PaymentsSimulator,
) -> dict[str, Any]:
    latencies = [payments.paid_at[r] - t for r, t in closed.items()]
    p50, p99 = _quantiles(latencies)
    load = ingest.summarize(results)
    return {
        "machine": describe(),
        "load_target_per_s": args.load_rate,
        "load_durable_per_s": load["events_per_s"],
        "load_ack_p50_ms": load.get("p50_ms"),
        "load_ack_p99_ms": load.get("p99_ms"),
        "probes": len(latencies),
        "refund_p50_ms": p50,
        "refund_p99_ms": p99,
        "refunds_made": len(payments.refunds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--load-rate", type=float, default=4000, help="background events/s")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--probe-rate", type=float, default=20, help="probe drop-offs/s")
    parser.add_argument("--kiosks", type=int, default=40)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dropline-refunds-") as workdir:
        out = asyncio.run(run(args, Path(workdir)))
    print(json.dumps(out, ensure_ascii=False))


if __name__ == "__main__":
    main()
