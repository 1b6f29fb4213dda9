"""Carriers end to end: the gateway books totes with both simulated carriers, follows them by
push and by polling, queues problems as exceptions an operator resolves, and tracks a home
pickup. Real Mosquitto, gateway, edge agents and HTTP; only the carriers are simulated."""

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dropline.system import LocalSystem, SystemOptions
from gateway.carriers import kdniao_wire
from gateway.carriers.base import Address, Parcel, Shipment, ShipmentRequest
from gateway.config import RetrySettings, TrackingSettings
from gateway.tracking import register_shipment
from simulator.carrier_http import CarrierKnobs
from tests.gateway_world import system_for

pytestmark = pytest.mark.timeout(240)

FAST_TRACKING = TrackingSettings(quiet_after_s=0.2, poll_every_s=0.2, silent_after_s=600)


@pytest.fixture
async def system(
    tmp_path: Path, request: pytest.FixtureRequest, gateway_database: str
) -> AsyncIterator[LocalSystem]:
    async with system_for(request, tmp_path, gateway_database, options()) as s:
        yield s


def options(**kwargs: Any) -> SystemOptions:
    base: dict[str, Any] = {"kiosks_per_store": 1, "tote_max_items": 2}
    return SystemOptions(**{**base, **kwargs})


async def drop_off(system: LocalSystem, store: str, count: int, first: int = 0) -> list[str]:
    """Authorize ``count`` returns for ``store`` and drop them off at its kiosk."""
    kiosk = next(k for k in system.kiosks if k.store == store)
    ids = []
    for n in range(first, first + count):
        ret = await system.authorize_return(n, store=store)
        session = await kiosk.present(ret["voucher"]["token"])
        assert session.state == "done", (session.state, session.reason)
        ids.append(ret["id"])
    return ids


async def tote_of(system: LocalSystem, return_id: str) -> dict[str, Any]:
    assert system.gateway is not None
    row = await system.gateway.db.fetchone(
        "SELECT t.id, t.state, t.service, t.carrier, t.waybill, t.choice FROM totes t "
        "JOIN returns r ON r.tote_id = t.id WHERE r.id = ?",
        (return_id,),
    )
    assert row is not None
    return dict(zip(("id", "state", "service", "carrier", "waybill", "choice"), row, strict=True))


async def wait_booked(system: LocalSystem, return_id: str) -> dict[str, Any]:
    async def booked() -> bool:
        return bool((await tote_of(system, return_id))["waybill"])

    await system.wait_until(booked, timeout_s=60)
    return await tote_of(system, return_id)


