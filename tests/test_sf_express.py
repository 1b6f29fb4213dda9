"""The SF Express adapter against the simulated SF open platform (same wire format, real HTTP)."""

import json
from collections.abc import AsyncIterator

import pytest

from gateway.carriers import sf_wire as wire
from gateway.carriers.base import (
    CarrierMalformedReply,
    CarrierRateLimited,
    CarrierRejected,
    CarrierUnavailable,
    PushVerificationError,
    TrackingState,
)
from simulator.carrier_http import CarrierKnobs
from tests.carrier_pairs import CUSTOMER, SfPair, sf_pair, shipment_request


@pytest.fixture
async def pair() -> AsyncIterator[SfPair]:
    async for p in sf_pair():
        yield p


def test_msg_digest_is_base64_of_raw_md5_of_url_encoded_text() -> None:
    # printf '%s' '%7B%22orderId%22%3A%22QIAO-1%22%7D1600000000000checkword-1' \
    #   | openssl md5 -binary | base64
    digest = wire.msg_digest('{"orderId":"QIAO-1"}', "1600000000000", "checkword-1")
    assert digest == "8WYCiIVKF21hJ4eQO9pKvA=="


async def test_create_routes_and_cancel(pair: SfPair) -> None:
    req = shipment_request("tote-1")
    shipment = await pair.carrier.create_shipment(req)
    order = pair.sim.orders["tote-1"]
    assert shipment.waybill == order.waybill and shipment.waybill.startswith("SF")
    assert order.docall, "SF books the courier with the order"
    assert order.express_type == "2"
    booking = await pair.carrier.book_pickup(shipment, req)
    assert (booking.waybill, booking.window_start) == (shipment.waybill, req.pickup_start)
    await pair.carrier.subscribe(shipment)
    assert pair.sim.requests == {wire.CREATE_ORDER: 1}, "pickup and subscription: no calls"
    assert await pair.carrier.query(shipment) == []
    await pair.sim.advance(shipment.waybill, "50", "顺丰速运 已收取快件")
    await pair.sim.advance(shipment.waybill, "30", "快件在【上海集散中心】完成分拣")
    updates = await pair.carrier.query(shipment)
    assert [u.state for u in updates] == [TrackingState.COLLECTED, TrackingState.IN_TRANSIT]
    assert updates[0].detail == "上海市 顺丰速运 已收取快件"
    with pytest.raises(CarrierRejected, match="已揽收"):
        await pair.carrier.cancel_shipment(shipment)


async def test_cancel_twice(pair: SfPair) -> None:
    shipment = await pair.carrier.create_shipment(shipment_request("tote-2"))
    await pair.carrier.cancel_pickup(shipment)
    await pair.carrier.cancel_shipment(shipment)
    assert pair.sim.orders["tote-2"].cancelled
    assert pair.sim.requests[wire.UPDATE_ORDER] == 2


async def test_repeated_order_id_returns_the_same_waybill(pair: SfPair) -> None:
    first = await pair.carrier.create_shipment(shipment_request("tote-9"))
    again = await pair.carrier.create_shipment(shipment_request("tote-9"))
    assert again.waybill == first.waybill
    assert pair.sim.orders_created["tote-9"] == 1
    assert pair.sim.requests[wire.SEARCH_ORDER] == 1, "the 8016 refusal led to a lookup"


async def test_timed_out_create_is_retried_without_a_duplicate() -> None:
    async for p in sf_pair(CarrierKnobs(time_out_next=1, timeout_hold_s=5.0), timeout_s=0.3):
        shipment = await p.carrier.create_shipment(shipment_request("tote-5"))
        assert p.sim.requests[wire.CREATE_ORDER] == 2
        assert p.sim.orders_created["tote-5"] == 1
        assert shipment.waybill == p.sim.orders["tote-5"].waybill


async def test_unserviceable_address_is_rejected() -> None:
    async for p in sf_pair(CarrierKnobs(refuse_provinces=("上海市",))):
        with pytest.raises(CarrierRejected, match="filterResult=3"):
            await p.carrier.create_shipment(shipment_request())
        assert p.sim.requests[wire.CREATE_ORDER] == 1


async def test_wrong_checkword_is_rejected_not_retried() -> None:
    async for p in sf_pair(checkword="wrong"):
        with pytest.raises(CarrierRejected, match=wire.API_BAD_DIGEST):
            await p.carrier.create_shipment(shipment_request())
        assert p.sim.orders == {}
        assert p.sleep.delays == []


