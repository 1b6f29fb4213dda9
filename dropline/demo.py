"""``dropline demo``: returns travel from voucher to refund through a whole local installation."""

import asyncio
import contextlib
import math
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from dropline.system import MAX_COMPARTMENTS, Kiosk, LocalSystem, SystemOptions
from gateway.config import RefundPolicy
from protocol import voucher

PROGRESS_INTERVAL_S = 1.0


@dataclass(frozen=True)
class DemoOptions:
    """What ``dropline demo`` was asked for."""

    returns: int = 20
    stores: int = 1
    kiosks: int = 2
    home_pickups: int = 0
    workdir: Path | None = None
    policy: RefundPolicy = RefundPolicy.ON_RECEIPT
    timeout_s: float = 300.0


@dataclass
class DemoReport:
    """What happened, for the summary and the exit code."""

    states: Counter[str]
    refunds_per_return: dict[str, int]
    scan_to_done_ms: list[float]
    dropoff_to_refund_s: list[float]
    wall_s: float
    prints: list[Path]
    services: Counter[str] = field(default_factory=Counter)  # totes per carrier service
    home_pickups: Counter[str] = field(default_factory=Counter)  # pickups per status

    @property
    def ok(self) -> bool:
        """Every return refunded, each exactly once."""
        total = len(self.refunds_per_return)
        return self.states.get("refunded", 0) == total and all(
            n == 1 for n in self.refunds_per_return.values()
        )


def _say(text: str) -> None:
    print(text, flush=True)


async def _drop_off(
    system: LocalSystem, kiosk: Kiosk, returns: list[dict[str, Any]], timings: list[float]
) -> None:
    for ret in returns:
        token = ret["voucher"]["token"]
        session = await kiosk.present(token)
        while session.reason == "no_compartment":
            # Every fitting door is taken: the shopper waits for the clerk to empty lockers
            # into the next tote (the gateway's collect_parcels command).
            size = voucher.parse(token)[0].size
            await system.wait_until(partial(kiosk.agent.db.free_compartments, size), 120)
            session = await kiosk.present(token)
        timings.append((session.history[-1][1] - session.history[0][1]) * 1000)
        door = session.compartment or "-"
        where = f"{kiosk.store}/{kiosk.device}"
        _say(f"  {where}: return {ret['id'][-12:]} → {session.state} (door {door})")


async def _progress(system: LocalSystem, ids: list[str], stop: asyncio.Event) -> None:
    while not stop.is_set():
        states = Counter((await system.states(ids)).values())
        _say("  progress: " + ", ".join(f"{s} {n}" for s, n in sorted(states.items())))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(PROGRESS_INTERVAL_S):
                await stop.wait()


async def run(options: DemoOptions) -> DemoReport:
    """Run the demo and return its report."""
    per_kiosk = math.ceil(options.returns / (options.stores * options.kiosks))
    sys_options = SystemOptions(
        stores=options.stores,
        kiosks_per_store=options.kiosks,
        compartments_per_kiosk=min(MAX_COMPARTMENTS, max(8, per_kiosk)),
        refund_policy=options.policy,
    )
    with tempfile.TemporaryDirectory(prefix="dropline-demo-") as tmp:
        workdir = options.workdir or Path(tmp)
        system = LocalSystem(workdir, sys_options)
        started = time.monotonic()
        _say(
            f"starting: broker, carrier and payment simulators, gateway, "
            f"{options.stores * options.kiosks} kiosk(s) in {workdir}"
        )
        try:
            await system.start()
            return await _drive(system, options, started)
        finally:
            await system.stop()


