"""Choosing a carrier service for a shipment, by rules from configuration (DESIGN §2 flow 5).

The rules, in order (each narrows the candidates; none may leave zero):

1. **Serves the lane**: a service quotes a shipment when one of its rate zones covers the
   origin province (returns all go to one warehouse, so the origin sets the distance) and the
   weight is within its limit. Carriers whose circuit breaker is open are left out while
   another carrier can take the shipment.
2. **Remote regions**: when either end is in a remote province, only the remote services
   (EMS / China Post through Kdniao's ShipperCode) are considered, if any serves the lane.
3. **Urgency**: only services whose transit days meet the deadline (standard or urgent); when
   none does, the fastest ones.
4. **Store preference**: the store's preferred carriers or services, in its order, win over
   price (never over the deadline or the remote rule).
5. **Price**: the cheapest of what is left; ties go to the faster, then to configuration order.

Every choice carries the reasons that led to it, stored with the tote for the audit trail.
"""

import math
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum

from gateway.config import CarrierChoiceRules, CarrierService, GatewayConfig, RateZone

_PROVINCE_SUFFIX = re.compile(r"(维吾尔自治区|壮族自治区|回族自治区|自治区|特别行政区|省|市)$")


def province_key(name: str) -> str:
    """A province's short name: ``新疆维吾尔自治区`` → ``新疆``, ``上海市`` → ``上海``."""
    return _PROVINCE_SUFFIX.sub("", name.strip())


class Urgency(StrEnum):
    """How soon the shipment must arrive."""

    STANDARD = "standard"
    URGENT = "urgent"


@dataclass(frozen=True)
class ChoiceRequest:
    """What the rules look at."""

    origin_province: str
    destination_province: str
    weight_kg: float
    urgency: Urgency = Urgency.STANDARD
    prefer: tuple[str, ...] = ()
    deadline_days: int | None = None  # overrides the urgency's deadline


@dataclass(frozen=True)
class Quote:
    """What one service would charge and take for the shipment."""

    service: str
    carrier: str
    product: str
    price: float
    days: int


@dataclass(frozen=True)
class CarrierChoice:
    """The chosen service and why."""

    quote: Quote
    reasons: tuple[str, ...]

    @property
    def carrier(self) -> str:
        """The adapter to use (``kdniao``, ``sf``)."""
        return self.quote.carrier

    @property
    def product(self) -> str:
        """The carrier's product code for the shipment."""
        return self.quote.product

    @property
    def service(self) -> str:
        """The service id from the configuration."""
        return self.quote.service

    def explain(self) -> str:
        """The reasons as one line."""
        return "; ".join(self.reasons)


class NoCarrierError(LookupError):
    """No configured service serves the shipment."""


def price(zone: RateZone, weight_kg: float) -> float:
    """The zone's price: the first kilogram, then every further started kilogram."""
    kilograms = max(1, math.ceil(weight_kg - 1e-9))
    return round(zone.first_kg + zone.per_extra_kg * (kilograms - 1), 2)


def default_services(config: GatewayConfig) -> list[CarrierService]:
    """One flat-rate service per configured carrier, when no rate table is configured."""
    products = {
        "kdniao": config.kdniao.default_shipper_code if config.kdniao else "",
        "sf": config.sf_express.default_express_type if config.sf_express else "",
    }
    return [
        CarrierService(
            id=name, carrier=name, product=products[name], zones=[RateZone(first_kg=0.0, days=3)]
        )
        for name in config.carrier_names
    ]


