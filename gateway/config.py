"""Gateway configuration: merchants, stores, consolidation rules, carrier and payment endpoints.

The demo builds one in code; a deployment loads TOML (``deploy/gateway.example.toml``).
"""

import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from protocol.ids import ID_PATTERN


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RefundPolicy(StrEnum):
    """When a merchant's shoppers get their money back (DESIGN §2 flow 7)."""

    ON_DROPOFF = "on_dropoff"
    ON_RECEIPT = "on_receipt"
    MANUAL = "manual"


class MerchantSettings(_Model):
    """A merchant the gateway serves."""

    id: str = Field(pattern=r"^[a-z0-9-]{1,16}$")
    name: str
    refund_policy: RefundPolicy = RefundPolicy.ON_RECEIPT
    currency: str = "CNY"


class AddressSettings(_Model):
    """A postal address (sender or warehouse)."""

    name: str
    phone: str
    province: str
    city: str
    district: str
    street: str


class StoreSettings(_Model):
    """A store with kiosks."""

    id: str = Field(pattern=ID_PATTERN)
    name: str
    address: AddressSettings
    carrier: str = "kdniao"


class ConsolidationRules(_Model):
    """When a store's open tote closes (DESIGN §2 flow 5)."""

    max_items: int = Field(default=10, ge=1)
    max_age_s: float = Field(default=86_400.0, gt=0)
    est_item_weight_kg: float = 1.0


class KdniaoSettings(_Model):
    """The aggregated carrier API."""

    base_url: str
    ebusiness_id: str
    app_key: str
    timeout_s: float = 5.0


class StripeSettings(_Model):
    """A Stripe-style refunds API."""

    base_url: str
    api_key: str
    timeout_s: float = 5.0


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


class GatewayConfig(_Model):
    """Everything the gateway needs to start."""

    database: str = Field(min_length=1)
    """A SQLite file path (the embedded default) or a ``postgresql://`` URL, optionally
    with ``?schema=name``."""
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    public_url: str | None = None
    broker: BrokerSettings = BrokerSettings()
    merchants: list[MerchantSettings]
    stores: list[StoreSettings]
    warehouse: AddressSettings
    consolidation: ConsolidationRules = ConsolidationRules()
    kdniao: KdniaoSettings
    stripe: StripeSettings
    voucher_ttl_s: int = 14 * 86_400
    tick_s: float = 1.0
    ingest_batch: int = 500

    @classmethod
    def load(cls, path: Path) -> "GatewayConfig":
        """Read a TOML config file."""
        with path.open("rb") as f:
            return cls.model_validate(tomllib.load(f))
