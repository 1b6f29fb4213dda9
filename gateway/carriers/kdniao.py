"""Kdniao (快递鸟) adapter: e-waybills, pickup booking, home pickup, tracking subscription,
queries and pushes.

Every request goes through the carrier's :class:`Resilience` (retries with backoff and jitter,
circuit breaker). Repeating an ``OrderCode`` is refused by Kdniao with ResultCode 106 and the
existing order; the adapter turns that into the existing waybill or booking, which is what makes
a retry after a timed-out create safe.
"""

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp

from gateway.carriers import kdniao_wire as wire
from gateway.carriers.base import (
    Address,
    CarrierMalformedReply,
    CarrierRateLimited,
    CarrierRejected,
    DuplicateOrder,
    PickupBooking,
    PushVerificationError,
    Shipment,
    ShipmentRequest,
    TrackingState,
    TrackingUpdate,
    parse_wire_time,
    wire_time,
)
from gateway.carriers.resilience import CircuitBreaker, Resilience
from gateway.carriers.transport import json_object, post_form

log = logging.getLogger(__name__)


def _address(a: Address) -> dict[str, str]:
    return {
        "Name": a.name,
        "Mobile": a.phone,
        "ProvinceName": a.province,
        "CityName": a.city,
        "ExpAreaName": a.district,
        "Address": a.street,
    }


def _parse_time(text: str) -> datetime:
    return parse_wire_time(text) or datetime.now(UTC)


def _order(reply: Mapping[str, Any]) -> dict[str, Any]:
    order = reply.get("Order")
    return order if isinstance(order, dict) else {}


