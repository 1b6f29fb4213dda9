"""Home pickup (上门取件) end to end: the merchant asks for it over the REST API, the gateway
books the courier with the simulated carrier, the carrier's pushes carry the return to its
refund; timeouts, refusals, cancellations and a kiosk drop-off instead. Real gateway,
Mosquitto, HTTP and both database backends; only the carriers (and payments) are simulated."""

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dropline.system import LocalSystem, SystemOptions
from gateway.carriers.base import CHINA_TIME
from gateway.config import RefundPolicy, RetrySettings
from simulator.carrier_http import CarrierKnobs
from tests.gateway_world import system_for

pytestmark = pytest.mark.timeout(180)

ADDRESS = {"province": "浙江省", "city": "杭州市", "district": "西湖区", "street": "文三路 9 号",
           "postcode": "310012"}  # fmt: skip
CONTACT = {"name": "张三", "phone": "+8613800000001"}


def options(**kwargs: Any) -> SystemOptions:
    base: dict[str, Any] = {"kiosks_per_store": 0, "tracking_delays_s": ()}
    return SystemOptions(**{**base, **kwargs})


@pytest.fixture
async def system(
    tmp_path: Path, request: pytest.FixtureRequest, gateway_database: str
) -> AsyncIterator[LocalSystem]:
    async with system_for(request, tmp_path, gateway_database, options()) as s:
        yield s


TIMES_OUT_ONCE = options(
    carrier_knobs=CarrierKnobs(time_out_next=1),
    carrier_timeout_s=0.5,
    carrier_retry=RetrySettings(attempts=1),
)
"""The first booking is made at the carrier but its reply comes too late."""


def slot(start: datetime | None = None, hours: float = 2.0) -> dict[str, str]:
    start = start or datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
    return {"start": start.isoformat(), "end": (start + timedelta(hours=hours)).isoformat()}


def pickup(**changes: Any) -> dict[str, Any]:
    return {"address": ADDRESS, "contact": CONTACT, "slot": slot(), **changes}


async def ask_home_pickup(system: LocalSystem, n: int = 1, **changes: Any) -> str:
    ret = await system.authorize_return(n, method="home_pickup", pickup=pickup(**changes))
    assert ret["method"] == "home_pickup"
    return str(ret["id"])


async def pickup_view(system: LocalSystem, return_id: str) -> dict[str, Any]:
    view: dict[str, Any] = (await system.get_return(return_id))["home_pickup"]
    return view


async def wait_pickup(system: LocalSystem, return_id: str, status: str) -> dict[str, Any]:
    async def there() -> bool:
        return (await pickup_view(system, return_id))["status"] == status

    await system.wait_until(there, timeout_s=60)
    return await pickup_view(system, return_id)


async def path(system: LocalSystem, return_id: str) -> list[str]:
    view = await system.get_return(return_id)
    return [h["to"] for h in view["history"]]


async def webhook_types(system: LocalSystem, return_id: str) -> list[str]:
    assert system.gateway is not None
    rows = await system.gateway.db.fetchall(
        "SELECT type FROM webhook_events WHERE dedupe_key LIKE ? ORDER BY created_at",
        (f"%{return_id}%",),
    )
    return [str(r[0]) for r in rows]


async def cancel(system: LocalSystem, return_id: str) -> None:
    """The merchant cancels the return through the API."""
    async with system.http.post(
        f"/v1/returns/{return_id}/cancel", json={"reason": "customer kept it"}
    ) as resp:
        assert resp.status == 200, await resp.text()
    assert system.gateway is not None
    system.gateway.wake()


@pytest.mark.parametrize("system", [options(refund_policy=RefundPolicy.ON_DROPOFF)], indirect=True)
async def test_courier_collects_and_the_refund_follows_once(system: LocalSystem) -> None:
    kdniao, gateway = system.kdniao, system.gateway
    assert kdniao is not None and gateway is not None
    rid = await ask_home_pickup(system)
    booked = await wait_pickup(system, rid, "booked")
    assert (booked["carrier"], booked["service"]) == ("kdniao", "kdniao-yto")
    assert booked["pickup_code"] and booked["window"]["start"] == slot_start(booked)
    order = kdniao.orders[rid]
    assert order.waybill == booked["waybill"] and order.sender_province == "浙江省"
    assert order.subscribed, "subscribed for tracking pushes"
    assert (await system.get_return(rid))["state"] == "authorized"
    assert "shipment.created" in await webhook_types(system, rid)
    kinds = {str(r[0]) for r in await gateway.db.fetchall(
        "SELECT kind FROM notifications WHERE return_id = ?", (rid,))}  # fmt: skip
    assert "pickup_booked" in kinds

    # The courier collects: that is the drop-off, and on_dropoff refunds now.
    await kdniao.advance(order.waybill, "1", "1", "快件已揽收")
    assert (await system.get_return(rid))["state"] == "shipped"
    await system.wait_until(lambda: system.refunds_paid(rid) == 1, timeout_s=60)
    assert (await pickup_view(system, rid))["status"] == "collected"

    await kdniao.advance(order.waybill, "2", "201", "运输中")
    await kdniao.advance(order.waybill, "3", "301", "已签收")
    await system.wait_for_state([rid], "refunded", timeout_s=60)
    assert await path(system, rid) == ["authorized", "shipped", "in_transit", "received",
                                       "refunded"]  # fmt: skip
    # Every push again: nothing new, still one courier and one refund.
    await kdniao.push([kdniao.track_item(order)])
    assert system.refunds_paid(rid) == 1
    assert kdniao.pickups_booked[rid] == 1


