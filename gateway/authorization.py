"""Authorizing a return and issuing its voucher (DESIGN §2 flow 1)."""

import json
import re
import time
import uuid
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from gateway import approval, home_pickup
from gateway.database import Database, Transaction
from gateway.home_pickup import HomePickup
from gateway.keys import SigningKeys
from gateway.returns import Cause, CauseKind, ReturnState, record_creation
from protocol import shortcode, voucher
from protocol.ids import ID_PATTERN, uuid7
from protocol.sizes import SizeClass


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Item(_Input):
    """One returned line of an order."""

    sku: str = Field(min_length=1, max_length=64)
    name: str = Field(default="", max_length=200)
    quantity: int = Field(default=1, ge=1, le=999)
    opened: bool | None = None
    """Whether the shopper opened it (for the approval rules; unknown if left out)."""


class Money(_Input):
    """An amount in minor units (fen, cents)."""

    amount_minor: int = Field(ge=0, le=100_000_000)
    currency: str = Field(pattern=r"^[A-Z]{3}$")


class Customer(_Input):
    """Who returns the parcel and how to reach them."""

    name: str = Field(min_length=1, max_length=200)
    email: str | None = Field(default=None, max_length=254)
    phone: str | None = Field(default=None, max_length=32)


class ReturnRequest(_Input):
    """``POST /v1/returns``: what the merchant's system sends."""

    merchant: str | None = Field(default=None, pattern=r"^[a-z0-9-]{1,16}$")
    """The tenant; taken from the API key (when given, it must be the key's tenant)."""
    order_id: str = Field(min_length=1, max_length=64)
    items: list[Item] = Field(min_length=1, max_length=100)
    reason: str = Field(min_length=1, max_length=200)
    refund: Money
    customer: Customer
    method: Literal["locker", "counter", "home_pickup"] = "locker"
    pickup: HomePickup | None = Field(default=None, validate_default=True)
    size: Literal["S", "M", "L", "XL"] = "M"
    stores: list[str] = Field(default_factory=list, max_length=voucher.MAX_STORES)
    expires_in_s: int | None = Field(default=None, ge=60, le=90 * 86_400)
    delivered_at: float | None = Field(default=None, ge=0, le=10_000_000_000)
    """When the order was delivered (Unix seconds), for the approval rules."""

    @field_validator("stores")
    @classmethod
    def _store_ids(cls, stores: list[str]) -> list[str]:
        for store in stores:
            if not re.match(ID_PATTERN, store):
                raise ValueError(f"invalid store id {store!r}")
        return stores

    @field_validator("pickup")
    @classmethod
    def _pickup_iff_home_pickup(cls, pickup: HomePickup | None, info: ValidationInfo) -> object:
        wanted = info.data.get("method") == "home_pickup"
        if wanted and pickup is None:
            raise ValueError("required when method is home_pickup")
        if pickup is not None and not wanted:
            raise ValueError("only for method home_pickup")
        return pickup


class UnknownMerchantError(LookupError):
    """The request names a merchant the gateway does not serve."""


class UnknownStoreError(LookupError):
    """The request scopes the voucher to a store the gateway does not know."""


class MerchantMismatchError(ValueError):
    """The request names another merchant than the API key's tenant."""


def issue_voucher(
    keys: SigningKeys,
    return_id: uuid.UUID,
    merchant: str,
    *,
    expires_at: int,
    size: str,
    items: int,
    stores: list[str],
) -> str:
    """The signed voucher token of a return."""
    claims = voucher.VoucherClaims.scoped(
        kid=keys.active_kid,
        return_id=return_id,
        merchant=merchant,
        expires_at=expires_at,
        size=SizeClass[size],
        items=min(255, items),
        stores=tuple(stores),
    )
    return voucher.issue(claims, keys.active)


async def authorize(
    db: Database,
    keys: SigningKeys,
    req: ReturnRequest,
    *,
    default_ttl_s: int,
    tenant: str | None = None,
) -> str:
    """Create a return for ``tenant`` (the API key's; else ``req.merchant``) and returns
    its id. The tenant's approval rules decide: ``authorized`` with its voucher, or
    ``review`` with none until a person approves it (``gateway/review.py``)."""
    if tenant is not None and req.merchant not in (None, tenant):
        raise MerchantMismatchError(req.merchant)
    merchant = tenant or req.merchant
    if merchant is None:
        raise UnknownMerchantError("a merchant is required")
    return_id = uuid7()
    items = sum(i.quantity for i in req.items)
    async with db.transaction() as tx:
        # Stamped once the transaction holds the database: kiosks are sent the short codes
        # of returns stamped at least SYNC_LAG_S ago (kiosk_flows.sync_due), so the time from
        # stamp to commit must stay below it, and waiting for SQLite's writer must not count.
        now = time.time()
        expires_at = int(now + (req.expires_in_s or default_ttl_s))
        await _check_references(tx, merchant, req)
        decision = approval.decide(
            await approval.load(tx, merchant),
            amount_minor=req.refund.amount_minor,
            delivered_at=req.delivered_at,
            opened=[i.opened for i in req.items],
            now=now,
        )
        token = (
            issue_voucher(keys, return_id, merchant, expires_at=expires_at, size=req.size,
                          items=items, stores=req.stores)
            if decision.approve
            else ""  # no voucher while in review
        )  # fmt: skip
        state = ReturnState.AUTHORIZED if decision.approve else ReturnState.REVIEW
        row = _Row(return_id, merchant, token, state, expires_at, min(255, items), now)
        await _insert(tx, row, req, decision.rule)
        if req.pickup is not None:
            await home_pickup.plan(tx, str(return_id), req.pickup)
        await record_creation(tx, str(return_id), state, Cause(CauseKind.API))
    return str(return_id)


async def _check_references(tx: Transaction, merchant: str, req: ReturnRequest) -> None:
    if await tx.fetchone("SELECT 1 FROM merchants WHERE id = ?", (merchant,)) is None:
        raise UnknownMerchantError(merchant)
    for store in req.stores:
        if await tx.fetchone("SELECT 1 FROM stores WHERE id = ?", (store,)) is None:
            raise UnknownStoreError(store)


class _Row(NamedTuple):
    return_id: uuid.UUID
    merchant: str
    token: str
    state: ReturnState
    expires_at: int
    item_count: int
    now: float


async def _insert(tx: Transaction, row: _Row, req: ReturnRequest, rule: str) -> None:
    while True:
        code = shortcode.new_short_code()
        if await tx.fetchone("SELECT 1 FROM returns WHERE short_code = ?", (code,)) is None:
            break
    await tx.execute(
        "INSERT INTO returns (id, merchant, order_id, items, item_count, reason, amount_minor, "
        "currency, method, size, stores, customer, state, short_code, voucher, expires_at, "
        "created_at, updated_at, approval_rule) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            str(row.return_id),
            row.merchant,
            req.order_id,
            json.dumps([i.model_dump() for i in req.items]),
            row.item_count,
            req.reason,
            req.refund.amount_minor,
            req.refund.currency,
            req.method,
            req.size,
            json.dumps(req.stores),
            req.customer.model_dump_json(),
            row.state.value,
            code,
            row.token,
            row.expires_at,
            row.now,
            row.now,
            rule,
        ),
    )
