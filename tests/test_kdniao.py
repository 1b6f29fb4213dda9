"""The Kdniao adapter against the simulated Kdniao API (same wire format, real HTTP)."""

import dataclasses
import json
from collections.abc import AsyncIterator

import pytest

from gateway.carriers import kdniao_wire as wire
from gateway.carriers.base import (
    CarrierMalformedReply,
    CarrierRateLimited,
    CarrierRejected,
    CarrierTimeout,
    CarrierUnavailable,
    CircuitOpenError,
    PushVerificationError,
    TrackingState,
)
from simulator.carrier_http import CarrierKnobs
from tests.carrier_pairs import CUSTOMER, KdniaoPair, kdniao_pair, shipment_request


@pytest.fixture
async def pair() -> AsyncIterator[KdniaoPair]:
    async for p in kdniao_pair():
        yield p


def test_data_sign_is_base64_of_lower_hex_md5() -> None:
    data = '{"OrderCode":"012657700387"}'
    # Vector from coreutils: printf '%s' "${data}key" | md5sum | cut -c1-32 | tr -d '\n' | base64
    assert wire.data_sign(data, "key") == "YmQ0ZWYwZjExNmU2NTljZTllN2RlMzIxOTM0ZGQwMzI="


async def test_create_book_subscribe_query(pair: KdniaoPair) -> None:
    req = shipment_request()
    shipment = await pair.carrier.create_shipment(req)
    assert shipment.waybill.startswith("YTO")
    assert shipment.product == "YTO"
    booking = await pair.carrier.book_pickup(shipment, req)
    assert (booking.window_start, booking.waybill) == (req.pickup_start, shipment.waybill)
    await pair.carrier.subscribe(shipment)
    assert await pair.carrier.query(shipment) == [], "no trace yet: no update"
    await pair.sim.advance(shipment.waybill, "2", "201", "在途")
    [update] = await pair.carrier.query(shipment)
    assert update.state is TrackingState.IN_TRANSIT
    assert pair.sim.requests == {"1007": 1, "1001": 1, "1008": 1, "1002": 2}


async def test_product_picks_the_shipper_code(pair: KdniaoPair) -> None:
    req = dataclasses.replace(shipment_request("tote-ems"), product="EMS")
    shipment = await pair.carrier.create_shipment(req)
    assert shipment.waybill.startswith("EMS")
    assert pair.sim.orders["tote-ems"].shipper == "EMS"


async def test_repeated_order_code_returns_the_same_waybill(pair: KdniaoPair) -> None:
    first = await pair.carrier.create_shipment(shipment_request("tote-9"))
    again = await pair.carrier.create_shipment(shipment_request("tote-9"))
    assert again.waybill == first.waybill
    assert pair.sim.shipments_created["tote-9"] == 1
    booking = await pair.carrier.book_pickup(first, shipment_request("tote-9"))
    rebooked = await pair.carrier.book_pickup(first, shipment_request("tote-9"))
    assert rebooked.booking_id == booking.booking_id


async def test_timed_out_create_is_retried_without_a_duplicate() -> None:
    # The first reply is held past the client's timeout, but the carrier commits the order;
    # the retry carries the same OrderCode and gets the existing waybill back.
    async for p in kdniao_pair(CarrierKnobs(time_out_next=1, timeout_hold_s=5.0), timeout_s=0.3):
        shipment = await p.carrier.create_shipment(shipment_request("tote-5"))
        assert p.sim.requests["1007"] == 2
        assert p.sim.faults["timeout"] == 1
        assert p.sim.shipments_created["tote-5"] == 1
        assert shipment.waybill == p.sim.orders["tote-5"].waybill


async def test_create_timing_out_every_retry_finds_the_order_later() -> None:
    async for p in kdniao_pair(
        CarrierKnobs(timeout_rate=1.0, timeout_hold_s=5.0), timeout_s=0.3, attempts=2
    ):
        with pytest.raises(CarrierTimeout):
            await p.carrier.create_shipment(shipment_request("tote-6"))
        p.sim.knobs.timeout_rate = 0.0
        shipment = await p.carrier.create_shipment(shipment_request("tote-6"))
        assert p.sim.shipments_created["tote-6"] == 1
        assert shipment.waybill == p.sim.orders["tote-6"].waybill


async def test_server_errors_are_retried_then_reported() -> None:
    async for p in kdniao_pair(CarrierKnobs(error_rate=1.0), attempts=3):
        with pytest.raises(CarrierUnavailable):
            await p.carrier.create_shipment(shipment_request())
        assert p.sim.faults["error"] == 3
        assert p.sim.shipments_created == {}
        assert len(p.sleep.delays) == 2


