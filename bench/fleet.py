"""Fleet: how many kiosks one machine holds, with the gateway tracking their presence.

A private Mosquitto, the gateway as its own process (``dropline gateway --config``, SQLite)
pinned to one core, and light kiosks (``simulator/fleet.py``: each a real MQTT connection
with a retained status and its will, a heartbeat, drop-offs now and then, answers to
commands) in a few worker processes on the other core(s) with the broker.

1. Ramp to ``--kiosks`` and hold them ``--seconds``: connections held (the broker's own
   count), every kiosk ``online`` in ``device_presence``, the gateway's CPU, heartbeat →
   database latency, drop-offs acked and their publish → ack latency.
2. Kill the worker holding a slice of the kiosks with SIGKILL (no DISCONNECT): the broker
   publishes their wills; ``device_presence`` must show exactly those kiosks offline.
3. ``--connections`` bare clients (connect, subscribe, keepalive) held for a while.

Run: ``python bench/fleet.py [--kiosks 1000] [--connections 10000] [--seconds 60]``; the
last line is one JSON object.
"""

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import random
import resource
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiomqtt

from bench.machine import cpu_seconds, describe
from bench.seed import seed
from dropline.broker import MosquittoBroker, free_port
from dropline.gateway_process import GatewayProcess
from gateway.authorization import ReturnRequest, authorize
from gateway.config import GatewayConfig
from gateway.database import open_database
from gateway.keys import SigningKeys
from simulator.fleet import BareConnection, FleetStats, KioskIdentity, LightKiosk, Timing

KIOSKS_PER_STORE = 4
KIOSK_WORKERS = 3  # besides the one whose kiosks are killed
BARE_WORKERS = 4
TIMEZONE = "Asia/Shanghai"

# ---- worker processes ----------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerPlan:
    """What one worker process runs."""

    kind: Literal["kiosk", "bare"]
    host: str
    port: int
    identities: list[KioskIdentity]
    returns: list[list[str]]
    timing: Timing
    ramp_per_s: float
    seed: int


def _worker(plan: WorkerPlan, conn: Connection) -> None:
    asyncio.run(_serve(plan, conn))


async def _serve(plan: WorkerPlan, conn: Connection) -> None:
    """Start the plan's clients at its ramp rate once told to go; on ``stop``, disconnect
    them cleanly and send back the stats."""
    loop = asyncio.get_running_loop()
    stats = FleetStats()
    rng = random.Random(plan.seed)
    conn.send("ready")
    t0 = float(await loop.run_in_executor(None, conn.recv))
    clients: list[asyncio.Task[None]] = []

    async def ramp() -> None:
        for i, ident in enumerate(plan.identities):
            delay = t0 + i / plan.ramp_per_s - time.time()
            if delay > 0:
                await asyncio.sleep(delay)  # the ramp's pace
            if plan.kind == "kiosk":
                client: LightKiosk | BareConnection = LightKiosk(
                    ident,
                    plan.host,
                    plan.port,
                    timing=plan.timing,
                    returns=plan.returns[i],
                    stats=stats,
                    rng=random.Random(rng.random()),
                )
            else:
                client = BareConnection(
                    ident, plan.host, plan.port, keepalive_s=plan.timing.keepalive_s, stats=stats
                )
            clients.append(asyncio.create_task(client.run()))

    ramping = asyncio.create_task(ramp())
    await loop.run_in_executor(None, conn.recv)  # "stop"
    ramping.cancel()
    for task in clients:
        task.cancel()
    await asyncio.gather(ramping, *clients, return_exceptions=True)
    conn.send(stats)


@dataclass
class Worker:
    """A worker process and its end of the pipe."""

    process: multiprocessing.process.BaseProcess
    conn: Connection
    size: int

    def stop(self) -> FleetStats:
        """Ask for a clean stop; the stats it sends back."""
        self.conn.send("stop")
        stats: FleetStats = self.conn.recv()
        self.process.join(30)
        return stats