async def api(system: LocalSystem, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with system.operator.request(method, path, **kwargs) as resp:
        return resp.status, await resp.json()


async def causes(system: LocalSystem, return_id: str) -> list[tuple[str, str]]:
    view = await system.get_return(return_id)
    return [(h["to"], h["cause"]["id"] or "") for h in view["history"]]


@pytest.mark.parametrize("system", [options(stores=3)], indirect=True)
async def test_stores_ship_by_rules_with_both_carriers(system: LocalSystem) -> None:
    ids = {store: await drop_off(system, store, 2, 10 * i) for i, store in
           enumerate(system.store_ids)}  # fmt: skip
    everything = [r for rs in ids.values() for r in rs]
    await system.wait_for_state(everything, "refunded", timeout_s=120)

    services = {s: (await tote_of(system, rs[0]))["service"] for s, rs in ids.items()}
    assert services == {"store-1": "kdniao-yto", "store-2": "sf-standard",
                        "store-3": "kdniao-ems"}  # fmt: skip
    assert "新疆 is remote" in (await tote_of(system, ids["store-3"][0]))["choice"]
    assert "store prefers sf" in (await tote_of(system, ids["store-2"][0]))["choice"]
    assert system.kdniao is not None and system.sf is not None
    assert sorted(o.shipper for o in system.kdniao.orders.values()) == ["EMS", "YTO"]
    assert set(system.kdniao.shipments_created.values()) == {1}
    assert list(system.sf.orders_created.values()) == [1]
    path = [to for to, _ in await causes(system, ids["store-2"][0])]
    assert path[-4:] == ["shipped", "in_transit", "received", "refunded"], "SF pushes applied"

    # A replayed SF push is accepted and changes nothing.
    [order] = system.sf.orders.values()
    _, before = await api(system, "GET", "/v1/metrics")
    await system.sf.push(order, order.routes)
    _, after = await api(system, "GET", "/v1/metrics")
    assert after["tracking_duplicates"] == before["tracking_duplicates"] + len(order.routes)
    assert after["tracking_applied"] == before["tracking_applied"]
    assert set((await system.states(ids["store-2"])).values()) == {"refunded"}


@pytest.mark.parametrize("system", [options(tracking_delays_s=())], indirect=True)
async def test_problem_goes_to_the_queue_and_an_operator_resumes_it(system: LocalSystem) -> None:
    assert system.kdniao is not None
    ids = await drop_off(system, "store-1", 2)
    waybill = (await wait_booked(system, ids[0]))["waybill"]
    await system.kdniao.advance(waybill, "1", "1", "快件已揽收")
    assert set((await system.states(ids)).values()) == {"shipped"}

    await system.kdniao.advance(waybill, "4", "405", "联系不上收件人")
    assert set((await system.states(ids)).values()) == {"exception"}
    status, listing = await api(system, "GET", "/v1/exceptions")
    assert status == 200 and listing["count"] == 1
    [item] = listing["exceptions"]
    assert (item["reason"], item["carrier"], item["waybill"]) == ("carrier_problem", "kdniao",
                                                                   waybill)  # fmt: skip
    assert item["detail"] == "派件异常 (StateEx 405) — 联系不上收件人"
    assert sorted(item["returns"]) == sorted(ids)
    assert (await causes(system, ids[0]))[-1] == ("exception", item["id"])

    # The carrier repeats its push: nothing new, still one exception.
    await system.kdniao.push([system.kdniao.track_item(system.kdniao.orders[item["tote_id"]])])
    _, again = await api(system, "GET", "/v1/exceptions")
    assert again["count"] == 1
    _, metrics = await api(system, "GET", "/v1/metrics")
    assert metrics["tracking_duplicates"] >= 1 and metrics["exceptions_open"] == 1

    status, bad = await api(system, "POST", f"/v1/exceptions/{item['id']}/resolve",
                            json={"action": "later", "by": "ops"})  # fmt: skip
    assert status == 422 and bad["error"]["fields"][0]["field"] == "action"
    status, resolved = await api(system, "POST", f"/v1/exceptions/{item['id']}/resolve",
                                 json={"action": "resume", "by": "ops-ann",
                                       "note": "courier reached the customer"})  # fmt: skip
    assert status == 200
    assert (resolved["status"], resolved["resolution"], resolved["resolved_by"]) == (
        "resolved", "resume", "ops-ann")  # fmt: skip
    assert set((await system.states(ids)).values()) == {"shipped"}
    status, _ = await api(system, "POST", f"/v1/exceptions/{item['id']}/resolve",
                          json={"action": "close", "by": "ops"})  # fmt: skip
    assert status == 409
    status, _ = await api(system, "POST", "/v1/exceptions/nope/resolve",
                          json={"action": "close", "by": "ops"})  # fmt: skip
    assert status == 404

    await system.kdniao.advance(waybill, "3", "301", "已签收")
    await system.wait_for_state(ids, "refunded", timeout_s=60)
    _, open_now = await api(system, "GET", "/v1/exceptions?status=open")
    _, every = await api(system, "GET", "/v1/exceptions?status=all")
    assert (open_now["count"], every["count"]) == (0, 1)


@pytest.mark.parametrize("system", [options(tracking_delays_s=())], indirect=True)
async def test_signed_parcel_clears_its_exception(system: LocalSystem) -> None:
    assert system.kdniao is not None
    ids = await drop_off(system, "store-1", 2)
    waybill = (await wait_booked(system, ids[0]))["waybill"]
    await system.kdniao.advance(waybill, "2", "201", "运输中")
    await system.kdniao.advance(waybill, "4", "417", "配送延迟")
    assert set((await system.states(ids)).values()) == {"exception"}
    await system.kdniao.advance(waybill, "3", "301", "已签收")
    await system.wait_for_state(ids, "refunded", timeout_s=60)
    _, every = await api(system, "GET", "/v1/exceptions?status=all")
    [item] = every["exceptions"]
    assert (item["resolution"], item["resolved_by"]) == ("carrier_signed", "carrier")


@pytest.mark.parametrize(
    "system", [options(carrier_knobs=CarrierKnobs(pushes=False), tracking=FAST_TRACKING)],
    indirect=True,
)  # fmt: skip
async def test_polling_finds_what_pushes_did_not_bring(system: LocalSystem) -> None:
    ids = await drop_off(system, "store-1", 2)
    await system.wait_for_state(ids, "refunded", timeout_s=60)
    assert system.kdniao is not None and system.kdniao.pushes_sent == 0
    _, metrics = await api(system, "GET", "/v1/metrics")
    assert metrics["tracking_polls"] >= 1
    received_by = dict(await causes(system, ids[0]))["received"]
    assert received_by.startswith("kdniao-poll-")


@pytest.mark.parametrize(
    "system",
    [options(carrier_knobs=CarrierKnobs(pushes=False), tracking_delays_s=(),
             tracking=TrackingSettings(quiet_after_s=0.1, poll_every_s=0.1,
                                       silent_after_s=0.5))],
    indirect=True,
)  # fmt: skip
async def test_silent_shipment_is_queued_then_resumed_by_polling(system: LocalSystem) -> None:
    assert system.kdniao is not None
    ids = await drop_off(system, "store-1", 2)
    waybill = (await wait_booked(system, ids[0]))["waybill"]
    await system.wait_for_state(ids, "exception", timeout_s=30)
    _, listing = await api(system, "GET", "/v1/exceptions")
    [item] = listing["exceptions"]
    assert item["reason"] == "no_tracking_news"
    await system.kdniao.advance(waybill, "3", "301", "已签收")  # only a poll can see it
    status, _ = await api(system, "POST", f"/v1/exceptions/{item['id']}/resolve",
                          json={"action": "resume", "by": "ops"})  # fmt: skip
    assert status == 200
    await system.wait_for_state(ids, "refunded", timeout_s=30)


@pytest.mark.parametrize(
    "system", [options(carrier_knobs=CarrierKnobs(refuse_provinces=("上海市",)))], indirect=True
)
async def test_refused_booking_is_queued_and_rebooked(system: LocalSystem) -> None:
    assert system.kdniao is not None
    ids = await drop_off(system, "store-1", 2)

    async def queued() -> bool:
        return (await api(system, "GET", "/v1/exceptions"))[1]["count"] == 1

    await system.wait_until(queued, timeout_s=60)
    _, listing = await api(system, "GET", "/v1/exceptions")
    [item] = listing["exceptions"]
    assert (item["reason"], item["waybill"]) == ("booking_rejected", None)
    assert "超区" in item["detail"]
    assert (await tote_of(system, ids[0]))["state"] == "exception"
    assert set((await system.states(ids)).values()) == {"in_tote"}, "the parcels wait in store"

    system.kdniao.knobs.refuse_provinces = ()
    status, _ = await api(system, "POST", f"/v1/exceptions/{item['id']}/resolve",
                          json={"action": "resume", "by": "ops"})  # fmt: skip
    assert status == 200
    await system.wait_for_state(ids, "refunded", timeout_s=60)


@pytest.mark.parametrize(
    "system",
    [options(carrier_knobs=CarrierKnobs(time_out_next=2, timeout_hold_s=5), carrier_timeout_s=0.4,
             carrier_retry=RetrySettings(attempts=4, base_s=0.05, max_s=0.2))],
    indirect=True,
)  # fmt: skip
async def test_timed_out_create_books_one_shipment(system: LocalSystem) -> None:
    assert system.kdniao is not None
    ids = await drop_off(system, "store-1", 2)
    await system.wait_for_state(ids, "refunded", timeout_s=60)
    tote = await tote_of(system, ids[0])
    assert system.kdniao.requests["1007"] == 3, "two timed-out attempts, then the duplicate"
    assert system.kdniao.shipments_created == {tote["id"]: 1}
    assert system.kdniao.orders[tote["id"]].waybill == tote["waybill"]


@pytest.mark.parametrize("system", [options(kiosks_per_store=0)], indirect=True)
async def test_forged_pushes_are_refused_and_counted(system: LocalSystem) -> None:
    forged = {"partnerID": "DROPLINE", "requestID": "r", "serviceCode": "RoutePushService",
              "timestamp": "1", "msgDigest": "forged", "msgData": '{"Body": {}}'}  # fmt: skip
    status, reply = await api(system, "POST", "/v1/carriers/sf/push", data=forged)
    assert status == 400 and reply["return_code"] == "1000"
    status, reply = await api(system, "POST", "/v1/carriers/kdniao/push", data={"x": "y"})
    assert status == 400 and reply["Success"] is False
    status, _ = await api(system, "POST", "/v1/carriers/dhl/push", data={"x": "y"})
    assert status == 404
    _, metrics = await api(system, "GET", "/v1/metrics")
    assert (metrics["carrier_push_rejected_sf"], metrics["carrier_push_rejected_kdniao"]) == (1, 1)
    assert metrics["carriers"]["sf"]["circuit"] == "closed"


@pytest.mark.parametrize("carrier", ["kdniao", "sf"])
@pytest.mark.parametrize("system", [options(kiosks_per_store=0)], indirect=True)
async def test_home_pickup_is_tracked_to_refund(system: LocalSystem, carrier: str) -> None:
    """What the merchant-API side of home pickup will do with the adapter: book the courier at
    the customer's address, start tracking the booking, and let the carrier's pushes carry the
    return to ``received`` and its refund."""
    gateway = system.gateway
    assert gateway is not None
    ret = await system.authorize_return(1)
    start = datetime.now(UTC) + timedelta(hours=2)
    w = gateway.config.warehouse
    req = ShipmentRequest(
        order_code=ret["id"],
        sender=Address("张三", "13800000001", "浙江省", "杭州市", "西湖区", "文三路 9 号"),
        receiver=Address(w.name, w.phone, w.province, w.city, w.district, w.street),
        parcel=Parcel(1.0, 1, "return"),
        pickup_start=start,
        pickup_end=start + timedelta(hours=2),
    )
    adapter = gateway.carriers[carrier]
    booking = await adapter.book_home_pickup(req)
    async with gateway.db.transaction() as tx:
        await register_shipment(
            tx,
            booking.shipment,
            quiet_after_s=gateway.config.tracking.quiet_after_s,
            return_id=ret["id"],
            booking_id=booking.booking_id,
        )
    await adapter.subscribe(booking.shipment)
    await system.wait_for_state([ret["id"]], "refunded", timeout_s=60)
    path = [to for to, _ in await causes(system, ret["id"])]
    assert path == ["authorized", "shipped", "in_transit", "received", "refunded"]


@pytest.mark.parametrize("system", [options(kiosks_per_store=0)], indirect=True)
async def test_push_ahead_of_its_booking_is_taken_when_sent_again(system: LocalSystem) -> None:
    gateway, kdniao = system.gateway, system.kdniao
    assert gateway is not None and kdniao is not None
    ret = await system.authorize_return(1)
    trace = {"AcceptTime": "2026-11-22 10:00:00", "AcceptStation": "已揽收"}
    item = {"LogisticCode": "YTO999", "OrderCode": ret["id"], "State": "1", "StateEx": "1",
            "Traces": [trace]}  # fmt: skip
    data = json.dumps({"EBusinessID": kdniao.ebusiness_id, "Count": 1, "Data": [item]})
    push = kdniao_wire.form(kdniao_wire.PUSH, data, kdniao.ebusiness_id, kdniao.app_key)

    status, reply = await api(system, "POST", "/v1/carriers/kdniao/push", data=push)
    assert status == 200 and reply["Success"] is False, "not ours yet: send it again"
    assert "YTO999" in reply["Reason"]
    async with gateway.db.transaction() as tx:
        await register_shipment(
            tx, Shipment("kdniao", ret["id"], "YTO999", "YTO"), quiet_after_s=60,
            return_id=ret["id"],
        )  # fmt: skip
    status, reply = await api(system, "POST", "/v1/carriers/kdniao/push", data=push)
    assert reply["Success"] is True
    assert (await system.get_return(ret["id"]))["state"] == "shipped"
    _, metrics = await api(system, "GET", "/v1/metrics")
    assert (metrics["carrier_push_deferred"], metrics["carrier_push_accepted"]) == (1, 1)
