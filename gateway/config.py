"""Gateway configuration: merchants, stores, consolidation rules, carrier and payment endpoints.

The demo builds one in code; a deployment loads TOML (``deploy/gateway.example.toml``).
"""

import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from protocol.ids import ID_PATTERN


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RefundPolicy(StrEnum):
    """When a merchant's shoppers get their money back (DESIGN §2 flow 7)."""

    ON_DROPOFF = "on_dropoff"
    ON_RECEIPT = "on_receipt"
    MANUAL = "manual"


class MerchantSystemSettings(_Model):
    """A merchant's own refund system, asked by signed webhook (``gateway/payments/
    merchant_system.py`` documents the exchange)."""

    url: str
    """Base URL: refunds are ``POST {url}/refunds``, looked up at ``GET {url}/refunds/{id}``."""
    secret: str = Field(min_length=16)
    timeout_s: float = 5.0


class MerchantSettings(_Model):
    """A merchant the gateway serves."""

    id: str = Field(pattern=r"^[a-z0-9-]{1,16}$")
    name: str
    refund_policy: RefundPolicy = RefundPolicy.ON_RECEIPT
    currency: str = "CNY"
    refund_provider: Literal["stripe", "merchant_system"] = "stripe"
    """Who pays refunds out: the shared Stripe-style account, or the merchant's own system."""
    merchant_system: MerchantSystemSettings | None = None
    review_above_minor: int | None = Field(default=None, ge=0)
    """Refunds above this amount wait for a person's approval whatever the policy."""

    @model_validator(mode="after")
    def _provider_configured(self) -> "MerchantSettings":
        if self.refund_provider == "merchant_system" and self.merchant_system is None:
            raise ValueError("refund_provider merchant_system needs merchant_system settings")
        return self


class AddressSettings(_Model):
    """A postal address (sender or warehouse)."""

    name: str
    phone: str
    province: str
    city: str
    district: str
    street: str


class StoreSettings(_Model):
    """A store with kiosks. ``prefer`` lists carriers or carrier services (ids of
    ``carrier_choice.services``) the store would rather use, best first."""

    id: str = Field(pattern=ID_PATTERN)
    name: str
    address: AddressSettings
    prefer: list[str] = Field(default_factory=list)


class ParcelProfile(_Model):
    """What a parcel of one voucher size class weighs and takes up, for tote planning."""

    weight_kg: float = Field(gt=0)
    volume_l: float = Field(gt=0)


def _default_profiles() -> dict[str, ParcelProfile]:
    return {
        "S": ParcelProfile(weight_kg=0.5, volume_l=3),
        "M": ParcelProfile(weight_kg=1.0, volume_l=10),
        "L": ParcelProfile(weight_kg=3.0, volume_l=30),
        "XL": ParcelProfile(weight_kg=8.0, volume_l=60),
    }


class ToteCost(_Model):
    """The cost rule: ship when waiting for more parcels saves less than the wait costs.

    ``holding_per_item_hour`` prices an hour of a parcel waiting (the shopper's refund, the
    store's space); shipping a tote is estimated as ``ship_base + ship_per_kg × weight``.
    """

    ship_base: float = Field(default=12.0, ge=0)
    ship_per_kg: float = Field(default=1.5, ge=0)
    holding_per_item_hour: float = Field(default=0.05, ge=0)
    min_wait_s: float = Field(default=3600.0, ge=0)


