"""Carrier benchmark: the real adapters against the simulated carriers, and tracking pushes
through a real gateway.

    .venv/bin/python -m bench.carriers [--creates 400] [--pushes 400] [--concurrency 20]

Prints one line per part and, last, one JSON object:
- ``kdniao_creates_per_s`` / ``sf_creates_per_s``: shipments created, no faults;
- under faults (20 % HTTP 500, 5 % replies held past a 0.3 s client timeout, 5 % malformed):
  ``success_faulty_creates`` (share of creates that returned a waybill within 4 attempts),
  ``ratio_duplicate_shipments`` (extra shipments the carrier made per order code; must be 0),
  ``faulty_create_p50_ms`` / ``faulty_create_p95_ms``;
- ``pushes_per_s``: signed Kdniao pushes verified and applied by the gateway (SQLite).
"""

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from dropline.system import LocalSystem, SystemOptions
from gateway.carriers import kdniao_wire
from gateway.carriers.base import Address, CarrierError, Parcel, Shipment, ShipmentRequest
from gateway.carriers.kdniao import KdniaoCarrier
from gateway.carriers.resilience import CircuitBreaker, Resilience, RetryPolicy
from gateway.carriers.sf_express import SfExpressCarrier
from gateway.tracking import register_shipment
from simulator.carrier_http import CarrierKnobs
from simulator.kdniao import KdniaoSimulator
from simulator.sf_express import SfExpressSimulator

STORE = Address("Store", "021-1", "上海市", "上海市", "静安区", "南京西路 1 号")
WAREHOUSE = Address("Warehouse", "021-2", "上海市", "上海市", "嘉定区", "安亭镇 1 号仓")
FAULTS = CarrierKnobs(error_rate=0.2, timeout_rate=0.05, timeout_hold_s=1.0, malformed_rate=0.05)


def _request(code: str) -> ShipmentRequest:
    start = datetime.now(UTC) + timedelta(hours=1)
    return ShipmentRequest(
        code, STORE, WAREHOUSE, Parcel(3.0, 1, "returns"), start, start + timedelta(hours=2)
    )


def _resilience(name: str) -> Resilience:
    # A breaker that never opens: the benchmark measures retries, not refusals.
    return Resilience(
        CircuitBreaker(name, failure_threshold=10**9),
        RetryPolicy(attempts=4, base_s=0.02, max_s=0.2),
    )


async def _run(
    n: int, concurrency: int, call: Callable[[int], Awaitable[Any]]
) -> tuple[float, list[float], int]:
    """Run ``call(i)`` for i < n, ``concurrency`` at a time: (seconds, latencies ms, ok)."""
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    ok = 0

    async def one(i: int) -> None:
        nonlocal ok
        async with gate:
            started = time.perf_counter()
            try:
                await call(i)
                ok += 1
            except CarrierError:
                pass
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - started, latencies, ok


async def creates(
    carrier_name: str, n: int, concurrency: int, knobs: CarrierKnobs
) -> dict[str, Any]:
    """``n`` creates through one adapter against its simulator, with ``knobs``' faults."""
    sim: KdniaoSimulator | SfExpressSimulator
    if carrier_name == "kdniao":
        sim = KdniaoSimulator("1234567", "key", knobs=replace(knobs), push_delays_s=())
    else:
        sim = SfExpressSimulator("P", "cw", knobs=replace(knobs), push_delays_s=())
    url = await sim.start()
    try:
        async with aiohttp.ClientSession() as session:
            carrier: KdniaoCarrier | SfExpressCarrier
            if isinstance(sim, KdniaoSimulator):
                carrier = KdniaoCarrier(url, "1234567", "key", session, timeout_s=0.3,
                                        resilience=_resilience(carrier_name))  # fmt: skip
                made = sim.shipments_created
            else:
                carrier = SfExpressCarrier(url, "P", "cw", session, timeout_s=0.3,
                                           resilience=_resilience(carrier_name))  # fmt: skip
                made = sim.orders_created
            seconds, latencies, ok = await _run(
                n, concurrency, lambda i: carrier.create_shipment(_request(f"tote-{i}"))
            )
        extra = sum(c - 1 for c in made.values())
        return {"seconds": seconds, "latencies": latencies, "ok": ok, "extra": extra}
    finally:
        await sim.stop()