def _start_workers(plans: list[WorkerPlan]) -> list[Worker]:
    context = multiprocessing.get_context("spawn")
    workers = []
    for plan in plans:
        parent, child = context.Pipe()
        process = context.Process(target=_worker, args=(plan, child), daemon=True)
        process.start()
        workers.append(Worker(process, parent, len(plan.identities)))
    for worker in workers:
        if worker.conn.recv() != "ready":
            raise RuntimeError("a worker did not start")
    return workers


def _go(workers: Iterable[Worker]) -> float:
    t0 = time.time() + 0.2
    for worker in workers:
        worker.conn.send(t0)
    return t0


def _split(items: list[Any], parts: int) -> list[list[Any]]:
    return [items[i::parts] for i in range(parts)]


# ---- the gateway and what it wrote --------------------------------------------------------


def _gateway_toml(db: Path, http_port: int, broker_port: int, stores: list[str]) -> str:
    dead = free_port()  # carriers and payments are configured but never called: no tote closes
    local = datetime.now(ZoneInfo(TIMEZONE)) - timedelta(hours=1)
    address = (
        'name = "Store"\nphone = "021-5555-0101"\nprovince = "上海市"\ncity = "上海市"\n'
        'district = "静安区"\nstreet = "南京西路 1 号"\n'
    )
    lines = [
        f'database = "{db}"',
        'http_host = "127.0.0.1"',
        f"http_port = {http_port}",
        "tick_s = 1.0",
        "",
        "[broker]",
        'host = "127.0.0.1"',
        f"port = {broker_port}",
        "keepalive_s = 30",
        "",
        "[[merchants]]",
        'id = "acme"',
        'name = "ACME"',
        'refund_policy = "on_receipt"',
        "",
        "[warehouse]",
        address,
        # Totes stay open for the whole run: this measures presence and ingest, not booking.
        "[consolidation]",
        "max_items = 100000",
        "max_weight_kg = 1e9",
        "max_volume_l = 1e9",
        f'daily_cutoff = "{local:%H:%M}"',
        f'timezone = "{TIMEZONE}"',
        "",
        "[kdniao]",
        f'base_url = "http://127.0.0.1:{dead}/kdniao"',
        'ebusiness_id = "1"',
        'app_key = "k"',
        "",
        "[stripe]",
        f'base_url = "http://127.0.0.1:{dead}/stripe"',
        'api_key = "sk_test"',
        "",
    ]
    for store in stores:
        lines += ["[[stores]]", f'id = "{store}"', f'name = "{store}"', "[stores.address]", address]
    return "\n".join(lines)


async def _authorize_returns(
    db_path: Path, config: GatewayConfig, idents: list[KioskIdentity], per_kiosk: int
) -> list[list[str]]:
    """Each kiosk's returns to drop off, scoped to its store (so that kiosks get ``sync``
    commands), authorized through the real code before the gateway starts."""
    db = await open_database(db_path)
    try:
        async with db.transaction() as tx:
            await seed(tx, [s.id for s in config.stores])
        keys = await SigningKeys.load_or_create(db)
        owned = []
        for k, ident in enumerate(idents):
            ids = []
            for i in range(per_kiosk):
                request = ReturnRequest.model_validate(
                    {
                        "merchant": "acme",
                        "order_id": f"order-{k}-{i}",
                        "items": [{"sku": "SKU-1"}],
                        "reason": "too small",
                        "refund": {"amount_minor": 1999, "currency": "CNY"},
                        "customer": {"name": f"Shopper {k}-{i}"},
                        "stores": [ident.store],
                    }
                )
                ids.append(await authorize(db, keys, request, default_ttl_s=config.voucher_ttl_s))
            owned.append(ids)
        return owned
    finally:
        await db.close()


