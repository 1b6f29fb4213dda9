"""A gateway database with one merchant and one store, and returns moved through the real
state machine (the same functions ingest, shipping and the API call). For tests of the
outbound parts without MQTT or kiosks."""

import contextlib
import copy
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dropline.system import LocalSystem, SystemOptions, running_system
from gateway import refunds
from gateway.authorization import ReturnRequest, authorize
from gateway.config import MerchantSettings, MerchantSystemSettings, RefundPolicy
from gateway.database import Database, open_database
from gateway.keys import SigningKeys
from gateway.returns import Cause, CauseKind, ReturnState, move

MERCHANT = "acme"
STORE = "store-1"


class Clock:
    """A clock the test moves forward, so that backoff needs no sleeping."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class World:
    """The database and helpers to make and move returns."""

    db: Database
    keys: SigningKeys
    merchant: MerchantSettings

    async def create_return(self, n: int, **changes: Any) -> str:
        """Authorize a return through the real authorization code; returns its id."""
        body: dict[str, Any] = {
            "order_id": f"order-{n:05d}",
            "items": [{"sku": "SKU-1", "name": "T-shirt"}],
            "reason": "too small",
            "refund": {"amount_minor": 1999 + n, "currency": "CNY"},
            "customer": {
                "name": f"Shopper {n}",
                "email": f"shopper{n}@example.test",
                "phone": f"+86138{n:08d}",
            },
            "stores": [STORE],
        }
        body.update(changes)
        return await authorize(
            self.db,
            self.keys,
            ReturnRequest.model_validate(body),
            default_ttl_s=86_400,
            tenant=MERCHANT,
        )

    async def advance(self, return_id: str, *states: ReturnState) -> None:
        """Move a return through ``states``, one committed transaction each."""
        for state in states:
            async with self.db.transaction() as tx:
                columns = {"store": STORE, "device": "kiosk-1"}
                extra = columns if state is ReturnState.DROPPED_OFF else {}
                await move(tx, return_id, state, Cause(CauseKind.EVENT, f"test-{state}"), **extra)

    async def drop_off(self, return_id: str) -> None:
        """Dropped off at the kiosk."""
        await self.advance(return_id, ReturnState.DROPPED_OFF)

    async def deliver(self, return_id: str) -> None:
        """From drop-off to the warehouse's signature."""
        await self.advance(
            return_id,
            ReturnState.IN_TOTE,
            ReturnState.SHIPPED,
            ReturnState.IN_TRANSIT,
            ReturnState.RECEIVED,
        )

    async def state(self, return_id: str) -> str:
        """The return's state."""
        row = await self.db.fetchone("SELECT state FROM returns WHERE id = ?", (return_id,))
        assert row is not None
        return str(row[0])

    async def refund_row(self, return_id: str) -> dict[str, Any] | None:
        """The return's refund row."""
        row = await self.db.fetchone(
            "SELECT status, provider, provider_refund_id, review_reason, decided_by, attempts "
            "FROM refunds WHERE return_id = ?",
            (return_id,),
        )
        keys = ("status", "provider", "refund_id", "review_reason", "decided_by", "attempts")
        return None if row is None else dict(zip(keys, row, strict=True))

    async def event_types(self, return_id: str) -> list[str]:
        """Webhook event types emitted about a return, in order."""
        rows = await self.db.fetchall(
            "SELECT type, body FROM webhook_events ORDER BY created_at, id"
        )
        import json

        return [t for t, b in rows if json.loads(b)["data"].get("return_id") == return_id]


async def open_world(
    url: str,
    *,
    policy: RefundPolicy = RefundPolicy.ON_RECEIPT,
    provider: str = "stripe",
    merchant_system_url: str = "http://127.0.0.1:9",
    review_above_minor: int | None = None,
) -> AsyncIterator[World]:
    """Open the database, seed the merchant and store; close afterwards."""
    db = await open_database(url)
    merchant = MerchantSettings(
        id=MERCHANT,
        name="ACME",
        refund_policy=policy,
        refund_provider=provider,  # type: ignore[arg-type]
        merchant_system=MerchantSystemSettings(url=merchant_system_url, secret="s" * 32),
        review_above_minor=review_above_minor,
    )
    async with db.transaction() as tx:
        await tx.execute(
            "INSERT INTO merchants (id, name, refund_policy, currency) VALUES (?, ?, ?, 'CNY')",
            (MERCHANT, "ACME", policy.value),
        )
        await tx.execute("INSERT INTO stores (id, name) VALUES (?, ?)", (STORE, "Store 1"))
    await refunds.configure(db, [merchant])
    keys = await SigningKeys.load_or_create(db)
    try:
        yield World(db, keys, merchant)
    finally:
        await db.close()


@contextlib.asynccontextmanager
async def system_for(
    request: pytest.FixtureRequest, workdir: Path, database: str, default: SystemOptions
) -> AsyncIterator[LocalSystem]:
    """The whole local system for a test parametrized (``indirect``) with its options, or
    ``default``, on ``database``. The options are copied: their knobs are mutable and the same
    parameters serve both database backends."""
    opts = copy.deepcopy(getattr(request, "param", None) or default)
    async with running_system(workdir, dataclasses.replace(opts, database=database)) as system:
        yield system
