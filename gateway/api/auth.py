"""Who is calling: the operator (the configured admin key) or a tenant (one of its keys),
sent as ``Authorization: Bearer <key>`` (ADR 0013).

Each route says who may call it (:data:`Access`). A tenant sees only its own things: a
return, webhook endpoint or report of another tenant answers 404, exactly as one that does
not exist, so that ids cannot be probed.
"""

import hashlib
import hmac
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

from gateway import tenants
from gateway.api.errors import GATEWAY, ApiError, not_found

Access = Literal["open", "signed", "operator", "merchant"]
"""``open``: anyone (health, the OpenAPI document). ``signed``: no key, the body carries the
sender's signature (carrier pushes, the merchant refund system's callback). ``operator``:
the admin key only. ``merchant``: a tenant key (its own things) or the admin key (anyone's)."""

PRINCIPAL: web.RequestKey["Principal"] = web.RequestKey("principal")


@dataclass(frozen=True)
class Principal:
    """The caller of a request."""

    role: Literal["anonymous", "operator", "tenant"]
    tenant: str | None = None

    @property
    def name(self) -> str:
        """For audit trails (history causes, decisions)."""
        return f"tenant:{self.tenant}" if self.tenant else self.role


ANONYMOUS = Principal("anonymous")
OPERATOR = Principal("operator")


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if not header:
        raise ApiError(401, "missing_key", "send an API key: Authorization: Bearer <key>")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "bad_key", "the Authorization header must be: Bearer <key>")
    return key.strip()


def _is_admin(request: web.Request, key: str) -> bool:
    admin = request.app[GATEWAY].config.api.admin_key
    if admin is None:
        return False
    # Digests of equal length: compare_digest leaks no timing about the admin key.
    presented = hashlib.sha256(key.encode("utf-8", "replace")).digest()
    return hmac.compare_digest(presented, hashlib.sha256(admin.encode()).digest())


async def authenticate(request: web.Request, access: Access) -> Principal:
    """The caller, checked against what the route allows; raises 401 or 403."""
    if access in ("open", "signed"):
        return ANONYMOUS
    key = _bearer(request)
    if _is_admin(request, key):
        return OPERATOR
    tenant = await tenants.tenant_of(request.app[GATEWAY].db, key)
    if tenant is None:
        request.app[GATEWAY].metrics["api_keys_refused"] += 1
        raise ApiError(401, "bad_key", "unknown or revoked API key")
    if access == "operator":
        raise ApiError(403, "forbidden", "this route needs the operator key")
    return Principal("tenant", tenant)


def principal(request: web.Request) -> Principal:
    """The authenticated caller of ``request``."""
    found: Principal = request.get(PRINCIPAL, ANONYMOUS)
    return found


async def tenant_scope(request: web.Request, requested: str | None) -> str | None:
    """Whose data a request is about: a tenant's own (asking for another is a 404); for the
    operator, ``requested`` (checked to exist) or everyone's (None)."""
    caller = principal(request)
    if caller.tenant is not None:
        if requested not in (None, caller.tenant):
            raise not_found("tenant")
        return caller.tenant
    if requested is not None and not await tenants.exists(request.app[GATEWAY].db, requested):
        raise not_found("tenant")
    return requested


async def one_tenant(request: web.Request, requested: str | None) -> str:
    """Like :func:`tenant_scope`, for routes about exactly one tenant (the operator names it)."""
    tenant = await tenant_scope(request, requested)
    if tenant is None:
        raise ApiError(
            422, "invalid_request", "name the tenant", [{"field": "tenant", "reason": "required"}]
        )
    return tenant


async def owned_return(request: web.Request, return_id: str) -> str:
    """The merchant of a return the caller may see; 404 otherwise."""
    row = await request.app[GATEWAY].db.fetchone(
        "SELECT merchant FROM returns WHERE id = ?", (return_id,)
    )
    caller = principal(request)
    if row is None or (caller.tenant is not None and row[0] != caller.tenant):
        raise not_found("return")
    return str(row[0])


async def path_return(request: web.Request) -> str:
    """The ``{id}`` of the path, a return the caller may see (404 otherwise)."""
    return_id = request.match_info["id"]
    await owned_return(request, return_id)
    return return_id