def _runqueue_wait_seconds(pid: int) -> float:
    """Time the process's threads spent runnable but waiting for a CPU (other work on the
    machine took it): ``/proc/<pid>/task/*/schedstat``."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class PresencePoller:
    """Watches ``device_presence`` in the gateway's SQLite file (WAL: readers do not block
    the gateway): each (kiosk, ``seen_at``) seen, with when it became visible."""

    def __init__(self, db_path: Path, every_s: float = 0.02) -> None:
        self._db_path = db_path
        self._every_s = every_s
        self.seen: dict[tuple[str, float], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        """Poll in a thread until :meth:`stop`."""
        self._thread.start()

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        db = sqlite3.connect(f"file:{self._db_path}?mode=ro", uri=True)
        newest = 0.0
        try:
            while not self._stop.wait(self._every_s):
                now = time.time()
                # seen_at is stamped before the commit: look back a little past the newest.
                for store, device, seen_at in db.execute(
                    "SELECT store, device, seen_at FROM device_presence WHERE seen_at > ?",
                    (newest - 5.0,),
                ):
                    self.seen.setdefault((f"{store}/{device}", float(seen_at)), now)
                    newest = max(newest, float(seen_at))
        finally:
            db.close()

    def presence(self) -> dict[str, bool]:
        """Every kiosk's ``online`` flag now."""
        db = sqlite3.connect(f"file:{self._db_path}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT store, device, online FROM device_presence").fetchall()
        finally:
            db.close()
        return {f"{s}/{d}": bool(online) for s, d, online in rows}


@dataclass
class BrokerCount:
    """The broker's own count of connected clients (``$SYS``, every second)."""

    latest: int = 0
    history: list[tuple[float, int]] = field(default_factory=list)

    async def watch(self, host: str, port: int) -> None:
        """Follow ``$SYS/broker/clients/connected`` until cancelled."""
        async with aiomqtt.Client(host, port, identifier="fleet-bench-sys", timeout=math.inf) as c:
            await c.subscribe("$SYS/broker/clients/connected")
            async for message in c.messages:
                if isinstance(message.payload, bytes | bytearray):
                    self.latest = int(message.payload)
                    self.history.append((time.time(), self.latest))

    async def fresh(self, after: float) -> int:
        """The first count the broker reports from a second after ``after`` on."""
        await _until(lambda: bool(self.history) and self.history[-1][0] >= after + 1.0, 10)
        return self.latest

    def lowest(self, since: float) -> int:
        """The fewest connected clients reported since ``since``."""
        return min((n for t, n in self.history if t >= since), default=self.latest)


async def _until(condition: Any, timeout_s: float, every_s: float = 0.05) -> bool:
    """Poll ``condition()`` (the database or the broker: nothing to await) until it holds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(every_s)
    return bool(condition())


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# ---- the run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """The benchmark's size."""

    kiosks: int
    connections: int
    seconds: float
    kill_ratio: float
    timing: Timing
    ramp_per_s: float
    bare_ramp_per_s: float
    bare_hold_s: float
    keep: bool


def _raise_fd_limit() -> int:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _cores() -> tuple[int, set[int]]:
    """The gateway's core, and the cores for everything else."""
    cores = sorted(os.sched_getaffinity(0))
    gateway_core = cores[-1]
    return gateway_core, (set(cores) - {gateway_core}) or {gateway_core}


def _identities(kiosks: int) -> list[KioskIdentity]:
    return [
        KioskIdentity(f"store-{i // KIOSKS_PER_STORE:04d}", f"kiosk-{i % KIOSKS_PER_STORE}")
        for i in range(kiosks)
    ]


