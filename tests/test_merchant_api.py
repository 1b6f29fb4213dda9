"""The merchant API: keys and roles, tenant isolation, cancel (and the kiosk refusing the
voucher afterwards), listing with filters and cursors, approval rules and the review queue,
reports over HTTP. Runs on both database backends."""

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dropline.system import LocalSystem, SystemOptions
from protocol import voucher
from protocol.errors import VoucherRevoked


@pytest.fixture
async def system(
    request: pytest.FixtureRequest, tmp_path: Path, gateway_database: str
) -> AsyncIterator[LocalSystem]:
    options = getattr(request, "param", SystemOptions(kiosks_per_store=0))
    options.database = gateway_database
    s = LocalSystem(tmp_path, options)
    await s.start()
    yield s
    await s.stop()


async def call(
    session: aiohttp.ClientSession, method: str, path: str, body: Any = None, **kw: Any
) -> tuple[int, Any]:
    async with session.request(method, path, json=body, **kw) as resp:
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.text()


async def new_tenant(system: LocalSystem, tenant: str) -> aiohttp.ClientSession:
    """A second merchant with its own key, made by the operator."""
    status, _ = await call(system.operator, "POST", "/v1/tenants", {"id": tenant, "name": tenant})
    assert status == 201
    status, key = await call(system.operator, "POST", f"/v1/tenants/{tenant}/keys", {})
    assert status == 201
    assert system.gateway is not None
    return aiohttp.ClientSession(
        base_url=system.gateway.url, headers={"Authorization": f"Bearer {key['key']}"}
    )


async def test_keys_roles_and_tenant_isolation(system: LocalSystem) -> None:
    assert system.gateway is not None
    ret = await system.authorize_return(1)
    async with aiohttp.ClientSession(base_url=system.gateway.url) as anonymous:
        status, data = await call(anonymous, "GET", f"/v1/returns/{ret['id']}")
        assert (status, data["error"]["code"]) == (401, "missing_key")
        status, data = await call(
            anonymous, "GET", "/v1/returns", headers={"Authorization": "Bearer dl_nope"}
        )
        assert (status, data["error"]["code"]) == (401, "bad_key")
        status, data = await call(
            anonymous, "GET", "/v1/returns", headers={"Authorization": "Basic abc"}
        )
        assert status == 401
        assert (await call(anonymous, "GET", "/v1/health"))[0] == 200
        assert (await call(anonymous, "GET", "/v1/metrics"))[0] == 401
    for path in ("/v1/metrics", "/v1/tenants", "/v1/exceptions"):
        status, data = await call(system.http, "GET", path)
        assert (status, data["error"]["code"]) == (403, "forbidden"), path
    status, data = await call(system.http, "GET", "/v1/stores")  # shared drop-off points
    assert status == 200 and [s["id"] for s in data["stores"]] == system.store_ids

    beta = await new_tenant(system, "beta")
    try:
        rid, code = ret["id"], ret["voucher"]["short_code"]
        for path in (f"/v1/returns/{rid}", f"/v1/returns/{rid}/voucher.png",
                     f"/v1/returns/{rid}/notifications", f"/v1/vouchers/{code}",
                     "/v1/merchants/acme/webhook-endpoints",
                     "/v1/reports/dropoffs?tenant=acme"):  # fmt: skip
            status, _ = await call(beta, "GET", path)
            assert status == 404, path
        status, _ = await call(beta, "POST", f"/v1/returns/{ret['id']}/cancel", {"reason": "x"})
        assert status == 404
        parcel = {"order_id": "o-1", "store": "store-1", "customer": {"name": "Lin"}}
        assert (await call(system.http, "PUT", "/v1/pickups/ACME-P1", parcel))[0] == 200
        assert (await call(beta, "GET", "/v1/pickups/ACME-P1/notifications"))[0] == 404
        assert (await call(beta, "GET", "/v1/pickups/ACME-P1"))[0] == 403, "operator only"
        assert (await call(beta, "PUT", "/v1/pickups/ACME-P1", parcel))[0] == 409
        status, data = await call(beta, "PUT", "/v1/pickups/B-1", {**parcel, "merchant": "acme"})
        assert (status, data["error"]["fields"][0]["field"]) == (422, "merchant")
        status, page = await call(beta, "GET", "/v1/returns")
        assert (status, page["returns"]) == (200, [])
        status, data = await call(beta, "POST", "/v1/returns", {**_body(2), "merchant": "acme"})
        assert (status, data["error"]["fields"][0]["field"]) == (422, "merchant")
        status, mine = await call(beta, "POST", "/v1/returns", _body(3))
        assert (status, mine["merchant"]) == (201, "beta")
        status, page = await call(system.http, "GET", "/v1/returns")
        assert mine["id"] not in {r["id"] for r in page["returns"]}
        _, everyone = await call(system.operator, "GET", "/v1/returns")
        assert {ret["id"], mine["id"]} <= {r["id"] for r in everyone["returns"]}
        _, only_beta = await call(system.operator, "GET", "/v1/returns?tenant=beta")
        assert [r["id"] for r in only_beta["returns"]] == [mine["id"]]
    finally:
        await beta.close()

    _, keys = await call(system.operator, "GET", "/v1/tenants/beta/keys")
    (key,) = keys["keys"]
    rows = await system.gateway.db.fetchall("SELECT id, digest FROM api_keys")
    assert all(len(d) == 64 and not d.startswith("dl_") for _, d in rows), "only digests"
    assert hashlib.sha256(system.tenant_key.encode()).hexdigest() in {d for _, d in rows}
    status, revoked = await call(system.operator, "DELETE", f"/v1/tenants/beta/keys/{key['id']}")
    assert (status, revoked["active"]) == (200, False)
    assert (await call(system.operator, "DELETE", "/v1/tenants/beta/keys/nope"))[0] == 404
    assert (await call(system.operator, "POST", "/v1/tenants", {"id": "beta", "name": "B"}))[
        0
    ] == 409


