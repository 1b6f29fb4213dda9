"""A whole Dropline installation on one machine: a private Mosquitto, the simulated carriers
(Kdniao and SF Express) and payment service, the gateway, and edge agents on simulated
hardware.

The demo and the end-to-end tests both build on this; nothing here is mocked but the
hardware and the outside services, which live in ``simulator/``.
"""

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import aiohttp

from dropline.broker import MosquittoBroker, free_port
from dropline.gateway_process import GatewayProcess
from edge.config import BrokerSettings as EdgeBrokerSettings
from edge.config import CompartmentPins, EdgeConfig, IndicatorSettings, ScreenSettings, Timeouts
from gateway.config import (
    AddressSettings,
    ApiSettings,
    BackoffSettings,
    BreakerSettings,
    BrokerSettings,
    CarrierChoiceRules,
    CarrierService,
    ConsolidationRules,
    GatewayConfig,
    KdniaoSettings,
    MerchantSettings,
    MerchantSystemSettings,
    NotificationSettings,
    RateZone,
    RefundPolicy,
    RetrySettings,
    SfExpressSettings,
    SmsWebhookSettings,
    SmtpSettings,
    StoreSettings,
    StripeSettings,
    TrackingSettings,
    WebhookSettings,
)
from gateway.service import Gateway
from protocol.sizes import SizeClass
from simulator.carrier_http import CarrierKnobs
from simulator.duplicates import EventDuplicator, PushDuplicator
from simulator.kdniao import KdniaoSimulator
from simulator.kiosk import SimulatedKiosk, build_kiosk
from simulator.merchant_system import MerchantKnobs, MerchantSystemSimulator
from simulator.payments import PaymentKnobs, PaymentsSimulator
from simulator.sf_express import SfExpressSimulator
from simulator.sms import SmsGatewaySimulator
from simulator.smtp import SmtpServerSimulator

log = logging.getLogger(__name__)

WAREHOUSE = AddressSettings(
    name="Dropline Returns Warehouse",
    phone="021-5555-0100",
    province="上海市",
    city="上海市",
    district="嘉定区",
    street="安亭镇 1 号仓",
)


def _site(phone: str, province: str, city: str, district: str, street: str) -> AddressSettings:
    return AddressSettings(
        name="", phone=phone, province=province, city=city, district=district, street=street
    )


STORE_SITES: list[tuple[AddressSettings, tuple[str, ...]]] = [
    (_site("021-5555-0101", "上海市", "上海市", "静安区", "南京西路 1 号"), ()),
    (_site("020-5555-0102", "广东省", "广州市", "天河区", "天河路 2 号"), ("sf",)),
    (_site("0991-555-0103", "新疆维吾尔自治区", "乌鲁木齐市", "天山区", "解放北路 3 号"), ()),
]
"""Where the simulated stores are and what they prefer, in turn: one near the warehouse (the
cheapest service wins), one that prefers SF, one in a remote province (EMS through Kdniao)."""

DEMO_SERVICES = CarrierChoiceRules(
    services=[
        CarrierService(
            id="kdniao-yto",
            carrier="kdniao",
            product="YTO",
            zones=[
                RateZone(
                    provinces=["上海", "江苏", "浙江", "安徽"], first_kg=6, per_extra_kg=2, days=2
                ),
                RateZone(first_kg=10, per_extra_kg=4, days=4),
            ],
        ),
        CarrierService(
            id="kdniao-ems",
            carrier="kdniao",
            product="EMS",
            zones=[RateZone(first_kg=18, per_extra_kg=6, days=5)],
        ),
        CarrierService(
            id="kdniao-yzpy",
            carrier="kdniao",
            product="YZPY",
            zones=[RateZone(first_kg=12, per_extra_kg=3, days=7)],
        ),
        CarrierService(
            id="sf-standard",
            carrier="sf",
            product="2",
            zones=[RateZone(first_kg=14, per_extra_kg=6, days=2)],
        ),
    ],
    remote_services=["kdniao-ems", "kdniao-yzpy"],
)
"""A small rate table for the simulated carriers."""

MAX_COMPARTMENTS = 12
"""A Pi's GPIO 2–25 give 12 relay/sensor pairs (relays on 2–13, door sensors on 14–25);
GPIO 0, 1 and 26 drive the green and red LEDs and the buzzer."""


