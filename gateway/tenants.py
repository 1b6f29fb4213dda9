"""Tenants (the merchants the gateway serves) and their API keys (ADR 0013).

A key reads ``dl_{key_id}_{secret}``: ``key_id`` (12 hex digits) is public, names the key in
listings and finds its row; ``secret`` is 32 random bytes. Only the SHA-256 of the whole key
is stored, and the presented key's digest is compared with it in constant time, so the
database alone never yields a usable key.
"""

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from gateway.database import Database

KEY_PATTERN = re.compile(r"^dl_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
TENANT_PATTERN = r"^[a-z0-9-]{1,16}$"


class TenantExistsError(ValueError):
    """A tenant with this id exists already."""


class UnknownTenantError(LookupError):
    """No tenant has this id."""


class UnknownKeyError(LookupError):
    """The tenant has no key with this id."""


@dataclass(frozen=True)
class ApiKey:
    """A tenant's key as listings show it (never the secret)."""

    id: str
    tenant: str
    label: str
    created_at: float
    revoked_at: float | None

    def public(self) -> dict[str, Any]:
        """The JSON the API shows."""
        return {
            "id": self.id,
            "tenant": self.tenant,
            "label": self.label,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "active": self.revoked_at is None,
        }


def digest(key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def same_key(presented: str, stored_digest: str) -> bool:
    """Constant-time comparison of a presented key with a stored digest."""
    return hmac.compare_digest(digest(presented), stored_digest)


async def create_tenant(
    db: Database, tenant: str, *, name: str, refund_policy: str, currency: str
) -> dict[str, Any]:
    """Add a merchant; refunds go through the shared provider until configured otherwise."""
    async with db.transaction() as tx:
        if await tx.fetchone("SELECT 1 FROM merchants WHERE id = ?", (tenant,)) is not None:
            raise TenantExistsError(tenant)
        await tx.execute(
            "INSERT INTO merchants (id, name, refund_policy, currency) VALUES (?, ?, ?, ?)",
            (tenant, name, refund_policy, currency),
        )
    return {"id": tenant, "name": name, "refund_policy": refund_policy, "currency": currency}


async def list_tenants(db: Database) -> list[dict[str, Any]]:
    """Every tenant, by id."""
    rows = await db.fetchall("SELECT id, name, refund_policy, currency FROM merchants ORDER BY id")
    keys = ("id", "name", "refund_policy", "currency")
    return [dict(zip(keys, r, strict=True)) for r in rows]


async def exists(db: Database, tenant: str) -> bool:
    """True when ``tenant`` is a merchant the gateway serves."""
    return await db.fetchone("SELECT 1 FROM merchants WHERE id = ?", (tenant,)) is not None


async def create_key(db: Database, tenant: str, label: str) -> tuple[ApiKey, str]:
    """A new key for ``tenant``: its listing form and the key itself (shown once)."""
    key_id = secrets.token_hex(6)
    key = f"dl_{key_id}_{secrets.token_urlsafe(32)}"
    now = time.time()
    async with db.transaction() as tx:
        if await tx.fetchone("SELECT 1 FROM merchants WHERE id = ?", (tenant,)) is None:
            raise UnknownTenantError(tenant)
        await tx.execute(
            "INSERT INTO api_keys (id, merchant, digest, label, created_at) VALUES (?, ?, ?, ?, ?)",
            (key_id, tenant, digest(key), label, now),
        )
    return ApiKey(key_id, tenant, label, now, None), key


async def list_keys(db: Database, tenant: str) -> list[ApiKey]:
    """A tenant's keys, revoked ones included, oldest first."""
    rows = await db.fetchall(
        "SELECT id, merchant, label, created_at, revoked_at FROM api_keys WHERE merchant = ? "
        "ORDER BY created_at, id",
        (tenant,),
    )
    return [ApiKey(str(r[0]), str(r[1]), str(r[2]), float(r[3]), r[4]) for r in rows]


async def revoke_key(db: Database, tenant: str, key_id: str) -> ApiKey:
    """Revoke a key (at once, on every replica: keys are checked against the database)."""
    now = time.time()
    async with db.transaction() as tx:
        await tx.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND merchant = ? "
            "AND revoked_at IS NULL",
            (now, key_id, tenant),
        )
        row = await tx.fetchone(
            "SELECT id, merchant, label, created_at, revoked_at FROM api_keys "
            "WHERE id = ? AND merchant = ?",
            (key_id, tenant),
        )
    if row is None:
        raise UnknownKeyError(key_id)
    return ApiKey(str(row[0]), str(row[1]), str(row[2]), float(row[3]), row[4])


async def tenant_of(db: Database, presented: str) -> str | None:
    """The tenant an active key belongs to, or None for anything else."""
    match = KEY_PATTERN.match(presented)
    if match is None:
        return None
    row = await db.fetchone(
        "SELECT merchant, digest FROM api_keys WHERE id = ? AND revoked_at IS NULL",
        (match.group(1),),
    )
    if row is None or not same_key(presented, str(row[1])):
        return None
    return str(row[0])