class ConsolidationRules(_Model):
    """When a store's open tote closes (DESIGN §2 flow 5): whichever rule fires first."""

    max_items: int = Field(default=10, ge=1)
    max_weight_kg: float = Field(default=20.0, gt=0)
    max_volume_l: float = Field(default=120.0, gt=0)
    max_age_s: float = Field(default=86_400.0, gt=0)
    daily_cutoff: str | None = Field(default="17:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    """Store-local time after which the day's tote goes, if it holds anything."""
    timezone: str = "Asia/Shanghai"
    cost: ToteCost | None = ToteCost()
    parcels: dict[str, ParcelProfile] = Field(default_factory=_default_profiles)

    def profile(self, size: str) -> ParcelProfile:
        """The planning profile of a size class (unknown sizes count as the largest)."""
        return self.parcels.get(size) or max(self.parcels.values(), key=lambda p: p.volume_l)


class RetrySettings(_Model):
    """Retries of a carrier call that failed without an answer (timeout, 5xx, rate limit)."""

    attempts: int = Field(default=4, ge=1, le=20)
    base_s: float = Field(default=0.2, gt=0)
    max_s: float = Field(default=5.0, gt=0)
    max_retry_after_s: float = Field(default=30.0, ge=0)


class BreakerSettings(_Model):
    """A carrier's circuit breaker: consecutive failures that open it, and its cool-down."""

    failure_threshold: int = Field(default=5, ge=1)
    cooldown_s: float = Field(default=30.0, gt=0)


class KdniaoSettings(_Model):
    """The Kdniao aggregated carrier API."""

    base_url: str
    ebusiness_id: str
    app_key: str
    timeout_s: float = 5.0
    default_shipper_code: str = "YTO"
    retry: RetrySettings = RetrySettings()
    breaker: BreakerSettings = BreakerSettings()


class SfExpressSettings(_Model):
    """The SF Express open platform (丰桥)."""

    base_url: str
    partner_id: str
    checkword: str
    monthly_card: str = ""
    default_express_type: str = "2"
    timeout_s: float = 5.0
    retry: RetrySettings = RetrySettings()
    breaker: BreakerSettings = BreakerSettings()


class RateZone(_Model):
    """Price and transit time for shipments from ``provinces`` (empty: from anywhere else)."""

    provinces: list[str] = Field(default_factory=list)
    first_kg: float = Field(ge=0)  # CNY for the first (started) kilogram
    per_extra_kg: float = Field(default=0.0, ge=0)  # CNY for each further started kilogram
    days: int = Field(ge=0)


class CarrierService(_Model):
    """One product of one carrier with its rate table. ``product`` is the carrier's code:
    Kdniao ``ShipperCode`` (YTO, ZTO, EMS, YZPY, ...) or SF ``expressTypeId``."""

    id: str = Field(pattern=r"^[a-z0-9-]{1,32}$")
    carrier: str
    product: str
    zones: list[RateZone] = Field(min_length=1)
    max_weight_kg: float | None = Field(default=None, gt=0)


DEFAULT_REMOTE_PROVINCES = ["新疆", "西藏", "青海", "内蒙古", "宁夏", "甘肃"]


class CarrierChoiceRules(_Model):
    """How a carrier is chosen (gateway/carrier_choice.py). With no ``services``, each
    configured carrier is one flat-rate service named after it."""

    services: list[CarrierService] = Field(default_factory=list)
    remote_provinces: list[str] = Field(default_factory=lambda: list(DEFAULT_REMOTE_PROVINCES))
    remote_services: list[str] = Field(default_factory=list)  # EMS / China Post service ids
    standard_days: int = Field(default=5, ge=0)
    urgent_days: int = Field(default=2, ge=0)


class TrackingSettings(_Model):
    """Tracking by push, with polling for shipments that have gone quiet."""

    quiet_after_s: float = Field(default=6 * 3600.0, gt=0)  # no news this long: poll
    poll_every_s: float = Field(default=2 * 3600.0, gt=0)  # then poll this often
    poll_batch: int = Field(default=50, ge=1)
    silent_after_s: float = Field(default=3 * 86_400.0, gt=0)  # no news this long: exception


class StripeSettings(_Model):
    """A Stripe-style refunds API."""

    base_url: str
    api_key: str
    timeout_s: float = 5.0


class BackoffSettings(_Model):
    """Exponential backoff with jitter, up to a number of attempts."""

    base_s: float = Field(default=2.0, gt=0)
    max_s: float = Field(default=3600.0, gt=0)
    max_attempts: int = Field(default=10, ge=1)


class WebhookSettings(_Model):
    """Outgoing merchant webhooks."""

    timeout_s: float = Field(default=10.0, gt=0)
    retry: BackoffSettings = BackoffSettings()
    concurrency: int = Field(default=16, ge=1)
    batch: int = Field(default=200, ge=1)
    lease_s: float = Field(default=60.0, gt=0)
    """A claimed delivery becomes due again after this long if its worker died."""
    rotation_grace_s: float = Field(default=86_400.0, ge=0)
    """After a secret rotation, deliveries carry a signature with the old secret this long."""


class SmtpSettings(_Model):
    """The mail server customer e-mails go through."""

    host: str = "127.0.0.1"
    port: int = 25
    sender: str = "Dropline Returns <returns@dropline.invalid>"
    username: str | None = None
    password: str | None = None
    start_tls: bool = False
    use_tls: bool = False
    timeout_s: float = 10.0


class SmsWebhookSettings(_Model):
    """A generic SMS / WeCom-style gateway reached by signed JSON webhook."""

    url: str
    secret: str = Field(min_length=16)
    timeout_s: float = 5.0


class NotificationSettings(_Model):
    """Customer messages and the channels they go through (none configured: none sent)."""

    smtp: SmtpSettings | None = None
    sms: SmsWebhookSettings | None = None
    retry: BackoffSettings = BackoffSettings(base_s=5.0, max_attempts=8)
    concurrency: int = Field(default=8, ge=1)
    lease_s: float = Field(default=120.0, gt=0)


class BrokerSettings(_Model):
    """Where the MQTT broker is."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    reconnect_s: float = 1.0
    keepalive_s: int = 30
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    clean_session: bool = False
    shared_group: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,32}$")
    max_inflight: int = Field(default=1000, ge=1, le=65_000)
    inbox_limit: int = Field(default=20_000, ge=1)
    publish_timeout_s: float = 10.0
    batches_in_flight: int = Field(default=2, ge=1, le=16)


class ApiSettings(_Model):
    """The REST API's operator credential. Tenants' keys live in the database (ADR 0013)."""

    admin_key: str | None = Field(default=None, min_length=32, max_length=256)
    """The operator key (``Authorization: Bearer …``); without it no operator route answers."""


class GatewayConfig(_Model):
    """Everything the gateway needs to start."""

    database: str = Field(min_length=1)
    """A SQLite file path (the embedded default) or a ``postgresql://`` URL, optionally
    with ``?schema=name``."""
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    public_url: str | None = None
    """Where outside systems reach this gateway (callbacks, links); default: host and port."""
    broker: BrokerSettings = BrokerSettings()
    merchants: list[MerchantSettings]
    stores: list[StoreSettings]
    warehouse: AddressSettings
    consolidation: ConsolidationRules = ConsolidationRules()
    kdniao: KdniaoSettings | None = None
    sf_express: SfExpressSettings | None = None
    carrier_choice: CarrierChoiceRules = CarrierChoiceRules()
    tracking: TrackingSettings = TrackingSettings()
    stripe: StripeSettings
    webhooks: WebhookSettings = WebhookSettings()
    notifications: NotificationSettings = NotificationSettings()
    api: ApiSettings = ApiSettings()
    voucher_ttl_s: int = 14 * 86_400
    tick_s: float = 1.0
    timers_min_gap_s: float = Field(default=0.1, ge=0)
    """Least time between two runs of the kiosk-facing timers (tote closing, bookings, syncs,
    commands), however often new work wakes them."""
    ingest_batch: int = Field(default=500, ge=1, le=2000)
    apply_batch: int = Field(default=500, ge=1, le=5000)
    """Stored events applied per transaction by the applier (ADR 0018)."""
    apply_max_lag_s: float = Field(default=10.0, gt=0)
    """How long the applier may leave an event waiting while it lets ingest go first."""
    apply_lag_limit: int = Field(default=100_000, ge=1)
    """Stored events waiting to be applied beyond which the applier stops deferring to
    ingest; at twice this many, ingest waits for the applier (kiosks keep their events)."""
    seq_gap_timeout_s: float = Field(default=60.0, gt=0)
    """How long an event waits for an earlier ``seq`` of its device before it is applied
    regardless (the earlier one is lost, or the kiosk's numbering restarted)."""

    @property
    def carrier_names(self) -> list[str]:
        """The adapters configured: ``kdniao``, ``sf``."""
        names = {"kdniao": self.kdniao, "sf": self.sf_express}
        return [name for name, settings in names.items() if settings is not None]

    @model_validator(mode="after")
    def _carriers_consistent(self) -> "GatewayConfig":
        carriers = self.carrier_names
        if not carriers:
            raise ValueError("configure at least one carrier ([kdniao] or [sf_express])")
        rules = self.carrier_choice
        ids = [s.id for s in rules.services]
        if len(ids) != len(set(ids)):
            raise ValueError("carrier_choice.services ids must be unique")
        for service in rules.services:
            if service.carrier not in carriers:
                raise ValueError(f"service {service.id}: carrier {service.carrier} not configured")
        for sid in rules.remote_services:
            if sid not in ids:
                raise ValueError(f"carrier_choice.remote_services: unknown service {sid}")
        known = set(carriers) | set(ids)
        for store in self.stores:
            for name in store.prefer:
                if name not in known:
                    raise ValueError(f"store {store.id} prefers unknown carrier/service {name}")
        return self

    @property
    def base_url(self) -> str:
        """The gateway's URL as outside systems see it."""
        return (self.public_url or f"http://{self.http_host}:{self.http_port}").rstrip("/")

    @classmethod
    def load(cls, path: Path) -> "GatewayConfig":
        """Read a TOML config file."""
        with path.open("rb") as f:
            return cls.model_validate(tomllib.load(f))
