"""The outbound routes through the real gateway: webhook endpoints and deliveries, refund
review, risk flags, notifications and the merchant system's callback; and the refund flows
end to end with kiosks (manual approval, a merchant system that pays later)."""

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dropline.system import LocalSystem, SystemOptions
from gateway.config import RefundPolicy
from simulator.merchant_system import MerchantKnobs, sign

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
async def system(
    tmp_path: Path, request: pytest.FixtureRequest, gateway_database: str
) -> AsyncIterator[LocalSystem]:
    options = getattr(request, "param", None) or SystemOptions(kiosks_per_store=0)
    s = LocalSystem(tmp_path, dataclasses.replace(options, database=gateway_database))
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


async def _call(
    system: LocalSystem, method: str, path: str, body: Any = None
) -> tuple[int, dict[str, Any]]:
    async with system.http.request(method, path, json=body) as resp:
        return resp.status, await resp.json()


async def test_webhook_endpoint_management(system: LocalSystem) -> None:
    base = "/v1/merchants/acme/webhook-endpoints"
    status, created = await _call(
        system, "POST", base, {"url": "http://127.0.0.1:9/x", "events": ["refund.issued"]}
    )
    assert status == 201 and created["secret"].startswith("whsec_")
    status, listed = await _call(system, "GET", base)
    assert status == 200 and len(listed["endpoints"]) == 2, "the system's own and this one"
    assert all("secret" not in e for e in listed["endpoints"])
    status, rotated = await _call(system, "POST", f"{base}/{created['id']}/rotate-secret")
    assert status == 200 and rotated["secret"] not in (None, created["secret"])
    assert rotated["previous_secret_until"] is not None
    status, _ = await _call(system, "DELETE", f"{base}/{created['id']}")
    assert status == 200
    _, listed = await _call(system, "GET", base)
    assert [e["active"] for e in listed["endpoints"]] == [True, False]

    bad = [
        ("POST", "/v1/merchants/nobody/webhook-endpoints", {"url": "http://a/b"}, 404, None),
        ("POST", base, {"url": "ftp://a/b"}, 422, "url"),
        ("POST", base, {"url": "http://a/b", "events": ["return.teleported"]}, 422, "events.0"),
        ("POST", f"{base}/we_nope/rotate-secret", {}, 404, None),
        ("DELETE", f"{base}/we_nope", None, 404, None),
    ]
    for method, path, body, want, field in bad:
        status, data = await _call(system, method, path, body)
        assert status == want, (path, data)
        if field:
            assert field in [f["field"] for f in data["error"]["fields"]]


async def test_deliveries_can_be_listed_inspected_and_redelivered(system: LocalSystem) -> None:
    merchant = system.merchant_system
    assert merchant is not None
    ret = await system.authorize_return(1)
    await merchant.wait_for(lambda: len(merchant.events_of("return.authorized", ret["id"])) == 1)
    event_id = merchant.events_of("return.authorized", ret["id"])[0]["id"]
    base = "/v1/merchants/acme/webhook-deliveries"

    async def recorded() -> list[dict[str, Any]]:
        status, listed = await _call(system, "GET", f"{base}?event_id={event_id}&status=delivered")
        assert status == 200
        found: list[dict[str, Any]] = listed["deliveries"]
        return found

    await system.wait_until(recorded, timeout_s=30)
    (delivery,) = await recorded()
    assert delivery["event_type"] == "return.authorized"
    status, detail = await _call(system, "GET", f"{base}/{delivery['id']}")
    assert detail["event"]["data"]["return_id"] == ret["id"]
    assert [a["status_code"] for a in detail["attempts_log"]] == [200]

    status, _ = await _call(system, "POST", f"{base}/{delivery['id']}/redeliver")
    assert status == 202
    await merchant.wait_for(lambda: merchant.webhook_duplicates == 1)

    async def two_attempts() -> bool:
        _, detail = await _call(system, "GET", f"{base}/{delivery['id']}")
        return [a["attempt"] for a in detail["attempts_log"]] == [1, 2]

    await system.wait_until(two_attempts, timeout_s=30)

    for path, want in (
        (f"{base}/dlv_nope", 404),
        (f"{base}?status=lost", 422),
        (f"{base}?limit=many", 422),
        ("/v1/merchants/x/webhook-deliveries", 404),
    ):
        status, _ = await _call(system, "GET", path)
        assert status == want, path


async def test_refund_review_and_flags_reject_what_does_not_fit(system: LocalSystem) -> None:
    ret = await system.authorize_return(1)
    path = f"/v1/returns/{ret['id']}/refund"
    status, data = await _call(system, "POST", path, {"decision": "approve", "operator": "al"})
    assert (status, data["error"]["code"]) == (409, "no_parcel")
    status, data = await _call(system, "POST", path, {"decision": "maybe", "operator": "al"})
    assert status == 422 and data["error"]["fields"][0]["field"] == "decision"
    status, _ = await _call(
        system, "POST", "/v1/returns/nope/refund", {"decision": "approve", "operator": "al"}
    )
    assert status == 404
    async with system.http.post(path, data=b"{not json") as resp:
        assert resp.status == 400
    status, data = await _call(
        system,
        "POST",
        f"/v1/returns/{ret['id']}/flags",
        {"flag": "serial_returner", "note": "3rd this week"},
    )
    assert status == 201 and data["refund_held_for_review"] is False
    status, _ = await _call(system, "POST", f"/v1/returns/{ret['id']}/flags", {"flag": "Bad Flag"})
    assert status == 422


