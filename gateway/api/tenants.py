"""Tenants (the merchants) and their API keys (operator routes), and the stores (every
merchant may list them: they are the network's drop-off points)."""

from aiohttp import web
from pydantic import BaseModel, Field

from gateway import tenants
from gateway.api.errors import GATEWAY, ApiError, not_found
from gateway.api.inputs import Input, body
from gateway.api.routes import Route
from gateway.config import RefundPolicy


class TenantInput(Input):
    """A new tenant."""

    id: str = Field(pattern=tenants.TENANT_PATTERN)
    name: str = Field(min_length=1, max_length=200)
    refund_policy: RefundPolicy = RefundPolicy.ON_RECEIPT
    currency: str = Field(default="CNY", pattern=r"^[A-Z]{3}$")


class Tenant(BaseModel):
    """A tenant."""

    id: str
    name: str
    refund_policy: RefundPolicy
    currency: str


class TenantList(BaseModel):
    """Every tenant."""

    tenants: list[Tenant]


class KeyInput(Input):
    """A new key; the label says what it is for (``shop-prod``, ``erp``)."""

    label: str = Field(default="", max_length=100)


class ApiKey(BaseModel):
    """A key as listings show it."""

    id: str
    tenant: str
    label: str
    created_at: float
    revoked_at: float | None
    active: bool


class NewApiKey(ApiKey):
    """A key just created: ``key`` is shown this once and never stored."""

    key: str


class KeyList(BaseModel):
    """A tenant's keys."""

    keys: list[ApiKey]


class Store(BaseModel):
    """A store with kiosks."""

    id: str
    name: str
    config_version: int


class StoreList(BaseModel):
    """Every store."""

    stores: list[Store]


async def _known_tenant(request: web.Request) -> str:
    tenant = request.match_info["tenant"]
    if not await tenants.exists(request.app[GATEWAY].db, tenant):
        raise not_found("tenant")
    return tenant


async def create_tenant(request: web.Request) -> web.Response:
    """``POST /v1/tenants``."""
    req = await body(request, TenantInput)
    try:
        created = await tenants.create_tenant(
            request.app[GATEWAY].db, req.id, name=req.name,
            refund_policy=req.refund_policy.value, currency=req.currency,
        )  # fmt: skip
    except tenants.TenantExistsError:
        raise ApiError(409, "conflict", f"tenant {req.id} exists already") from None
    return web.json_response(created, status=201, headers={"Location": f"/v1/tenants/{req.id}"})


async def list_tenants(request: web.Request) -> web.Response:
    """``GET /v1/tenants``."""
    return web.json_response({"tenants": await tenants.list_tenants(request.app[GATEWAY].db)})


async def get_tenant(request: web.Request) -> web.Response:
    """``GET /v1/tenants/{tenant}``."""
    tenant = await _known_tenant(request)
    found = [t for t in await tenants.list_tenants(request.app[GATEWAY].db) if t["id"] == tenant]
    return web.json_response(found[0])


async def create_key(request: web.Request) -> web.Response:
    """``POST /v1/tenants/{tenant}/keys``: the key is in this answer only."""
    tenant = await _known_tenant(request)
    req = await body(request, KeyInput, optional=True)
    key, secret = await tenants.create_key(request.app[GATEWAY].db, tenant, req.label)
    return web.json_response({**key.public(), "key": secret}, status=201)


async def list_keys(request: web.Request) -> web.Response:
    """``GET /v1/tenants/{tenant}/keys``."""
    tenant = await _known_tenant(request)
    keys = await tenants.list_keys(request.app[GATEWAY].db, tenant)
    return web.json_response({"keys": [k.public() for k in keys]})


async def revoke_key(request: web.Request) -> web.Response:
    """``DELETE /v1/tenants/{tenant}/keys/{key}``: refused from now on."""
    tenant = await _known_tenant(request)
    try:
        key = await tenants.revoke_key(request.app[GATEWAY].db, tenant, request.match_info["key"])
    except tenants.UnknownKeyError:
        raise not_found("key") from None
    return web.json_response(key.public())


async def list_stores(request: web.Request) -> web.Response:
    """``GET /v1/stores``."""
    rows = await request.app[GATEWAY].db.fetchall(
        "SELECT id, name, config_version FROM stores ORDER BY id"
    )
    return web.json_response(
        {"stores": [{"id": r[0], "name": r[1], "config_version": int(r[2])} for r in rows]}
    )


async def get_store(request: web.Request) -> web.Response:
    """``GET /v1/stores/{store}``."""
    row = await request.app[GATEWAY].db.fetchone(
        "SELECT id, name, config_version FROM stores WHERE id = ?", (request.match_info["store"],)
    )
    if row is None:
        raise not_found("store")
    return web.json_response({"id": row[0], "name": row[1], "config_version": int(row[2])})


ROUTES: list[Route] = [
    Route("GET", "/v1/tenants", list_tenants, "operator", "Every tenant", response=TenantList),
    Route("POST", "/v1/tenants", create_tenant, "operator", "Add a tenant", body=TenantInput,
          response=Tenant, status=201, errors=(409, 422)),
    Route("GET", "/v1/tenants/{tenant}", get_tenant, "operator", "One tenant",
          response=Tenant, errors=(404,)),
    Route("POST", "/v1/tenants/{tenant}/keys", create_key, "operator",
          "A new API key for the tenant (shown once)", body=KeyInput, body_optional=True,
          response=NewApiKey, status=201, errors=(404, 422)),
    Route("GET", "/v1/tenants/{tenant}/keys", list_keys, "operator", "The tenant's keys",
          response=KeyList, errors=(404,)),
    Route("DELETE", "/v1/tenants/{tenant}/keys/{key}", revoke_key, "operator",
          "Revoke a key", response=ApiKey, errors=(404,)),
    # Stores are the network's drop-off points, shared by every merchant: a tenant lists them
    # to scope its vouchers to the stores it wants.
    Route("GET", "/v1/stores", list_stores, "merchant", "Every store", response=StoreList),
    Route("GET", "/v1/stores/{store}", get_store, "merchant", "One store", response=Store,
          errors=(404,)),
]  # fmt: skip