@dataclass
class SystemOptions:
    """The size and speed of the simulated installation."""

    stores: int = 1
    kiosks_per_store: int = 2
    compartments_per_kiosk: int = 12  # at most MAX_COMPARTMENTS
    tote_max_items: int = 10
    tote_max_age_s: float = 3.0
    refund_policy: RefundPolicy = RefundPolicy.ON_RECEIPT
    tracking_delays_s: tuple[float, ...] = (0.05, 0.05, 0.05)
    tick_s: float = 0.2
    ack_timeout_s: float = 5.0
    camera_fps: float = 15.0
    carrier_knobs: CarrierKnobs = field(default_factory=CarrierKnobs)  # Kdniao
    sf_knobs: CarrierKnobs = field(default_factory=CarrierKnobs)
    carrier_timeout_s: float = 5.0
    carrier_retry: RetrySettings = field(default_factory=RetrySettings)
    carrier_breaker: BreakerSettings = field(default_factory=BreakerSettings)
    tracking: TrackingSettings = field(
        default_factory=lambda: TrackingSettings(
            quiet_after_s=30.0, poll_every_s=5.0, silent_after_s=600.0
        )
    )
    payment_knobs: PaymentKnobs = field(default_factory=PaymentKnobs)
    payment_timeout_s: float = 5.0
    database: str | None = None  # the gateway's; None: a SQLite file in the workdir
    kiosk_mode: Literal["locker", "counter", "both"] = "locker"
    screen: bool = True
    door_close_s: float = 5.0
    left_open_give_up_s: float = 30.0
    refund_provider: Literal["stripe", "merchant_system"] = "stripe"
    merchant_knobs: MerchantKnobs = field(default_factory=MerchantKnobs)
    review_above_minor: int | None = None
    webhook_retry: BackoffSettings = field(
        default_factory=lambda: BackoffSettings(base_s=0.2, max_s=5.0, max_attempts=10)
    )
    duplicate_deliveries: bool = False  # every kiosk event and carrier push arrives twice
    replicas: int = 1  # gateways sharing the event stream; more than one wants PostgreSQL


Kiosk = SimulatedKiosk
"""One simulated kiosk (kept as the demo's name for it)."""