def _kiosk_plans(
    options: Options, host: str, port: int, idents: list[KioskIdentity], owned: list[list[str]]
) -> tuple[list[WorkerPlan], list[KioskIdentity]]:
    """The kiosk workers; the first one holds the slice that will be killed."""
    doomed = max(1, round(options.kiosks * options.kill_ratio))
    step = options.kiosks / doomed  # spread over the stores
    doomed_at = {int(i * step) for i in range(doomed)}
    slices = [sorted(doomed_at)]
    slices += _split([i for i in range(options.kiosks) if i not in doomed_at], KIOSK_WORKERS)
    rate = options.ramp_per_s / options.kiosks
    plans = [
        WorkerPlan(
            "kiosk",
            host,
            port,
            [idents[i] for i in part],
            [owned[i] for i in part],
            options.timing,
            rate * len(part),
            seed,
        )
        for seed, part in enumerate(slices)
    ]
    return plans, [idents[i] for i in slices[0]]


def _merge(all_stats: list[FleetStats]) -> FleetStats:
    merged = FleetStats()
    for s in all_stats:
        merged.connected += s.connected
        merged.connect_failures += s.connect_failures
        merged.lost += s.lost
        merged.statuses += s.statuses
        merged.dropoffs_sent += s.dropoffs_sent
        merged.dropoffs_acked += s.dropoffs_acked
        merged.ack_ms += s.ack_ms
        merged.configs |= s.configs
        merged.commands += s.commands
        merged.returns_left += s.returns_left
    return merged


def _heartbeat_latencies(
    statuses: list[tuple[str, float]], seen: dict[tuple[str, float], float]
) -> tuple[list[float], list[float]]:
    """Match each row version the poller saw to the kiosk's latest status sent before it:
    (sent → ``seen_at`` stamped, sent → visible to a reader), in ms."""
    sent: dict[str, list[float]] = {}
    for key, at in statuses:
        sent.setdefault(key, []).append(at)
    stamped, visible = [], []
    for (key, seen_at), visible_at in seen.items():
        before = [t for t in sent.get(key, []) if t <= seen_at]
        if before:
            stamped.append((seen_at - before[-1]) * 1000)
            visible.append((visible_at - before[-1]) * 1000)
    return stamped, visible


async def _bare_phase(
    options: Options, broker: MosquittoBroker, count: BrokerCount
) -> dict[str, Any]:
    n = options.connections
    idents = [KioskIdentity(f"bare-{i // 100:04d}", f"c-{i % 100}") for i in range(n)]
    timing = Timing(keepalive_s=max(2, int(options.bare_hold_s / 3)))
    plans = [
        WorkerPlan(
            "bare",
            broker.host,
            broker.port,
            part,
            [],
            timing,
            options.bare_ramp_per_s / BARE_WORKERS,
            seed,
        )
        for seed, part in enumerate(_split(idents, BARE_WORKERS))
    ]
    workers = _start_workers(plans)
    baseline = await count.fresh(time.time())
    started = _go(workers)
    reached = await _until(lambda: count.latest >= baseline + n, n / options.bare_ramp_per_s + 30)
    ramp_s = time.time() - started
    hold_from = time.time()
    await asyncio.sleep(options.bare_hold_s)  # holding the connections is the measurement
    held_broker = count.lowest(hold_from + 1.5) - baseline
    assert broker.pid is not None
    rss = _rss_mb(broker.pid)
    stats = _merge([w.stop() for w in workers])
    return {
        "bare_connections": n,
        "bare_connected": stats.connected,
        "bare_held_broker": held_broker,
        "bare_lost": stats.lost,
        "bare_connect_failures": stats.connect_failures,
        "bare_all_connected": reached,
        "bare_ramp_seconds": round(ramp_s, 1),
        "bare_hold_seconds": options.bare_hold_s,
        "bare_keepalive_seconds": timing.keepalive_s,
        "broker_rss_mb_bare": round(rss, 1),
    }


@dataclass
class Rig:
    """The broker, the gateway process and what watches them."""

    broker: MosquittoBroker
    gateway: GatewayProcess
    db_path: Path
    count: BrokerCount
    poller: PresencePoller