async def test_a_revoked_key_is_refused(system: LocalSystem) -> None:
    beta = await new_tenant(system, "gamma")
    try:
        assert (await call(beta, "GET", "/v1/returns"))[0] == 200
        _, keys = await call(system.operator, "GET", "/v1/tenants/gamma/keys")
        await call(system.operator, "DELETE", f"/v1/tenants/gamma/keys/{keys['keys'][0]['id']}")
        status, data = await call(beta, "GET", "/v1/returns")
        assert (status, data["error"]["code"]) == (401, "bad_key")
    finally:
        await beta.close()


def _body(n: int, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "order_id": f"order-{n:05d}",
        "items": [{"sku": "SKU-1", "name": "Shirt"}],
        "reason": "too small",
        "refund": {"amount_minor": 1000 + n, "currency": "CNY"},
        "customer": {"name": f"Shopper {n}", "email": f"s{n}@example.test"},
    }
    body.update(changes)
    return body


async def test_listing_filters_and_cursor_pages(system: LocalSystem) -> None:
    ids = [
        (await system.authorize_return(i, method="counter" if i % 2 else "locker"))["id"]
        for i in range(7)
    ]
    seen: list[str] = []
    cursor: str | None = None
    while True:
        path = "/v1/returns?limit=3" + (f"&cursor={cursor}" if cursor else "")
        status, page = await call(system.http, "GET", path)
        assert status == 200 and page["count"] <= 3
        seen += [r["id"] for r in page["returns"]]
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
        await system.authorize_return(100 + len(seen))  # newer returns never shift the pages
    assert seen == list(reversed(ids)), "each once, newest first, later ones not mixed in"

    _, page = await call(system.http, "GET", "/v1/returns?method=counter&limit=100")
    assert {r["id"] for r in page["returns"]} >= {ids[1], ids[3], ids[5]}
    assert all(r["method"] == "counter" for r in page["returns"])
    _, page = await call(system.http, "GET", "/v1/returns?order_id=order-00004")
    assert [r["id"] for r in page["returns"]] == [ids[4]]
    first = await system.get_return(ids[2])
    _, page = await call(system.http, "GET", f"/v1/returns?created_before={first['created_at']}")
    assert {r["id"] for r in page["returns"]} == set(ids[:2])
    _, page = await call(
        system.http, "GET", f"/v1/returns?created_after={first['created_at']}&state=authorized"
    )
    assert set(ids[3:]) <= {r["id"] for r in page["returns"]}
    for bad, field in (("limit=0", "limit"), ("limit=501", "limit"), ("cursor=zz", "cursor"),
                       ("state=lost", "state"), ("created_after=nan", "created_after"),
                       ("merchant=acme", "merchant")):  # fmt: skip
        status, data = await call(system.http, "GET", f"/v1/returns?{bad}")
        assert status == 422, bad
        assert data["error"]["fields"][0]["field"] == field


