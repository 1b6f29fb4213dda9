"""The OpenAPI document stays true: it lists exactly the routes the application serves, its
schemas are valid JSON Schema, and real answers from a run through the API (successes and
errors) validate against the documented schema of their status."""

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from jsonschema import Draft202012Validator

from dropline.system import LocalSystem, SystemOptions
from gateway import carrier_exceptions
from gateway.api import make_app
from gateway.carrier_exceptions import Reason, Subject


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[LocalSystem]:
    s = LocalSystem(tmp_path, SystemOptions(kiosks_per_store=0))
    await s.start()
    yield s
    await s.stop()


async def _document(system: LocalSystem) -> dict[str, Any]:
    assert system.gateway is not None
    async with (
        aiohttp.ClientSession(base_url=system.gateway.url) as anonymous,
        anonymous.get("/v1/openapi.json") as resp,
    ):
        assert resp.status == 200
        doc: dict[str, Any] = await resp.json()
    return doc


async def test_every_route_is_documented_and_nothing_else(system: LocalSystem) -> None:
    doc = await _document(system)
    assert doc["openapi"].startswith("3.1")
    assert system.gateway is not None
    served = {
        (route.method, route.resource.canonical)
        for route in make_app(system.gateway).router.routes()
        if route.resource is not None
    }
    documented = {(m.upper(), path) for path, ops in doc["paths"].items() for m in ops}
    assert served == documented
    assert ("GET", "/v1/returns/{id}/voucher.{ext}") in served
    for schema in doc["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    create = doc["paths"]["/v1/returns"]["post"]
    body = create["requestBody"]["content"]["application/json"]["schema"]
    request_model = doc["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    assert {"items", "refund", "customer", "method", "delivered_at"} <= set(
        request_model["properties"]
    )
    assert create["security"] == [{"tenantKey": []}, {"operatorKey": []}]
    assert doc["paths"]["/v1/health"]["get"]["security"] == []
    assert doc["paths"]["/v1/carriers/{carrier}/push"]["post"]["security"] == []
    assert doc["paths"]["/v1/tenants"]["get"]["security"] == [{"operatorKey": []}]
    assert set(doc["components"]["securitySchemes"]) == {"tenantKey", "operatorKey"}


class Checker:
    """Calls the API and validates each answer against the document."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.templates = sorted(
            ((re.compile("^" + re.sub(r"\{\w+\}", "[^/]+", p) + "$"), p) for p in doc["paths"]),
            key=lambda t: t[1].count("{"),
        )
        self.checked: set[tuple[str, str, int]] = set()

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]]:
        for regex, template in self.templates:
            if regex.match(path) and method.lower() in self.doc["paths"][template]:
                return template, self.doc["paths"][template][method.lower()]
        raise AssertionError(f"{method} {path} is not documented")

    async def __call__(
        self, session: aiohttp.ClientSession, method: str, url: str, body: Any = None, **kw: Any
    ) -> tuple[int, Any]:
        template, op = self.operation(method, url.split("?", maxsplit=1)[0])
        async with session.request(method, url, json=body, **kw) as resp:
            status = resp.status
            documented = op["responses"].get(str(status))
            assert documented is not None, f"{method} {template} answered undocumented {status}"
            if status == 204:
                return status, None
            media = resp.content_type
            assert media in documented["content"], (method, template, status, media)
            if media != "application/json":
                return status, await resp.read()
            data = await resp.json()
        schema = {**documented["content"][media]["schema"], "components": self.doc["components"]}
        errors = list(Draft202012Validator(schema).iter_errors(data))
        assert not errors, (method, template, status, [e.message for e in errors[:3]])
        self.checked.add((method, template, status))
        return status, data


async def test_real_answers_validate(system: LocalSystem) -> None:
    check = Checker(await _document(system))
    op, tenant = system.operator, system.http
    assert system.gateway is not None
    async with aiohttp.ClientSession(base_url=system.gateway.url) as anonymous:
        assert (await check(anonymous, "GET", "/v1/health"))[0] == 200
        assert (await check(anonymous, "GET", "/v1/returns"))[0] == 401
    assert (await check(op, "POST", "/v1/tenants", {"id": "beta", "name": "Beta"}))[0] == 201
    assert (await check(op, "POST", "/v1/tenants", {"id": "Beta!"}))[0] == 422
    assert (await check(op, "GET", "/v1/tenants"))[0] == 200
    assert (await check(op, "GET", "/v1/tenants/beta"))[0] == 200
    _, key = await check(op, "POST", "/v1/tenants/beta/keys", {"label": "erp"})
    assert (await check(op, "GET", "/v1/tenants/beta/keys"))[0] == 200
    assert (await check(op, "DELETE", f"/v1/tenants/beta/keys/{key['id']}"))[0] == 200
    assert (await check(op, "GET", "/v1/stores"))[0] == 200
    assert (await check(op, "GET", "/v1/stores/store-1"))[0] == 200
    assert (await check(tenant, "GET", "/v1/stores"))[0] == 200
    assert (await check(op, "GET", "/v1/metrics"))[0] == 200
    assert (await check(op, "GET", "/v1/exceptions"))[0] == 200

    rules = {"review_above_minor": 5000, "approve_within_days": None, "otherwise": "approve"}
    assert (await check(tenant, "PUT", "/v1/approval-rules", rules))[0] == 200
    assert (await check(tenant, "GET", "/v1/approval-rules"))[0] == 200
    created = await system.authorize_return(1, store="store-1")
    held = await system.authorize_return(2, refund={"amount_minor": 9000, "currency": "CNY"})
    rid, code = created["id"], created["voucher"]["short_code"]
    for url in (f"/v1/returns/{rid}", "/v1/returns?limit=1", "/v1/reviews",
                f"/v1/returns/{rid}/notifications", "/v1/reports/return_reasons",
                "/v1/reports/dropoffs", "/v1/reports/refund_time",
                "/v1/reports/carrier_exceptions", f"/v1/vouchers/{code}",
                "/v1/merchants/acme/webhook-endpoints", "/v1/merchants/acme/webhook-deliveries",
                f"/v1/returns/{rid}/voucher.svg",
                "/v1/reports/return_reasons?format=csv"):  # fmt: skip
        assert (await check(tenant, "GET", url))[0] == 200, url
    _, page = await check(tenant, "GET", "/v1/returns?limit=1")
    assert (await check(tenant, "GET", f"/v1/returns?limit=1&cursor={page['next_cursor']}"))[
        0
    ] == 200
    for url, want in (("/v1/returns/nope", 404), ("/v1/returns?limit=x", 422),
                      ("/v1/reports/nope", 404), ("/v1/metrics", 403)):  # fmt: skip
        assert (await check(tenant, "GET", url))[0] == want, url
    assert (await check(tenant, "POST", "/v1/returns", {"order_id": ""}))[0] == 422
    assert (await check(tenant, "POST", "/v1/returns", data=b"{"))[0] == 400
    assert (await check(tenant, "POST", f"/v1/reviews/{held['id']}/approve"))[0] == 200
    assert (await check(tenant, "POST", f"/v1/reviews/{held['id']}/approve"))[0] == 409
    decision = {"decision": "approve", "operator": "al"}
    assert (await check(tenant, "POST", f"/v1/returns/{rid}/refund", decision))[0] == 409
    assert (await check(tenant, "POST", f"/v1/returns/{rid}/flags", {"flag": "odd"}))[0] == 201
    cancel = {"reason": "order lost"}
    assert (await check(tenant, "POST", f"/v1/returns/{rid}/cancel", cancel))[0] == 200
    assert (await check(tenant, "POST", f"/v1/returns/{rid}/cancel", cancel))[0] == 409
    assert (await check(tenant, "POST", "/v1/reviews/nope/reject", {"reason": "x"}))[0] == 404
    endpoint = {"url": "http://127.0.0.1:9/hook"}
    status, made = await check(tenant, "POST", "/v1/merchants/acme/webhook-endpoints", endpoint)
    assert status == 201
    base = f"/v1/merchants/acme/webhook-endpoints/{made['id']}"
    assert (await check(tenant, "POST", f"{base}/rotate-secret"))[0] == 200
    assert (await check(tenant, "DELETE", base))[0] == 200
    clerk = {"name": "A", "pin": "2468"}
    assert (await check(op, "PUT", "/v1/stores/store-1/clerks/c-1", clerk))[0] == 200
    assert (await check(op, "GET", "/v1/stores/store-1/compartments"))[0] == 200
    status, command = await check(
        op, "POST", "/v1/stores/store-1/devices/kiosk-1/commands", {"name": "sync"}
    )
    assert status == 202
    assert (await check(op, "GET", f"/v1/commands/{command['command_id']}"))[0] == 200
    assert (await check(op, "GET", "/v1/pickups/overdue"))[0] == 200
    parcel = {"order_id": "o-1", "store": "store-1", "customer": {"name": "Lin"}}
    assert (await check(tenant, "PUT", "/v1/pickups/P-1", parcel))[0] == 200
    assert (await check(op, "PUT", "/v1/pickups/P-1", {**parcel, "merchant": "beta"}))[0] == 409
    assert (await check(tenant, "PUT", "/v1/pickups/P-2", {**parcel, "store": "nope"}))[0] == 422
    assert (await check(tenant, "GET", "/v1/pickups/P-1/notifications"))[0] == 200
    assert (await check(tenant, "GET", "/v1/pickups/P-2/notifications"))[0] == 404
    async with system.gateway.db.transaction() as tx:
        subject = Subject.shipment("kdniao", "YT9", None, rid)
        exception_id, _ = await carrier_exceptions.open_exception(
            tx, subject, Reason.CARRIER_PROBLEM, "parcel damaged"
        )
    _, listing = await check(op, "GET", "/v1/exceptions?status=all")
    assert [e["id"] for e in listing["exceptions"]] == [exception_id]
    assert (await check(op, "GET", f"/v1/exceptions/{exception_id}"))[0] == 200
    resolve = {"action": "close", "by": "ops", "note": "paid the customer"}
    path = f"/v1/exceptions/{exception_id}/resolve"
    assert (await check(op, "POST", path, resolve))[0] == 200
    assert (await check(op, "POST", path, resolve))[0] == 409
    assert (await check(op, "GET", "/v1/reports/carrier_exceptions"))[0] == 200
    assert (await check(op, "DELETE", "/v1/stores/store-1/clerks/c-1"))[0] == 204
    assert len(check.checked) >= 45