class KdniaoCarrier:
    """The Kdniao aggregated API at ``url`` (the full request endpoint)."""

    name = "kdniao"

    def __init__(
        self,
        url: str,
        ebusiness_id: str,
        app_key: str,
        session: aiohttp.ClientSession,
        *,
        shipper_code: str = "YTO",
        timeout_s: float = 5.0,
        resilience: Resilience | None = None,
    ) -> None:
        self._url = url
        self._ebusiness_id = ebusiness_id
        self._app_key = app_key
        self._session = session
        self.shipper_code = shipper_code
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.resilience = resilience or Resilience(CircuitBreaker(self.name))
        self.breaker = self.resilience.breaker

    # ---- transport ----------------------------------------------------------------------

    async def _call(self, request_type: str, data: Mapping[str, Any]) -> dict[str, Any]:
        """One API call through the breaker, retried when nothing was decided."""
        body = wire.form(
            request_type, json.dumps(data, ensure_ascii=False), self._ebusiness_id, self._app_key
        )

        async def once() -> dict[str, Any]:
            text = await post_form(
                self._session, self._url, body, carrier=self.name, timeout=self._timeout
            )
            reply = json_object(text, self.name)
            if "ResultCode" not in reply:
                raise CarrierMalformedReply(self.name, f"reply without ResultCode {text[:80]!r}")
            if str(reply["ResultCode"]) == wire.RATE_LIMITED:
                raise CarrierRateLimited(self.name, str(reply.get("Reason", "rate limited")))
            return reply

        return await self.resilience.call(f"kdniao {request_type}", once)

    async def _request(
        self, request_type: str, data: Mapping[str, Any], *, duplicate_ok: bool = False
    ) -> dict[str, Any]:
        """A call whose reply must say Success; a repeated OrderCode is returned as is when
        ``duplicate_ok`` (its ``Order`` describes the existing order)."""
        reply = await self._call(request_type, data)
        code = str(reply.get("ResultCode"))
        if code == wire.DUPLICATE_ORDER:
            if duplicate_ok:
                log.info("kdniao %s: order %s exists already", request_type, data.get("OrderCode"))
                return reply
            waybill = _order(reply).get("LogisticCode")
            raise DuplicateOrder(self.name, code, str(reply.get("Reason", "")), waybill)
        if code != wire.OK or not reply.get("Success"):
            raise CarrierRejected(self.name, code, str(reply.get("Reason", "")))
        return reply

    def _product(self, product: str | None) -> str:
        return product or self.shipper_code

    # ---- shipments ----------------------------------------------------------------------

    async def create_shipment(self, req: ShipmentRequest) -> Shipment:
        """RequestType 1007. A repeated order code (after a lost reply) returns the original."""
        shipper = self._product(req.product)
        data = {
            "OrderCode": req.order_code,
            "ShipperCode": shipper,
            "PayType": 1,
            "ExpType": 1,
            "Sender": _address(req.sender),
            "Receiver": _address(req.receiver),
            "Commodity": [{"GoodsName": req.parcel.description}],
            "Weight": req.parcel.weight_kg,
            "Quantity": req.parcel.count,
            "Remark": req.remark,
            "IsReturnPrintTemplate": "0",
        }
        reply = await self._request(wire.CREATE_EWAYBILL, data, duplicate_ok=True)
        waybill = _order(reply).get("LogisticCode")
        if not isinstance(waybill, str) or not waybill:
            if str(reply.get("ResultCode")) == wire.DUPLICATE_ORDER:
                raise DuplicateOrder(self.name, wire.DUPLICATE_ORDER, "no waybill given", None)
            raise CarrierMalformedReply(self.name, "e-waybill reply without LogisticCode")
        return Shipment(self.name, req.order_code, waybill, shipper, None, reply)

    async def cancel_shipment(self, shipment: Shipment) -> None:
        """RequestType 1147."""
        data = {
            "ShipperCode": self._product(shipment.product),
            "OrderCode": shipment.order_code,
            "ExpNo": shipment.waybill,
        }
        await self._request(wire.CANCEL_EWAYBILL, data)

    # ---- pickups ------------------------------------------------------------------------

    def _pickup_data(self, req: ShipmentRequest, shipper: str) -> dict[str, Any]:
        return {
            "OrderCode": req.order_code,
            "ShipperCode": shipper,
            "PayType": 1,
            "ExpType": 1,
            "StartDate": wire_time(req.pickup_start),
            "EndDate": wire_time(req.pickup_end),
            "Sender": _address(req.sender),
            "Receiver": _address(req.receiver),
            "Commodity": [{"GoodsName": req.parcel.description}],
            "Weight": req.parcel.weight_kg,
            "Quantity": req.parcel.count,
            "Remark": req.remark,
        }

    def _booking(
        self, reply: Mapping[str, Any], req: ShipmentRequest, shipper: str, waybill: str | None
    ) -> PickupBooking:
        order = _order(reply)
        waybill = waybill or order.get("LogisticCode")
        if not isinstance(waybill, str) or not waybill:
            raise CarrierMalformedReply(self.name, "pickup reply without LogisticCode")
        return PickupBooking(
            self.name,
            req.order_code,
            str(order.get("PickupCode") or order.get("KDNOrderCode") or req.order_code),
            req.pickup_start,
            req.pickup_end,
            waybill,
            shipper,
        )

    async def book_pickup(self, shipment: Shipment, req: ShipmentRequest) -> PickupBooking:
        """RequestType 1001 for the shipment's e-waybill."""
        shipper = self._product(shipment.product)
        data = {**self._pickup_data(req, shipper), "LogisticCode": shipment.waybill}
        reply = await self._request(wire.BOOK_PICKUP, data, duplicate_ok=True)
        return self._booking(reply, req, shipper, shipment.waybill)

    async def cancel_pickup(self, shipment: Shipment) -> None:
        """RequestType 1004."""
        data = {"ShipperCode": self._product(shipment.product), "OrderCode": shipment.order_code}
        await self._request(wire.CANCEL_PICKUP, data)

    async def book_home_pickup(self, req: ShipmentRequest) -> PickupBooking:
        """RequestType 1001 without a waybill: the courier order, with the waybill Kdniao
        assigns. A repeated order code returns the booking already made."""
        shipper = self._product(req.product)
        reply = await self._request(
            wire.BOOK_PICKUP, self._pickup_data(req, shipper), duplicate_ok=True
        )
        return self._booking(reply, req, shipper, None)

    async def cancel_home_pickup(self, booking: PickupBooking) -> None:
        """RequestType 1004."""
        await self.cancel_pickup(booking.shipment)

    # ---- tracking -----------------------------------------------------------------------

    async def subscribe(self, shipment: Shipment) -> None:
        """RequestType 1008."""
        data = {
            "ShipperCode": self._product(shipment.product),
            "LogisticCode": shipment.waybill,
            "OrderCode": shipment.order_code,
        }
        await self._request(wire.SUBSCRIBE, data)

    async def query(self, shipment: Shipment) -> list[TrackingUpdate]:
        """RequestType 1002: the current state as one update (none before the first trace)."""
        data = {"ShipperCode": self._product(shipment.product), "LogisticCode": shipment.waybill}
        reply = await self._request(wire.QUERY, data)
        if str(reply.get("State", "0")) == "0" and not reply.get("Traces"):
            return []
        try:
            return [self._update(reply, shipment.order_code)]
        except (TypeError, ValueError, AttributeError) as exc:
            raise CarrierMalformedReply(self.name, f"query reply: {exc}") from None

    def parse_push(self, form: Mapping[str, str]) -> list[TrackingUpdate]:
        """A RequestType 101 (tracking) or 102 (pickup order) push, signature checked."""
        request_type = form.get("RequestType")
        if request_type not in (wire.PUSH, wire.PUSH_PICKUP):
            raise PushVerificationError(self.name, f"unexpected RequestType {request_type!r}")
        if form.get("EBusinessID") != self._ebusiness_id:
            raise PushVerificationError(self.name, "push for another EBusinessID")
        if not wire.sign_ok(form, self._app_key):
            raise PushVerificationError(self.name, "DataSign does not match")
        try:
            data = json.loads(form["RequestData"])
            items = data["Data"]
            if not isinstance(items, list):
                raise TypeError("Data is not a list")
            if request_type == wire.PUSH_PICKUP:
                return [self._pickup_update(item) for item in items]
            return [self._update(item, item.get("OrderCode")) for item in items]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PushVerificationError(self.name, f"malformed push: {exc}") from None

    def _update(self, item: Mapping[str, Any], order_code: str | None) -> TrackingUpdate:
        state, state_ex = str(item.get("State", "0")), item.get("StateEx")
        state_ex = None if state_ex in (None, "") else str(state_ex)
        traces = item.get("Traces") or []
        last = traces[-1] if traces and isinstance(traces[-1], dict) else {}
        waybill = item.get("LogisticCode")
        if not isinstance(waybill, str) or not waybill:
            raise ValueError("tracking item without LogisticCode")
        return TrackingUpdate(
            carrier=self.name,
            waybill=waybill,
            order_code=order_code,
            state=wire.tracking_state(state, state_ex),
            carrier_state=f"{state}/{state_ex or ''}",
            detail=str(last.get("AcceptStation", "")),
            at=_parse_time(str(last.get("AcceptTime", ""))),
            raw=dict(item),
            problem=wire.problem(state, state_ex),
        )

    def _pickup_update(self, item: Mapping[str, Any]) -> TrackingUpdate:
        waybill = item.get("LogisticCode")
        if not isinstance(waybill, str) or not waybill:
            raise ValueError("pickup item without LogisticCode")
        state = str(item.get("State", ""))
        tracking = wire.PICKUP_STATES.get(state, TrackingState.NONE)
        pickers = item.get("PickerInfo") or []
        picker = pickers[0] if pickers and isinstance(pickers[0], dict) else {}
        courier = " ".join(str(picker.get(k, "")) for k in ("PersonName", "PersonTel")).strip()
        detail = str(item.get("Reason") or "") or (f"courier {courier}" if courier else "")
        return TrackingUpdate(
            carrier=self.name,
            waybill=waybill,
            order_code=item.get("OrderCode"),
            state=tracking,
            carrier_state=f"pickup/{state}",
            detail=detail,
            at=_parse_time(str(item.get("CreateTime", ""))),
            raw=dict(item),
            problem=f"取件失败: {detail or state}" if tracking is TrackingState.PROBLEM else None,
        )

    def push_reply(self, ok: bool, reason: str = "") -> dict[str, Any]:
        """What Kdniao expects back from a push."""
        return {
            "EBusinessID": self._ebusiness_id,
            "UpdateTime": wire_time(datetime.now(UTC)),
            "Success": ok,
            "Reason": reason,
        }