async def _drive(system: LocalSystem, options: DemoOptions, started: float) -> DemoReport:
    stores = system.store_ids
    key_id = system.tenant_key.split("_")[1]
    _say(
        f"tenant {system.merchant} got API key {key_id} from the operator (POST /v1/tenants/…/keys)"
    )
    _say(f"authorizing {options.returns} returns through POST /v1/returns")
    created = [
        await system.authorize_return(i, store=stores[i % len(stores)])
        for i in range(options.returns)
    ]
    ids = [r["id"] for r in created]
    if options.home_pickups:
        _say(f"authorizing {options.home_pickups} home pickup(s): couriers come to the shoppers")
        ids += [
            (await system.authorize_home_pickup(options.returns + i))["id"]
            for i in range(options.home_pickups)
        ]
    by_kiosk: dict[int, list[dict[str, Any]]] = {}
    kiosks_of = {s: [i for i, k in enumerate(system.kiosks) if k.store == s] for s in stores}
    for n, ret in enumerate(created):
        choices = kiosks_of[stores[n % len(stores)]]
        by_kiosk.setdefault(choices[(n // len(stores)) % len(choices)], []).append(ret)
    _say("shoppers scan their vouchers at the kiosks")
    timings: list[float] = []
    stop = asyncio.Event()
    ticker = asyncio.create_task(_progress(system, ids, stop))
    try:
        await asyncio.gather(
            *(_drop_off(system, system.kiosks[k], rets, timings) for k, rets in by_kiosk.items())
        )
        _say("all parcels dropped off; waiting for totes, carrier pickup, tracking and refunds")
        await system.wait_for_state(ids, "refunded", timeout_s=options.timeout_s)
    except TimeoutError:
        _say("timed out waiting for every return to be refunded")
    finally:
        stop.set()
        await ticker
    return await _report(system, ids, timings, started)


async def _report(
    system: LocalSystem, ids: list[str], timings: list[float], started: float
) -> DemoReport:
    views = [await system.get_return(r) for r in ids]
    assert system.payments is not None
    refunds = {r: system.payments.refund_count(r) for r in ids}
    latencies = []
    for view in views:
        at = {h["to"]: h["at"] for h in view["history"]}
        if "dropped_off" in at and "refunded" in at:
            latencies.append(at["refunded"] - at["dropped_off"])
    prints = sorted(p for k in system.kiosks for p in (*k.printer.printed, *k.labels.printed))
    assert system.gateway is not None
    rows = await system.gateway.db.fetchall(
        "SELECT service, count(*) FROM totes WHERE service IS NOT NULL GROUP BY service"
    )
    pickups = await system.gateway.db.fetchall(
        "SELECT status, count(*) FROM home_pickups GROUP BY status"
    )
    return DemoReport(
        states=Counter(v["state"] for v in views),
        refunds_per_return=refunds,
        scan_to_done_ms=timings,
        dropoff_to_refund_s=latencies,
        wall_s=time.monotonic() - started,
        prints=prints,
        services=Counter({str(s): int(n) for s, n in rows}),
        home_pickups=Counter({str(s): int(n) for s, n in pickups}),
    )


def _quantiles(values: list[float]) -> str:
    if len(values) < 2:
        return "n/a"
    qs = statistics.quantiles(values, n=100, method="inclusive")
    return f"p50 {statistics.median(values):.1f}, p95 {qs[94]:.1f}, max {max(values):.1f}"


def summarize(report: DemoReport, workdir_kept: bool) -> str:
    """The human-readable summary printed at the end of the demo."""
    refunds = Counter(report.refunds_per_return.values())
    lines = [
        "",
        "summary",
        "  returns by state: " + ", ".join(f"{s} {n}" for s, n in sorted(report.states.items())),
        "  refunds per return: "
        + ", ".join(f"{k}× → {n} return(s)" for k, n in sorted(refunds.items())),
        f"  kiosk session, scan → recorded (ms): {_quantiles(report.scan_to_done_ms)}",
        f"  drop-off → refunded (s): {_quantiles(report.dropoff_to_refund_s)}",
        "  totes by carrier service: "
        + (", ".join(f"{s} {n}" for s, n in sorted(report.services.items())) or "none"),
        f"  wall time: {report.wall_s:.1f} s",
    ]
    if report.home_pickups:
        lines.insert(-1, "  home pickups: " + ", ".join(
            f"{s} {n}" for s, n in sorted(report.home_pickups.items())))  # fmt: skip
    receipts = [p for p in report.prints if p.name.startswith("receipt")]
    labels = [p for p in report.prints if p.name.startswith("tote")]
    if workdir_kept:
        folders = sorted({str(p.parent) for p in report.prints})
        lines.append(f"  printed: {len(receipts)} receipt(s), {len(labels)} tote label(s) in:")
        lines += [f"    {f}" for f in folders]
    else:
        lines.append(
            f"  printed: {len(receipts)} receipt(s), {len(labels)} tote label(s) "
            "(pass --workdir DIR to keep the PNGs)"
        )
    lines.append(
        "  result: " + ("OK, every return refunded exactly once" if report.ok else "FAILED")
    )
    return "\n".join(lines)


def main(options: DemoOptions) -> int:
    """Entry point for ``dropline demo``; exit code 0 only when every return was refunded once."""
    report = asyncio.run(run(options))
    _say(summarize(report, workdir_kept=options.workdir is not None))
    return 0 if report.ok else 1