@pytest.mark.parametrize("system", [SystemOptions(kiosks_per_store=1, screen=False)], indirect=True)
async def test_cancel_revokes_the_voucher_at_kiosks(system: LocalSystem) -> None:
    ret = await system.authorize_return(1, store="store-1")
    status, view = await call(
        system.http, "POST", f"/v1/returns/{ret['id']}/cancel", {"reason": "order lost"}
    )
    assert status == 200
    assert (view["state"], view["cancel_reason"]) == ("cancelled", "order lost")
    agent = system.kiosks[0].agent

    async def revoked() -> bool:
        config = await agent.db.store_config()
        return config is not None and ret["id"] in config.revoked_returns

    await system.wait_until(revoked, timeout_s=30)
    with pytest.raises(VoucherRevoked):
        await agent.verifier.verify(ret["voucher"]["token"])
    status, data = await call(
        system.http, "POST", f"/v1/returns/{ret['id']}/cancel", {"reason": "again"}
    )
    assert (status, data["error"]["code"]) == (409, "illegal_transition")
    status, data = await call(system.http, "POST", f"/v1/returns/{ret['id']}/cancel", {})
    assert (status, data["error"]["fields"][0]["field"]) == (422, "reason")
    view = await system.get_return(ret["id"])
    assert view["history"][-1]["cause"] == {"kind": "api", "id": "tenant:acme"}


async def _event_types(system: LocalSystem, return_id: str) -> list[str]:
    assert system.gateway is not None
    rows = await system.gateway.db.fetchall("SELECT type, body FROM webhook_events")
    return sorted(t for t, b in rows if json.loads(b)["data"].get("return_id") == return_id)