async def test_faults_are_typed() -> None:
    async for p in sf_pair(CarrierKnobs(error_rate=1.0), attempts=2):
        with pytest.raises(CarrierUnavailable):
            await p.carrier.create_shipment(shipment_request())
        assert p.sim.faults["error"] == 2
    async for p in sf_pair(CarrierKnobs(malformed_rate=1.0)):
        with pytest.raises(CarrierMalformedReply):
            await p.carrier.create_shipment(shipment_request())
    async for p in sf_pair(CarrierKnobs(rate_limit_per_s=0, retry_after_s=5)):
        with pytest.raises(CarrierRateLimited):
            await p.carrier.create_shipment(shipment_request())


async def test_home_pickup_book_repeat_and_cancel(pair: SfPair) -> None:
    req = shipment_request("ret-1", sender=CUSTOMER)
    booking = await pair.carrier.book_home_pickup(req)
    order = pair.sim.orders["ret-1"]
    assert (booking.waybill, order.sender_province, order.docall) == (order.waybill, "浙江省", True)
    assert await pair.carrier.book_home_pickup(req) == booking
    assert pair.sim.orders_created["ret-1"] == 1
    await pair.carrier.cancel_home_pickup(booking)
    assert order.cancelled


async def test_home_pickup_cannot_be_cancelled_once_collected(pair: SfPair) -> None:
    booking = await pair.carrier.book_home_pickup(shipment_request("ret-2", sender=CUSTOMER))
    await pair.sim.advance(booking.waybill, "50", "已收取快件")
    with pytest.raises(CarrierRejected):
        await pair.carrier.cancel_home_pickup(booking)


def _push(routes: list[dict[str, str]], checkword: str = "checkword-1") -> dict[str, str]:
    body = json.dumps({"Body": {"WaybillRoute": routes}}, ensure_ascii=False)
    return wire.form("PARTNER", wire.ROUTE_PUSH, body, "1600000000000", checkword, "req-1")


ROUTE = {"mailno": "SF1", "orderid": "tote-1", "acceptTime": "2026-11-22 10:00:00",
         "acceptAddress": "上海市", "remark": "已签收", "opCode": "80"}  # fmt: skip


async def test_push_digest_and_parsing(pair: SfPair) -> None:
    [update] = pair.carrier.parse_push(_push([ROUTE]))
    assert (update.waybill, update.order_code, update.state) == (
        "SF1",
        "tote-1",
        TrackingState.SIGNED,
    )
    with pytest.raises(PushVerificationError, match="msgDigest"):
        pair.carrier.parse_push(_push([ROUTE], checkword="forged"))
    with pytest.raises(PushVerificationError, match="partnerID"):
        pair.carrier.parse_push({**_push([ROUTE]), "partnerID": "OTHER"})
    with pytest.raises(PushVerificationError, match="serviceCode"):
        pair.carrier.parse_push({**_push([ROUTE]), "serviceCode": wire.CREATE_ORDER})
    with pytest.raises(PushVerificationError, match="malformed"):
        pair.carrier.parse_push(_push([{**ROUTE, "acceptTime": "yesterday"}]))
    with pytest.raises(PushVerificationError, match="malformed"):
        pair.carrier.parse_push(_push([{"opCode": "80"}]))
    assert pair.carrier.push_reply(True)["return_code"] == "0000"


async def test_problem_route(pair: SfPair) -> None:
    [update] = pair.carrier.parse_push(_push([{**ROUTE, "opCode": "70", "reasonName": "客户不在"}]))
    assert update.state is TrackingState.PROBLEM
    assert update.problem == "派送不成功 (opCode 70): 客户不在"


@pytest.mark.parametrize(
    ("op_code", "expected"),
    [("50", TrackingState.COLLECTED), ("54", TrackingState.COLLECTED),
     ("30", TrackingState.IN_TRANSIT), ("44", TrackingState.IN_TRANSIT),
     ("80", TrackingState.SIGNED), ("8000", TrackingState.SIGNED),
     ("33", TrackingState.PROBLEM), ("648", TrackingState.PROBLEM),
     ("99999", TrackingState.NONE)],
)  # fmt: skip
def test_route_mapping(op_code: str, expected: TrackingState) -> None:
    assert wire.route_state(op_code) is expected
