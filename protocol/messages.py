"""Typed message bodies, keyed by the envelope's ``type``."""

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from protocol.ids import ID_PATTERN


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# ---- kiosk → gateway events -------------------------------------------------------------


class DropoffMethod(StrEnum):
    """Where the parcel went: a locker compartment or over the counter."""

    LOCKER = "locker"
    COUNTER = "counter"


class Dropoff(_Body):
    """A parcel was accepted: the shopper was told so, and the kiosk owes it to the gateway."""

    return_id: str
    merchant: str
    method: DropoffMethod
    compartment: str | None = None
    size: str
    items: int = Field(ge=1)
    bag_id: str | None = None
    tote_id: str | None = None
    voucher_kid: str
    scanned_at: float
    accepted_at: float


class RejectReason(StrEnum):
    """Why a scan did not open a door, in the order the kiosk checks."""

    MALFORMED = "malformed"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    WRONG_STORE = "wrong_store"
    REVOKED = "revoked"
    ALREADY_USED = "already_used"
    NO_COMPARTMENT = "no_compartment"
    DOOR_JAMMED = "door_jammed"
    DOOR_NOT_CLOSED = "door_not_closed"


class ScanRejected(_Body):
    """A scan that opened nothing, and why."""

    reason: RejectReason
    return_id: str | None = None
    detail: str = ""


class FaultKind(StrEnum):
    """Hardware trouble the operator should see."""

    JAMMED = "jammed"
    LEFT_OPEN = "left_open"
    UNEXPECTED_OPEN = "unexpected_open"
    PRINTER = "printer"


class Fault(_Body):
    """A hardware fault at a kiosk."""

    kind: FaultKind
    compartment: str | None = None
    detail: str = ""


# ---- gateway → kiosk --------------------------------------------------------------------


class Ack(_Body):
    """Application ack: these event ids are committed at the gateway; drop them from the outbox."""

    ids: list[str] = Field(max_length=1000)


class ManifestLine(_Body):
    """One return in a tote."""

    return_id: str
    merchant: str
    size: str


class PrintLabel(_Body):
    """Command: print a tote label and its manifest."""

    command_id: str
    expires_at: float
    tote_id: str
    carrier: str
    waybill: str
    pickup_start: float | None = None
    pickup_end: float | None = None
    manifest: list[ManifestLine]


class CollectParcels(_Body):
    """Command: the clerk moves these returns' parcels from the lockers into a tote, so their
    compartments are free again."""

    command_id: str
    expires_at: float
    tote_id: str
    return_ids: list[str] = Field(max_length=1000)


class CommandOutcome(StrEnum):
    """What became of a command at the kiosk."""

    ACCEPTED = "accepted"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"


class CommandResult(_Body):
    """Kiosk → gateway: a command's outcome."""

    command_id: str
    outcome: CommandOutcome
    detail: str = ""


# ---- presence and configuration ---------------------------------------------------------


class Status(_Body):
    """Retained presence of a kiosk; the broker publishes the offline form as its will."""

    online: bool
    session: int = Field(ge=0)
    version: str = ""
    capabilities: list[str] = []


class GatewayStatus(_Body):
    """Retained presence of the gateway."""

    online: bool


class CompartmentConfig(_Body):
    """A compartment the gateway knows of (the pin map stays in the kiosk's own config)."""

    id: str
    size: str


class StoreConfig(_Body):
    """The retained, versioned configuration every kiosk of a store follows."""

    store: str = Field(pattern=ID_PATTERN)
    version: int = Field(ge=1)
    voucher_keys: dict[str, str] = Field(description="key id → raw Ed25519 public key, base64url")
    revoked_returns: list[str] = []
    offline_grace_s: int = Field(default=86_400, ge=0)
    mode: Literal["locker", "counter", "both"] = "locker"


BODY_TYPES: dict[str, type[BaseModel]] = {
    "dropoff": Dropoff,
    "scan_rejected": ScanRejected,
    "fault": Fault,
    "ack": Ack,
    "print_label": PrintLabel,
    "collect_parcels": CollectParcels,
    "cmd_result": CommandResult,
    "status": Status,
    "gateway_status": GatewayStatus,
    "store_config": StoreConfig,
}
"""Every envelope ``type`` this protocol version knows, with its body model."""

EVENT_TYPES = frozenset({"dropoff", "scan_rejected", "fault"})
"""Types a kiosk sends on ``evt/{type}``; the gateway acks each by id."""

COMMAND_TYPES = frozenset({"print_label", "collect_parcels"})
"""Types the gateway sends on ``cmd/{name}``."""