async def test_approval_rules_and_review_queue(system: LocalSystem) -> None:
    status, rules = await call(system.http, "GET", "/v1/approval-rules")
    assert rules == {"review_above_minor": None, "approve_within_days": None,
                     "otherwise": "approve"}  # fmt: skip
    new_rules = {"review_above_minor": 50_000, "approve_within_days": 30, "otherwise": "review"}
    status, saved = await call(system.http, "PUT", "/v1/approval-rules", new_rules)
    assert (status, saved) == (200, new_rules)
    status, data = await call(system.http, "PUT", "/v1/approval-rules", {"approve_within_days": -1})
    assert (status, data["error"]["fields"][0]["field"]) == (422, "approve_within_days")
    assert (await call(system.operator, "GET", "/v1/approval-rules"))[0] == 422
    _, theirs = await call(system.operator, "GET", "/v1/approval-rules?tenant=acme")
    assert theirs == new_rules

    recent = time.time() - 3 * 86_400
    unopened = [{"sku": "A", "opened": False}]
    fine = await system.authorize_return(1, delivered_at=recent, items=unopened)
    assert (fine["state"], fine["approval_rule"]) == ("authorized", "recent_unopened")
    was_opened = [{"sku": "A", "opened": True}]
    opened = await system.authorize_return(2, delivered_at=recent, items=was_opened)
    old = await system.authorize_return(3, delivered_at=time.time() - 60 * 86_400, items=unopened)
    costly = await system.authorize_return(
        4, delivered_at=recent, items=unopened, refund={"amount_minor": 90_000, "currency": "CNY"}
    )
    for held, rule in ((opened, "otherwise"), (old, "otherwise"), (costly, "amount_above")):
        assert (held["state"], held["voucher"], held["approval_rule"]) == ("review", None, rule)
    status, _ = await call(system.http, "GET", f"/v1/returns/{costly['id']}/voucher.png")
    assert status == 404

    _, queue = await call(system.http, "GET", "/v1/reviews")
    assert [r["id"] for r in queue["reviews"]] == [opened["id"], old["id"], costly["id"]]
    await system.wait_until(lambda: _event_types(system, fine["id"]))
    assert await _event_types(system, costly["id"]) == [], "no return.authorized in review"

    status, approved = await call(system.http, "POST", f"/v1/reviews/{costly['id']}/approve")
    assert status == 200 and approved["state"] == "authorized"
    assert system.gateway is not None
    keys = voucher.keyring(system.gateway.keys.public_texts())
    claims = voucher.verify(approved["voucher"]["token"], keys, store="store-1", now=time.time())
    assert str(claims.return_id) == costly["id"]
    assert await _event_types(system, costly["id"]) == ["return.authorized"]
    status, data = await call(system.http, "POST", f"/v1/reviews/{costly['id']}/approve")
    assert (status, data["error"]["code"]) == (409, "not_in_review")

    status, rejected = await call(
        system.http, "POST", f"/v1/reviews/{old['id']}/reject", {"reason": "past 30 days"}
    )
    assert status == 200
    assert (rejected["state"], rejected["cancel_reason"]) == ("cancelled", "past 30 days")
    assert await _event_types(system, old["id"]) == []
    _, queue = await call(system.operator, "GET", "/v1/reviews?tenant=acme")
    assert [r["id"] for r in queue["reviews"]] == [opened["id"]]
    status, _ = await call(system.http, "POST", f"/v1/reviews/{fine['id']}/reject", {"reason": "x"})
    assert status == 409


async def test_reports_over_http(system: LocalSystem) -> None:
    for i in range(4):
        await system.authorize_return(i)  # reasons cycle: too small, damaged, changed mind
    status, report = await call(system.http, "GET", "/v1/reports/return_reasons")
    assert status == 200 and report["tenant"] == "acme"
    assert report["rows"] == [{"reason": "too small", "count": 2},
                              {"reason": "changed mind", "count": 1},
                              {"reason": "damaged", "count": 1}]  # fmt: skip
    status, text = await call(system.http, "GET", "/v1/reports/return_reasons?format=csv")
    assert status == 200
    assert text.splitlines() == ["reason,count", "too small,2", "changed mind,1", "damaged,1"]
    status, text = await call(
        system.http, "GET", "/v1/reports/return_reasons", headers={"Accept": "text/csv"}
    )
    assert text.startswith("reason,count\n")
    _, report = await call(system.http, "GET", "/v1/reports/return_reasons?until=2020-01-01")
    assert report["rows"] == []
    _, report = await call(system.operator, "GET", "/v1/reports/refund_time?tenant=acme")
    assert report["rows"] == [{"count": 0, "p50_s": None, "p90_s": None, "mean_s": None}]
    for path, want in (("/v1/reports/nothing", 404), ("/v1/reports/dropoffs?since=yesterday", 422),
                       ("/v1/reports/dropoffs?format=xml", 422),
                       ("/v1/reports/dropoffs?tenant=nobody", 404)):  # fmt: skip
        assert (await call(system.http, "GET", path))[0] == want, path
    assert (await call(system.operator, "GET", "/v1/reports/dropoffs?tenant=nobody"))[0] == 404


async def test_concurrent_keys_do_not_collide(system: LocalSystem) -> None:
    results = await asyncio.gather(
        *(
            call(system.operator, "POST", "/v1/tenants/acme/keys", {"label": f"k{i}"})
            for i in range(5)
        )
    )
    assert [s for s, _ in results] == [201] * 5
    assert len({k["key"] for _, k in results}) == 5
