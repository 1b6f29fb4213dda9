"""The Kdniao adapter against the simulated Kdniao API (same wire format, real HTTP)."""

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from gateway.carriers import kdniao_wire as wire
from gateway.carriers.base import (
    Address,
    CarrierMalformedReply,
    CarrierRejected,
    CarrierUnavailable,
    Parcel,
    PushVerificationError,
    ShipmentRequest,
    TrackingState,
)
from gateway.carriers.kdniao import KdniaoCarrier
from simulator.kdniao import CarrierKnobs, KdniaoSimulator

ADDRESS = Address("Store 1", "021-1", "上海市", "上海市", "静安区", "南京西路 1 号")


def _request(code: str = "tote-1") -> ShipmentRequest:
    start = datetime(2026, 11, 23, 9, tzinfo=UTC)
    return ShipmentRequest(
        code, ADDRESS, ADDRESS, Parcel(4.0, 1, "returns"), start, start + timedelta(hours=2)
    )


@dataclass
class Pair:
    sim: KdniaoSimulator
    carrier: KdniaoCarrier


async def _pair(
    knobs: CarrierKnobs, *, timeout_s: float = 2.0, retries: int = 3
) -> AsyncIterator[Pair]:
    sim = KdniaoSimulator("1234567", "app-key", knobs=knobs, push_url=None)
    url = await sim.start()
    async with aiohttp.ClientSession() as session:
        carrier = KdniaoCarrier(
            url, "1234567", "app-key", session, timeout_s=timeout_s, retries=retries, backoff_s=0.01
        )
        yield Pair(sim, carrier)
    await sim.stop()


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    async for p in _pair(CarrierKnobs()):
        yield p


def test_data_sign_is_base64_of_lower_hex_md5() -> None:
    data = '{"OrderCode":"012657700387"}'
    # Vector from coreutils: printf '%s' "${data}key" | md5sum | cut -c1-32 | tr -d '\n' | base64
    assert wire.data_sign(data, "key") == "YmQ0ZWYwZjExNmU2NTljZTllN2RlMzIxOTM0ZGQwMzI="


async def test_create_book_subscribe_query(pair: Pair) -> None:
    req = _request()
    shipment = await pair.carrier.create_shipment(req)
    assert shipment.waybill.startswith("YTO")
    booking = await pair.carrier.book_pickup(shipment, req)
    assert booking.window_start == req.pickup_start
    await pair.carrier.subscribe(shipment)
    await pair.sim.advance(shipment.waybill, "2", "201", "在途")
    [update] = await pair.carrier.query(shipment)
    assert update.state is TrackingState.IN_TRANSIT
    assert pair.sim.requests == {"1007": 1, "1001": 1, "1008": 1, "1002": 1}


async def test_repeated_order_code_returns_the_same_waybill(pair: Pair) -> None:
    first = await pair.carrier.create_shipment(_request("tote-9"))
    again = await pair.carrier.create_shipment(_request("tote-9"))
    assert again.waybill == first.waybill
    assert pair.sim.shipments_created["tote-9"] == 1


async def test_timed_out_create_is_retried_without_a_duplicate() -> None:
    # Every reply is held past the client's timeout, but the carrier commits the order.
    async for p in _pair(
        CarrierKnobs(timeout_rate=1.0, timeout_hold_s=1.0), timeout_s=0.3, retries=1
    ):
        with pytest.raises(Exception, match="no reply in time"):
            await p.carrier.create_shipment(_request("tote-5"))
        p.sim.knobs.timeout_rate = 0.0
        shipment = await p.carrier.create_shipment(_request("tote-5"))
        assert p.sim.shipments_created["tote-5"] == 1
        assert shipment.waybill == p.sim.orders["tote-5"].waybill


async def test_server_errors_are_retried_then_reported() -> None:
    async for p in _pair(CarrierKnobs(error_rate=1.0), retries=2):
        with pytest.raises(CarrierUnavailable):
            await p.carrier.create_shipment(_request())
        assert p.sim.shipments_created == {}


async def test_rejections_are_not_retried(pair: Pair) -> None:
    shipment = await pair.carrier.create_shipment(_request())
    pair.sim.orders.clear()
    with pytest.raises(CarrierRejected):
        await pair.carrier.book_pickup(shipment, _request())
    assert pair.sim.requests["1001"] == 1


async def test_malformed_reply_is_typed() -> None:
    async for p in _pair(CarrierKnobs(malformed_rate=1.0)):
        with pytest.raises(CarrierMalformedReply):
            await p.carrier.create_shipment(_request())


def _push(data: dict[str, object], key: str = "app-key") -> dict[str, str]:
    return wire.form(wire.PUSH, json.dumps(data), "1234567", key)


async def test_push_signature_and_parsing(pair: Pair) -> None:
    trace = {"AcceptTime": "2026-11-22 10:00:00", "AcceptStation": "已签收"}
    item = {"LogisticCode": "YTO1", "OrderCode": "tote-1", "State": "3", "StateEx": "301",
            "Traces": [trace]}  # fmt: skip
    [update] = pair.carrier.parse_push(_push({"Data": [item]}))
    assert (update.waybill, update.state, update.detail) == ("YTO1", TrackingState.SIGNED, "已签收")
    with pytest.raises(PushVerificationError, match="DataSign"):
        pair.carrier.parse_push(_push({"Data": [item]}, key="forged"))
    with pytest.raises(PushVerificationError, match="malformed"):
        pair.carrier.parse_push(_push({"Nope": 1}))
    with pytest.raises(PushVerificationError, match="malformed"):
        pair.carrier.parse_push(_push({"Data": [{"State": "1"}]}))


@pytest.mark.parametrize(
    ("state", "state_ex", "expected"),
    [("0", None, TrackingState.NONE), ("1", "1", TrackingState.COLLECTED),
     ("2", "201", TrackingState.IN_TRANSIT), ("3", "301", TrackingState.SIGNED),
     ("3", "302", TrackingState.SIGNED), ("2", "304", TrackingState.SIGNED),
     ("3", "311", TrackingState.SIGNED), ("4", "401", TrackingState.PROBLEM),
     ("2", "423", TrackingState.PROBLEM), ("5", None, TrackingState.FORWARDED),
     ("6", None, TrackingState.CUSTOMS), ("9", None, TrackingState.NONE)],
)  # fmt: skip
def test_state_mapping(state: str, state_ex: str | None, expected: TrackingState) -> None:
    assert wire.tracking_state(state, state_ex) is expected