class LocalSystem:
    """Starts and stops every part; tests and the demo drive it through its REST API."""

    def __init__(self, workdir: Path, options: SystemOptions | None = None) -> None:
        self.workdir = workdir
        self.options = options or SystemOptions()
        self.broker = MosquittoBroker(workdir / "mosquitto")
        self.kiosks: list[Kiosk] = []
        self.merchant = "acme"
        self._http: aiohttp.ClientSession | None = None
        self._operator: aiohttp.ClientSession | None = None
        self.admin_key = "op_" + secrets.token_urlsafe(32)
        self.tenant_key = ""
        self.gateway: Gateway | None = None
        self.kdniao: KdniaoSimulator | None = None
        self.sf: SfExpressSimulator | None = None
        self.payments: PaymentsSimulator | None = None
        self.merchant_system: MerchantSystemSimulator | None = None
        self.sms: SmsGatewaySimulator | None = None
        self.smtp: SmtpServerSimulator | None = None
        self.event_duplicator: EventDuplicator | None = None
        self.push_duplicators: list[PushDuplicator] = []
        self.replicas: list[GatewayProcess] = []
        """Gateways beyond the first, each its own process (``SystemOptions.replicas``)."""

    # ---- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Bring everything up and wait until every kiosk has its store config."""
        opts = self.options
        await self.broker.start()
        api_key = "sk_test_" + secrets.token_hex(8)
        self.payments = PaymentsSimulator(
            api_key, webhook_secret=secrets.token_hex(16), knobs=opts.payment_knobs
        )
        payments_url = await self.payments.start()
        outside = await self._start_merchant_side()
        gateway_port = free_port()
        pushes = f"http://127.0.0.1:{gateway_port}/v1/carriers"
        if opts.duplicate_deliveries:
            self.event_duplicator = EventDuplicator(self.broker.port)
            await self.event_duplicator.start()
        kdniao = KdniaoSettings(
            base_url="", ebusiness_id="1234567", app_key=secrets.token_hex(16),
            timeout_s=opts.carrier_timeout_s, retry=opts.carrier_retry,
            breaker=opts.carrier_breaker,
        )  # fmt: skip
        self.kdniao = KdniaoSimulator(
            kdniao.ebusiness_id,
            kdniao.app_key,
            push_url=await self._push_url(f"{pushes}/kdniao/push"),
            push_delays_s=opts.tracking_delays_s,
            knobs=opts.carrier_knobs,
        )
        kdniao = kdniao.model_copy(update={"base_url": await self.kdniao.start()})
        sf = SfExpressSettings(
            base_url="", partner_id="DROPLINE", checkword=secrets.token_hex(16),
            monthly_card="7551234567", timeout_s=opts.carrier_timeout_s,
            retry=opts.carrier_retry, breaker=opts.carrier_breaker,
        )  # fmt: skip
        self.sf = SfExpressSimulator(
            sf.partner_id,
            sf.checkword,
            push_url=await self._push_url(f"{pushes}/sf/push"),
            push_delays_s=opts.tracking_delays_s,
            knobs=opts.sf_knobs,
        )
        sf = sf.model_copy(update={"base_url": await self.sf.start()})
        config = self._gateway_config(gateway_port, kdniao, sf, payments_url, api_key)
        self.gateway = Gateway(config.model_copy(update=outside))
        await self.gateway.start()
        for index in range(1, opts.replicas):
            replica = GatewayProcess(
                self.gateway.config.model_copy(update={"http_port": free_port()}),
                self.workdir / "replicas",
                f"gateway-{index + 1}",
            )
            self.replicas.append(replica)
            await replica.start()
        self._operator = aiohttp.ClientSession(
            base_url=self.gateway.url, headers={"Authorization": f"Bearer {self.admin_key}"}
        )
        self.tenant_key = await self._create_tenant_key()
        self._http = aiohttp.ClientSession(
            base_url=self.gateway.url, headers={"Authorization": f"Bearer {self.tenant_key}"}
        )
        await self._register_webhooks()
        for store in self.store_ids:
            for k in range(opts.kiosks_per_store):
                self.kiosks.append(await self._start_kiosk(store, f"kiosk-{k + 1}"))
        await asyncio.gather(*(k.agent.config_ready.wait() for k in self.kiosks))

    async def _push_url(self, url: str) -> str:
        """Where a carrier simulator pushes tracking: the gateway, or a relay that delivers
        every push twice at once (``duplicate_deliveries``)."""
        if not self.options.duplicate_deliveries:
            return url
        relay = PushDuplicator(url)
        self.push_duplicators.append(relay)
        return await relay.start()

    async def _start_merchant_side(self) -> dict[str, Any]:
        """The merchant's own system, the SMS gateway and the mail server; returns the
        gateway settings that point at them."""
        opts = self.options
        refund_secret = secrets.token_hex(16)
        self.merchant_system = MerchantSystemSimulator(refund_secret, knobs=opts.merchant_knobs)
        merchant_url = await self.merchant_system.start()
        sms_secret = secrets.token_hex(16)
        self.sms = SmsGatewaySimulator(sms_secret)
        sms_url = await self.sms.start()
        self.smtp = SmtpServerSimulator()
        smtp_port = await self.smtp.start()
        merchant = MerchantSettings(
            id=self.merchant,
            name="ACME Shop",
            refund_policy=opts.refund_policy,
            refund_provider=opts.refund_provider,
            merchant_system=MerchantSystemSettings(
                url=merchant_url, secret=refund_secret, timeout_s=opts.payment_timeout_s
            ),
            review_above_minor=opts.review_above_minor,
        )
        return {
            "merchants": [merchant],
            "webhooks": WebhookSettings(timeout_s=5.0, retry=opts.webhook_retry),
            "notifications": NotificationSettings(
                smtp=SmtpSettings(port=smtp_port),
                sms=SmsWebhookSettings(url=sms_url, secret=sms_secret),
                retry=BackoffSettings(base_s=0.2, max_s=5.0, max_attempts=8),
            ),
        }

    async def _create_tenant_key(self) -> str:
        """The operator creates the merchant's API key, as a deployment would."""
        async with self.operator.post(
            f"/v1/tenants/{self.merchant}/keys", json={"label": "demo shop"}
        ) as resp:
            data = await resp.json()
            if resp.status != 201:
                raise RuntimeError(f"creating the tenant key failed: {data}")
        return str(data["key"])

    async def _register_webhooks(self) -> None:
        """The merchant registers its webhook receiver through the REST API."""
        assert self.merchant_system is not None
        url = f"{self.merchant_system_url}/webhooks"
        async with self.http.post(
            f"/v1/merchants/{self.merchant}/webhook-endpoints", json={"url": url}
        ) as resp:
            data = await resp.json()
            if resp.status != 201:
                raise RuntimeError(f"registering the webhook endpoint failed: {data}")
        self.merchant_system.webhook_secrets = [data["secret"]]

    @property
    def merchant_system_url(self) -> str:
        """The simulated merchant system's base URL."""
        assert self.gateway is not None
        ms = self.gateway.config.merchants[0].merchant_system
        assert ms is not None
        return ms.url

    def refunds_paid(self, return_id: str) -> int:
        """How many refunds the provider that pays this merchant made for a return, counted
        at the simulated provider."""
        if self.options.refund_provider == "merchant_system":
            assert self.merchant_system is not None
            return self.merchant_system.refund_count(return_id)
        assert self.payments is not None
        return self.payments.refund_count(return_id)

    @property
    def store_ids(self) -> list[str]:
        """The ids of the simulated stores."""
        return [f"store-{i + 1}" for i in range(self.options.stores)]

    def store_site(self, store: str) -> tuple[AddressSettings, tuple[str, ...]]:
        """The address and carrier preference of a simulated store."""
        address, prefer = STORE_SITES[self.store_ids.index(store) % len(STORE_SITES)]
        return address.model_copy(update={"name": f"Dropline {store}"}), prefer

    def _gateway_config(
        self,
        port: int,
        kdniao: KdniaoSettings,
        sf: SfExpressSettings,
        payments_url: str,
        api_key: str,
    ) -> GatewayConfig:
        opts = self.options
        return GatewayConfig(
            database=self.options.database or str(self.workdir / "gateway.sqlite3"),
            http_port=port,
            broker=BrokerSettings(
                port=self.broker.port,
                reconnect_s=0.2,
                **({"protocol": "5", "shared_group": "gateways"} if opts.replicas > 1 else {}),
            ),
            merchants=[
                MerchantSettings(
                    id=self.merchant, name="ACME Shop", refund_policy=opts.refund_policy
                )
            ],
            stores=[
                StoreSettings(
                    id=store,
                    name=f"Store {store}",
                    address=self.store_site(store)[0],
                    prefer=list(self.store_site(store)[1]),
                )
                for store in self.store_ids
            ],
            warehouse=WAREHOUSE,
            consolidation=ConsolidationRules(
                max_items=opts.tote_max_items,
                max_age_s=opts.tote_max_age_s,
                daily_cutoff=None,  # the demo's totes close by count and age, whatever the hour
            ),
            kdniao=kdniao,
            sf_express=sf,
            carrier_choice=DEMO_SERVICES,
            tracking=opts.tracking,
            stripe=StripeSettings(
                base_url=payments_url, api_key=api_key, timeout_s=opts.payment_timeout_s
            ),
            tick_s=opts.tick_s,
            api=ApiSettings(admin_key=self.admin_key),
        )

    def _compartments(self) -> list[CompartmentPins]:
        sizes = [SizeClass.S, SizeClass.M, SizeClass.L, SizeClass.XL]
        n = self.options.compartments_per_kiosk
        if not 1 <= n <= MAX_COMPARTMENTS:
            raise ValueError(f"compartments_per_kiosk must be 1..{MAX_COMPARTMENTS}")
        return [
            CompartmentPins(
                id=f"{chr(ord('A') + i // 8)}{i % 8 + 1}",
                size=sizes[min(3, 1 + (i * 3) // n)],
                relay_pin=2 + i,
                sensor_pin=2 + MAX_COMPARTMENTS + i,
            )
            for i in range(n)
        ]

    async def _start_kiosk(self, store: str, device: str) -> Kiosk:
        opts = self.options
        compartments = self._compartments()
        config = EdgeConfig(
            store=store,
            device=device,
            database=self.workdir / f"{store}-{device}.sqlite3",
            broker=EdgeBrokerSettings(port=self.broker.port, reconnect_s=0.2, keepalive_s=5),
            compartments=compartments,
            mode=opts.kiosk_mode,
            relay_pulse_s=0.05,
            indicators=IndicatorSettings(green_pin=0, red_pin=1, buzzer_pin=26),
            timeouts=Timeouts(
                door_open_s=1.0,
                door_close_s=opts.door_close_s,
                left_open_give_up_s=opts.left_open_give_up_s,
                counter_step_s=30.0,
                ack_s=opts.ack_timeout_s,
            ),
            printer=f"png:{self.workdir / 'prints' / store / device}",
            screen=ScreenSettings(enabled=opts.screen, port=0),
        )
        kiosk = build_kiosk(
            config,
            prints=self.workdir / "prints" / store / device,
            camera_fps=opts.camera_fps,
            seed=hash((store, device)) & 0xFFFF,
        )
        await kiosk.start()
        return kiosk

    async def stop(self) -> None:
        """Stop everything, kiosks first."""
        for kiosk in self.kiosks:
            await kiosk.stop()
        self.kiosks = []
        for session in (self._http, self._operator):
            if session is not None:
                await session.close()
        for replica in self.replicas:
            await replica.stop()
        if self.gateway is not None:
            await self.gateway.stop()
        for carrier in (self.kdniao, self.sf):
            if carrier is not None:
                await carrier.stop()
        if self.payments is not None:
            await self.payments.stop()
        for part in (self.merchant_system, self.sms, self.smtp, *self.push_duplicators,
                     self.event_duplicator):  # fmt: skip
            if part is not None:
                await part.stop()
        await self.broker.stop()

    # ---- the merchant's side ------------------------------------------------------------

    @property
    def http(self) -> aiohttp.ClientSession:
        """A client for the gateway's REST API with the merchant's (tenant) key."""
        assert self._http is not None, "system not started"
        return self._http

    @property
    def operator(self) -> aiohttp.ClientSession:
        """A client for the gateway's REST API with the operator key."""
        assert self._operator is not None, "system not started"
        return self._operator

    async def authorize_return(
        self, n: int, *, store: str | None = None, **extra: Any
    ) -> dict[str, Any]:
        """``POST /v1/returns`` for a made-up order; returns the created return's JSON."""
        body: dict[str, Any] = {
            "order_id": f"order-{n:05d}",
            "items": [{"sku": f"SKU-{n % 7}", "name": "T-shirt", "quantity": 1 + n % 2}],
            "reason": ["too small", "damaged", "changed mind"][n % 3],
            "refund": {"amount_minor": 1999 + n, "currency": "CNY"},
            "customer": {
                "name": f"Shopper {n}",
                "email": f"shopper{n}@example.test",
                "phone": f"+86138{n:08d}",
            },
            "size": ["S", "M", "L"][n % 3],
            "stores": [store] if store else [],
        }
        body.update(extra)
        async with self.http.post("/v1/returns", json=body) as resp:
            data: dict[str, Any] = await resp.json()
            if resp.status != 201:
                raise RuntimeError(f"authorize failed: {resp.status} {data}")
            return data

    async def authorize_home_pickup(self, n: int, **extra: Any) -> dict[str, Any]:
        """``POST /v1/returns`` for a return a courier collects at the shopper's address in a
        slot two hours from now (上门取件)."""
        start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
        pickup = {
            "address": {"province": "浙江省", "city": "杭州市", "district": "西湖区",
                        "street": f"文三路 {n} 号"},
            "contact": {"name": f"Shopper {n}", "phone": f"+86139{n:08d}"},
            "slot": {"start": start.isoformat(),
                     "end": (start + timedelta(hours=2)).isoformat()},
        }  # fmt: skip
        return await self.authorize_return(n, method="home_pickup", pickup=pickup, **extra)

    async def get_return(self, return_id: str) -> dict[str, Any]:
        """``GET /v1/returns/{id}``."""
        async with self.http.get(f"/v1/returns/{return_id}") as resp:
            resp.raise_for_status()
            data: dict[str, Any] = await resp.json()
            return data

    async def wait_until(
        self, predicate: Callable[[], Any], timeout_s: float = 60.0, interval_s: float = 0.05
    ) -> None:
        """Poll ``predicate`` (sync or async) until it is true, or raise TimeoutError."""
        async with asyncio.timeout(timeout_s):
            while True:
                result = predicate()
                if asyncio.iscoroutine(result):
                    result = await result
                if result:
                    return
                await asyncio.sleep(interval_s)  # polling a remote state; no event crosses HTTP

    async def states(self, return_ids: list[str]) -> dict[str, str]:
        """Current state of each return."""
        views = await asyncio.gather(*(self.get_return(r) for r in return_ids))
        return {v["id"]: v["state"] for v in views}

    async def wait_for_state(
        self, return_ids: list[str], state: str, timeout_s: float = 60.0
    ) -> None:
        """Wait until every return is in ``state``."""

        async def all_there() -> bool:
            return set((await self.states(return_ids)).values()) == {state}

        await self.wait_until(all_there, timeout_s, interval_s=0.1)


@contextlib.asynccontextmanager
async def running_system(workdir: Path, options: SystemOptions | None = None) -> Any:
    """``async with running_system(path) as system:`` — started, and stopped afterwards."""
    system = LocalSystem(workdir, options)
    try:
        await system.start()
        yield system
    finally:
        await system.stop()
