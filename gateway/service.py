"""The gateway process: wires storage, MQTT, the REST API, carriers, payments and timers."""

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections import Counter
from typing import Any

import aiohttp
from aiohttp import web

from gateway import (
    carrier_exceptions,
    commands,
    consolidation,
    home_pickup,
    kiosk_flows,
    refunds,
)
from gateway.api import make_app
from gateway.applier import Applier
from gateway.carrier_choice import CarrierChooser
from gateway.carriers.base import Carrier
from gateway.carriers.kdniao import KdniaoCarrier
from gateway.carriers.resilience import CircuitBreaker, Resilience, RetryPolicy
from gateway.carriers.sf_express import SfExpressCarrier
from gateway.commands import CommandDispatcher
from gateway.config import BreakerSettings, GatewayConfig, RetrySettings
from gateway.database import Database, open_database
from gateway.dropoffs import DropoffDesk
from gateway.faults import FaultLog
from gateway.home_pickup import HomePickupDesk
from gateway.ingest import Ingest
from gateway.keys import SigningKeys
from gateway.mqtt import Batch, GatewayLink, GatewayLinkDownError
from gateway.notifications import NotificationDispatcher, Renderer
from gateway.notifiers.registry import make_notifiers
from gateway.payments.registry import make_providers
from gateway.refunds import RefundDesk
from gateway.shipping import ShippingDesk
from gateway.tracking import TrackingDesk
from gateway.webhooks import WebhookDispatcher
from protocol import envelope, topics
from protocol.messages import Ack, StoreConfig

log = logging.getLogger(__name__)