def slot_start(view: dict[str, Any]) -> str:
    return str(view["slot"]["start"])


@pytest.mark.parametrize("system", [TIMES_OUT_ONCE], indirect=True)
async def test_a_timed_out_booking_is_retried_without_a_second_courier(
    system: LocalSystem,
) -> None:
    kdniao = system.kdniao
    assert kdniao is not None
    rid = await ask_home_pickup(system)
    booked = await wait_pickup(system, rid, "booked")
    assert kdniao.faults["timeout"] == 1
    assert kdniao.requests["1001"] >= 2, "booked again after the timeout"
    assert kdniao.pickups_booked[rid] == 1, "the repeat found the first booking"
    assert booked["attempts"] >= 2 and booked["waybill"] == kdniao.orders[rid].waybill
    async with system.operator.get("/v1/metrics") as resp:
        metrics = await resp.json()
    assert metrics["home_pickup_failures"] >= 1 and metrics["home_pickups_booked"] == 1


@pytest.mark.parametrize(
    "system", [options(carrier_knobs=CarrierKnobs(pickup_hours=(8, 20)))], indirect=True
)
async def test_a_refused_slot_goes_to_the_exception_queue(system: LocalSystem) -> None:
    tomorrow = datetime.now(CHINA_TIME) + timedelta(days=1)
    night = tomorrow.replace(hour=3, minute=0, second=0, microsecond=0)
    rid = await ask_home_pickup(system, slot=slot(night))
    await system.wait_for_state([rid], "exception", timeout_s=60)
    view = await pickup_view(system, rid)
    assert view["status"] == "rejected" and "服务时间" in view["last_error"]
    async with system.operator.get("/v1/exceptions") as resp:
        listing = await resp.json()
    [item] = listing["exceptions"]
    assert (item["reason"], item["carrier"], item["returns"]) == ("pickup_rejected", "kdniao",
                                                                  [rid])  # fmt: skip
    assert "服务时间" in item["detail"]
    assert "return.exception" in await webhook_types(system, rid)
    assert system.kdniao is not None and rid not in system.kdniao.orders

    # The carrier serves nights now; the operator resumes: booked anew.
    system.kdniao.knobs.pickup_hours = None
    async with system.operator.post(
        f"/v1/exceptions/{item['id']}/resolve", json={"action": "resume", "by": "ops"}
    ) as resp:
        assert resp.status == 200
    booked = await wait_pickup(system, rid, "booked")
    assert booked["waybill"] == system.kdniao.orders[rid].waybill
    assert await path(system, rid) == ["authorized", "exception", "authorized"]


async def test_cancelling_the_return_cancels_the_courier(system: LocalSystem) -> None:
    kdniao = system.kdniao
    assert kdniao is not None
    rid = await ask_home_pickup(system)
    booked = await wait_pickup(system, rid, "booked")
    assert kdniao.orders[rid].pickup_booked
    await cancel(system, rid)
    view = await wait_pickup(system, rid, "cancelled")
    assert view["cancel_reason"] == "return cancelled"
    assert not kdniao.orders[rid].pickup_booked, "cancelled at the carrier"
    assert kdniao.requests["1004"] == 1
    assert system.gateway is not None
    row = await system.gateway.db.fetchone(
        "SELECT finished_at FROM shipments WHERE waybill = ?", (booked["waybill"],)
    )
    assert row is not None and row[0] is not None, "no longer tracked"


async def wait_attempted(system: LocalSystem, return_id: str) -> None:
    async def failed_once() -> bool:
        view = await pickup_view(system, return_id)
        return bool(view["status"] == "pending" and view["attempts"] >= 1)

    await system.wait_until(failed_once, timeout_s=60)


@pytest.mark.parametrize(
    "system",
    [options(carrier_knobs=CarrierKnobs(fail_next=1000), carrier_retry=RetrySettings(attempts=1))],
    indirect=True,
)
async def test_cancelling_while_the_carrier_is_down_books_nothing(system: LocalSystem) -> None:
    rid = await ask_home_pickup(system)
    await wait_attempted(system, rid)  # HTTP 500: nothing was booked
    await cancel(system, rid)
    view = await wait_pickup(system, rid, "cancelled")
    assert view["waybill"] is None
    assert system.kdniao is not None and rid not in system.kdniao.orders