async def test_a_few_server_errors_are_ridden_out() -> None:
    async for p in kdniao_pair(CarrierKnobs(fail_next=2), attempts=3):
        shipment = await p.carrier.create_shipment(shipment_request("tote-7"))
        assert p.sim.faults["error"] == 2
        assert p.sim.orders["tote-7"].waybill == shipment.waybill


async def test_rate_limit_honours_retry_after() -> None:
    async for p in kdniao_pair(CarrierKnobs(rate_limit_per_s=1), attempts=3):
        first = await p.carrier.create_shipment(shipment_request("tote-a"))
        second = await p.carrier.create_shipment(shipment_request("tote-b"))
        assert first.waybill != second.waybill
        assert p.sim.faults["rate_limited"] == 1
        assert p.sleep.delays == [1.0], "waited what Retry-After asked"
        assert not p.carrier.breaker.consecutive_failures, "a rate limit is no failure"


async def test_rate_limit_beyond_patience_is_reported_at_once() -> None:
    knobs = CarrierKnobs(rate_limit_per_s=1, retry_after_s=30)
    async for p in kdniao_pair(knobs, attempts=3):
        await p.carrier.create_shipment(shipment_request("tote-a"))
        with pytest.raises(CarrierRateLimited) as caught:
            await p.carrier.create_shipment(shipment_request("tote-b"))
        assert caught.value.retry_after_s == 30
        assert p.sleep.delays == [], "no 30 s wait inside a call"


async def test_breaker_opens_and_stops_calling() -> None:
    async for p in kdniao_pair(CarrierKnobs(error_rate=1.0), attempts=2, threshold=3):
        with pytest.raises(CarrierUnavailable):
            await p.carrier.create_shipment(shipment_request())
        with pytest.raises(CarrierUnavailable):
            await p.carrier.create_shipment(shipment_request())
        assert p.carrier.breaker.is_open
        calls = p.sim.faults["error"]
        with pytest.raises(CircuitOpenError):
            await p.carrier.create_shipment(shipment_request())
        assert p.sim.faults["error"] == calls, "an open circuit does not reach the carrier"


async def test_rejections_are_not_retried(pair: KdniaoPair) -> None:
    shipment = await pair.carrier.create_shipment(shipment_request())
    pair.sim.orders.clear()
    with pytest.raises(CarrierRejected):
        await pair.carrier.book_pickup(shipment, shipment_request())
    assert pair.sim.requests["1001"] == 1
    assert not pair.carrier.breaker.is_open


async def test_out_of_area_sender_is_rejected() -> None:
    async for p in kdniao_pair(CarrierKnobs(refuse_provinces=("上海市",))):
        with pytest.raises(CarrierRejected, match="超区"):
            await p.carrier.create_shipment(shipment_request())
        assert p.sim.requests["1007"] == 1


async def test_malformed_reply_is_typed() -> None:
    async for p in kdniao_pair(CarrierKnobs(malformed_rate=1.0)):
        with pytest.raises(CarrierMalformedReply):
            await p.carrier.create_shipment(shipment_request())


async def test_cancel_shipment_twice_and_after_collection(pair: KdniaoPair) -> None:
    shipment = await pair.carrier.create_shipment(shipment_request("tote-c"))
    await pair.carrier.cancel_shipment(shipment)
    await pair.carrier.cancel_shipment(shipment)  # a retried cancel is still a success
    assert pair.sim.orders["tote-c"].cancelled
    other = await pair.carrier.create_shipment(shipment_request("tote-d"))
    await pair.sim.advance(other.waybill, "1", "1", "已揽收")
    with pytest.raises(CarrierRejected):
        await pair.carrier.cancel_shipment(other)


async def test_home_pickup_book_repeat_and_cancel(pair: KdniaoPair) -> None:
    req = shipment_request("ret-1", sender=CUSTOMER)
    booking = await pair.carrier.book_home_pickup(req)
    assert booking.waybill == pair.sim.orders["ret-1"].waybill
    assert (booking.window_start, booking.window_end) == (req.pickup_start, req.pickup_end)
    assert pair.sim.orders["ret-1"].sender_province == "浙江省"
    again = await pair.carrier.book_home_pickup(req)
    assert again == booking, "a repeat returns the booking already made"
    assert pair.sim.pickups_booked["ret-1"] == 1
    await pair.carrier.cancel_home_pickup(booking)
    assert not pair.sim.orders["ret-1"].pickup_booked


async def test_home_pickup_cannot_be_cancelled_once_collected(pair: KdniaoPair) -> None:
    booking = await pair.carrier.book_home_pickup(shipment_request("ret-2", sender=CUSTOMER))
    await pair.sim.advance(booking.waybill, "1", "1", "已揽收")
    with pytest.raises(CarrierRejected):
        await pair.carrier.cancel_home_pickup(booking)