class Gateway:
    """One gateway process. ``start()`` brings it up; ``stop()`` takes it down cleanly."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.metrics: Counter[str] = Counter()
        self._db: Database | None = None
        self._keys: SigningKeys | None = None
        self._http: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wakeup = asyncio.Event()
        self._outbound_wakeup = asyncio.Event()
        self._ack_seq = 0
        self.carriers: dict[str, Carrier] = {}
        self.url = ""

    # ---- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Open storage, connect to carriers, payments and the broker, serve HTTP."""
        cfg = self.config
        self._db = await open_database(cfg.database)
        await self._seed()
        await refunds.configure(self._db, cfg.merchants)
        self._keys = await SigningKeys.load_or_create(self._db)
        self._http = aiohttp.ClientSession()
        self.carriers = self._make_carriers(self._http)
        self.refunds = RefundDesk(self._db, make_providers(cfg, self._http))
        await self.refunds.recover_after_restart()
        self.webhooks = WebhookDispatcher(self._db, self._http, cfg.webhooks)
        self.notifications = NotificationDispatcher(
            self._db,
            make_notifiers(cfg.notifications, self._http),
            Renderer(cfg.base_url, timezone=cfg.consolidation.timezone),
            cfg.notifications,
        )
        self.tracking = TrackingDesk(self._db, cfg.tracking, self.carriers)
        chooser = CarrierChooser.from_config(cfg)
        self.shipping = ShippingDesk(self._db, cfg, self.carriers, chooser, self.tracking)
        self.home_pickups = HomePickupDesk(self._db, cfg, self.carriers, chooser)
        self.ingest = self._make_ingest()
        self.dispatcher = CommandDispatcher(self._db)
        self.link = GatewayLink(
            cfg.broker,
            client_id=f"gateway-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}",
            on_batch=self._on_batch,
            on_connect=self._on_connect,
            on_poison=self.ingest.quarantine,
            batch_max=cfg.ingest_batch,
        )
        self.applier = Applier(
            self.ingest,
            batch=cfg.apply_batch,
            lag_limit=cfg.apply_lag_limit,
            max_lag_s=cfg.apply_max_lag_s,
            ingest_idle=self.link.idle,
            on_work=self.wake,
        )
        self.applier.wake()  # what was stored but not applied before a restart
        await self._serve_http()
        self._tasks = [
            asyncio.create_task(self.link.run(), name="gateway-mqtt"),
            asyncio.create_task(self.applier.run(), name="gateway-applier"),
            asyncio.create_task(self._timers(), name="gateway-timers"),
            asyncio.create_task(self._outbound_timers(), name="gateway-outbound"),
        ]
        log.info("gateway listening on %s", self.url)

    def _make_ingest(self) -> Ingest:
        ingest = Ingest(self.db)
        self.dropoffs = DropoffDesk(self.config.consolidation)
        self.faults = FaultLog()
        ingest.on("dropoff", self.dropoffs.apply)
        ingest.on("cmd_result", commands.record_results)
        ingest.on("fault", self.faults.record_faults)
        ingest.on("scan_rejected", self.faults.count_rejections)
        for event_type in kiosk_flows.EVENT_TYPES | kiosk_flows.LIVE_TYPES:
            ingest.on(event_type, kiosk_flows.apply_all)
        return ingest

    def _make_carriers(self, session: aiohttp.ClientSession) -> dict[str, Carrier]:
        """The carrier adapters the configuration names (the one place they are chosen)."""
        carriers: dict[str, Carrier] = {}
        if (k := self.config.kdniao) is not None:
            carriers["kdniao"] = KdniaoCarrier(
                k.base_url,
                k.ebusiness_id,
                k.app_key,
                session,
                shipper_code=k.default_shipper_code,
                timeout_s=k.timeout_s,
                resilience=_resilience("kdniao", k.retry, k.breaker),
            )
        if (sf := self.config.sf_express) is not None:
            carriers["sf"] = SfExpressCarrier(
                sf.base_url,
                sf.partner_id,
                sf.checkword,
                session,
                monthly_card=sf.monthly_card,
                express_type=sf.default_express_type,
                timeout_s=sf.timeout_s,
                resilience=_resilience("sf", sf.retry, sf.breaker),
            )
        return carriers

    async def _serve_http(self) -> None:
        self._runner = web.AppRunner(make_app(self), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.http_host, self.config.http_port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        port = sockets[0].getsockname()[1] if sockets else self.config.http_port
        self.url = f"http://{self.config.http_host}:{port}"

    async def stop(self) -> None:
        """Stop timers, MQTT and HTTP; close storage."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()
        if self._db is not None:
            await self._db.close()

    async def _seed(self) -> None:
        async with self.db.transaction() as tx:
            for m in self.config.merchants:
                await tx.execute(
                    "INSERT INTO merchants (id, name, refund_policy, currency) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET name = excluded.name, "
                    "refund_policy = excluded.refund_policy, currency = excluded.currency",
                    (m.id, m.name, m.refund_policy.value, m.currency),
                )
            for s in self.config.stores:
                await tx.execute(
                    "INSERT INTO stores (id, name) VALUES (?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET name = excluded.name",
                    (s.id, s.name),
                )

    # ---- accessors ----------------------------------------------------------------------

    @property
    def db(self) -> Database:
        """The gateway database (after :meth:`start`)."""
        assert self._db is not None, "gateway not started"
        return self._db

    @property
    def keys(self) -> SigningKeys:
        """The voucher signing keys (after :meth:`start`)."""
        assert self._keys is not None, "gateway not started"
        return self._keys

    @property
    def broker_connected(self) -> bool:
        """True while the MQTT link is up."""
        return self.link.connected.is_set()

    def wake(self) -> None:
        """New work was committed: run the timers now rather than at the next tick."""
        self._wakeup.set()
        self._outbound_wakeup.set()

    # ---- MQTT ---------------------------------------------------------------------------

    async def _on_connect(self) -> None:
        await self.publish_store_configs()
        await self._dispatch_commands()

    async def publish_store_configs(self) -> None:
        """Publish every store's config, retained, bumping its version when it changed."""
        for store in self.config.stores:
            config = await self._store_config(store.id)
            env = envelope.make(config, store=store.id, device="gateway", seq=0, session=0)
            await self.link.publish(
                topics.store_config(store.id), envelope.encode(env), retain=True
            )

    async def _store_config(self, store: str) -> StoreConfig:
        """The store's config; its version goes up whenever its content changes."""
        keys = self.keys.public_texts()
        async with self.db.transaction() as tx:
            revoked = await tx.fetchall(
                # Those that had a voucher: a return rejected in review never had one.
                "SELECT id FROM returns WHERE state = 'cancelled' AND voucher != '' "
                "AND expires_at > ? ORDER BY id",
                (time.time(),),
            )
            content = {"voucher_keys": keys, "revoked_returns": [str(r[0]) for r in revoked]}
            content.update(await kiosk_flows.config_extras(tx, store))
            row = await tx.fetchone(
                "SELECT config_version, config_body FROM stores WHERE id = ?" + tx.for_update(),
                (store,),
            )
            version, body = (int(row[0]), row[1]) if row else (0, None)
            text = json.dumps(content, sort_keys=True)
            if text != body:
                version += 1
                await tx.execute(
                    "UPDATE stores SET config_version = ?, config_body = ? WHERE id = ?",
                    (version, text, store),
                )
        return StoreConfig(store=store, version=version, **content)

    async def _on_batch(self, batch: Batch) -> None:
        await self.applier.room()
        result = await self.ingest.handle(batch)
        try:
            self._publish_acks(result.acks)
        except GatewayLinkDownError as exc:
            # Committed all the same: the kiosks resend and get their ack from the duplicate.
            log.info("acks wait for the kiosks' retries: %s", exc)
        self.applier.stored(result.new)

    def _publish_acks(self, acks: dict[tuple[str, str], list[str]]) -> None:
        """Application acks go out without waiting for PUBACKs: a lost ack costs a resend."""
        for (store, device), ids in acks.items():
            for start in range(0, len(ids), 1000):
                self._ack_seq += 1
                ack = Ack(ids=ids[start : start + 1000])
                env = envelope.make(ack, store=store, device=device, seq=self._ack_seq, session=0)
                self.link.publish_nowait(topics.ack(store, device), envelope.encode(env))

    async def _dispatch_commands(self) -> None:
        try:
            await self.dispatcher.dispatch(self.link.publish)
        except GatewayLinkDownError as exc:
            log.info("commands wait for the broker: %s", exc)

    # ---- timers -------------------------------------------------------------------------

    async def _timers(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.tick_s):
                    await self._wakeup.wait()
            self._wakeup.clear()
            try:
                await self._run_due_work()
            except Exception:
                log.exception("timer work failed; will retry at the next tick")
            # Under load every batch wakes us: let wake-ups gather instead of taking the
            # database's writer back to back from ingest.
            await asyncio.sleep(self.config.timers_min_gap_s)

    async def _run_due_work(self) -> None:
        self.applier.wake()  # events another replica stored and could not apply
        async with self.db.transaction() as tx:
            closed = await consolidation.close_due(tx, self.config.consolidation)
        for tote_id, reason in closed:
            log.info("tote %s closed: %s", tote_id, reason)
        await self.ingest.release_stale_gaps(self.config.seq_gap_timeout_s)
        await self.shipping.book_due()
        await self.home_pickups.process_due()
        await kiosk_flows.sync_due(self.db)
        await self.tracking.poll_due()
        await self._dispatch_commands()

    async def _outbound_timers(self) -> None:
        """Refunds, webhooks and customer messages, apart from the kiosk-facing timers so
        that a slow outside service never holds up a tote or a command."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.tick_s):
                    await self._outbound_wakeup.wait()
            self._outbound_wakeup.clear()
            results = await asyncio.gather(
                self.refunds.process_due(),
                self.webhooks.process_due(),
                self.notifications.process_due(),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, Exception):
                    log.error("outbound work failed; will retry", exc_info=result)
            if any(isinstance(r, int) and r > 0 for r in results):
                self._outbound_wakeup.set()  # a refund makes webhooks and messages: go on

    # ---- views --------------------------------------------------------------------------

    async def return_view(
        self, return_id: str, *, base_url: str = "", history: bool = False
    ) -> dict[str, Any] | None:
        """The JSON the API shows for one return."""
        async with self.db.transaction() as tx:
            row = await tx.fetchone(
                "SELECT id, merchant, order_id, state, short_code, voucher, expires_at, method, "
                "size, item_count, amount_minor, currency, store, device, tote_id, created_at, "
                "updated_at, reason, approval_rule, cancel_reason FROM returns WHERE id = ?",
                (return_id,),
            )
            if row is None:
                return None
            refund = await tx.fetchone(
                "SELECT status, provider, provider_refund_id, attempts FROM refunds "
                "WHERE return_id = ?",
                (return_id,),
            )
            lines = (
                await tx.fetchall(
                    "SELECT from_state, to_state, cause_kind, cause_id, at FROM return_history "
                    "WHERE return_id = ? ORDER BY id",
                    (return_id,),
                )
                if history
                else []
            )
            pickup = await home_pickup.view(tx, return_id)
        view = _return_json(row, refund, lines, base_url, history)
        if pickup is not None:
            view["home_pickup"] = pickup
        return view

    async def metrics_view(self) -> dict[str, Any]:
        """Counters and queue depths for operators."""
        stats = self.ingest.stats
        counts = await self.db.fetchall("SELECT state, count(*) FROM returns GROUP BY state")
        dead = await self.db.fetchone("SELECT count(*) FROM dead_letters")
        return {
            "returns_by_state": {str(s): int(n) for s, n in counts},
            "events_received": stats.received,
            "events_stored": stats.stored,
            "events_duplicate": stats.duplicates,
            "dead_letters": dict(stats.dead_letters),
            "dead_letters_total": int(dead[0]) if dead else 0,
            "events_applied": stats.applied,
            "events_waiting_to_apply": self.applier.lag,
            "apply_lag_s": round(self.applier.lag_age(), 3),
            "events_apply_failures": stats.apply_failures,
            "events_late": stats.late,
            "events_waiting_for_gap": await self.ingest.pending_count(),
            "seq_gaps_released": stats.gaps_released,
            "dropoffs_accepted": self.dropoffs.stats.accepted,
            "dropoffs_unexpected": self.dropoffs.stats.unexpected,
            "dropoffs_unknown_return": self.dropoffs.stats.unknown,
            "faults": dict(self.faults.faults),
            "rejected_scans": dict(self.faults.rejected_scans),
            "totes_booked": self.shipping.booked,
            "booking_failures": self.shipping.booking_failures,
            "booking_rejections": self.shipping.booking_rejections,
            "home_pickups_booked": self.home_pickups.booked,
            "home_pickups_cancelled": self.home_pickups.cancelled,
            "home_pickup_failures": self.home_pickups.failures,
            "home_pickup_rejections": self.home_pickups.rejections,
            "tracking_applied": self.tracking.applied,
            "tracking_duplicates": self.tracking.duplicates,
            "tracking_unknown_waybills": self.tracking.unknown_waybills,
            "tracking_polls": self.tracking.polls,
            "tracking_poll_failures": self.tracking.poll_failures,
            "exceptions_opened": self.tracking.exceptions_opened,
            "exceptions_open": await carrier_exceptions.open_count(self.db),
            "carriers": {
                name: {
                    "circuit": c.breaker.state.value,
                    "consecutive_failures": c.breaker.consecutive_failures,
                    "times_opened": c.breaker.times_opened,
                    "calls_refused": c.breaker.calls_refused,
                }
                for name, c in self.carriers.items()
            },
            "refunds_issued": self.refunds.issued,
            "refunds_reconciled": self.refunds.reconciled,
            "refunds_declined": self.refunds.failures,
            "webhooks_delivered": self.webhooks.delivered,
            "webhook_failed_attempts": self.webhooks.failed_attempts,
            "webhooks_dead": self.webhooks.dead,
            "notifications_sent": self.notifications.sent,
            "notification_failed_attempts": self.notifications.failed_attempts,
            "commands_sent": self.dispatcher.sent,
            "commands_expired": self.dispatcher.expired,
            **self.metrics,
        }


def _resilience(carrier: str, retry: RetrySettings, breaker: BreakerSettings) -> Resilience:
    return Resilience(
        CircuitBreaker(
            carrier, failure_threshold=breaker.failure_threshold, cooldown_s=breaker.cooldown_s
        ),
        RetryPolicy(retry.attempts, retry.base_s, retry.max_s, retry.max_retry_after_s),
    )


def _return_json(
    row: tuple[Any, ...],
    refund: tuple[Any, ...] | None,
    lines: list[tuple[Any, ...]],
    base_url: str,
    history: bool,
) -> dict[str, Any]:
    (rid, merchant, order_id, state, code, token, expires_at, method, size, items, amount,
     currency, store, device, tote_id, created_at, updated_at, reason, rule, cancel_reason,
     ) = row  # fmt: skip
    view: dict[str, Any] = {
        "id": rid,
        "merchant": merchant,
        "order_id": order_id,
        "state": state,
        "method": method,
        "size": size,
        "item_count": items,
        "reason": reason,
        "refund_amount": {"amount_minor": amount, "currency": currency},
        "approval_rule": rule,
        "cancel_reason": cancel_reason,
        "voucher": None  # none while in review
        if not token
        else {
            "token": token,
            "short_code": code,
            "short_code_display": f"{code[:4]}-{code[4:8]}-{code[8:]}",
            "expires_at": expires_at,
            "qr_png": f"{base_url}/v1/returns/{rid}/voucher.png",
            "qr_svg": f"{base_url}/v1/returns/{rid}/voucher.svg",
        },
        "dropoff": {"store": store, "device": device} if store else None,
        "tote_id": tote_id,
        "refund": None
        if refund is None
        else {
            "status": refund[0],
            "provider": refund[1],
            "refund_id": refund[2],
            "attempts": refund[3],
        },
        "created_at": created_at,
        "updated_at": updated_at,
    }
    if history:
        view["history"] = [
            {"from": f, "to": t, "cause": {"kind": k, "id": c}, "at": at}
            for f, t, k, c, at in lines
        ]
    return view