async def gateway_pushes(n: int, concurrency: int) -> float:
    """Pushes per second through POST /v1/carriers/kdniao/push, one waybill per push."""
    with tempfile.TemporaryDirectory(prefix="dropline-bench-") as tmp:
        system = LocalSystem(Path(tmp), SystemOptions(kiosks_per_store=0, tracking_delays_s=()))
        await system.start()
        try:
            gateway, kdniao = system.gateway, system.kdniao
            assert gateway is not None and kdniao is not None
            ids = [(await system.authorize_return(i))["id"] for i in range(n)]
            async with gateway.db.transaction() as tx:
                for i, rid in enumerate(ids):
                    shipment = Shipment("kdniao", rid, f"YTO{i:09d}", "YTO")
                    await register_shipment(tx, shipment, quiet_after_s=3600, return_id=rid)
            forms = []
            for i, rid in enumerate(ids):
                trace = {"AcceptTime": "2026-11-22 10:00:00", "AcceptStation": "已揽收"}
                item = {"LogisticCode": f"YTO{i:09d}", "OrderCode": rid, "State": "1",
                        "StateEx": "1", "Traces": [trace]}  # fmt: skip
                data = json.dumps({"EBusinessID": kdniao.ebusiness_id, "Data": [item]})
                forms.append(
                    kdniao_wire.form(kdniao_wire.PUSH, data, kdniao.ebusiness_id, kdniao.app_key)
                )

            async def push(i: int) -> None:
                async with system.http.post("/v1/carriers/kdniao/push", data=forms[i]) as resp:
                    reply = await resp.json()
                    if not reply.get("Success"):
                        raise RuntimeError(f"push refused: {reply}")

            seconds, _, _ = await _run(n, concurrency, push)
            states = await system.states(ids[:20])
            assert set(states.values()) == {"shipped"}, states
            return n / seconds
        finally:
            await system.stop()


def _ms(latencies: list[float], q: int) -> float:
    return (
        statistics.quantiles(latencies, n=100, method="inclusive")[q - 1]
        if len(latencies) > 1
        else 0.0
    )


async def main(n_creates: int, pushes: int, concurrency: int) -> dict[str, float]:
    k = await creates("kdniao", n_creates, concurrency, CarrierKnobs())
    s = await creates("sf", n_creates, concurrency, CarrierKnobs())
    rates = n_creates / k["seconds"], n_creates / s["seconds"]
    print(f"no faults: kdniao {rates[0]:.0f}/s, sf {rates[1]:.0f}/s")
    fk = await creates("kdniao", n_creates, concurrency, FAULTS)
    fs = await creates("sf", n_creates, concurrency, FAULTS)
    ok = fk["ok"] + fs["ok"]
    latencies = fk["latencies"] + fs["latencies"]
    print(
        f"faults: {ok}/{2 * n_creates} creates returned a waybill, "
        f"{fk['extra'] + fs['extra']} duplicate shipments"
    )
    rate = await gateway_pushes(pushes, concurrency)
    print(f"gateway: {rate:.0f} pushes/s")
    return {
        "kdniao_creates_per_s": round(rates[0], 1),
        "sf_creates_per_s": round(rates[1], 1),
        "success_faulty_creates": round(ok / (2 * n_creates), 4),
        "ratio_duplicate_shipments": (fk["extra"] + fs["extra"]) / (2 * n_creates),
        "faulty_create_p50_ms": round(statistics.median(latencies), 1),
        "faulty_create_p95_ms": round(_ms(latencies, 95), 1),
        "pushes_per_s": round(rate, 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--creates", type=int, default=400)
    parser.add_argument("--pushes", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.creates, args.pushes, args.concurrency))))