async def test_home_pickup_timeout_books_one_courier() -> None:
    async for p in kdniao_pair(CarrierKnobs(time_out_next=1, timeout_hold_s=5.0), timeout_s=0.3):
        booking = await p.carrier.book_home_pickup(shipment_request("ret-3", sender=CUSTOMER))
        assert p.sim.requests["1001"] == 2
        assert p.sim.pickups_booked["ret-3"] == 1
        assert booking.waybill == p.sim.orders["ret-3"].waybill


async def test_home_pickup_needs_a_real_window(pair: KdniaoPair) -> None:
    with pytest.raises(CarrierRejected, match="window"):
        await pair.carrier.book_home_pickup(shipment_request("ret-4", sender=CUSTOMER, hours=-1))
    assert pair.sim.requests["1001"] == 1
    assert "ret-4" not in pair.sim.orders


def _push(
    data: dict[str, object], key: str = "app-key", request_type: str = wire.PUSH
) -> dict[str, str]:
    return wire.form(request_type, json.dumps(data), "1234567", key)


async def test_push_signature_and_parsing(pair: KdniaoPair) -> None:
    trace = {"AcceptTime": "2026-11-22 10:00:00", "AcceptStation": "已签收"}
    item = {"LogisticCode": "YTO1", "OrderCode": "tote-1", "State": "3", "StateEx": "301",
            "Traces": [trace]}  # fmt: skip
    [update] = pair.carrier.parse_push(_push({"Data": [item]}))
    assert (update.waybill, update.state, update.detail) == ("YTO1", TrackingState.SIGNED, "已签收")
    assert update.at.isoformat() == "2026-11-22T10:00:00+08:00", "carrier times are Beijing time"
    with pytest.raises(PushVerificationError, match="DataSign"):
        pair.carrier.parse_push(_push({"Data": [item]}, key="forged"))
    with pytest.raises(PushVerificationError, match="EBusinessID"):
        pair.carrier.parse_push({**_push({"Data": [item]}), "EBusinessID": "999"})
    with pytest.raises(PushVerificationError, match="malformed"):
        pair.carrier.parse_push(_push({"Nope": 1}))
    with pytest.raises(PushVerificationError, match="malformed"):
        pair.carrier.parse_push(_push({"Data": [{"State": "1"}]}))


async def test_problem_push_says_what_went_wrong(pair: KdniaoPair) -> None:
    trace = {"AcceptTime": "2026-11-22 10:00:00", "AcceptStation": "联系不上收件人"}
    item = {"LogisticCode": "YTO1", "State": "4", "StateEx": "405", "Traces": [trace]}
    [update] = pair.carrier.parse_push(_push({"Data": [item]}))
    assert update.state is TrackingState.PROBLEM
    assert update.problem == "派件异常 (StateEx 405)"


async def test_pickup_order_push(pair: KdniaoPair) -> None:
    items = [
        {"OrderCode": "ret-1", "LogisticCode": "YTO2", "State": "103",
         "CreateTime": "2026-11-22 09:00:00",
         "PickerInfo": [{"PersonName": "王师傅", "PersonTel": "13800000000"}]},
        {"OrderCode": "ret-1", "LogisticCode": "YTO2", "State": "99", "Reason": "无运力",
         "CreateTime": "2026-11-22 09:05:00"},
    ]  # fmt: skip
    assigned, failed = pair.carrier.parse_push(
        _push({"Data": items}, request_type=wire.PUSH_PICKUP)
    )
    assert (assigned.state, assigned.detail) == (TrackingState.NONE, "courier 王师傅 13800000000")
    assert failed.state is TrackingState.PROBLEM
    assert failed.problem == "取件失败: 无运力"


@pytest.mark.parametrize(
    ("state", "state_ex", "expected"),
    [("0", None, TrackingState.NONE), ("1", "1", TrackingState.COLLECTED),
     ("2", "201", TrackingState.IN_TRANSIT), ("3", "301", TrackingState.SIGNED),
     ("3", "302", TrackingState.SIGNED), ("2", "304", TrackingState.SIGNED),
     ("3", "311", TrackingState.SIGNED), ("4", "401", TrackingState.PROBLEM),
     ("2", "423", TrackingState.PROBLEM), ("5", None, TrackingState.FORWARDED),
     ("6", None, TrackingState.CUSTOMS), ("9", None, TrackingState.NONE),
     ("4", None, TrackingState.PROBLEM)],
)  # fmt: skip
def test_state_mapping(state: str, state_ex: str | None, expected: TrackingState) -> None:
    assert wire.tracking_state(state, state_ex) is expected
    assert (wire.problem(state, state_ex) is not None) == (expected is TrackingState.PROBLEM)