async def test_customer_messages_are_listed_per_return(system: LocalSystem) -> None:
    ret = await system.authorize_return(4)

    async def both_sent() -> bool:
        _, data = await _call(system, "GET", f"/v1/returns/{ret['id']}/notifications")
        return sorted((n["channel"], n["status"]) for n in data["notifications"]) == [
            ("email", "sent"),
            ("sms", "sent"),
        ]

    await system.wait_until(both_sent, timeout_s=30)
    assert system.smtp is not None and system.sms is not None
    assert [m["To"] for m in system.smtp.messages] == ["shopper4@example.test"]
    assert [m["to"] for m in system.sms.messages] == ["+8613800000004"]


async def test_callback_for_a_merchant_without_a_refund_system_is_404(system: LocalSystem) -> None:
    status, _ = await _call(system, "POST", "/v1/payments/merchant-system/acme/callback", {})
    assert status == 404


@pytest.mark.parametrize(
    "system",
    [SystemOptions(kiosks_per_store=1, tote_max_items=2, refund_policy=RefundPolicy.MANUAL)],
    indirect=True,
)
async def test_manual_refund_is_paid_after_a_person_approves(system: LocalSystem) -> None:
    returns = [await system.authorize_return(i, store="store-1") for i in range(2)]
    ids = [r["id"] for r in returns]
    for ret in returns:
        assert (await system.kiosks[0].present(ret["voucher"]["token"])).state == "done"
    await system.wait_for_state(ids, "received", timeout_s=60)
    views = [await system.get_return(r) for r in ids]
    assert [v["refund"]["status"] for v in views] == ["review", "review"]
    assert [system.refunds_paid(r) for r in ids] == [0, 0]

    status, data = await _call(
        system, "POST", f"/v1/returns/{ids[0]}/refund", {"decision": "approve", "operator": "alice"}
    )
    assert (status, data["refund_status"]) == (200, "pending")
    status, data = await _call(
        system,
        "POST",
        f"/v1/returns/{ids[1]}/refund",
        {"decision": "reject", "operator": "alice", "note": "empty box"},
    )
    assert (status, data["refund_status"]) == (200, "rejected")
    await system.wait_for_state([ids[0]], "refunded", timeout_s=30)
    assert (await system.get_return(ids[1]))["state"] == "exception"
    assert [system.refunds_paid(r) for r in ids] == [1, 0]
    merchant = system.merchant_system
    assert merchant is not None
    await merchant.wait_for(lambda: len(merchant.events_of("return.exception", ids[1])) == 1)


@pytest.mark.parametrize(
    "system",
    [
        SystemOptions(
            kiosks_per_store=1,
            tote_max_items=1,
            refund_policy=RefundPolicy.ON_DROPOFF,
            refund_provider="merchant_system",
            merchant_knobs=MerchantKnobs(async_rate=1.0, async_delay_s=0.05),
        )
    ],
    indirect=True,
)
async def test_merchant_system_pays_later_and_calls_back(system: LocalSystem) -> None:
    merchant = system.merchant_system
    assert merchant is not None
    ret = await system.authorize_return(1, store="store-1")
    assert (await system.kiosks[0].present(ret["voucher"]["token"])).state == "done"
    await system.wait_for_state([ret["id"]], "refunded", timeout_s=60)
    assert merchant.refund_count(ret["id"]) == 1 and merchant.refund_requests == 1
    assert merchant.callbacks_sent == 1
    view = await system.get_return(ret["id"])
    assert view["refund"]["provider"] == "merchant-system:acme"

    # A forged callback is refused and counted; a genuine repeat changes nothing.
    path = "/v1/payments/merchant-system/acme/callback"
    refund = merchant.refunds[ret["id"]]
    body = json.dumps({**refund, "status": "failed"}).encode()
    headers = {
        "Content-Type": "application/json",
        "Dropline-Signature": sign("not-the-secret-at-all", body),
    }
    async with system.http.post(path, data=body, headers=headers) as resp:
        assert resp.status == 401
    body = json.dumps(refund).encode()
    headers["Dropline-Signature"] = sign(merchant.refund_secret, body)
    async with system.http.post(path, data=body, headers=headers) as resp:
        assert (resp.status, (await resp.json())["outcome"]) == (200, "already_final")
    metrics = await (await system.operator.get("/v1/metrics")).json()
    assert metrics["refund_callback_rejected"] == 1
    assert (await system.get_return(ret["id"]))["state"] == "refunded"
