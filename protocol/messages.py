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
    BAD_SHORT_CODE = "bad_short_code"
    UNKNOWN_CODE = "unknown_code"
    NEEDS_GATEWAY = "needs_gateway"
    PICKUP_EXPIRED = "pickup_expired"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


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
    CAMERA = "camera"


class Fault(_Body):
    """A hardware fault at a kiosk."""

    kind: FaultKind
    compartment: str | None = None
    detail: str = ""


class ParcelLoaded(_Body):
    """A courier or clerk put a parcel for a customer into a compartment and shut the door."""

    parcel_id: str = Field(min_length=1, max_length=128)
    compartment: str
    size: str
    loaded_by: str
    loaded_at: float


class Pickup(_Body):
    """A customer's pickup code opened their compartment, and the door was shut again
    (``door_left_open``: the kiosk gave up waiting for it to close)."""

    parcel_id: str
    compartment: str
    picked_up_at: float
    door_left_open: bool = False


class ToteSealed(_Body):
    """A clerk sealed the store's tote: the gateway closes the open tote (reason ``seal``)."""

    clerk: str
    tote_label: str | None = None
    sealed_at: float


class ServiceAction(StrEnum):
    """What a clerk (or the operator, by command) did to a compartment."""

    OPENED = "opened"
    EMPTIED = "emptied"
    OUT_OF_ORDER = "out_of_order"
    BACK_IN_SERVICE = "back_in_service"


class CompartmentService(_Body):
    """A compartment was opened for service, emptied, or taken out of or put back in service.
    ``door`` is what the door sensor said when the door was asked to open."""

    compartment: str
    action: ServiceAction
    by: str
    door: Literal["opened", "already_open", "jammed"] | None = None
    removed: str | None = Field(default=None, description="return or parcel id taken out")


class CompartmentState(_Body):
    """One compartment as the kiosk sees it."""

    id: str
    size: str
    occupied_by: str | None = None
    out_of_order: bool = False
    door_open: bool = False


class Inventory(_Body):
    """The kiosk's compartments, sent when a ``sync`` command asks for it."""

    compartments: list[CompartmentState] = Field(max_length=64)
    outbox: int = Field(ge=0)


class CodeLookup(_Body):
    """Kiosk → gateway, live only (never from the outbox): which voucher has this typed short
    code? The gateway answers with a ``sync`` command carrying the voucher, or nothing."""

    short_code: str = Field(pattern=r"^[0-9A-HJKMNP-TV-Z]{9}$")


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


class OpenDoor(_Body):
    """Command: open a compartment (operator or service). The door sensor decides the outcome:
    ``succeeded`` with ``opened``/``already_open``, or ``failed`` with ``jammed``."""

    command_id: str
    expires_at: float
    compartment: str
    reason: str = "service"


class PickupCode(_Body):
    """Command: a customer's pickup code for a parcel in this kiosk. Only its SHA-256 travels;
    the customer has the code itself."""

    command_id: str
    expires_at: float
    parcel_id: str
    compartment: str
    code_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    valid_until: float


class VoucherCode(_Body):
    """A short code and the voucher it stands for."""

    short_code: str = Field(pattern=r"^[0-9A-HJKMNP-TV-Z]{9}$")
    token: str = Field(max_length=256)


class PickupEntry(_Body):
    """A pickup code the kiosk should honour (bulk form of :class:`PickupCode`)."""

    parcel_id: str
    compartment: str
    code_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    valid_until: float


class Sync(_Body):
    """Command: bring the kiosk's offline lists up to date. ``vouchers`` maps typed short codes
    of vouchers scoped to this store to their tokens; ``not_found`` answers a
    :class:`CodeLookup` that matched nothing; ``inventory`` asks for an :class:`Inventory`."""

    command_id: str
    expires_at: float
    vouchers: list[VoucherCode] = Field(default_factory=list, max_length=200)
    pickups: list[PickupEntry] = Field(default_factory=list, max_length=200)
    not_found: list[str] = Field(default_factory=list, max_length=10)
    inventory: bool = False


class KioskSettings(_Body):
    """Settings the gateway may change on a running kiosk; None leaves one as configured."""

    mode: Literal["locker", "counter", "both"] | None = None
    door_close_s: float | None = Field(default=None, gt=0, le=3600)
    left_open_give_up_s: float | None = Field(default=None, gt=0, le=86_400)
    clerk_idle_s: float | None = Field(default=None, gt=0, le=3600)


class Configure(_Body):
    """Command: change a kiosk's settings (kept across restarts)."""

    command_id: str
    expires_at: float
    settings: KioskSettings


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


class ClerkCredential(_Body):
    """A member of staff who may use clerk mode. Badge and PIN are only ever stored as
    scrypt hashes under the store's ``clerk_salt`` (see :mod:`protocol.clerks`)."""

    id: str = Field(pattern=ID_PATTERN)
    name: str = Field(max_length=100)
    role: Literal["clerk", "courier"] = "clerk"
    badge_hash: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    pin_hash: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class StoreConfig(_Body):
    """The retained, versioned configuration every kiosk of a store follows."""

    store: str = Field(pattern=ID_PATTERN)
    version: int = Field(ge=1)
    voucher_keys: dict[str, str] = Field(description="key id → raw Ed25519 public key, base64url")
    revoked_returns: list[str] = []
    offline_grace_s: int = Field(default=86_400, ge=0)
    mode: Literal["locker", "counter", "both"] = "locker"
    clerk_salt: str = Field(default="", max_length=64)
    clerks: list[ClerkCredential] = Field(default_factory=list, max_length=200)


BODY_TYPES: dict[str, type[BaseModel]] = {
    "dropoff": Dropoff,
    "scan_rejected": ScanRejected,
    "fault": Fault,
    "parcel_loaded": ParcelLoaded,
    "pickup": Pickup,
    "tote_sealed": ToteSealed,
    "service": CompartmentService,
    "inventory": Inventory,
    "code_lookup": CodeLookup,
    "ack": Ack,
    "print_label": PrintLabel,
    "collect_parcels": CollectParcels,
    "open_door": OpenDoor,
    "pickup_code": PickupCode,
    "sync": Sync,
    "configure": Configure,
    "cmd_result": CommandResult,
    "status": Status,
    "gateway_status": GatewayStatus,
    "store_config": StoreConfig,
}
"""Every envelope ``type`` this protocol version knows, with its body model."""

EVENT_TYPES = frozenset(
    {
        "dropoff",
        "scan_rejected",
        "fault",
        "parcel_loaded",
        "pickup",
        "tote_sealed",
        "service",
        "inventory",
        "code_lookup",
    }
)
"""Types a kiosk sends on ``evt/{type}``; the gateway acks each by id. ``code_lookup`` is
published live, not from the outbox; its ack finds nothing to delete, which is harmless."""

COMMAND_TYPES = frozenset(
    {"print_label", "collect_parcels", "open_door", "pickup_code", "sync", "configure"}
)
"""Types the gateway sends on ``cmd/{name}``."""