@dataclass
class Usage:
    """CPU and run-queue time of the gateway and the broker over a window."""

    rig: Rig
    started: float = field(default_factory=time.time)
    marks: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        self.marks = self._read()

    def _read(self) -> tuple[float, float, float]:
        gateway, broker = self.rig.gateway.pid, self.rig.broker.pid or 0
        return cpu_seconds(gateway), _runqueue_wait_seconds(gateway), cpu_seconds(broker)

    def ratios(self) -> dict[str, float]:
        """Each as a fraction of one core over the window."""
        window = time.time() - self.started
        now = self._read()
        gateway, waited, broker = ((b - a) / window for a, b in zip(self.marks, now, strict=True))
        return {
            "steady_seconds": round(window, 1),
            "ratio_gateway_cpu": round(gateway, 3),
            "ratio_gateway_runqueue_wait": round(waited, 3),
            "ratio_broker_cpu": round(broker, 3),
        }


async def _kiosk_phase(
    options: Options, rig: Rig, idents: list[KioskIdentity], owned: list[list[str]]
) -> dict[str, Any]:
    broker, poller = rig.broker, rig.poller
    base_clients = await rig.count.fresh(time.time())  # the gateway and the bench itself
    plans, doomed = _kiosk_plans(options, broker.host, broker.port, idents, owned)
    workers = _start_workers(plans)
    # ---- 1. ramp and hold
    t0 = _go(workers)
    all_online = await _until(
        lambda: sum(poller.presence().values()) >= options.kiosks,
        options.kiosks / options.ramp_per_s + 60,
        every_s=0.2,
    )
    ramp_s = time.time() - t0
    online_after_ramp = sum(poller.presence().values())
    usage = Usage(rig)
    await asyncio.sleep(options.seconds)  # the steady state is the measurement
    steady = usage.ratios()
    held = rig.count.lowest(usage.started + 1.5) - base_clients
    gateway_rss = _rss_mb(rig.gateway.pid)
    # ---- 2. kill a slice uncleanly
    doomed_keys = {k.key for k in doomed}
    killed_at = time.time()
    os.kill(workers[0].process.pid or 0, signal.SIGKILL)
    marked = await _until(
        lambda: {k for k, up in poller.presence().items() if not up} >= doomed_keys, 60
    )
    lwt_s = time.time() - killed_at
    offline = {k for k, up in poller.presence().items() if not up}
    # ---- stop the rest cleanly; collect
    stats = _merge([w.stop() for w in workers[1:]])
    poller.stop()
    stamped, visible = _heartbeat_latencies(stats.statuses, poller.seen)
    with sqlite3.connect(f"file:{rig.db_path}?mode=ro", uri=True) as db:
        in_tote = db.execute("SELECT count(*) FROM returns WHERE state = 'in_tote'").fetchone()
        dead = db.execute("SELECT count(*) FROM dead_letters").fetchone()
    survivors = options.kiosks - len(doomed)
    return {
        "kiosks": options.kiosks,
        "kiosks_held_broker": held,
        "kiosks_connected": stats.connected + len(doomed),
        "kiosk_connect_failures": stats.connect_failures,
        "kiosks_lost": stats.lost,
        "ramp_seconds": round(ramp_s, 1),
        "ratio_online_in_db_after_ramp": round(online_after_ramp / options.kiosks, 4),
        "all_online_in_db": all_online,
        "ratio_store_config_received": round(len(stats.configs) / survivors, 4),
        **steady,
        "gateway_rss_mb": round(gateway_rss, 1),
        "heartbeat_every_seconds": options.timing.heartbeat_s,
        "status_messages_per_s": round(options.kiosks / options.timing.heartbeat_s, 1),
        "heartbeat_to_db_p50_ms": round(_pct(stamped, 0.5), 1),
        "heartbeat_to_db_p99_ms": round(_pct(stamped, 0.99), 1),
        "heartbeat_visible_p50_ms": round(_pct(visible, 0.5), 1),
        "heartbeat_visible_p99_ms": round(_pct(visible, 0.99), 1),
        "heartbeats_matched": len(stamped),
        "dropoffs_sent": stats.dropoffs_sent,
        "dropoffs_acked": stats.dropoffs_acked,
        "dropoffs_in_tote_in_db": int(in_tote[0]),
        "dropoff_ack_p50_ms": round(_pct(stats.ack_ms, 0.5), 1),
        "dropoff_ack_p99_ms": round(_pct(stats.ack_ms, 0.99), 1),
        "commands_answered": stats.commands,
        "dead_letters": int(dead[0]),
        "killed": len(doomed),
        "lwt_all_marked_offline": marked,
        "lwt_offline_exact": offline == doomed_keys,
        "lwt_wrongly_offline": len(offline - doomed_keys),
        "lwt_to_db_seconds": round(lwt_s, 2),
    }