class CarrierChooser:
    """Applies the rules to a set of services."""

    def __init__(self, rules: CarrierChoiceRules, services: Sequence[CarrierService]) -> None:
        if not services:
            raise ValueError("no carrier services to choose from")
        self._rules = rules
        self._services = list(services)
        self._remote = {province_key(p) for p in rules.remote_provinces}
        self._remote_services = set(rules.remote_services)

    @classmethod
    def from_config(cls, config: GatewayConfig) -> "CarrierChooser":
        """The chooser for a gateway configuration."""
        rules = config.carrier_choice
        return cls(rules, rules.services or default_services(config))

    def quotes(self, req: ChoiceRequest) -> list[Quote]:
        """Every service that serves the shipment, in configuration order."""
        origin = province_key(req.origin_province)
        quotes = []
        for service in self._services:
            if service.max_weight_kg is not None and req.weight_kg > service.max_weight_kg:
                continue
            zone = self._zone(service, origin)
            if zone is not None:
                cost = price(zone, req.weight_kg)
                quotes.append(Quote(service.id, service.carrier, service.product, cost, zone.days))
        return quotes

    def _zone(self, service: CarrierService, origin: str) -> RateZone | None:
        for zone in service.zones:
            if origin in {province_key(p) for p in zone.provinces}:
                return zone
        return next((z for z in service.zones if not z.provinces), None)

    def choose(self, req: ChoiceRequest, *, unavailable: Collection[str] = ()) -> CarrierChoice:
        """The service for the shipment; ``unavailable`` carriers are avoided when possible."""
        quotes = self.quotes(req)
        if not quotes:
            raise NoCarrierError(
                f"no carrier service serves {req.origin_province} at {req.weight_kg:g} kg"
            )
        reasons: list[str] = []
        quotes = self._available(quotes, unavailable, reasons)
        quotes = self._remote_rule(quotes, req, reasons)
        quotes = self._deadline(quotes, req, reasons)
        quotes = self._preference(quotes, req, reasons)
        order = {q.service: i for i, q in enumerate(quotes)}
        best = min(quotes, key=lambda q: (q.price, q.days, order[q.service]))
        reasons.append(f"cheapest: {best.service} {best.price:.2f} CNY, {best.days} day(s)")
        return CarrierChoice(best, tuple(reasons))

    def _available(
        self, quotes: list[Quote], unavailable: Collection[str], reasons: list[str]
    ) -> list[Quote]:
        up = [q for q in quotes if q.carrier not in unavailable]
        if up and len(up) < len(quotes):
            down = sorted({q.carrier for q in quotes} & set(unavailable))
            reasons.append(f"avoiding {', '.join(down)} (circuit open)")
            return up
        return quotes

    def _remote_rule(
        self, quotes: list[Quote], req: ChoiceRequest, reasons: list[str]
    ) -> list[Quote]:
        ends = (province_key(req.origin_province), province_key(req.destination_province))
        remote_end = next((p for p in ends if p in self._remote), None)
        if remote_end is None:
            return quotes
        remote = [q for q in quotes if q.service in self._remote_services]
        if not remote:
            reasons.append(f"{remote_end} is remote, but no remote service serves it")
            return quotes
        reasons.append(f"{remote_end} is remote: {', '.join(q.service for q in remote)} only")
        return remote

    def _deadline(self, quotes: list[Quote], req: ChoiceRequest, reasons: list[str]) -> list[Quote]:
        deadline = req.deadline_days
        if deadline is None:
            urgent = req.urgency is Urgency.URGENT
            deadline = self._rules.urgent_days if urgent else self._rules.standard_days
        meeting = [q for q in quotes if q.days <= deadline]
        if meeting:
            reasons.append(f"{len(meeting)} service(s) meet the {deadline}-day deadline")
            return meeting
        fastest = min(q.days for q in quotes)
        reasons.append(f"none meets the {deadline}-day deadline; the fastest take {fastest}")
        return [q for q in quotes if q.days == fastest]

    def _preference(
        self, quotes: list[Quote], req: ChoiceRequest, reasons: list[str]
    ) -> list[Quote]:
        for wanted in req.prefer:
            preferred = [q for q in quotes if wanted in (q.service, q.carrier)]
            if preferred:
                reasons.append(f"store prefers {wanted}")
                return preferred
        return quotes