@pytest.mark.parametrize("system", [TIMES_OUT_ONCE], indirect=True)
async def test_cancelling_after_a_timed_out_booking_cancels_the_courier(
    system: LocalSystem,
) -> None:
    kdniao = system.kdniao
    assert kdniao is not None
    rid = await ask_home_pickup(system)

    # The booking timed out (it may have been made) or, had the retry come first, is booked.
    async def attempted() -> bool:
        return bool((await pickup_view(system, rid))["attempts"] >= 1)

    await system.wait_until(attempted, timeout_s=60)
    await cancel(system, rid)
    view = await wait_pickup(system, rid, "cancelled")
    assert view["waybill"] == kdniao.orders[rid].waybill, "found the booking the timeout hid"
    assert not kdniao.orders[rid].pickup_booked and kdniao.pickups_booked[rid] == 1


@pytest.mark.parametrize(
    "system", [options(carrier_knobs=CarrierKnobs(pushes=False))], indirect=True
)
async def test_too_late_to_cancel_is_an_exception(system: LocalSystem) -> None:
    kdniao = system.kdniao
    assert kdniao is not None
    rid = await ask_home_pickup(system)
    booked = await wait_pickup(system, rid, "booked")
    await kdniao.advance(booked["waybill"], "1", "1", "快件已揽收")  # we have not heard yet
    await cancel(system, rid)
    await system.wait_for_state([rid], "exception", timeout_s=60)
    view = await pickup_view(system, rid)
    assert view["status"] == "cancel_failed"
    async with system.operator.get("/v1/exceptions") as resp:
        [item] = (await resp.json())["exceptions"]
    assert item["reason"] == "pickup_not_cancelled" and booked["waybill"] in item["detail"]
    assert await path(system, rid) == ["authorized", "cancelled", "exception"]


@pytest.mark.parametrize("system", [options(kiosks_per_store=1)], indirect=True)
async def test_dropping_off_at_a_kiosk_instead_cancels_the_courier(system: LocalSystem) -> None:
    kdniao = system.kdniao
    assert kdniao is not None
    rid = await ask_home_pickup(system)
    await wait_pickup(system, rid, "booked")
    ret = await system.get_return(rid)
    session = await system.kiosks[0].present(ret["voucher"]["token"])
    assert session.state == "done", (session.state, session.reason)
    view = await wait_pickup(system, rid, "cancelled")
    assert view["cancel_reason"] == "dropped off at a kiosk instead"
    assert not kdniao.orders[rid].pickup_booked
    assert (await path(system, rid))[:2] == ["authorized", "dropped_off"], "on the store's way"


async def test_invalid_pickups_are_refused_with_the_field(system: LocalSystem) -> None:
    past = datetime.now(UTC) - timedelta(hours=1)
    naive = (datetime.now(UTC) + timedelta(hours=2)).replace(tzinfo=None)
    start = datetime.now(UTC) + timedelta(hours=2)
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"method": "home_pickup"}, "pickup", "required when method is home_pickup"),
        ({"pickup": pickup()}, "pickup", "only for method home_pickup"),
        ({"method": "home_pickup", "pickup": pickup(slot=slot(past))}, "pickup.slot.start",
         "future"),
        ({"method": "home_pickup", "pickup": pickup(slot={"start": start.isoformat(),
          "end": (start - timedelta(hours=1)).isoformat()})}, "pickup.slot.end", "after"),
        ({"method": "home_pickup", "pickup": pickup(slot=slot(hours=12))}, "pickup.slot.end",
         "at most 8 hours"),
        ({"method": "home_pickup", "pickup": pickup(slot={"start": naive.isoformat(),
          "end": (naive + timedelta(hours=1)).isoformat()})}, "pickup.slot.start", "timezone"),
        ({"method": "home_pickup", "pickup": pickup(contact={"name": "张三"})},
         "pickup.contact.phone", "required"),
        ({"method": "home_pickup", "pickup": pickup(address={**ADDRESS, "postcode": "31"})},
         "pickup.address.postcode", "pattern"),
    ]  # fmt: skip
    for n, (extra, field, reason) in enumerate(cases):
        async with system.http.post("/v1/returns", json={**base_body(system, n), **extra}) as resp:
            body = await resp.json()
        assert resp.status == 422
        fields = {f["field"]: f["reason"] for f in body["error"]["fields"]}
        assert field in fields and reason in fields[field].lower(), (field, fields)
    assert system.gateway is not None
    row = await system.gateway.db.fetchone("SELECT count(*) FROM home_pickups")
    assert row is not None and row[0] == 0


def base_body(system: LocalSystem, n: int) -> dict[str, Any]:
    return {
        "merchant": system.merchant,
        "order_id": f"order-{n:05d}",
        "items": [{"sku": "SKU-1"}],
        "reason": "too small",
        "refund": {"amount_minor": 1999, "currency": "CNY"},
        "customer": {"name": "Shopper", "phone": "+8613800000001"},
    }