async def run(options: Options) -> dict[str, Any]:
    """The whole benchmark; its results."""
    started = time.time()
    fd_limit = _raise_fd_limit()
    gateway_core, other_cores = _cores()
    os.sched_setaffinity(0, other_cores)  # the broker and the workers inherit this
    tmp = Path(tempfile.mkdtemp(prefix="dropline-fleet-"))
    broker = MosquittoBroker(tmp / "mosquitto", options=["max_connections -1", "sys_interval 1"])
    await broker.start()
    idents = _identities(options.kiosks)
    db_path = tmp / "gateway.sqlite3"
    config_path = tmp / "gateway.toml"
    http_port = free_port()
    stores = sorted({ident.store for ident in idents})
    config_path.write_text(_gateway_toml(db_path, http_port, broker.port, stores))
    config = GatewayConfig.load(config_path)
    window = options.seconds + options.kiosks / options.ramp_per_s
    per_kiosk = max(2, math.ceil(window / options.timing.dropoff_every_s * 2 + 2))
    owned = await _authorize_returns(db_path, config, idents, per_kiosk)
    gateway = GatewayProcess(config, tmp, "gateway", cpus={gateway_core})
    rig = Rig(broker, gateway, db_path, BrokerCount(), PresencePoller(db_path))
    watcher = asyncio.create_task(rig.count.watch(broker.host, broker.port))
    result: dict[str, Any] = {}
    try:
        await gateway.start()
        rig.poller.start()
        result |= await _kiosk_phase(options, rig, idents, owned)
        if options.connections:
            result |= await _bare_phase(options, broker, rig.count)
    finally:
        await gateway.stop()
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await broker.stop()
        if not options.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return result | {
        "fd_limit": fd_limit,
        "gateway_core": gateway_core,
        "seconds": round(time.time() - started, 1),
        "machine": describe(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kiosks", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=10_000, help="bare; 0 skips")
    parser.add_argument("--seconds", type=float, default=60.0, help="steady state with kiosks")
    parser.add_argument("--kill-ratio", type=float, default=0.1)
    parser.add_argument("--heartbeat", type=float, default=10.0, help="seconds between")
    parser.add_argument("--dropoff-every", type=float, default=60.0, help="mean, per kiosk")
    parser.add_argument("--ramp", type=float, default=100.0, help="kiosks connecting per s")
    parser.add_argument("--bare-ramp", type=float, default=1000.0)
    parser.add_argument("--bare-hold", type=float, default=20.0)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    options = Options(
        kiosks=args.kiosks,
        connections=args.connections,
        seconds=args.seconds,
        kill_ratio=args.kill_ratio,
        timing=Timing(heartbeat_s=args.heartbeat, dropoff_every_s=args.dropoff_every),
        ramp_per_s=args.ramp,
        bare_ramp_per_s=args.bare_ramp,
        bare_hold_s=args.bare_hold,
        keep=args.keep,
    )
    print(json.dumps(asyncio.run(run(options))))


if __name__ == "__main__":
    main()
